"""The resource types the emulator serves, and the discovery documents that describe them.

``kubectl`` maps a kind to a URL through discovery (``/api``, ``/apis``, the resource lists),
so every kind a manifest may hold must be listed here, even those stored without a controller
(Deployments, Roles...): ``kubectl apply --dry-run=client`` still looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives in the URL space and what it is called."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = tuple(_VERBS)
    singular: str = field(default="")

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


def _core(kind: str, plural: str, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", kind, plural, **kw)


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    _core(
        "Namespace",
        "namespaces",
        namespaced=False,
        short_names=("ns",),
        subresources=("status",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _core("Node", "nodes", namespaced=False, short_names=("no",), subresources=("status",)),
    _core(
        "Pod",
        "pods",
        short_names=("po",),
        categories=("all",),
        subresources=("exec", "log", "status", "attach", "portforward", "eviction"),
    ),
    _core(
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        short_names=("pvc",),
        subresources=("status",),
    ),
    _core(
        "PersistentVolume",
        "persistentvolumes",
        namespaced=False,
        short_names=("pv",),
        subresources=("status",),
    ),
    _core(
        "Service", "services", short_names=("svc",), categories=("all",), subresources=("status",)
    ),
    _core("Endpoints", "endpoints", short_names=("ep",), singular="endpoints"),
    _core("Secret", "secrets"),
    _core("ConfigMap", "configmaps", short_names=("cm",)),
    _core("ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _core("Event", "events", short_names=("ev",)),
    ResourceType("batch", "v1", "Job", "jobs", categories=("all",), subresources=("status",)),
    ResourceType(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        short_names=("cj",),
        categories=("all",),
        subresources=("status",),
    ),
    ResourceType(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        short_names=("deploy",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    ResourceType(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        short_names=("sts",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    ResourceType(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        short_names=("ds",),
        categories=("all",),
        subresources=("status",),
    ),
    ResourceType(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        short_names=("rs",),
        categories=("all",),
        subresources=("status", "scale"),
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        namespaced=False,
    ),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        namespaced=False,
        verbs=("create",),
    ),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        namespaced=False,
        verbs=("create",),
    ),
    ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", short_names=("ing",)),
    ResourceType(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        short_names=("pdb",),
        subresources=("status",),
    ),
    ResourceType(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        namespaced=False,
        short_names=("sc",),
    ),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCE_TYPES}
_BY_KIND = {(r.group, r.kind): r for r in RESOURCE_TYPES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource type served at ``/api(s)/<group>/<version>/<plural>``."""
    return _BY_PATH.get((group, version, plural))


def by_kind(group: str, kind: str) -> ResourceType | None:
    """The resource type of a kind (for ownerReferences and manifests)."""
    return _BY_KIND.get((group, kind))


def group_versions() -> dict[str, list[str]]:
    """Every served group with its versions (the core group is ``""``)."""
    out: dict[str, list[str]] = {}
    for r in RESOURCE_TYPES:
        versions = out.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    return out


def api_versions() -> dict[str, Any]:
    """``GET /api``: the legacy core group."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def api_group_list() -> dict[str, Any]:
    """``GET /apis``: every named group."""
    groups = []
    for group, versions in group_versions().items():
        if not group:
            continue
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    """``GET /apis/<group>``."""
    versions = group_versions().get(group)
    if not group or not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` or ``/apis/<group>/<version>``: the resources with verbs and names."""
    members = [r for r in RESOURCE_TYPES if r.group == group and r.version == version]
    if not members:
        return None
    resources: list[dict[str, Any]] = []
    for r in members:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular_name,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in r.subresources:
            sub_kind, verbs = _SUBRESOURCES.get(sub, (r.kind, ["get", "patch", "update"]))
            resources.append(
                {
                    "name": f"{r.plural}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": sub_kind or r.kind,
                    "verbs": verbs,
                }
            )
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }


_SUBRESOURCES: dict[str, tuple[str, list[str]]] = {
    "exec": ("PodExecOptions", ["create", "get"]),
    "attach": ("PodAttachOptions", ["create", "get"]),
    "portforward": ("PodPortForwardOptions", ["create", "get"]),
    "log": ("Pod", ["get"]),
    "eviction": ("Eviction", ["create"]),
    "scale": ("Scale", ["get", "patch", "update"]),
    "status": ("", ["get", "patch", "update"]),
}
