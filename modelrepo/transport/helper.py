"""The helper pod: a small busybox pod that mounts the claim and runs our exec'd commands.

One per (cluster, namespace, claim) per process: created on first use, reused, deleted on
close and at interpreter exit. It carries ``activeDeadlineSeconds`` so a crashed kernel
leaves nothing running for long, and :func:`cleanup` reaps helpers that outlived it.

Security context: the default runs as the image's user (root for ``busybox``) with
privilege escalation disabled and a read-only root filesystem. Root is the default because
the claims that hold model repositories are very often root-owned (hostPath-like
provisioners, files written by root Triton images); a non-root helper would fail with
"Permission denied" there. Pass ``run_as_user=<uid>`` for a fully non-root helper
(``runAsNonRoot``, all capabilities dropped) where the volume is writable by that uid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from modelrepo.errors import ClusterError
from modelrepo.transport.api import KubeAPI
from modelrepo.transport.exec import (
    PROTOCOLS,
    ExecClient,
    ExecError,
    ExecRefused,
    ExecResult,
    ExecStreamDropped,
    StdinSource,
    StdoutSink,
)

log = logging.getLogger(__name__)

#: Where the claim is mounted inside the helper pod.
MOUNT_PATH = "/pvc"
CONTAINER = "helper"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelrepo"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "pvc-helper"
CLAIM_LABEL = "modelrepo.io/claim"
CLAIM_ANNOTATION = "modelrepo.io/claim"
OWNER_ANNOTATION = "modelrepo.io/owner"
#: Exit codes of a command killed by SIGHUP, SIGKILL or SIGTERM (128 + signal).
_KILLED = frozenset({129, 137, 143})


@dataclass(frozen=True)
class HelperOptions:
    """How the helper pod is built. Defaults suit a busybox image on a root-owned claim."""

    image: str = "busybox"
    image_pull_policy: str | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    active_deadline_seconds: int = 7200
    ready_timeout: float = 120.0
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "32Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"memory": "512Mi"})
    follow_rwo_node: bool = True

    def key(self) -> tuple[Any, ...]:
        return (
            self.image,
            self.image_pull_policy,
            self.run_as_user,
            self.run_as_group,
            self.active_deadline_seconds,
            tuple(sorted(self.requests.items())),
            tuple(sorted(self.limits.items())),
            self.follow_rwo_node,
        )


def claim_label(claim: str) -> str:
    """A valid label value naming ``claim`` (long names are shortened with a hash)."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", claim).strip("-._")
    if len(value) > 63 or value != claim:
        digest = hashlib.sha1(claim.encode()).hexdigest()[:8]
        value = f"{value[:54].strip('-._')}-{digest}"
    return value


def _pod_name(claim: str) -> str:
    stem = re.sub(r"[^a-z0-9-]", "-", claim.lower()).strip("-")[:40].strip("-") or "claim"
    return f"modelrepo-{stem}-{secrets.token_hex(3)}"


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


def _uses_claim(pod: Any, claim: str) -> bool:
    for vol in _get(pod, "spec", "volumes") or []:
        if _get(vol, "persistent_volume_claim", "claim_name") == claim:
            return True
    return False


