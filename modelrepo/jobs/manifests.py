"""Kubernetes manifests for the in-cluster routes of a model into the repository.

Pure functions returning plain dicts (what ``kubectl apply -f`` and the ``kubernetes`` client
both accept), so they can be printed, written as YAML, reviewed by a platform team, or created
through the API by :func:`modelrepo.jobs.runner.run_job`:

* Option A, :func:`s3_sync_job`: a Job running ``aws s3 sync`` from S3 into a folder on the claim;
* Option B, :func:`build_job`: a Job running a build (``trtllm-build`` by default) whose inputs
  are mounted read-only and whose output is a folder on the claim;
* Option C, :func:`triton_manifests`: Triton itself, reading the claim (``mode="pvc"``) or an
  emptyDir filled from S3 by an init container on every start (``mode="init-sync"``);
* :func:`rbac_manifests`: the least a namespace must grant for modelrepo to work.

Commands are argv lists (no shell) wherever the caller allows it, so no path needs quoting;
where a shell string is asked for, every substituted value is quoted. Credentials are only ever
*referenced* (``secretKeyRef``), never written into a manifest.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from modelrepo.errors import ModelRepoError

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_AWS_IMAGE",
    "DEFAULT_TRITON_IMAGE",
    "MANAGED_BY",
    "MOUNT_PATH",
    "RBAC_RULES",
    "TRTLLM_BUILD_COMMAND",
    "JobOptions",
    "ManifestError",
    "build_job",
    "rbac_manifests",
    "render_command",
    "s3_sync_job",
    "to_yaml",
    "triton_manifests",
    "unique_name",
    "write_yaml",
]

Manifest = dict[str, Any]

DEFAULT_AWS_IMAGE = "amazon/aws-cli"
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
#: Where the claim (or the emptyDir of ``init-sync``) is mounted in every pod we describe.
MOUNT_PATH = "/models"
#: Where :func:`build_job` mounts each input (``/inputs/<name>``) and the output folder.
INPUTS_PATH = "/inputs"
OUTPUT_PATH = "/output"
#: Labels on everything modelrepo creates, so ``kubectl get all -l ...`` finds it.
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelrepo"}
#: The build of the TensorRT-LLM tutorials: a converted checkpoint in, an engine folder out.
#: ``{inputs[checkpoint]}`` and ``{output}`` are replaced by the mount paths in the pod.
TRTLLM_BUILD_COMMAND: tuple[str, ...] = (
    "trtllm-build",
    "--checkpoint_dir",
    "{inputs[checkpoint]}",
    "--output_dir",
    "{output}",
    "--gemm_plugin",
    "auto",
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_INPUT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_AWS_SECRET_KEYS = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),
)


class ManifestError(ModelRepoError, ValueError):
    """An argument would produce a manifest Kubernetes refuses (bad name, path, URL...)."""


# --------------------------------------------------------------------------- checks


def _name(value: str, what: str, *, max_len: int = 63) -> str:
    """A DNS-1123 label: what Kubernetes requires of Job, Service and volume names."""
    if not isinstance(value, str) or len(value) > max_len or not _DNS_LABEL.match(value):
        raise ManifestError(
            f"{what} {value!r} is not a valid Kubernetes name",
            hint=f"use at most {max_len} lowercase letters, digits and '-', starting and "
            "ending with a letter or digit (e.g. 'llama2-7b-sync')",
        )
    return value


def _subdomain(value: str, what: str) -> str:
    """A DNS-1123 subdomain: what Secrets, ServiceAccounts and claims may be called."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ManifestError(
            f"{what} {value!r} is not a valid Kubernetes object name",
            hint="use lowercase letters, digits, '-' and '.', starting and ending with a "
            "letter or digit",
        )
    return value


def _claim_path(path: str, what: str) -> str:
    """A folder inside the claim, normalised and unable to climb out of it ('' = the root)."""
    if not isinstance(path, str) or "\0" in path:
        raise ManifestError(f"{what} {path!r} is not a path", hint="pass a str like 'a/b/1'")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ManifestError(
            f"{what} {path!r} leaves the claim through '..'",
            hint="give a path relative to the root of the claim, without '..'",
        )
    return "/".join(parts)


def _s3_url(url: str, what: str = "source") -> str:
    if not isinstance(url, str) or not url.startswith("s3://") or len(url) <= 5 or url[5] == "/":
        raise ManifestError(
            f"{what} {url!r} is not an S3 URL",
            hint="write it as 's3://<bucket>/<prefix>', e.g. 's3://models/model-repo/llama2_7b'",
        )
    return url


