"""The controllers that make stored objects come alive.

- Volumes: a PersistentVolumeClaim gets a host folder and a PersistentVolume, then Bound.
- Namespaces: a new namespace gets its ``default`` ServiceAccount.
- Jobs (batch/v1): pods from the template, succeeded/failed counts, ``backoffLimit``,
  ``completions``/``parallelism``, ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``,
  conditions ``Complete``/``Failed`` (with ``SuccessCriteriaMet``/``FailureTarget``).
- Endpoints: one per Service with a selector, listing the matching pods' IPs.

Listeners never write to the store while it emits; they schedule work on the loop, so every
watcher sees events in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrepo.testing.cluster.errors import StatusError
from modelrepo.testing.cluster.resources import lookup
from modelrepo.testing.cluster.selectors import match_label_selector
from modelrepo.testing.cluster.store import Event, Obj, Store, now_rfc3339

if TYPE_CHECKING:
    from modelrepo.testing.cluster.api import ApiServer

PODS = lookup("", "v1", "pods")
PVCS = lookup("", "v1", "persistentvolumeclaims")
PVS = lookup("", "v1", "persistentvolumes")
NAMESPACES = lookup("", "v1", "namespaces")
SERVICE_ACCOUNTS = lookup("", "v1", "serviceaccounts")
SERVICES = lookup("", "v1", "services")
ENDPOINTS = lookup("", "v1", "endpoints")
JOBS = lookup("batch", "v1", "jobs")
assert PODS and PVCS and PVS and NAMESPACES and SERVICE_ACCOUNTS and SERVICES and ENDPOINTS
assert JOBS

JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
_JOB_BACKOFF_BASE = 0.2
_JOB_BACKOFF_MAX = 2.0


def _parse_time(stamp: str) -> float:
    return (
        datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    )


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()


class Controllers:
    """All controllers of one cluster, driven by store events."""

    def __init__(self, store: Store, api: ApiServer, volumes_dir: Path) -> None:
        self.store = store
        self.api = api
        self.volumes_dir = volumes_dir
        self.volume_paths: dict[tuple[str, str], Path] = {}
        self._pending: set[tuple[str, ...]] = set()
        self._timers: dict[tuple[str, ...], asyncio.TimerHandle] = {}
        self._job_locks: dict[tuple[str, str], asyncio.Lock] = {}
        store.add_listener(self._on_event)

    # -- scheduling helpers --------------------------------------------------------------
    def _soon(self, key: tuple[str, ...], work: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``work`` once on the next loop turn, however many events asked for it."""
        if key in self._pending:
            return
        self._pending.add(key)

        def run() -> None:
            self._pending.discard(key)
            result = work()
            if asyncio.iscoroutine(result):
                self.api.background(result)

        asyncio.get_running_loop().call_soon(run)

    def _later(self, key: tuple[str, ...], delay: float, work: Callable[[], None]) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(max(delay, 0), work)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # -- events --------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        rtype = event.rtype
        meta = event.obj["metadata"]
        ns = event.namespace
        if rtype is PVCS:
            if event.type == "ADDED":
                self._soon(("pvc", ns, meta["name"]), lambda: self._bind(ns, meta["name"]))
            elif event.type == "DELETED":
                self._soon(
                    ("pvc-gone", ns, meta["name"]),
                    lambda: self._release(ns, meta["name"], event.obj),
                )
        elif rtype is NAMESPACES and event.type == "ADDED":
            self._soon(("ns", meta["name"]), lambda: self._namespace(meta["name"]))
        elif rtype is JOBS:
            if event.type != "DELETED":
                self._soon(("job", ns, meta["name"]), lambda: self._sync_job(ns, meta["name"]))
            else:
                timer = self._timers.pop(("job", ns, meta["name"]), None)
                if timer is not None:
                    timer.cancel()
        elif rtype is PODS:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("controller"):
                    name = ref["name"]
                    self._soon(("job", ns, name), lambda name=name: self._sync_job(ns, name))
            self._soon(("endpoints", ns), lambda: self._sync_endpoints(ns))
        elif rtype is SERVICES:
            if event.type == "DELETED":
                with contextlib.suppress(StatusError):
                    name = meta["name"]
                    self._soon(("ep-gone", ns, name), lambda: self._drop_endpoints(ns, name))
            self._soon(("endpoints", ns), lambda: self._sync_endpoints(ns))

    # -- volumes -------------------------------------------------------------------------
    def volume_dir(self, namespace: str, claim: str) -> Path | None:
        """The host folder of a bound claim, or None."""
        pvc = self.store.find(PVCS, namespace, claim)
        if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
            return None
        return self.volume_paths.get((namespace, claim))

    def _bind(self, namespace: str, name: str) -> None:
        pvc = self.store.find(PVCS, namespace, name)
        if pvc is None or pvc.get("status", {}).get("phase") == "Bound":
            return
        path = self.volumes_dir / namespace / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        self.volume_paths[(namespace, name)] = path
        volume_name = f"pvc-{pvc['metadata']['uid']}"
        storage = pvc["spec"]["resources"]["requests"]["storage"]
        modes = list(pvc["spec"]["accessModes"])
        if self.store.find(PVS, "", volume_name) is None:
            self.store.create(
                PVS,
                "",
                {
                    "metadata": {
                        "name": volume_name,
                        "annotations": {"pv.kubernetes.io/provisioned-by": "local-cluster"},
                    },
                    "spec": {
                        "capacity": {"storage": storage},
                        "accessModes": modes,
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": pvc["spec"].get("storageClassName", ""),
                        "volumeMode": "Filesystem",
                        "hostPath": {"path": str(path)},
                        "claimRef": {
                            "kind": "PersistentVolumeClaim",
                            "namespace": namespace,
                            "name": name,
                            "uid": pvc["metadata"]["uid"],
                            "apiVersion": "v1",
                        },
                    },
                    "status": {"phase": "Bound"},
                },
            )

        def bound(obj: Obj) -> None:
            obj["spec"]["volumeName"] = volume_name
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["pv.kubernetes.io/bind-completed"] = "yes"
            annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
            obj["status"] = {
                "phase": "Bound",
                "accessModes": modes,
                "capacity": {"storage": storage},
            }

        self.store.mutate(PVCS, namespace, name, bound)

    def _release(self, namespace: str, name: str, pvc: Obj) -> None:
        path = self.volume_paths.pop((namespace, name), None)
        volume_name = pvc.get("spec", {}).get("volumeName")
        if volume_name:
            with contextlib.suppress(StatusError):
                self.store.remove(PVS, "", volume_name)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def _namespace(self, name: str) -> None:
        if self.store.find(NAMESPACES, "", name) is None:
            return
        if self.store.find(SERVICE_ACCOUNTS, name, "default") is None:
            self.store.create(SERVICE_ACCOUNTS, name, {"metadata": {"name": "default"}})

    # -- jobs ----------------------------------------------------------------------------
    def _job_pods(self, job: Obj) -> list[Obj]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.store.list(PODS, job["metadata"]["namespace"])
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    async def _sync_job(self, namespace: str, name: str) -> None:
        lock = self._job_locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            await self._sync_job_locked(namespace, name)
        if self.store.find(JOBS, namespace, name) is None:
            self._job_locks.pop((namespace, name), None)

    async def _sync_job_locked(self, namespace: str, name: str) -> None:
        job = self.store.find(JOBS, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        spec = job["spec"]
        status = job.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        finished = any(
            conditions.get(k, {}).get("status") == "True" for k in ("Complete", "Failed")
        )
        pods = self._job_pods(job)
        active = [
            p
            for p in pods
            if p["status"].get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        succeeded = sum(1 for p in pods if p["status"].get("phase") == "Succeeded")
        failed_pods = [p for p in pods if p["status"].get("phase") == "Failed"]
        restarts = sum(
            int(c.get("restartCount", 0))
            for p in pods
            for c in p["status"].get("containerStatuses") or []
        )
        failures = len(failed_pods) + restarts
        ready = sum(
            1
            for p in active
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in p["status"].get("conditions") or []
            )
        )
        if finished:
            self._schedule_ttl(job)
            self._set_job_status(
                namespace,
                name,
                active=len(active),
                succeeded=succeeded,
                failed=len(failed_pods),
                ready=ready,
            )
            return
        start = status.get("startTime") or now_rfc3339()
        completions = int(spec.get("completions") or 1)
        outcome: tuple[str, str, str] | None = None
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and _now() - _parse_time(start) >= int(deadline):
            outcome = (
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        elif failures > int(spec.get("backoffLimit", 6)):
            outcome = (
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        elif succeeded >= completions:
            outcome = (
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
        if outcome is not None:
            kind, reason, message = outcome
            if kind == "Failed":
                for pod in active:
                    with contextlib.suppress(StatusError):
                        await self.api.delete_object(
                            PODS, namespace, pod["metadata"]["name"], {"gracePeriodSeconds": 1}
                        )
            first = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
            self._set_job_status(
                namespace,
                name,
                start=start,
                active=0,
                succeeded=succeeded,
                failed=len(failed_pods),
                ready=0,
                conditions=[(first, reason, message), (kind, reason, message)],
                complete=kind == "Complete",
            )
            job = self.store.find(JOBS, namespace, name)
            if job is not None:
                self._schedule_ttl(job)
            return
        self._set_job_status(
            namespace,
            name,
            start=start,
            active=len(active),
            succeeded=succeeded,
            failed=len(failed_pods),
            ready=ready,
        )
        if deadline is not None:
            remaining = int(deadline) - (_now() - _parse_time(start))
            self._later(
                ("job", namespace, name),
                remaining + 0.05,
                lambda: self._soon(
                    ("job", namespace, name), lambda: self._sync_job(namespace, name)
                ),
            )
        if spec.get("suspend"):
            return
        want = min(int(spec.get("parallelism", 1)), completions - succeeded) - len(active)
        if want <= 0:
            return
        if failures:
            await asyncio.sleep(min(_JOB_BACKOFF_BASE * 2 ** (failures - 1), _JOB_BACKOFF_MAX))
            job = self.store.find(JOBS, namespace, name)
            if job is None or len(self._active(job)) >= want + len(active):
                return
        for _ in range(want):
            self._create_job_pod(job)

    def _active(self, job: Obj) -> list[Obj]:
        return [
            p
            for p in self._job_pods(job)
            if p["status"].get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]

    def _create_job_pod(self, job: Obj) -> None:
        template = job["spec"]["template"]
        meta = template.get("metadata") or {}
        name = job["metadata"]["name"]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{name}-",
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        with contextlib.suppress(StatusError):
            self.api.create_object(PODS, job["metadata"]["namespace"], body)

    def _set_job_status(
        self,
        namespace: str,
        name: str,
        *,
        start: str | None = None,
        active: int,
        succeeded: int,
        failed: int,
        ready: int,
        conditions: list[tuple[str, str, str]] | None = None,
        complete: bool = False,
    ) -> None:
        def change(job: Obj) -> None:
            status = job.setdefault("status", {})
            if start and not status.get("startTime"):
                status["startTime"] = start
            for key, value in (("active", active), ("succeeded", succeeded), ("failed", failed)):
                if value:
                    status[key] = value
                else:
                    status.pop(key, None)
            status["ready"] = ready
            status["terminating"] = 0
            status["uncountedTerminatedPods"] = {}
            if conditions:
                stamp = now_rfc3339()
                existing = status.setdefault("conditions", [])
                for kind, reason, message in conditions:
                    existing.append(
                        {
                            "type": kind,
                            "status": "True",
                            "lastProbeTime": stamp,
                            "lastTransitionTime": stamp,
                            "reason": reason,
                            "message": message,
                        }
                    )
                if complete:
                    status["completionTime"] = stamp

        self.store.mutate(JOBS, namespace, name, change)

    def _schedule_ttl(self, job: Obj) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        conditions = job.get("status", {}).get("conditions") or []
        finished_at = max(
            (
                _parse_time(c["lastTransitionTime"])
                for c in conditions
                if c["type"] in ("Complete", "Failed")
            ),
            default=_now(),
        )
        key = ("ttl", namespace, name)
        if key in self._timers:
            return
        delay = finished_at + int(ttl) - _now()

        def expire() -> None:
            self.api.background(self._delete_job(namespace, name, job["metadata"]["uid"]))

        self._later(key, delay, expire)

    async def _delete_job(self, namespace: str, name: str, uid: str) -> None:
        self._timers.pop(("ttl", namespace, name), None)
        job = self.store.find(JOBS, namespace, name)
        if job is not None and job["metadata"]["uid"] == uid:
            with contextlib.suppress(StatusError):
                await self.api.delete_object(
                    JOBS, namespace, name, {"propagationPolicy": "Background"}
                )

    # -- endpoints -----------------------------------------------------------------------
    def _sync_endpoints(self, namespace: str) -> None:
        pods = self.store.list(PODS, namespace)
        for svc in self.store.list(SERVICES, namespace):
            selector = svc["spec"].get("selector")
            if not selector:
                continue
            ready: list[Obj] = []
            not_ready: list[Obj] = []
            chosen: list[Obj] = []
            for pod in pods:
                if not match_label_selector(
                    {"matchLabels": selector}, pod["metadata"].get("labels") or {}
                ):
                    continue
                ip = pod.get("status", {}).get("podIP")
                if not ip or pod["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                chosen.append(pod)
                address = {
                    "ip": ip,
                    "nodeName": pod["spec"].get("nodeName", ""),
                    "targetRef": {
                        "kind": "Pod",
                        "name": pod["metadata"]["name"],
                        "namespace": namespace,
                        "uid": pod["metadata"]["uid"],
                    },
                }
                is_ready = any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in pod["status"].get("conditions") or []
                )
                if is_ready and not pod["metadata"].get("deletionTimestamp"):
                    ready.append(address)
                else:
                    not_ready.append(address)
            ports = [_endpoint_port(p, chosen) for p in svc["spec"].get("ports") or []]
            subsets: list[Obj] = []
            if ready or not_ready:
                subset: Obj = {"ports": ports}
                if ready:
                    subset["addresses"] = ready
                if not_ready:
                    subset["notReadyAddresses"] = not_ready
                subsets.append(subset)
            name = svc["metadata"]["name"]
            existing = self.store.find(ENDPOINTS, namespace, name)
            body: Obj = {
                "metadata": {"name": name, "labels": dict(svc["metadata"].get("labels") or {})}
            }
            if subsets:
                body["subsets"] = subsets
            if existing is None:
                self.store.create(ENDPOINTS, namespace, body)
            elif existing.get("subsets") != body.get("subsets"):

                def change(ep: Obj, subsets: list[Obj] = subsets) -> None:
                    if subsets:
                        ep["subsets"] = subsets
                    else:
                        ep.pop("subsets", None)

                self.store.mutate(ENDPOINTS, namespace, name, change)

    def _drop_endpoints(self, namespace: str, name: str) -> None:
        with contextlib.suppress(StatusError):
            self.store.remove(ENDPOINTS, namespace, name)


def _endpoint_port(port: Obj, pods: list[Obj]) -> Obj:
    target: Any = port.get("targetPort", port.get("port"))
    if isinstance(target, str):
        for pod in pods:
            for c in pod["spec"].get("containers") or []:
                for p in c.get("ports") or []:
                    if p.get("name") == target:
                        target = p.get("containerPort")
                        break
    out: Obj = {
        "port": target if isinstance(target, int) else port.get("port"),
        "protocol": port.get("protocol", "TCP"),
    }
    if port.get("name"):
        out["name"] = port["name"]
    return out
