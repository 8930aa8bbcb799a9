"""Defaulting and validation per kind, as the real API server applies them on create.

Clients rely on defaults being filled in (a Pod's ``restartPolicy``, a Job's ``backoffLimit``
and selector, a Service's ``clusterIP``) and on bad objects being refused with 422 and
``details.causes``, so both happen here before anything is stored.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

from modelrepo.testing.cluster.errors import invalid

Obj = dict[str, Any]
Cause = tuple[str, str, str]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_cluster_ips = itertools.count(10)


def _required(field: str, what: str = "Required value") -> Cause:
    return ("FieldValueRequired", field, what)


def _unsupported(field: str, value: Any, allowed: list[str]) -> Cause:
    quoted = ", ".join(f'"{a}"' for a in allowed)
    return (
        "FieldValueNotSupported",
        field,
        f'Unsupported value: "{value}": supported values: {quoted}',
    )


def _check_pod_spec(spec: Any, prefix: str, causes: list[Cause]) -> None:
    if not isinstance(spec, dict):
        causes.append(_required(prefix))
        return
    containers = spec.get("containers")
    if not containers:
        causes.append(_required(f"{prefix}.containers"))
        containers = []
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for n, container in enumerate(spec.get(group) or []):
            where = f"{prefix}.{group}[{n}]"
            if not isinstance(container, dict):
                causes.append(("FieldValueInvalid", where, "Invalid value: must be an object"))
                continue
            name = container.get("name")
            if not name:
                causes.append(_required(f"{where}.name"))
            elif not _DNS_LABEL.match(str(name)):
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{where}.name",
                        f'Invalid value: "{name}": a lowercase RFC 1123 label must '
                        "consist of lower case alphanumeric characters or '-'",
                    )
                )
            elif name in seen:
                causes.append(
                    ("FieldValueDuplicate", f"{where}.name", f'Duplicate value: "{name}"')
                )
            seen.add(str(name))
            if not container.get("image"):
                causes.append(_required(f"{where}.image"))
            for m, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") not in volumes:
                    causes.append(
                        (
                            "FieldValueNotFound",
                            f"{where}.volumeMounts[{m}].name",
                            f'Not found: "{mount.get("name")}"',
                        )
                    )
                if not str(mount.get("mountPath", "")).startswith("/"):
                    causes.append(_required(f"{where}.volumeMounts[{m}].mountPath"))
            command = container.get("command")
            if command is not None and not (
                isinstance(command, list) and all(isinstance(c, str) for c in command)
            ):
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{where}.command",
                        "Invalid value: must be a list of strings",
                    )
                )


def _default_container(container: Obj) -> None:
    image = str(container.get("image", ""))
    tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    container.setdefault("imagePullPolicy", "IfNotPresent" if tagged or "@" in image else "Always")
    container.setdefault("resources", {})
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")


def default_pod_spec(spec: Obj, *, restart_policy: str = "Always") -> None:
    """Fill what the server fills in a PodSpec."""
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault(
        "tolerations",
        [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
    )
    for container in itertools.chain(
        spec.get("initContainers") or [], spec.get("containers") or []
    ):
        if isinstance(container, dict):
            _default_container(container)
    for volume in spec.get("volumes") or []:
        if "emptyDir" in volume and volume["emptyDir"] is None:
            volume["emptyDir"] = {}


def prepare_pod(obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    causes: list[Cause] = []
    _check_pod_spec(spec, "spec", causes)
    if isinstance(spec, dict):
        policy = spec.get("restartPolicy", "Always")
        if policy not in ("Always", "OnFailure", "Never"):
            causes.append(
                _unsupported("spec.restartPolicy", policy, ["Always", "OnFailure", "Never"])
            )
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            causes.append(
                (
                    "FieldValueInvalid",
                    "spec.activeDeadlineSeconds",
                    f"Invalid value: {deadline}: must be between 1 and 2147483647",
                )
            )
    if causes:
        raise invalid("Pod", "", meta.get("name") or meta.get("generateName", ""), causes)
    assert isinstance(spec, dict)
    default_pod_spec(spec)
    obj["status"] = {"phase": "Pending", "qosClass": _qos(spec)}


def _qos(spec: Obj) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    if all(
        r.get("limits") and r.get("requests", r.get("limits")) == r.get("limits") for r in resources
    ):
        return "Guaranteed"
    return "Burstable"


def prepare_job(obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    name = meta.get("name") or meta.get("generateName", "")
    causes: list[Cause] = []
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
        raise invalid("Job", "batch", name, [_required("spec.template")])
    template = spec["template"]
    pod_spec = template.get("spec")
    _check_pod_spec(pod_spec, "spec.template.spec", causes)
    if isinstance(pod_spec, dict):
        policy = pod_spec.get("restartPolicy")
        if policy not in ("OnFailure", "Never"):
            causes.append(
                (
                    "FieldValueRequired" if policy is None else "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    'Required value: valid values: "OnFailure", "Never"'
                    if policy is None
                    else f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                )
            )
    for field in (
        "backoffLimit",
        "completions",
        "parallelism",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            causes.append(
                (
                    "FieldValueInvalid",
                    f"spec.{field}",
                    f"Invalid value: {value}: must be greater than or equal to 0",
                )
            )
    if causes:
        raise invalid("Job", "batch", name, causes)
    assert isinstance(pod_spec, dict)
    default_pod_spec(pod_spec, restart_policy="Never")
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completions", 1)
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template.setdefault("metadata", {})
    obj["status"] = {}


def label_job(obj: Obj) -> None:
    """After the uid is known: the selector and the template labels the controller uses."""
    uid = obj["metadata"]["uid"]
    name = obj["metadata"].get("name", "")
    job_labels = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    spec = obj["spec"]
    if not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    template_meta = spec["template"].setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **job_labels}
    obj["metadata"]["labels"] = {**job_labels, **(obj["metadata"].get("labels") or {})}
    for key in ("batch.kubernetes.io/controller-uid", "controller-uid"):
        obj["metadata"]["labels"].pop(key, None)


def prepare_pvc(obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    causes: list[Cause] = []
    if not isinstance(spec, dict):
        raise invalid("PersistentVolumeClaim", "", meta.get("name", ""), [_required("spec")])
    modes = spec.get("accessModes")
    if not modes:
        causes.append(_required("spec.accessModes"))
    allowed = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
    for mode in modes or []:
        if mode not in allowed:
            causes.append(_unsupported("spec.accessModes", mode, allowed))
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if not storage:
        causes.append(_required("spec.resources[storage]"))
    if causes:
        raise invalid("PersistentVolumeClaim", "", meta.get("name", ""), causes)
    spec.setdefault("volumeMode", "Filesystem")
    spec.setdefault("storageClassName", "local-path")
    obj["status"] = {"phase": "Pending"}


def prepare_service(obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    spec = obj.setdefault("spec", {})
    causes: list[Cause] = []
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        causes.append(_required("spec.ports"))
    for n, port in enumerate(ports):
        if not isinstance(port.get("port"), int):
            causes.append(_required(f"spec.ports[{n}].port"))
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        if len(ports) > 1 and not port.get("name"):
            causes.append(_required(f"spec.ports[{n}].name"))
    if causes:
        raise invalid("Service", "", meta.get("name", ""), causes)
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if "clusterIP" not in spec:
        n = next(_cluster_ips)
        spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    obj["status"] = {"loadBalancer": {}}


def prepare_secret(obj: Obj) -> None:
    string_data = obj.pop("stringData", None) or {}
    data = dict(obj.get("data") or {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def prepare_namespace(obj: Obj) -> None:
    name = (obj.get("metadata") or {}).get("name", "")
    labels = obj.setdefault("metadata", {}).setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = name
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}


PREPARE = {
    ("", "Pod"): prepare_pod,
    ("batch", "Job"): prepare_job,
    ("", "PersistentVolumeClaim"): prepare_pvc,
    ("", "Service"): prepare_service,
    ("", "Secret"): prepare_secret,
    ("", "Namespace"): prepare_namespace,
}
