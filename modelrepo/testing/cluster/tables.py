"""Server-side printing: the ``Table`` objects ``kubectl get`` asks for.

``kubectl get`` (without ``-o json/yaml``) sends ``Accept: ...;as=Table;g=meta.k8s.io`` and
prints the columns the server chose, so the usual columns per kind are built here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from modelrepo.testing.cluster.resources import ResourceType

Obj = dict[str, Any]

_SHORT_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    then = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    seconds = int((datetime.now(timezone.utc) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _pod_status(pod: Obj) -> str:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase", "Unknown")
    for c in status.get("initContainerStatuses") or []:
        state = c.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode") == 0:
            continue
        if "waiting" in state and state["waiting"].get("reason") != "PodInitializing":
            return f"Init:{state['waiting']['reason']}"
        if "running" in state or "waiting" in state:
            return "Init:0/1"
    for c in reversed(status.get("containerStatuses") or []):
        state = c.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"].get("reason") or reason
    return reason


def _pod_row(pod: Obj) -> list[Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len(pod["spec"].get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    status = pod.get("status") or {}
    return [
        pod["metadata"]["name"],
        f"{ready}/{total}",
        _pod_status(pod),
        restarts,
        _age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP", "<none>"),
        pod["spec"].get("nodeName", "<none>"),
        "<none>",
        "<none>",
    ]


def _job_row(job: Obj) -> list[Any]:
    status = job.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Complete") == "True":
        state = "Complete"
    elif conditions.get("Failed") == "True":
        state = "Failed"
    elif job["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    else:
        state = "Running"
    completions = job["spec"].get("completions", 1)
    duration = ""
    if status.get("startTime"):
        duration = _age(status["startTime"])
    return [
        job["metadata"]["name"],
        state,
        f"{status.get('succeeded', 0)}/{completions}",
        duration,
        _age(job["metadata"].get("creationTimestamp")),
    ]


def _pvc_row(pvc: Obj) -> list[Any]:
    status = pvc.get("status") or {}
    modes = ",".join(_SHORT_MODES.get(m, m) for m in status.get("accessModes") or [])
    return [
        pvc["metadata"]["name"],
        status.get("phase", ""),
        pvc["spec"].get("volumeName", ""),
        (status.get("capacity") or {}).get("storage", ""),
        modes,
        pvc["spec"].get("storageClassName", ""),
        "<unset>",
        _age(pvc["metadata"].get("creationTimestamp")),
    ]


def _service_row(svc: Obj) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [
        svc["metadata"]["name"],
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP", ""),
        "<none>",
        ports or "<none>",
        _age(svc["metadata"].get("creationTimestamp")),
    ]


def _namespace_row(ns: Obj) -> list[Any]:
    return [
        ns["metadata"]["name"],
        (ns.get("status") or {}).get("phase", "Active"),
        _age(ns["metadata"].get("creationTimestamp")),
    ]


def _endpoints_row(ep: Obj) -> list[Any]:
    pairs = [
        f"{a['ip']}:{p['port']}"
        for s in ep.get("subsets") or []
        for a in s.get("addresses") or []
        for p in s.get("ports") or []
    ]
    shown = ",".join(pairs[:3]) + (f" + {len(pairs) - 3} more..." if len(pairs) > 3 else "")
    return [
        ep["metadata"]["name"],
        shown or "<none>",
        _age(ep["metadata"].get("creationTimestamp")),
    ]


def _deployment_row(d: Obj) -> list[Any]:
    status = d.get("status") or {}
    wanted = (d.get("spec") or {}).get("replicas", 1)
    return [
        d["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{wanted}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(d["metadata"].get("creationTimestamp")),
    ]


def _default_row(obj: Obj) -> list[Any]:
    return [obj["metadata"]["name"], _age(obj["metadata"].get("creationTimestamp"))]


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> Obj:
    return {"name": name, "type": kind, "format": fmt, "description": name, "priority": priority}


_AGE = _col("Age", "string")
_TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "Pod": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "string"),
            _AGE,
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_row,
    ),
    "Job": (
        [_col("Name", fmt="name"), _col("Status"), _col("Completions"), _col("Duration"), _AGE],
        _job_row,
    ),
    "PersistentVolumeClaim": (
        [
            _col("Name", fmt="name"),
            _col("Status"),
            _col("Volume"),
            _col("Capacity"),
            _col("Access Modes"),
            _col("StorageClass"),
            _col("VolumeAttributesClass"),
            _AGE,
        ],
        _pvc_row,
    ),
    "Service": (
        [
            _col("Name", fmt="name"),
            _col("Type"),
            _col("Cluster-IP"),
            _col("External-IP"),
            _col("Port(s)"),
            _AGE,
        ],
        _service_row,
    ),
    "Namespace": ([_col("Name", fmt="name"), _col("Status"), _AGE], _namespace_row),
    "Endpoints": ([_col("Name", fmt="name"), _col("Endpoints"), _AGE], _endpoints_row),
    "Deployment": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _AGE,
        ],
        _deployment_row,
    ),
}


def wants_table(accept: str) -> bool:
    """Whether the client asked for ``as=Table`` first."""
    first = accept.split(",")[0]
    return "as=Table" in first


def table(
    rtype: ResourceType,
    items: list[Obj],
    resource_version: str,
    include_object: str,
    *,
    list_meta: Obj | None = None,
) -> Obj:
    """A ``meta.k8s.io/v1`` Table for objects of one kind."""
    columns, row = _TABLES.get(rtype.kind, ([_col("Name", fmt="name"), _AGE], _default_row))
    rows = []
    for obj in items:
        if include_object == "None":
            embedded: Obj | None = None
        elif include_object == "Object":
            embedded = obj
        else:
            embedded = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        entry: Obj = {"cells": row(obj)}
        if embedded is not None:
            entry["object"] = embedded
        rows.append(entry)
    meta = {"resourceVersion": resource_version}
    if list_meta:
        meta.update(list_meta)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