def _labels(name: str, component: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "modelrepo",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        **MANAGED_BY,
    }
    labels.update({str(k): str(v) for k, v in (extra or {}).items()})
    return labels


def _meta(name: str, namespace: str, labels: Mapping[str, str]) -> Manifest:
    """Fresh metadata (no dict shared between objects, so YAML has no aliases)."""
    return {"name": name, "namespace": _subdomain(namespace, "namespace"), "labels": dict(labels)}


def unique_name(prefix: str, *, length: int = 6) -> str:
    """``<prefix>-<random>``, a valid Job name, so two notebooks never pick the same one.

    The prefix is lowercased, characters Kubernetes refuses become ``-`` and it is cut so
    the result fits the 63 characters a Job name may have.
    """
    clean = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-") or "modelrepo"
    suffix = secrets.token_hex(length)[:length]
    clean = clean[: 62 - len(suffix)].rstrip("-")
    return _name(f"{clean}-{suffix}", "generated name")


# --------------------------------------------------------------------------- pieces


def _aws_env(secret: str | None, region: str | None) -> list[dict[str, Any]]:
    """Credentials by reference to a Secret (never inlined), plus the region if given."""
    env: list[dict[str, Any]] = []
    if secret is not None:
        _subdomain(secret, "secret")
        for key, optional in _AWS_SECRET_KEYS:
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    if region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": str(region)})
    return env


def _aws_sync_argv(
    source: str, dest: str, endpoint_url: str | None, extra_args: Sequence[str]
) -> list[str]:
    argv = ["aws", "s3", "sync", "--no-progress", _s3_url(source), dest]
    if endpoint_url:
        argv += ["--endpoint-url", str(endpoint_url)]
    return argv + [str(a) for a in extra_args]


def _env_list(env: Mapping[str, str] | None) -> list[dict[str, Any]]:
    return [{"name": str(k), "value": str(v)} for k, v in (env or {}).items()]


def _resources(resources: Mapping[str, Any] | None, gpus: int, default: Manifest) -> Manifest:
    """Requests/limits as given (else ``default``), with ``gpus`` as an nvidia.com/gpu limit."""
    given = resources if resources is not None else default
    # Quantities are strings in the API ("2", "500m", "16Gi"); an int is accepted and converted.
    out = {k: {r: str(q) for r, q in v.items()} for k, v in given.items()}
    if gpus:
        if int(gpus) < 0:
            raise ManifestError(f"gpus={gpus} is negative", hint="ask for 0 or more GPUs")
        out.setdefault("limits", {})["nvidia.com/gpu"] = str(int(gpus))
    return out


def _pod_spec(
    *,
    containers: list[Manifest],
    volumes: list[Manifest],
    restart_policy: str,
    service_account: str | None,
    security_context: Mapping[str, Any] | None,
    node_selector: Mapping[str, str] | None,
    tolerations: Sequence[Mapping[str, Any]] | None,
    image_pull_secrets: Sequence[str] | None,
    init_containers: list[Manifest] | None = None,
    node: str | None = None,
) -> Manifest:
    spec: Manifest = {"restartPolicy": restart_policy}
    if node is not None:
        # A ReadWriteOnce claim attaches to one node: run where it is already mounted.
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    if service_account is not None:
        spec["serviceAccountName"] = _subdomain(service_account, "service_account")
    if security_context:
        spec["securityContext"] = dict(security_context)
    if node_selector:
        spec["nodeSelector"] = {str(k): str(v) for k, v in node_selector.items()}
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if image_pull_secrets:
        spec["imagePullSecrets"] = [
            {"name": _subdomain(s, "image pull secret")} for s in image_pull_secrets
        ]
    if init_containers:
        spec["initContainers"] = init_containers
    spec["containers"] = containers
    spec["volumes"] = volumes
    return spec


def _claim_volume(claim: str, *, read_only: bool = False) -> Manifest:
    source: Manifest = {"claimName": _subdomain(claim, "claim")}
    if read_only:
        source["readOnly"] = True
    return {"name": "models", "persistentVolumeClaim": source}


def _mount(path: str, *, sub_path: str = "", read_only: bool = False) -> Manifest:
    mount: Manifest = {"name": "models", "mountPath": path}
    if sub_path:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
    return mount


