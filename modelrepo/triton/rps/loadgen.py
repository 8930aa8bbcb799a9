"""The load generator: a lean single-threaded asyncio HTTP/1.1 client on raw keep-alive sockets.

Why so lean: on a small machine the client shares the CPU with the server it measures, so every
microsecond it spends per request is taken from the server and shows up as lower throughput.
Requests are pre-built bytes written with one ``send``; a response is parsed only as far as the
status line and ``Content-Length`` (the body is decoded only to validate outputs or to keep an
error message); the next request goes out from inside ``data_received``, without any task,
future or coroutine per request. Latency is ``perf_counter_ns`` from write to the last byte.

Two loops: closed (``ClosedLoop``: N slots, each keeps exactly one request outstanding, like
perf_analyzer's ``--concurrency-range``) and open (``OpenLoop``: requests sent on a constant or
Poisson schedule whatever the answers, like ``--request-rate-range``; a request sent more than
``LATE_S`` after its scheduled time counts as *late*, one still unsent when the step ends as
*dropped*).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelrepo.triton.rps.inputs import decode_response

#: A scheduled request sent later than this (seconds) counts as late (open loop).
LATE_S = 0.002
#: Pause before re-opening a connection that failed, so a dead server is not hammered.
RECONNECT_DELAY_S = 0.05
#: How many characters of the first error message of each kind are kept for the report.
ERROR_SAMPLE_CHARS = 300

_perf_ns = time.perf_counter_ns

Endpoint = tuple[str, int]
Validate = Callable[[dict[str, np.ndarray]], bool]


class Recorder:
    """What the client saw: latencies of successful requests, errors by kind, late and dropped.

    Plain lists and counters that the engine snapshots at window boundaries.
    """

    __slots__ = ("dropped", "error_samples", "errors", "late", "latencies_ns", "sent")

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}
        self.late = 0
        self.dropped = 0
        self.sent = 0

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if kind not in self.error_samples:
            self.error_samples[kind] = message[:ERROR_SAMPLE_CHARS]


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    __slots__ = ("buf", "counted", "gen", "index", "need", "owner", "reqs", "t0", "transport")

    def __init__(self, gen: _LoopBase, owner: Any, index: int, reqs: Sequence[bytes]) -> None:
        self.gen = gen
        self.owner = owner  # closed loop: the slot; open loop: None
        self.index = index  # which endpoint
        self.reqs = reqs
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1
        self.t0 = 0  # perf_counter_ns of the outstanding request, 0 when idle
        self.counted = False  # its loss was already counted (timeout, protocol error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> None:
        self.t0 = _perf_ns()
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        need = self.need
        if need < 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            # "\nContent-Length:" so that Inference-Header-Content-Length does not match
            i = data.find(b"\nContent-Length:", 0, end)
            if i < 0:
                i = data[:end].lower().find(b"\ncontent-length:")
            if i < 0:
                self.gen.bad_response(self, data[:end])
                return
            j = data.find(b"\r\n", i, end + 2)
            need = end + 4 + int(data[i + 16 : j])
        if len(data) < need:
            self.buf = data
            self.need = need
            return
        self.buf = data[need:]  # normally empty: one request in flight
        self.need = -1
        t = _perf_ns()
        t0 = self.t0
        self.t0 = 0
        if t0:
            self.gen.on_response(self, data, need, t - t0)

    def abort(self, kind: str, message: str) -> None:
        """Count the outstanding request as failed with ``kind`` and drop the connection."""
        self.gen.rec.error(kind, message)
        self.counted = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        had_request = self.t0 != 0
        if had_request:
            self.t0 = 0
            if not self.counted:
                self.gen.rec.error("connection", f"connection lost with a request out: {exc}")
        self.transport = None
        self.gen.on_lost(self, had_request)


class _LoopBase:
    """What closed and open loops share: endpoints, request bytes, response handling."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        requests: Sequence[Sequence[bytes]],
        *,
        validate: Validate | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.requests = [list(r) for r in requests]  # per endpoint, one per input set
        self.validate = validate
        self.timeout_ns = int(timeout_s * 1e9)
        self.rec = Recorder()
        self.running = False
        self.conns: set[_Conn] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task kept referenced until it ends (asyncio holds weak ones)."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- connections -------------------------------------------------------------------------
    async def _open(self, owner: Any, index: int) -> _Conn | None:
        host, port = self.endpoints[index]
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Conn(self, owner, index, self.requests[index]), host, port
            )
        except OSError as exc:
            self.rec.error("connection", f"cannot connect to {host}:{port}: {exc}")
            return None
        self.conns.add(conn)
        return conn

    def on_lost(self, conn: _Conn, had_request: bool) -> None:
        self.conns.discard(conn)

    # -- responses ---------------------------------------------------------------------------
    def on_response(self, conn: _Conn, data: bytes, end: int, latency_ns: int) -> None:
        if data[9:12] == b"200" and self.validate is None:
            self.rec.latencies_ns.append(latency_ns)
        else:
            self._slow_response(data, end, latency_ns)
        self.next(conn)

    def _slow_response(self, data: bytes, end: int, latency_ns: int) -> None:
        """Non-200 or validation mode: look inside the response (the rare, costly path)."""
        head_end = data.find(b"\r\n\r\n") + 4
        head = data[:head_end].decode("latin-1")
        body = data[head_end:end]
        status = head[9:12]
        if status != "200":
            try:
                message = str(json.loads(body).get("error", body[:ERROR_SAMPLE_CHARS]))
            except (ValueError, AttributeError):
                message = body[:ERROR_SAMPLE_CHARS].decode("utf-8", "replace")
            self.rec.error(f"http_{status}", message)
            return
        header_length = None
        for line in head.split("\r\n"):
            if line.lower().startswith("inference-header-content-length:"):
                header_length = int(line.split(":", 1)[1])
        try:
            ok = bool(self.validate(decode_response(body, header_length)))  # type: ignore[misc]
            message = "validate() returned False"
        except Exception as exc:  # a user's validator failing is a failed validation
            ok, message = False, f"validate() raised {type(exc).__name__}: {exc}"
        if ok:
            self.rec.latencies_ns.append(latency_ns)
        else:
            self.rec.error("validation", message)

    def bad_response(self, conn: _Conn, head: bytes) -> None:
        conn.abort("protocol", f"response without Content-Length: {head[:200]!r}")

    def next(self, conn: _Conn) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- timeouts ----------------------------------------------------------------------------
    def _check_timeouts(self) -> None:
        now = _perf_ns()
        for conn in list(self.conns):
            if conn.t0 and not conn.counted and now - conn.t0 > self.timeout_ns:
                conn.abort("timeout", f"no response within {self.timeout_ns / 1e9:g} s")
        if self.loop is not None:
            self._timer = self.loop.call_later(0.25, self._check_timeouts)

    def _start_timer(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._timer = self.loop.call_later(0.25, self._check_timeouts)

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop sending, wait (bounded) for outstanding answers, close every connection."""
        self.running = False
        deadline = time.monotonic() + drain_s
        while any(c.t0 for c in self.conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._timer is not None:
            self._timer.cancel()
        self.loop = None
        for conn in list(self.conns):
            conn.t0 = 0
            if conn.transport is not None:
                conn.transport.close()
        self.conns.clear()
        await asyncio.sleep(0)


class _Slot:
    """A closed-loop user: one outstanding request, sent round-robin over the endpoints."""

    __slots__ = ("conns", "k", "reconnecting", "turn", "waiting")

    def __init__(self, n: int) -> None:
        self.conns: list[_Conn | None] = [None] * n
        self.turn = 0
        self.k = 0  # which input set next
        self.waiting = False  # no request out: resume once a connection is back
        self.reconnecting: set[int] = set()  # endpoints being reconnected


class ClosedLoop(_LoopBase):
    """``concurrency`` slots, each with exactly one request outstanding at all times."""

    def __init__(self, *args: Any, concurrency: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        self.slots: list[_Slot] = []

    async def start(self) -> None:
        """Open every slot's connections, then send each slot's first request."""
        self.running = True
        self._start_timer()
        n = len(self.endpoints)
        self.slots = [_Slot(n) for _ in range(self.concurrency)]
        for s, slot in enumerate(self.slots):
            slot.turn = s % n  # spread first requests over endpoints at low concurrency too
        opened = await asyncio.gather(
            *(self._open(slot, i) for slot in self.slots for i in range(n))
        )
        for pos, conn in enumerate(opened):
            self.slots[pos // n].conns[pos % n] = conn
        for slot in self.slots:
            self._send_from(slot)

    def _send_from(self, slot: _Slot) -> None:
        conns = slot.conns
        idx = slot.turn
        conn = conns[idx]
        if len(conns) > 1:
            slot.turn = (idx + 1) % len(conns)
            if conn is None:  # prefer any live endpoint over waiting for this one
                conn = next((c for c in conns if c is not None), None)
                self._reconnect_later(slot, idx)
        if conn is None or conn.transport is None:
            slot.waiting = True
            self._reconnect_later(slot, idx)
            return
        reqs = conn.reqs
        if len(reqs) == 1:
            conn.send(reqs[0])
        else:
            slot.k = (slot.k + 1) % len(reqs)
            conn.send(reqs[slot.k])
        self.rec.sent += 1

    def next(self, conn: _Conn) -> None:
        if self.running:
            self._send_from(conn.owner)

    def on_lost(self, conn: _Conn, had_request: bool) -> None:
        super().on_lost(conn, had_request)
        slot: _Slot = conn.owner
        if slot.conns[conn.index] is conn:
            slot.conns[conn.index] = None
        if self.running:
            self._reconnect_later(slot, conn.index)
            if had_request:  # the slot's request died with the connection: send another
                self._send_from(slot)

    def _reconnect_later(self, slot: _Slot, index: int) -> None:
        if not self.running or self.loop is None or index in slot.reconnecting:
            return
        slot.reconnecting.add(index)
        self.loop.call_later(RECONNECT_DELAY_S, lambda: self.spawn(self._reconnect(slot, index)))

    async def _reconnect(self, slot: _Slot, index: int) -> None:
        conn = await self._open(slot, index) if self.running else None
        slot.reconnecting.discard(index)
        if conn is None:
            self._reconnect_later(slot, index)
            return
        if not self.running:
            if conn.transport is not None:
                conn.transport.close()
            return
        slot.conns[index] = conn
        if slot.waiting:
            slot.waiting = False
            slot.turn = index
            self._send_from(slot)


class OpenLoop(_LoopBase):
    """Requests at ``rate`` per second on a constant or Poisson schedule, whatever the answers.

    Each request needs an idle connection (HTTP/1.1 without pipelining); new ones are opened
    as needed up to ``max_inflight``; beyond that scheduled requests wait in a backlog (and are
    late), and those still waiting when the step ends are dropped.
    """

    def __init__(
        self,
        *args: Any,
        rate: float,
        distribution: str = "constant",
        max_inflight: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rate = float(rate)
        self.distribution = distribution
        self.max_inflight = max_inflight
        self.rng = random.Random(seed)
        self.idle: list[list[_Conn]] = [[] for _ in self.endpoints]
        self.backlog: deque[int] = deque()  # scheduled send times (ns) waiting for a connection
        self.opening = 0
        self.turn = 0
        self.k = 0
        self._task: asyncio.Task[None] | None = None

    def _gap_ns(self) -> int:
        if self.distribution == "poisson":
            return int(self.rng.expovariate(self.rate) * 1e9)
        return int(1e9 / self.rate)

    async def start(self) -> None:
        """Pre-open a few connections per endpoint, then start the schedule."""
        self.running = True
        self._start_timer()
        warm = max(1, min(self.max_inflight // len(self.endpoints), 4))
        for i in range(len(self.endpoints)):
            for conn in await asyncio.gather(*(self._open(None, i) for _ in range(warm))):
                if conn is not None:
                    self.idle[i].append(conn)
        self._task = asyncio.ensure_future(self._schedule())

    async def _schedule(self) -> None:
        due = _perf_ns()
        while self.running:
            now = _perf_ns()
            while due <= now and self.running:
                self._dispatch(due, now)
                due += self._gap_ns()
            await asyncio.sleep(max(0.0, (due - _perf_ns()) / 1e9))

    def _dispatch(self, due: int, now: int) -> None:
        n = len(self.endpoints)
        for _ in range(n):
            idx = self.turn
            self.turn = (idx + 1) % n
            if self.idle[idx]:
                self._send(self.idle[idx].pop(), due, now)
                return
        if len(self.conns) + self.opening < self.max_inflight:
            self.backlog.append(due)
            idx = self.turn
            self.turn = (idx + 1) % n
            self.opening += 1
            self.spawn(self._open_for_backlog(idx))
        else:
            self.backlog.append(due)

    async def _open_for_backlog(self, index: int) -> None:
        try:
            conn = await self._open(None, index)
        finally:
            self.opening -= 1
        if conn is None:
            if self.backlog:  # a request that cannot get a connection is a connection error
                self.backlog.popleft()
            await asyncio.sleep(RECONNECT_DELAY_S)
            return
        self.next(conn)

    def _send(self, conn: _Conn, due: int, now: int) -> None:
        if now - due > LATE_S * 1e9:
            self.rec.late += 1
        reqs = conn.reqs
        if len(reqs) == 1:
            conn.send(reqs[0])
        else:
            self.k = (self.k + 1) % len(reqs)
            conn.send(reqs[self.k])
        self.rec.sent += 1

    def next(self, conn: _Conn) -> None:
        if self.running and self.backlog and conn.transport is not None:
            self._send(conn, self.backlog.popleft(), _perf_ns())
        elif conn.transport is not None:
            self.idle[conn.index].append(conn)

    def on_lost(self, conn: _Conn, had_request: bool) -> None:
        super().on_lost(conn, had_request)
        idle = self.idle[conn.index]
        if conn in idle:
            idle.remove(conn)

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop the schedule; requests still waiting for a connection are dropped."""
        self.running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.rec.dropped += len(self.backlog)
        self.backlog.clear()
        await super().stop(drain_s)
        for idle in self.idle:
            idle.clear()


class JsonClient:
    """Keep-alive GET/POST of small JSON documents (model statistics) on the run's own loop.

    Why not the load connections: stats must not queue behind inference requests, and why not
    a thread: the sample has to be taken at the window boundary the loop itself decides.
    """

    def __init__(self, endpoint: Endpoint, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> Any:
        """The decoded JSON of ``GET path``, or raise ``OSError``/``ValueError``."""
        try:
            return await asyncio.wait_for(self._get(path), self.timeout_s)
        except BaseException:
            # A timeout or cancellation can land between the request and the end of its answer:
            # the rest of that answer would be read as the next request's, so start afresh.
            self.close()
            raise

    async def _get(self, path: str) -> Any:
        for attempt in (0, 1):  # a kept-alive connection may have been closed by the server
            if self._streams is None:
                self._streams = await asyncio.open_connection(*self.endpoint)
            reader, writer = self._streams
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {self.endpoint[0]}\r\n\r\n".encode("latin-1")
                )
                head = await reader.readuntil(b"\r\n\r\n")
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            status = int(head[9:12])
            if status != 200:
                raise ValueError(f"HTTP {status} for {path}: {body[:200]!r}")
            return json.loads(body)
        raise OSError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
