"""Fault hooks: make the emulator misbehave on purpose, a chosen number of times.

Every hook is armed from the test's thread and fires inside the server; each firing is
recorded in :attr:`Faults.fired` so a test can check that its fault really happened::

    cluster.faults.drop_exec_after(1 << 20, direction="stdin")        # next exec upload
    cluster.faults.fail_requests("GET", r"/pods/helper$", status=429, retry_after=1, times=2)
    cluster.faults.fail_requests("POST", r"/pods$", status=500)
    cluster.faults.hang_requests("GET", r"/api/v1/namespaces/default/pods", seconds=30)
    cluster.faults.delay_pod_start(r"^helper-", seconds=3)
    cluster.kill_pod("helper", "default")      # container exits 137, pod Failed
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["stdin", "stdout"]


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    times: int
    method: str = ""
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    n_bytes: int = 0
    direction: str = ""
    command: re.Pattern[str] | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class RequestFault:
    """What the server must do instead of answering a request."""

    status: int  # 0 means hang
    retry_after: float | None
    seconds: float


@dataclass
class ExecDrop:
    """An armed drop for one exec stream: cut it once ``n_bytes`` went ``direction``."""

    n_bytes: int
    direction: str
    seen: int = 0


@dataclass
class FiredFault:
    """A record of one fault that fired."""

    kind: str
    target: str
    detail: str = ""


@dataclass
class Faults:
    """The armed faults of one cluster (thread-safe)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: list[_Rule] = field(default_factory=list)
    _exec: list[_Rule] = field(default_factory=list)
    _pods: list[_Rule] = field(default_factory=list)
    fired: list[FiredFault] = field(default_factory=list)

    def fail_requests(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        times: int = 1,
        retry_after: float | None = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (429 adds Retry-After).

        ``method`` is an HTTP method or ``"*"``; ``path_regex`` is searched in the path with
        its query string (``/api/v1/namespaces/default/pods?labelSelector=...``).
        """
        with self._lock:
            self._requests.append(
                _Rule(
                    re.compile(path_regex),
                    times,
                    method.upper(),
                    status=status,
                    retry_after=retry_after if status == 429 else None,
                )
            )

    def hang_requests(
        self, method: str, path_regex: str, *, seconds: float = 3600, times: int = 1
    ) -> None:
        """Leave the next ``times`` matching requests unanswered for ``seconds`` (then 504)."""
        with self._lock:
            self._requests.append(
                _Rule(re.compile(path_regex), times, method.upper(), status=0, seconds=seconds)
            )

    def drop_exec_after(
        self,
        n_bytes: int,
        *,
        direction: Direction = "stdout",
        times: int = 1,
        pod: str = ".*",
        command: str | None = None,
    ) -> None:
        """Cut the next ``times`` matching exec streams after ``n_bytes`` of payload.

        ``direction="stdin"`` counts bytes the client sent, ``"stdout"`` bytes the process
        wrote. The WebSocket is aborted (no close frame, no status); the process is killed
        (for ``stdin``, it first gets EOF after the bytes that arrived and up to 1 s to end).
        ``pod`` and ``command`` are regexes on the pod name and the space-joined command.
        """
        if direction not in ("stdin", "stdout"):
            raise ValueError("direction must be 'stdin' or 'stdout'")
        with self._lock:
            self._exec.append(
                _Rule(
                    re.compile(pod),
                    times,
                    n_bytes=n_bytes,
                    direction=direction,
                    command=re.compile(command) if command else None,
                )
            )

    def delay_pod_start(
        self,
        name_regex: str,
        seconds: float,
        *,
        namespace: str | None = None,
        times: int = 1_000_000,
    ) -> None:
        """Keep matching pods Pending (ContainerCreating) for ``seconds`` before they start."""
        with self._lock:
            self._pods.append(
                _Rule(re.compile(name_regex), times, seconds=seconds, namespace=namespace)
            )

    def clear(self) -> None:
        """Disarm every fault (the record of fired ones stays)."""
        with self._lock:
            self._requests.clear()
            self._exec.clear()
            self._pods.clear()

    # -- used by the server ----------------------------------------------------------------
    def _take(self, rules: list[_Rule], index: int) -> _Rule:
        rule = rules[index]
        rule.times -= 1
        if rule.times <= 0:
            rules.pop(index)
        return rule

    def request_fault(self, method: str, path_qs: str) -> RequestFault | None:
        with self._lock:
            for n, rule in enumerate(self._requests):
                if rule.method in ("*", method.upper()) and rule.pattern.search(path_qs):
                    self._take(self._requests, n)
                    self.fired.append(
                        FiredFault("request", f"{method} {path_qs}", str(rule.status or "hang"))
                    )
                    return RequestFault(rule.status, rule.retry_after, rule.seconds)
        return None

    def exec_drop(self, pod: str, command: list[str]) -> ExecDrop | None:
        joined = " ".join(command)
        with self._lock:
            for n, rule in enumerate(self._exec):
                if rule.pattern.search(pod) and (
                    rule.command is None or rule.command.search(joined)
                ):
                    self._take(self._exec, n)
                    return ExecDrop(rule.n_bytes, rule.direction)
        return None

    def exec_dropped(self, pod: str, drop: ExecDrop) -> None:
        with self._lock:
            self.fired.append(FiredFault("exec-drop", pod, f"{drop.direction} {drop.seen}"))

    def pod_start_delay(self, namespace: str, name: str) -> float:
        with self._lock:
            for n, rule in enumerate(self._pods):
                if rule.pattern.search(name) and rule.namespace in (None, namespace):
                    self._take(self._pods, n)
                    self.fired.append(
                        FiredFault("pod-delay", f"{namespace}/{name}", str(rule.seconds))
                    )
                    return rule.seconds
        return 0.0