def _job(
    name: str,
    namespace: str,
    labels: dict[str, str],
    pod_spec: Manifest,
    *,
    ttl_seconds_after_finished: int | None,
    active_deadline_seconds: int | None,
    backoff_limit: int,
) -> Manifest:
    spec: Manifest = {"backoffLimit": int(backoff_limit)}
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
    spec["template"] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(_name(name, "job name"), namespace, labels),
        "spec": spec,
    }


_SMALL_JOB_RESOURCES: Manifest = {"requests": {"cpu": "250m", "memory": "256Mi"}}


class JobOptions(TypedDict, total=False):
    """What every modelrepo Job also takes: where its pod runs and how long the Job lives.

    - ``service_account``: the pod's ServiceAccount (also the S3 credentials of IRSA /
      workload identity for Option A);
    - ``node``: pin the pod to a node (where a ReadWriteOnce claim is already attached);
    - ``node_selector``, ``tolerations``, ``security_context``, ``image_pull_secrets``
      (Secret names): as in a pod spec;
    - ``labels``: added to the Job and its pod;
    - ``ttl_seconds_after_finished`` (default 600), ``active_deadline_seconds`` (default
      6 h), ``backoff_limit`` (default 0: a failed build or sync is not run again).
    """

    service_account: str | None
    node: str | None
    node_selector: Mapping[str, str] | None
    tolerations: Sequence[Mapping[str, Any]] | None
    security_context: Mapping[str, Any] | None
    image_pull_secrets: Sequence[str] | None
    labels: Mapping[str, str] | None
    ttl_seconds_after_finished: int | None
    active_deadline_seconds: int | None
    backoff_limit: int


def _claim_job(
    name: str,
    namespace: str,
    component: str,
    container: Manifest,
    claim: str,
    options: JobOptions,
) -> Manifest:
    """A Job whose one container works on the claim, shaped by :class:`JobOptions`."""
    unknown = sorted(set(options) - set(JobOptions.__annotations__))
    if unknown:
        raise ManifestError(
            f"unknown Job option(s): {', '.join(unknown)}",
            hint=f"the options are: {', '.join(JobOptions.__annotations__)}",
        )
    pod = _pod_spec(
        containers=[container],
        volumes=[_claim_volume(claim)],
        restart_policy="Never",
        service_account=options.get("service_account"),
        security_context=options.get("security_context"),
        node_selector=options.get("node_selector"),
        tolerations=options.get("tolerations"),
        image_pull_secrets=options.get("image_pull_secrets"),
        node=options.get("node"),
    )
    return _job(
        name,
        namespace,
        _labels(name, component, options.get("labels")),
        pod,
        ttl_seconds_after_finished=options.get("ttl_seconds_after_finished", 600),
        active_deadline_seconds=options.get("active_deadline_seconds", 6 * 3600),
        backoff_limit=options.get("backoff_limit", 0),
    )


# --------------------------------------------------------------------------- Option A


def s3_sync_job(
    name: str,
    *,
    claim: str,
    source: str,
    dest_path: str,
    namespace: str = "default",
    image: str = DEFAULT_AWS_IMAGE,
    secret: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    extra_args: Sequence[str] = (),
    resources: Mapping[str, Any] | None = None,
    **options: Unpack[JobOptions],
) -> Manifest:
    """Option A: a Job copying ``source`` (``s3://bucket/prefix``) into ``dest_path`` on the claim.

    The pod mounts the whole claim at ``/models`` and runs, as an argv list,
    ``aws s3 sync --no-progress <source> /models/<dest_path> [--endpoint-url URL] [extra_args]``:
    the bytes go from S3 to the volume inside the cluster, never through the notebook.
    Credentials come from ``secret`` (a Secret with ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and optionally ``AWS_SESSION_TOKEN``, referenced with
    ``secretKeyRef``) or from the ``service_account`` option (IRSA / workload identity).
    ``dest_path`` is meant to be a staging folder that is published by a rename afterwards.
    ``options``: see :class:`JobOptions` (placement, lifetime, labels).
    """
    dest = _claim_path(dest_path, "dest_path")
    container: Manifest = {
        "name": "sync",
        "image": image,
        "command": _aws_sync_argv(
            source,
            posixpath.join(MOUNT_PATH, dest) if dest else MOUNT_PATH,
            endpoint_url,
            extra_args,
        ),
        "env": _aws_env(secret, region),
        "resources": _resources(resources, 0, _SMALL_JOB_RESOURCES),
        "volumeMounts": [_mount(MOUNT_PATH)],
    }
    if not container["env"]:
        del container["env"]
    return _claim_job(name, namespace, "s3-sync", container, claim, options)


