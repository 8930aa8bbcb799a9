"""Run a Kubernetes Job to the end from a notebook: create, follow, stream logs, clean up.

:func:`run_job` is what ``repo.push(..., via="job")`` and ``repo.build(...)`` call: it creates
the Job, shows the pod's log lines as they are written (a 20-minute ``aws s3 sync`` or
``trtllm-build`` is not a silent cell), and turns every way a Job can end badly into one
:class:`JobFailedError` carrying the reason Kubernetes gives (``BackoffLimitExceeded``,
``DeadlineExceeded``, ``ImagePullBackOff``...), the exit code and the last log lines.
The Job is deleted when the call ends (``keep=True`` leaves a finished Job for
``kubectl logs`` until its ``ttlSecondsAfterFinished``); an interrupted or timed-out Job is
always deleted, so nothing keeps running behind the user's back.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelrepo.errors import ClusterError
from modelrepo.transport.api import KubeAPI

__all__ = ["JobFailedError", "JobResult", "JobTimeoutError", "run_job"]

LogCallback = Callable[[str], None]

#: Waiting reasons that do not cure themselves: failing at once beats waiting for the deadline.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

_HINTS = {
    "DeadlineExceeded": "the Job ran longer than its activeDeadlineSeconds: raise "
    "active_deadline_seconds= or make the work smaller",
    "BackoffLimitExceeded": "the command failed: read the log lines above, fix the command or "
    "its inputs and run again",
    "OOMKilled": "the container ran out of memory: raise its memory limit (resources=)",
    "ErrImagePull": "the image cannot be pulled: check its name and tag and that the cluster "
    "may pull it (image_pull_secrets=)",
    "InvalidImageName": "the image name is malformed: fix image=",
    "CreateContainerConfigError": "a Secret or ConfigMap the pod refers to is missing (or lacks "
    "a key): create it, e.g. `kubectl create secret generic <name> "
    "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...`",
    "Unschedulable": "no node can run the pod (resources, GPUs, claim attached elsewhere?): "
    "see `kubectl describe pod` and lower the requests or free the claim",
}
_HINTS["ImagePullBackOff"] = _HINTS["ErrImagePull"]
_HINTS["ErrImageNeverPull"] = _HINTS["ErrImagePull"]


@dataclass(frozen=True)
class JobResult:
    """How a Job ended: its name, whether it succeeded, how long it took, its last log lines."""

    name: str
    namespace: str
    succeeded: bool
    seconds: float
    log_tail: tuple[str, ...] = ()
    pod: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    lines: int = field(default=0, compare=False)

    def __repr__(self) -> str:
        tail = list(self.log_tail[-3:])
        more = f" (+{len(self.log_tail) - 3} earlier)" if len(self.log_tail) > 3 else ""
        extra = "" if self.succeeded else f", reason={self.reason!r}, exit_code={self.exit_code}"
        return (
            f"JobResult(name={self.name!r}, succeeded={self.succeeded}, "
            f"seconds={self.seconds:.1f}{extra}, log_tail={tail!r}{more})"
        )


class JobFailedError(ClusterError):
    """A Job ended without success; carries the reason, exit code and the pod's last lines."""

    def __init__(self, result: JobResult, detail: str, *, hint: str | None = None) -> None:
        self.result = result
        self.job = result.name
        self.namespace = result.namespace
        self.reason = result.reason
        self.exit_code = result.exit_code
        self.log_tail = list(result.log_tail)
        lines = [f"Job {result.namespace}/{result.name} failed: {detail}"]
        if result.log_tail:
            lines.append(f"last {len(result.log_tail)} log line(s) of pod {result.pod}:")
            lines += [f"    {line}" for line in result.log_tail]
        else:
            lines.append("the pod wrote no log lines")
        default = _HINTS.get(result.reason or "", _HINTS["BackoffLimitExceeded"])
        super().__init__("\n".join(lines), hint=hint or default)


class JobTimeoutError(JobFailedError, TimeoutError):
    """The Job did not finish within ``run_job``'s ``timeout``; it has been deleted."""


# --------------------------------------------------------------------------- log streaming