class HelperPod:
    """The helper pod of one claim; :meth:`exec` runs a command in it, (re)creating it."""

    def __init__(
        self,
        api: KubeAPI,
        claim: str,
        namespace: str | None = None,
        *,
        options: HelperOptions | None = None,
        protocols: tuple[str, ...] = PROTOCOLS,
        connect_timeout: float = 30.0,
    ) -> None:
        self.api = api
        self.claim = claim
        self.namespace = namespace or api.namespace
        self.options = options or HelperOptions()
        self.exec_client = ExecClient(
            api.configuration, protocols=protocols, connect_timeout=connect_timeout
        )
        self._lock = threading.Lock()
        self._pod: str | None = None
        #: How many pods this helper created (reuse and recreation are observable).
        self.pods_created = 0
        self._finalizer: weakref.finalize | None = None

    @property
    def pod_name(self) -> str | None:
        """The current pod's name, None before first use or after close."""
        return self._pod

    # -- lifecycle ----------------------------------------------------------------------

    def ensure(self) -> str:
        """Return the name of a Running helper pod, creating one if needed."""
        with self._lock:
            if self._pod is None:
                self._pod = self._create()
            return self._pod

    def _forget(self, name: str, *, delete: bool) -> None:
        with self._lock:
            if self._pod == name:
                self._pod = None
                if self._finalizer is not None:
                    self._finalizer.detach()
                    self._finalizer = None
        if delete:
            _delete_pod(self.api, self.namespace, name)

    def close(self) -> None:
        """Delete the helper pod now (a later call creates a new one)."""
        with self._lock:
            name, self._pod = self._pod, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if name:
            _delete_pod(self.api, self.namespace, name)
        self.exec_client.close()

    def _check_claim(self) -> Any:
        return self.api.call(
            self.api.core.read_namespaced_persistent_volume_claim,
            self.claim,
            namespace=self.namespace,
            action=f"get persistentvolumeclaims {self.claim}",
        )

    def _rwo_node(self, pvc: Any) -> str | None:
        modes = set(_get(pvc, "spec", "access_modes") or [])
        if not modes & {"ReadWriteOnce", "ReadWriteOncePod"}:
            return None
        try:
            pods = self.api.call(
                self.api.core.list_namespaced_pod,
                namespace=self.namespace,
                action="list pods",
            )
        except ClusterError as exc:
            log.warning("cannot list pods to place the helper next to the claim: %s", exc)
            return None
        for pod in _get(pods, "items") or []:
            labels = _get(pod, "metadata", "labels") or {}
            if labels.get(COMPONENT_LABEL) == COMPONENT:
                continue
            if _get(pod, "status", "phase") != "Running" or not _uses_claim(pod, self.claim):
                continue
            if "ReadWriteOncePod" in modes:
                raise ClusterError(
                    f"claim {self.claim!r} is ReadWriteOncePod and already mounted by pod "
                    f"{_get(pod, 'metadata', 'name')!r}; no second pod may mount it",
                    hint="use a ReadWriteOnce/ReadWriteMany claim, or stop that pod while "
                    "modelrepo writes",
                )
            node = _get(pod, "spec", "node_name")
            if node:
                return str(node)
        return None

    def manifest(self, name: str, node: str | None = None) -> dict[str, Any]:
        """The pod object this helper creates (public so docs/tests can show it)."""
        opts = self.options
        deadline = int(opts.active_deadline_seconds)
        container_sc: dict[str, Any] = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
        }
        pod_sc: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
        if opts.run_as_user is not None:
            pod_sc.update(
                runAsUser=opts.run_as_user,
                runAsGroup=opts.run_as_group if opts.run_as_group is not None else opts.run_as_user,
                runAsNonRoot=opts.run_as_user != 0,
            )
            container_sc["capabilities"] = {"drop": ["ALL"]}
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": opts.image,
            # Sleep until deleted; TERM ends it at once so deletion is quick.
            "command": ["sh", "-c", f"trap 'exit 0' TERM INT; sleep {deadline + 300} & wait"],
            "volumeMounts": [{"name": "claim", "mountPath": MOUNT_PATH}],
            "resources": {"requests": dict(opts.requests), "limits": dict(opts.limits)},
            "securityContext": container_sc,
        }
        if opts.image_pull_policy:
            container["imagePullPolicy"] = opts.image_pull_policy
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 2,
            "automountServiceAccountToken": False,
            "securityContext": pod_sc,
            "containers": [container],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": self.claim}}],
        }
        if node:
            spec["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {"key": "metadata.name", "operator": "In", "values": [node]}
                                ]
                            }
                        ]
                    }
                }
            }
        import socket

        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY,
                    COMPONENT_LABEL: COMPONENT,
                    CLAIM_LABEL: claim_label(self.claim),
                },
                "annotations": {
                    CLAIM_ANNOTATION: self.claim,
                    OWNER_ANNOTATION: f"{socket.gethostname()}:{os.getpid()}",
                },
            },
            "spec": spec,
        }

    def _create(self) -> str:
        pvc = self._check_claim()
        node = self._rwo_node(pvc) if self.options.follow_rwo_node else None
        name = _pod_name(self.claim)
        try:
            # Safe to retry: the name is unique, so a retried create that finds the pod
            # already there (409) means the first attempt went through.
            self.api.call(
                self.api.core.create_namespaced_pod,
                namespace=self.namespace,
                body=self.manifest(name, node),
                action="create pods",
            )
        except ClusterError as exc:
            if getattr(exc.__cause__, "status", None) != 409:
                raise
        self.pods_created += 1
        # Deleted at interpreter exit (or when this object is collected) unless closed first.
        self._finalizer = weakref.finalize(self, _delete_pod, self.api, self.namespace, name)
        try:
            self._wait_running(name, pvc)
        except BaseException:
            self._finalizer.detach()
            self._finalizer = None
            _delete_pod(self.api, self.namespace, name)
            raise
        log.info("helper pod %s/%s is running for claim %s", self.namespace, name, self.claim)
        return name

    def _wait_running(self, name: str, pvc: Any) -> None:
        deadline = time.monotonic() + self.options.ready_timeout
        delay = 0.05
        pod: Any = None
        while True:
            pod = self.api.call(
                self.api.core.read_namespaced_pod,
                name,
                namespace=self.namespace,
                action=f"get pods {name}",
            )
            phase = _get(pod, "status", "phase")
            if phase == "Running" and self._container_ready(pod):
                return
            if phase in ("Succeeded", "Failed"):
                raise ClusterError(
                    f"helper pod {self.namespace}/{name} ended ({phase}) before it could be "
                    f"used: {self._describe(name, pod, pvc)}",
                    hint="check the image can run `sh` and `sleep` (busybox) and the claim "
                    "can be mounted",
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"helper pod {self.namespace}/{name} was not Running after "
                    f"{self.options.ready_timeout:.0f}s: {self._describe(name, pod, pvc)}",
                    hint="fix what the status/events say (image pull, scheduling, claim "
                    "binding), or raise ready_timeout",
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _container_ready(pod: Any) -> bool:
        statuses = _get(pod, "status", "container_statuses")
        if not statuses:
            return True  # servers that do not report container status: Running is enough
        return all(_get(s, "state", "running") is not None for s in statuses)

    def _describe(self, name: str, pod: Any, pvc: Any) -> str:
        parts = [f"phase={_get(pod, 'status', 'phase')}"]
        reason = _get(pod, "status", "reason")
        message = _get(pod, "status", "message")
        if reason or message:
            parts.append(f"{reason or ''} {message or ''}".strip())
        for cond in _get(pod, "status", "conditions") or []:
            if _get(cond, "status") != "True":
                parts.append(
                    f"{_get(cond, 'type')}={_get(cond, 'status')} "
                    f"{_get(cond, 'reason') or ''} {_get(cond, 'message') or ''}".strip()
                )
        for cs in _get(pod, "status", "container_statuses") or []:
            waiting = _get(cs, "state", "waiting")
            terminated = _get(cs, "state", "terminated")
            if waiting is not None:
                parts.append(
                    f"container waiting: {_get(waiting, 'reason')} {_get(waiting, 'message') or ''}"
                )
            if terminated is not None:
                parts.append(
                    f"container terminated: {_get(terminated, 'reason')} "
                    f"exit {_get(terminated, 'exit_code')} {_get(terminated, 'message') or ''}"
                )
        pvc_phase = _get(pvc, "status", "phase")
        if pvc_phase and pvc_phase != "Bound":
            parts.append(f"claim {self.claim} is {pvc_phase}")
        try:
            events = self.api.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={name}"
            )
            for ev in (_get(events, "items") or [])[-5:]:
                parts.append(f"event {_get(ev, 'reason')}: {_get(ev, 'message')}")
        except Exception as exc:  # events are a courtesy; RBAC may not allow them
            log.debug("no events for %s: %s", name, exc)
        return "; ".join(p for p in parts if p)

    # -- exec ---------------------------------------------------------------------------

    def exec(
        self,
        argv: list[str],
        *,
        stdin: StdinSource = None,
        stdout: StdoutSink = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the helper pod, recreating the pod if it disappeared.

        A refused session (nothing ran) is retried: after recreating a vanished pod, or with
        backoff when the API server is throttling. A stream that drops mid-command raises
        :class:`~modelrepo.transport.exec.ExecStreamDropped` for the caller to retry.
        """
        attempts = 6
        for attempt in range(attempts):
            pod = self.ensure()
            try:
                result = self.exec_client.run(
                    self.namespace,
                    pod,
                    argv,
                    container=CONTAINER,
                    stdin=stdin,
                    stdout=stdout,
                    timeout=timeout,
                )
            except ExecStreamDropped:
                if not self._alive(pod):
                    self._forget(pod, delete=True)
                raise
            except ExecError as exc:
                # The runtime could not start the command: nothing ran. Its container may be
                # stopping while the API still says Running (the kubelet reports a moment
                # later): wait a little, and replace a pod that is gone.
                if attempt == attempts - 1:
                    raise
                if not self._alive(pod):
                    self._forget(pod, delete=True)
                elif attempt >= 2:
                    raise  # still Running and still refusing: not a passing state
                else:
                    time.sleep(self.api.retry.delay(attempt))
                if not _replayable(stdin):
                    # A stream may have been partly read: the caller resends its own data.
                    raise ExecStreamDropped(exc.message, hint=exc.hint) from exc
                continue
            except ExecRefused as exc:
                if attempt == attempts - 1:
                    raise
                if exc.status in (400, 404, 0) and not self._alive(pod):
                    log.info("helper pod %s is gone; creating a new one", pod)
                    self._forget(pod, delete=True)
                    continue
                if exc.status in (0, 429, 500, 502, 503, 504):
                    # Honour the server's Retry-After, as every other API call does.
                    time.sleep(self.api.retry.delay(attempt, exc.retry_after))
                    continue
                raise
            if result.exit_code in _KILLED:
                # Killed (with its pod: evicted, deleted; or alone: OOM): like a dropped
                # stream, the command may have run partly. A dead pod is replaced.
                if not self._alive(pod):
                    self._forget(pod, delete=True)
                dropped = ExecStreamDropped(
                    f"a command in helper pod {self.namespace}/{pod} was killed "
                    f"(exit {result.exit_code})",
                    hint="a new helper pod is created on the next call; retry the operation",
                )
                dropped.bytes_sent = result.bytes_sent
                dropped.bytes_received = result.bytes_received
                raise dropped
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _alive(self, name: str) -> bool:
        try:
            pod = self.api.call(
                self.api.core.read_namespaced_pod,
                name,
                namespace=self.namespace,
                action=f"get pods {name}",
            )
        except ClusterError as exc:
            # Only a definite "not found" counts as gone; an API hiccup is not a reason to
            # throw away a working pod.
            return getattr(exc.__cause__, "status", None) != 404
        return (
            _get(pod, "status", "phase") == "Running"
            and _get(pod, "metadata", "deletion_timestamp") is None
        )


def _delete_pod(api: KubeAPI, namespace: str, name: str) -> None:
    """Delete a pod, ignoring 'already gone'; never raises (used at interpreter exit)."""
    try:
        api.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            log.warning("could not delete helper pod %s/%s: %s", namespace, name, exc)


_REGISTRY: dict[tuple[Any, ...], HelperPod] = {}
_REGISTRY_LOCK = threading.Lock()


def get_helper(
    api: KubeAPI,
    claim: str,
    namespace: str | None = None,
    *,
    options: HelperOptions | None = None,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> HelperPod:
    """The process-wide helper of (cluster, identity, namespace, claim), made on first request.

    The identity (see :attr:`KubeAPI.identity`) is part of the key: a helper runs every
    call with the credentials of the client that created it, so two users (or two
    kubeconfig contexts) in one process never share one.
    """
    options = options or HelperOptions()
    namespace = namespace or api.namespace
    identity = getattr(api, "identity", None) or f"client-{id(api):x}"
    key = (api.host, identity, namespace, claim, options.key(), tuple(protocols))
    with _REGISTRY_LOCK:
        helper = _REGISTRY.get(key)
        if helper is None:
            helper = HelperPod(api, claim, namespace, options=options, protocols=protocols)
            _REGISTRY[key] = helper
        return helper


def _after_fork_in_child() -> None:
    """A forked child must not delete its parent's helper pods at exit: forget them all."""
    for helper in list(_REGISTRY.values()):
        if helper._finalizer is not None:
            helper._finalizer.detach()
            helper._finalizer = None
        helper._pod = None
        helper._lock = threading.Lock()
    _REGISTRY.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _live_helper_names() -> set[tuple[str, str]]:
    with _REGISTRY_LOCK:
        return {(h.namespace, h.pod_name) for h in _REGISTRY.values() if h.pod_name}


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def cleanup(
    api: KubeAPI,
    namespace: str | None = None,
    *,
    claim: str | None = None,
    include_running: bool = False,
) -> list[str]:
    """Delete stale helper pods; returns the names deleted.

    Stale: not Running (Succeeded, Failed, Unknown, or Pending for more than 10 minutes),
    or past its ``activeDeadlineSeconds``. ``include_running=True`` also deletes Running
    helpers of other processes (e.g. left by a crashed kernel), never this process's own.
    """
    namespace = namespace or api.namespace
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{COMPONENT_LABEL}={COMPONENT}"
    if claim is not None:
        selector += f",{CLAIM_LABEL}={claim_label(claim)}"
    pods = api.call(
        api.core.list_namespaced_pod,
        namespace=namespace,
        label_selector=selector,
        action="list pods",
    )
    mine = _live_helper_names()
    now = datetime.now(timezone.utc)
    deleted: list[str] = []
    for pod in _get(pods, "items") or []:
        name = _get(pod, "metadata", "name")
        if claim is not None and not _uses_claim(pod, claim):
            continue
        if (namespace, name) in mine:
            continue
        phase = _get(pod, "status", "phase")
        started = _parse_time(_get(pod, "status", "start_time")) or _parse_time(
            _get(pod, "metadata", "creation_timestamp")
        )
        age = (now - started).total_seconds() if started else 0.0
        deadline = _get(pod, "spec", "active_deadline_seconds")
        stale = (
            phase not in ("Running", "Pending")
            or (phase == "Pending" and age > 600)
            or (deadline is not None and age > float(deadline))
            or include_running
        )
        if stale:
            _delete_pod(api, namespace, name)
            deleted.append(name)
    return deleted


def _replayable(stdin: StdinSource) -> bool:
    """Can this stdin be sent again as a whole (not a stream that was partly read)?"""
    return stdin is None or isinstance(stdin, bytes | bytearray | memoryview)