# --------------------------------------------------------------------------- Option B


def render_command(
    command: str | Sequence[str],
    *,
    inputs: Mapping[str, str],
    output: str,
    params: Mapping[str, Any] | None = None,
) -> list[str]:
    """The container command of a build: ``{output}``, ``{inputs[name]}`` and ``{params}`` filled.

    A list is an argv: each element is formatted and passed as is (no shell, no quoting
    needed). A string is a shell script run by ``/bin/sh -c``: every substituted value is
    quoted with :func:`shlex.quote`, so a path with spaces or quotes stays one word.
    Write literal braces as ``{{`` and ``}}``.
    """
    fields = {**(params or {}), "inputs": dict(inputs), "output": output}
    try:
        if isinstance(command, str):
            quoted = {k: shlex.quote(str(v)) for k, v in (params or {}).items()}
            quoted["inputs"] = {k: shlex.quote(v) for k, v in inputs.items()}
            quoted["output"] = shlex.quote(output)
            return ["/bin/sh", "-c", command.format(**quoted)]
        return [str(part).format(**fields) for part in command]
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise ManifestError(
            f"the build command {command!r} cannot be filled in ({type(exc).__name__}: {exc})",
            hint=f"available: {{output}}, {', '.join('{inputs[' + k + ']}' for k in inputs)}"
            + (", " + ", ".join("{" + k + "}" for k in params) if params else "")
            + "; write literal braces as '{{' and '}}'",
        ) from exc


def build_job(
    name: str,
    *,
    claim: str,
    image: str,
    output_path: str,
    command: str | Sequence[str] | None = None,
    inputs: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    namespace: str = "default",
    env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    resources: Mapping[str, Any] | None = None,
    gpus: int = 0,
    working_dir: str | None = None,
    **options: Unpack[JobOptions],
) -> Manifest:
    """Option B: a Job running a build whose result lands in ``output_path`` on the claim.

    Each entry of ``inputs`` (name -> folder in the claim) is mounted **read-only** at
    ``/inputs/<name>`` (a ``subPath`` of the claim), and ``output_path`` read-write at
    ``/output``; the build sees nothing else of the claim, so it cannot damage published
    models. ``command`` (default :data:`TRTLLM_BUILD_COMMAND`, which needs an input called
    ``checkpoint``) is an argv list or a shell string, formatted by :func:`render_command`
    with ``{output}``, ``{inputs[<name>]}`` and the ``params``. ``secret_env`` maps an
    environment variable to ``(secret name, key)``, e.g. a Hugging Face token.
    ``gpus`` adds an ``nvidia.com/gpu`` limit. ``options``: see :class:`JobOptions`.
    """
    inputs = dict(inputs or {})
    for key in inputs:
        if not _INPUT_NAME.match(key):
            raise ManifestError(
                f"input name {key!r} cannot be used in a path or a template",
                hint="use letters, digits, '_', '.' and '-' (e.g. 'checkpoint')",
            )
    if command is None:
        command = TRTLLM_BUILD_COMMAND
        if "checkpoint" not in inputs:
            raise ManifestError(
                "the default build command (trtllm-build) needs an input called 'checkpoint'",
                hint="pass inputs={'checkpoint': '<folder in the claim>'} or your own command=",
            )
    mounts = [_mount(OUTPUT_PATH, sub_path=_claim_path(output_path, "output_path"))]
    in_pod: dict[str, str] = {}
    for key, path in inputs.items():
        in_pod[key] = f"{INPUTS_PATH}/{key}"
        sub_path = _claim_path(path, f"input {key!r}")
        mounts.append(_mount(in_pod[key], sub_path=sub_path, read_only=True))
    env_list = _env_list(env)
    for var, (secret, key) in (secret_env or {}).items():
        ref = {"name": _subdomain(secret, "secret"), "key": str(key)}
        env_list.append({"name": str(var), "valueFrom": {"secretKeyRef": ref}})
    container: Manifest = {
        "name": "build",
        "image": image,
        "command": render_command(command, inputs=in_pod, output=OUTPUT_PATH, params=params),
        "resources": _resources(resources, gpus, {}),
        "volumeMounts": mounts,
    }
    if env_list:
        container["env"] = env_list
    if working_dir:
        container["workingDir"] = working_dir
    return _claim_job(name, namespace, "build", container, claim, options)