class _LogFollower(threading.Thread):
    """Streams one container's log (``follow=true``) into a queue, line by line.

    Reconnects if the stream breaks before the container ends (or stays silent longer than
    ``read_timeout``) and skips the lines it has already delivered, so a line is shown once.
    Runs until the log ends or ``stop`` is set by the caller.
    """

    def __init__(
        self,
        core: k8s.CoreV1Api,
        namespace: str,
        pod: str,
        container: str,
        out: queue.Queue[str],
        *,
        read_timeout: float = 300.0,
    ) -> None:
        super().__init__(name=f"modelrepo-log-{pod}", daemon=True)
        self.core, self.namespace, self.pod, self.container = core, namespace, pod, container
        self.out = out
        self.read_timeout = read_timeout
        self.stop = threading.Event()
        self.done = threading.Event()
        self.delivered = 0
        self._response: Any = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self._stream_once():
                    return
                self.stop.wait(0.5)
        except Exception as exc:  # a bug must not pass silently, nor kill the run
            if not self.stop.is_set():
                self.out.put(f"(modelrepo: stopped following the log of {self.pod}: {exc!r})")
        finally:
            self.done.set()

    def _stream_once(self) -> bool:
        """Read the log to its end; True when it ended (or the pod is gone), False to retry."""
        try:
            self._response = self.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=self.container,
                follow=True,
                _preload_content=False,
                _request_timeout=(10, self.read_timeout),
            )
            seen, pending = 0, b""
            for chunk in self._response.stream(65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    seen = self._deliver(seen, raw)
            if pending:
                self._deliver(seen, pending)
            return True
        except ApiException as exc:
            # 400 while the container is still being created; 404 once the pod is gone.
            return exc.status == 404
        except (urllib3.exceptions.HTTPError, OSError):
            return self.stop.is_set()  # dropped or silent too long: reconnect
        finally:
            self.close()

    def _deliver(self, seen: int, raw: bytes) -> int:
        seen += 1
        if seen > self.delivered:
            self.delivered = seen
            self.out.put(raw.decode("utf-8", "replace").rstrip("\r"))
        return seen

    def close(self) -> None:
        """Release the stream (called by this thread only: it holds the reader's lock)."""
        response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
            with contextlib.suppress(Exception):
                response.release_conn()

    def abort(self) -> None:
        """Stop from another thread: shut the socket down so a blocked read returns now."""
        self.stop.set()
        response = self._response
        conn = getattr(response, "connection", None) or getattr(response, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------- state reading


def _job_outcome(job: Any) -> tuple[str | None, str | None, str | None]:
    """("Complete" | "Failed" | None, reason, message) from a Job's status."""
    status = job.status
    for cond in (status.conditions if status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason, cond.message
    if status and not status.conditions:
        completions = job.spec.completions or 1
        if (status.succeeded or 0) >= completions:
            return "Complete", None, None
        limit = job.spec.backoff_limit if job.spec.backoff_limit is not None else 6
        if (status.failed or 0) > limit:
            return "Failed", "BackoffLimitExceeded", None
    return None, None, None


def _container_states(pod: Any) -> list[Any]:
    st = pod.status
    if st is None:
        return []
    return list(st.init_container_statuses or []) + list(st.container_statuses or [])


def _pod_problem(pod: Any) -> tuple[str | None, str | None, int | None]:
    """(reason, message, exit code) of what went wrong in a pod, if anything did."""
    for cs in _container_states(pod):
        state = cs.state
        if state is None:
            continue
        term = state.terminated
        if term is not None and term.exit_code != 0:
            return term.reason or "Error", term.message, term.exit_code
        wait = state.waiting
        if wait is not None and wait.reason in FATAL_WAITING:
            return wait.reason, wait.message, None
    st = pod.status
    for cond in (st.conditions if st else None) or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return cond.reason or "Unschedulable", cond.message, None
    if st is not None and st.reason:
        return st.reason, st.message, None
    return None, None, None


def _pod_state(pod: Any) -> str:
    """A short state for the progress lines: 'Pending (ContainerCreating)', 'Running'..."""
    phase = (pod.status.phase if pod.status else None) or "Pending"
    for cs in _container_states(pod):
        if cs.state is not None and cs.state.waiting is not None and cs.state.waiting.reason:
            return f"{phase} ({cs.state.waiting.reason})"
    for cond in (pod.status.conditions if pod.status else None) or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return f"{phase} ({cond.reason or 'Unschedulable'}: {cond.message or ''})".strip()
    return phase


def _started(pod: Any, container: str) -> bool:
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container and cs.state is not None:
            return cs.state.running is not None or cs.state.terminated is not None
    return (pod.status.phase if pod.status else None) in ("Running", "Succeeded", "Failed")


def _exit_code(pod: Any, container: str) -> int | None:
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container and cs.state is not None and cs.state.terminated is not None:
            return cs.state.terminated.exit_code
    return None


# --------------------------------------------------------------------------- the runner


class _Run:
    """The state of one run_job call (kept out of the function so each part stays short)."""

    def __init__(
        self,
        api: KubeAPI,
        body: dict[str, Any],
        *,
        log: LogCallback | None,
        tail_lines: int,
        container: str | None,
    ) -> None:
        self.api = api
        self.batch = k8s.BatchV1Api(api.api_client)
        self.core = k8s.CoreV1Api(api.api_client)
        self.body = body
        self.namespace: str = body["metadata"].get("namespace") or api.namespace
        body["metadata"]["namespace"] = self.namespace
        self.name: str = body["metadata"].get("name") or ""
        self.uid: str | None = None
        containers = body["spec"]["template"]["spec"]["containers"]
        self.container = container or containers[0]["name"]
        self.log = log
        self.lines: queue.Queue[str] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.count = 0
        self.followers: dict[str, _LogFollower] = {}
        self.states: dict[str, str] = {}
        self.pods: list[Any] = []
        self.start = time.monotonic()

    # -- API calls (retries and readable errors come from KubeAPI.call)
    def create(self) -> None:
        job = self.api.call(
            self.batch.create_namespaced_job,
            namespace=self.namespace,
            body=self.body,
            action=f"create jobs {self.name}".rstrip(),
            idempotent=False,
        )
        self.name = job.metadata.name
        self.uid = job.metadata.uid
        self.start = time.monotonic()
        self._say(f"created in namespace {self.namespace}")

    def read(self) -> Any:
        try:
            return self.api.call(
                self.batch.read_namespaced_job,
                name=self.name,
                namespace=self.namespace,
                action=f"get jobs {self.name}",
            )
        except ClusterError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status == 404:
                raise ClusterError(
                    f"Job {self.namespace}/{self.name} disappeared while it ran",
                    hint="someone deleted it (or its TTL expired): run it again",
                ) from exc
            raise

    def list_pods(self) -> list[Any]:
        pods = self.api.call(
            self.core.list_namespaced_pod,
            namespace=self.namespace,
            label_selector=f"job-name={self.name}",
            action="list pods",
        ).items
        mine = [
            p
            for p in pods
            if not p.metadata.owner_references
            or any(o.uid == self.uid for o in p.metadata.owner_references)
        ]
        mine.sort(key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))
        self.pods = mine
        return mine

    def delete(self) -> None:
        """Delete the Job and (Background propagation) its pods; already gone is fine."""
        with contextlib.suppress(ClusterError):
            self.api.call(
                self.batch.delete_namespaced_job,
                name=self.name,
                namespace=self.namespace,
                propagation_policy="Background",
                action=f"delete jobs {self.name}",
            )

    # -- progress
    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(f"job {self.name}: {text}")

    def drain(self, wait: float = 0.0) -> None:
        """Hand queued log lines to the callback, waiting up to ``wait`` s for the first."""
        deadline = time.monotonic() + wait
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self.count += 1
            self.tail.append(line)
            if self.log is not None:
                self.log(line)
            deadline = time.monotonic()  # after the first line, take only what is there

    def watch_pods(self, fail_fast: bool) -> None:
        for pod in self.list_pods():
            name = pod.metadata.name
            state = _pod_state(pod)
            if self.states.get(name) != state:
                self.states[name] = state
                self._say(f"pod {name} {state}")
            if name not in self.followers and _started(pod, self.container):
                follower = _LogFollower(self.core, self.namespace, name, self.container, self.lines)
                self.followers[name] = follower
                follower.start()
            if fail_fast:
                reason, message, _ = _pod_problem(pod)
                if reason in FATAL_WAITING:
                    raise JobFailedError(
                        self.result(False, reason=reason, pod=name),
                        f"pod {name} cannot start: {reason}" + (f": {message}" if message else ""),
                    )

    def finish_logs(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        for follower in self.followers.values():
            while not follower.done.wait(0.1) and time.monotonic() < end:
                self.drain()
            follower.abort()
        self.drain()

    def fetch_tail(self, pod: str) -> None:
        """The pod's last lines when none were streamed (it ended before we could follow)."""
        if self.tail:
            return
        with contextlib.suppress(Exception):
            text = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=self.container, tail_lines=self.tail.maxlen
            )
            self.tail.extend(str(text).splitlines())

    def result(
        self,
        succeeded: bool,
        *,
        reason: str | None = None,
        pod: str | None = None,
        exit_code: int | None = None,
    ) -> JobResult:
        last = self.pods[-1] if self.pods else None
        pod = pod or (last.metadata.name if last is not None else None)
        if exit_code is None and last is not None:
            exit_code = _exit_code(last, self.container)
        return JobResult(
            name=self.name,
            namespace=self.namespace,
            succeeded=succeeded,
            seconds=time.monotonic() - self.start,
            log_tail=tuple(self.tail),
            pod=pod,
            exit_code=exit_code,
            reason=reason,
            lines=self.count,
        )

    def failure(self, reason: str | None, message: str | None) -> JobFailedError:
        last = self.pods[-1] if self.pods else None
        pod_reason, pod_message, code = _pod_problem(last) if last is not None else (None,) * 3
        if last is not None:
            self.fetch_tail(last.metadata.name)
        if code is None and last is not None:
            code = _exit_code(last, self.container)
        why = reason or pod_reason or "Failed"
        parts = [why]
        if message:
            parts.append(message)
        if pod_reason and pod_reason != why:
            parts.append(f"container {pod_reason}" + (f" ({pod_message})" if pod_message else ""))
        if code is not None:
            parts.append(f"exit code {code}")
        hint_reason = pod_reason if pod_reason in _HINTS and reason != "DeadlineExceeded" else why
        result = self.result(False, reason=why, exit_code=code)
        return JobFailedError(result, "; ".join(parts), hint=_HINTS.get(hint_reason))


def run_job(
    api: KubeAPI | k8s.ApiClient,
    manifest: Mapping[str, Any],
    *,
    timeout: float | None = None,
    log: LogCallback | None = print,
    poll: float = 1.0,
    keep: bool = False,
    tail_lines: int = 40,
    fail_fast: bool = True,
    container: str | None = None,
    ttl_seconds_after_finished: int = 600,
) -> JobResult:
    """Create the Job ``manifest`` (a dict, e.g. from :func:`~modelrepo.jobs.s3_sync_job`), wait.

    ``api`` is a :class:`~modelrepo.transport.api.KubeAPI` (retries, readable API errors)
    or a plain ``kubernetes`` ``ApiClient``; a manifest without a namespace goes to
    ``api.namespace`` (``"default"`` for a plain client).

    Log lines of the pod's ``container`` (default: the first) go to ``log`` as they are
    written, with short state lines (``job <name>: pod <pod> Running``); ``log=None`` is
    silent. The Job status is polled every ``poll`` seconds. Returns a :class:`JobResult` on
    success; raises :class:`JobFailedError` when the Job fails (or, with ``fail_fast``, when
    its pod cannot start: image pull error, missing Secret), :class:`JobTimeoutError` after
    ``timeout`` seconds, :class:`~modelrepo.errors.ClusterError` when the API refuses.
    The Job is deleted (``propagationPolicy=Background``, so its pods go too) when the call
    ends, unless ``keep=True`` and it finished; a Job without ``ttlSecondsAfterFinished``
    gets ``ttl_seconds_after_finished`` so even a crashed kernel leaves nothing for long.
    Ctrl-C (KeyboardInterrupt) deletes the Job and re-raises.
    """
    body = copy.deepcopy(dict(manifest))
    if body.get("kind", "Job") != "Job" or "spec" not in body:
        raise ClusterError(
            f"run_job needs a batch/v1 Job manifest, got kind {body.get('kind')!r}",
            hint="build one with modelrepo.jobs.s3_sync_job() or build_job()",
        )
    body.setdefault("apiVersion", "batch/v1")
    body.setdefault("kind", "Job")
    body.setdefault("metadata", {})
    body["spec"].setdefault("ttlSecondsAfterFinished", int(ttl_seconds_after_finished))
    if not isinstance(api, KubeAPI):
        api = KubeAPI(api, "default")
    run = _Run(api, body, log=log, tail_lines=tail_lines, container=container)
    finished = False
    try:
        run.create()
        deadline = None if timeout is None else run.start + float(timeout)
        while True:
            job = run.read()
            outcome, reason, message = _job_outcome(job)
            run.watch_pods(fail_fast and outcome is None)
            if outcome is not None:
                finished = True
                run.finish_logs()
                if outcome == "Complete":
                    result = run.result(True)
                    run._say(f"succeeded in {result.seconds:.1f} s")
                    return result
                raise run.failure(reason, message)
            if deadline is not None and time.monotonic() >= deadline:
                states = ", ".join(f"{p}: {s}" for p, s in run.states.items()) or "no pod yet"
                run.finish_logs(timeout=1.0)
                problem = run.failure("Timeout", f"not finished after {timeout:.0f} s ({states})")
                raise JobTimeoutError(
                    problem.result,
                    f"not finished after {timeout:.0f} s ({states}); the Job was deleted",
                    hint="raise timeout= if the work is just slow; otherwise see the pod "
                    "state above (`kubectl describe pod`)",
                )
            run.drain(wait=poll)
    finally:
        for follower in run.followers.values():
            follower.abort()
        if run.uid is not None and not (keep and finished):
            run.delete()