# --------------------------------------------------------------------------- Option C


def triton_manifests(
    name: str = "triton",
    *,
    claim: str | None = None,
    namespace: str = "default",
    mode: Literal["pvc", "init-sync"] = "pvc",
    image: str = DEFAULT_TRITON_IMAGE,
    replicas: int = 1,
    root: str = "",
    s3_source: str | None = None,
    secret: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    sync_image: str = DEFAULT_AWS_IMAGE,
    service_account: str | None = None,
    create_pvc: bool = True,
    storage: str = "50Gi",
    storage_class: str | None = None,
    access_modes: Sequence[str] | None = None,
    cache_size: str | None = None,
    model_control_mode: Literal["explicit", "none", "poll"] = "explicit",
    load_models: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    gpus: int = 0,
    resources: Mapping[str, Any] | None = None,
    shm_size: str | None = "1Gi",
    service_type: str = "ClusterIP",
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    image_pull_secrets: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """Option C and its PVC-backed twin: a Triton Deployment, its Service (and claim).

    ``mode="pvc"``: [PersistentVolumeClaim if ``create_pvc``], a Deployment mounting the claim
    read-only at ``/models`` and running ``tritonserver --model-repository=/models/<root>
    --model-control-mode=explicit`` (what modelrepo's load/unload drive), and a Service with
    ports http 8000, grpc 8001, metrics 8002. ``access_modes`` defaults to ReadWriteOnce for
    one replica and ReadWriteMany for more (each replica must mount the claim); with
    ReadWriteOnce the Deployment uses the Recreate strategy so an update never waits on a
    claim still attached to the old pod.

    ``mode="init-sync"``: no claim; an init container (``sync_image``) runs
    ``aws s3 sync <s3_source> /models`` into an emptyDir shared with Triton on every pod start.
    Pods are ready when ``/v2/health/ready`` answers; ``load_models`` adds ``--load-model``
    (``"*"`` loads everything at start in explicit mode).
    """
    if mode not in ("pvc", "init-sync"):
        raise ManifestError(f"mode {mode!r} is unknown", hint="use mode='pvc' or 'init-sync'")
    _name(name, "name")
    if int(replicas) < 0:
        raise ManifestError(f"replicas={replicas} is negative", hint="use 1 or more replicas")
    labels_ = _labels(name, "triton", labels)
    labels_.update({"app": name, "app.kubernetes.io/name": "triton"})
    selector = {"app": name}
    repo_dir = _claim_path(root, "root")
    args = [
        "tritonserver",
        f"--model-repository={posixpath.join(MOUNT_PATH, repo_dir) if repo_dir else MOUNT_PATH}",
        f"--model-control-mode={model_control_mode}",
        *(f"--load-model={m}" for m in load_models),
        *(str(a) for a in extra_args),
    ]
    ports = [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8002, "protocol": "TCP"},
    ]
    triton: Manifest = {
        "name": "triton",
        "image": image,
        "command": args,
        "ports": ports,
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=6),
        # A server loading a large model at start answers nothing for minutes.
        "startupProbe": _probe("/v2/health/live", period=10, failures=90),
        "resources": _resources(resources, gpus, {}),
        "volumeMounts": [_mount(MOUNT_PATH, read_only=(mode == "pvc"))],
    }
    volumes: list[Manifest] = []
    init: list[Manifest] = []
    out: list[Manifest] = []
    if mode == "pvc":
        if claim is None:
            raise ManifestError(
                "mode='pvc' needs the claim Triton reads the repository from",
                hint="pass claim='<pvc name>' (e.g. 'triton-model-repo')",
            )
        modes = list(access_modes or (["ReadWriteOnce"] if replicas <= 1 else ["ReadWriteMany"]))
        if create_pvc:
            out.append(_pvc(claim, namespace, modes, storage, storage_class, labels))
        volumes.append(_claim_volume(claim, read_only=True))
        strategy = {"type": "Recreate"} if modes == ["ReadWriteOnce"] else {"type": "RollingUpdate"}
    else:
        if s3_source is None:
            raise ManifestError(
                "mode='init-sync' needs the S3 folder to copy into each pod",
                hint="pass s3_source='s3://<bucket>/<model repository prefix>'",
            )
        sync: Manifest = {
            "name": "sync-models",
            "image": sync_image,
            "command": _aws_sync_argv(s3_source, MOUNT_PATH, endpoint_url, ()),
            "env": _aws_env(secret, region),
            "resources": _resources(None, 0, _SMALL_JOB_RESOURCES),
            "volumeMounts": [_mount(MOUNT_PATH)],
        }
        if not sync["env"]:
            del sync["env"]
        init.append(sync)
        empty: Manifest = {"sizeLimit": cache_size} if cache_size else {}
        volumes.append({"name": "models", "emptyDir": empty})
        strategy = {"type": "RollingUpdate"}
    if shm_size:
        # Triton's python backend exchanges tensors through /dev/shm (64 MiB by default).
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
        triton["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    pod = _pod_spec(
        containers=[triton],
        volumes=volumes,
        restart_policy="Always",
        service_account=service_account,
        security_context=None,
        node_selector=node_selector,
        tolerations=tolerations,
        image_pull_secrets=image_pull_secrets,
        init_containers=init,
    )
    out.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, namespace, labels_),
            "spec": {
                "replicas": int(replicas),
                "strategy": strategy,
                "selector": {"matchLabels": dict(selector)},
                "template": {"metadata": {"labels": dict(labels_)}, "spec": pod},
            },
        }
    )
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, namespace, labels_),
            "spec": {
                "type": service_type,
                "selector": dict(selector),
                "ports": [
                    {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                    for p in ports
                ],
            },
        }
    )
    return out


def _probe(path: str, *, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _pvc(
    claim: str,
    namespace: str,
    access_modes: list[str],
    storage: str,
    storage_class: str | None,
    labels: Mapping[str, str] | None,
) -> Manifest:
    spec: Manifest = {"accessModes": access_modes, "resources": {"requests": {"storage": storage}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(
            _subdomain(claim, "claim"), namespace, _labels(claim, "model-repository", labels)
        ),
        "spec": spec,
    }


# --------------------------------------------------------------------------- RBAC

#: What modelrepo needs: the helper pod (create, exec, delete), a Job's pod logs, the claim,
#: the Jobs of options A and B, and Triton's pods behind a Service, plus a few read verbs
#: for the people who use it (the docs' RBAC page says which verb serves what).
RBAC_RULES: tuple[Manifest, ...] = (
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    # Exec over WebSocket starts with a GET, over SPDY with a POST (create).
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["services", "endpoints"], "verbs": ["get", "list"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
)


def rbac_manifests(
    name: str = "modelrepo",
    namespace: str = "default",
    *,
    service_account: str | None = None,
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """A Role with :data:`RBAC_RULES` and a RoleBinding granting it (plus a ServiceAccount).

    With ``service_account=None`` a ServiceAccount called ``name`` is created and bound (for a
    notebook running in the cluster); otherwise the existing ``service_account`` is bound.
    ``users`` and ``groups`` add the people whose own kubeconfig runs modelrepo.
    """
    _name(name, "name")
    ns = _subdomain(namespace, "namespace")
    labels_ = _labels(name, "rbac", labels)
    out: list[Manifest] = []
    sa = service_account or name
    if service_account is None:
        out.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns, labels_)}
        )
    subjects: list[Manifest] = [
        {"kind": "ServiceAccount", "name": _subdomain(sa, "service_account"), "namespace": ns}
    ]
    rbac = "rbac.authorization.k8s.io"
    subjects += [{"kind": "User", "apiGroup": rbac, "name": str(u)} for u in users]
    subjects += [{"kind": "Group", "apiGroup": rbac, "name": str(g)} for g in groups]
    rules = [{k: list(v) for k, v in rule.items()} for rule in RBAC_RULES]
    out.append(
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _meta(name, ns, labels_),
            "rules": rules,
        }
    )
    out.append(
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, ns, labels_),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": subjects,
        }
    )
    return out


# --------------------------------------------------------------------------- YAML


def to_yaml(manifests: Manifest | Iterable[Manifest]) -> str:
    """One YAML stream (documents separated by ``---``) that ``kubectl apply -f -`` takes."""
    import yaml

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a dict used twice is written twice
            return True

    docs = [manifests] if isinstance(manifests, Mapping) else list(manifests)
    return yaml.dump_all(
        docs, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, explicit_start=True
    )


def write_yaml(manifests: Manifest | Iterable[Manifest], path: str | Path) -> Path:
    """Write :func:`to_yaml` to ``path`` (folders created) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(to_yaml(manifests), encoding="utf-8")
    return target
