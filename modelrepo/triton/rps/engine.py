"""``measure_rps``: sweep load levels against Triton replicas and report what they sustain.

Why the shape of a run: everything that can be wrong with the request (model, shapes, dtypes)
is checked from the caller's thread before any load is sent; the load itself runs on a private
event loop in a dedicated thread (so it works inside Jupyter's running loop, and Ctrl-C in the
caller's thread can stop it cleanly); each load level is warmed up, then measured in windows
until the last three agree within ``stability``, the way perf_analyzer stabilises; Triton's own
statistics are sampled at the same window boundaries so the report shows the server's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrepo.triton.rps._http import (
    describe_model,
    endpoint_text,
    model_path,
    parse_url,
)
from modelrepo.triton.rps.inputs import (
    InputError,
    ModelSignature,
    Validator,
    build_http_request,
    build_infer_body,
    check_inputs,
    generate_inputs,
    infer_path,
    nonempty,
)
from modelrepo.triton.rps.loadgen import ClosedLoop, JsonClient, OpenLoop
from modelrepo.triton.rps.report import (
    RPSReport,
    RPSStep,
    latency_summary,
    server_delta,
    sum_model_stats,
)

DEFAULT_CONCURRENCY: tuple[int, ...] = (1, 2, 4, 8, 16)
#: Windows whose throughput must agree within ``stability`` before a step is done.
STABLE_WINDOWS = 3


@dataclass(frozen=True)
class RPSProgress:
    """What ``progress=`` receives: as a step's warm-up starts, after each window and step.

    ``phase`` is "warmup", "window" or "step"; ``step`` is the finished RPSStep for "step".
    Called from the caller's thread (safe for notebook widgets).
    """

    phase: str
    step_index: int
    steps_total: int
    load: str
    window: int
    window_rps: float
    stable: bool
    elapsed_s: float
    step: RPSStep | None = None


@dataclass
class _Mark:
    """Client counters and server statistics at one window boundary."""

    t_ns: int
    n_ok: int
    errors: dict[str, int]
    late: int
    cpu_s: float
    server: dict[str, int] | None


def _as_levels(value: Any, name: str, kind: type) -> list[Any]:
    items = [value] if isinstance(value, (int, float)) else list(value)
    if not items:
        raise InputError(f"{name}= is empty", hint=f"give at least one {name} value")
    out = []
    for item in items:
        number = kind(item)
        if number <= 0 or number != item or (isinstance(number, float) and math.isinf(number)):
            raise InputError(
                f"{name}={item!r} is not a positive {kind.__name__}",
                hint=f"give positive {kind.__name__} values, e.g. {name}=(1, 4, 16)",
            )
        out.append(number)
    return out


def _check_number(name: str, value: float, *, minimum: float, strict: bool) -> None:
    bad = value <= minimum if strict else value < minimum
    if bad or math.isnan(value):
        op = ">" if strict else ">="
        raise InputError(f"{name}={value!r} is out of range", hint=f"use {name} {op} {minimum}")


def _stable(rates: Sequence[float], tolerance: float) -> bool:
    mean = sum(rates) / len(rates)
    if mean == 0:
        return True
    return all(abs(r - mean) <= tolerance * mean for r in rates)


class _Run:
    """One measure_rps call: the plan, the pre-built requests, the steps measured so far."""

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        sig: ModelSignature,
        plan: list[tuple[str, float]],
        requests: list[list[bytes]],
        batch: int,
        settings: dict[str, Any],
        validator: Validator | None,
    ) -> None:
        self.endpoints = endpoints
        self.sig = sig
        self.plan = plan
        self.requests = requests
        self.batch = batch
        self.s = settings
        self.validator = validator
        self.steps: list[RPSStep] = []
        self.t_start = time.monotonic()
        self.stats_path = model_path(sig.name, sig.version) + "/stats"

    # -- the event-loop side ----------------------------------------------------------------
    async def run_all(self, emit: Callable[[RPSProgress], None]) -> None:
        clients = [JsonClient(ep) for ep in self.endpoints]
        try:
            for index, (mode, level) in enumerate(self.plan):
                step = await self._run_step(index, mode, level, clients, emit)
                self.steps.append(step)
                emit(
                    self._progress(
                        "step", index, step.load, step.windows, step.rps, step.stable, step
                    )
                )
        finally:
            for client in clients:
                client.close()

    def _progress(
        self,
        phase: str,
        index: int,
        load: str,
        window: int,
        rps: float,
        stable: bool,
        step: RPSStep | None = None,
    ) -> RPSProgress:
        return RPSProgress(
            phase=phase,
            step_index=index,
            steps_total=len(self.plan),
            load=load,
            window=window,
            window_rps=rps,
            stable=stable,
            elapsed_s=time.monotonic() - self.t_start,
            step=step,
        )

    async def _server_stats(self, clients: Sequence[JsonClient]) -> dict[str, int] | None:
        answers = await asyncio.gather(
            *(c.get(self.stats_path) for c in clients), return_exceptions=True
        )
        if any(isinstance(a, BaseException) for a in answers):
            return None  # a replica's stats unreadable: no server view for this window
        return sum_model_stats(answers)  # type: ignore[arg-type]

    async def _mark(self, gen: ClosedLoop | OpenLoop, clients: Sequence[JsonClient]) -> _Mark:
        # Stats first, client counters when they arrive: an overloaded server answers the
        # stats request late but quickly, so its counts belong to the moment of the answer.
        server = await self._server_stats(clients)
        rec = gen.rec
        return _Mark(
            t_ns=time.perf_counter_ns(),
            n_ok=len(rec.latencies_ns),
            errors=dict(rec.errors),
            late=rec.late,
            cpu_s=time.process_time(),
            server=server,
        )

    async def _run_step(
        self,
        index: int,
        mode: str,
        level: float,
        clients: Sequence[JsonClient],
        emit: Callable[[RPSProgress], None],
    ) -> RPSStep:
        s = self.s
        common: dict[str, Any] = {"validate": self.validator, "timeout_s": s["timeout"]}
        gen: ClosedLoop | OpenLoop
        if mode == "concurrency":
            gen = ClosedLoop(self.endpoints, self.requests, concurrency=int(level), **common)
            load = f"c={int(level)}"
        else:
            gen = OpenLoop(
                self.endpoints,
                self.requests,
                rate=level,
                distribution=s["distribution"],
                max_inflight=s["max_inflight"],
                seed=s["seed"] + index,
                **common,
            )
            load = f"{level:g}/s"
        marks: list[_Mark] = []
        try:
            emit(self._progress("warmup", index, load, 0, math.nan, False))
            await gen.start()
            await asyncio.sleep(s["warmup"])
            marks.append(await self._mark(gen, clients))
            while True:
                await asyncio.sleep(s["window"])
                marks.append(await self._mark(gen, clients))
                rates = [
                    (b.n_ok - a.n_ok) / max((b.t_ns - a.t_ns) / 1e9, 1e-9)
                    for a, b in itertools.pairwise(marks)
                ]
                windows = len(rates)
                stable = windows >= STABLE_WINDOWS and _stable(
                    rates[-STABLE_WINDOWS:], s["stability"]
                )
                emit(self._progress("window", index, load, windows, rates[-1], stable))
                if stable or windows >= s["max_windows"]:
                    break
        finally:
            await gen.stop()
        first, last = marks[max(0, len(marks) - 1 - STABLE_WINDOWS)], marks[-1]
        return self._step(mode, level, gen, first, last, rates, stable)

    def _step(
        self,
        mode: str,
        level: float,
        gen: ClosedLoop | OpenLoop,
        first: _Mark,
        last: _Mark,
        rates: list[float],
        stable: bool,
    ) -> RPSStep:
        rec = gen.rec
        span = (last.t_ns - first.t_ns) / 1e9
        latencies = rec.latencies_ns[first.n_ok : last.n_ok]
        errors = {
            k: v - first.errors.get(k, 0)
            for k, v in last.errors.items()
            if v - first.errors.get(k, 0) > 0
        }
        n_errors = sum(errors.values())
        ok = len(latencies)
        cpu = last.cpu_s - first.cpu_s
        rps = ok / span if span > 0 else math.nan
        return RPSStep(
            concurrency=int(level) if mode == "concurrency" else None,
            request_rate=float(level) if mode == "request_rate" else None,
            rps=rps,
            infer_per_sec=rps * self.batch,
            requests=ok,
            duration_s=span,
            **latency_summary(latencies),
            errors=n_errors,
            errors_by_kind=errors,
            error_samples={k: m for k, m in rec.error_samples.items() if k in errors},
            late=last.late - first.late,
            dropped=rec.dropped,
            client_cpu_s=cpu,
            client_cpu_us_per_request=cpu / (ok + n_errors) * 1e6 if ok + n_errors else math.nan,
            stable=stable,
            windows=len(rates),
            window_rps=rates,
            server=server_delta(first.server, last.server, span),
        )

    # -- the caller's side ------------------------------------------------------------------
    def execute(self, progress: Callable[[RPSProgress], None] | None) -> bool:
        """Run on a private loop in a thread; return True if Ctrl-C interrupted it."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        done = object()
        loop = new_load_loop()
        tasks: list[asyncio.Task[None]] = []
        failure: list[BaseException] = []

        def target() -> None:
            asyncio.set_event_loop(loop)
            try:
                tasks.append(loop.create_task(self.run_all(events.put)))
                loop.run_until_complete(tasks[0])
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                events.put(done)

        thread = threading.Thread(target=target, name="modelrepo-rps", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    continue
                if event is done:
                    break
                if progress is not None:
                    progress(event)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to cancel
                loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
            thread.join(timeout=30)
            if isinstance(exc, KeyboardInterrupt):
                return True
            raise
        thread.join()
        if failure:
            raise failure[0]
        return False


def new_load_loop() -> asyncio.AbstractEventLoop:
    """The private loop that drives the load: uvloop's where installed, else asyncio's.

    Every request costs the client an event-loop wake-up; uvloop's C loop spends 13-25% less
    CPU per request than asyncio's (benchmarks.md), CPU the measured server would otherwise
    share. The caller's own loop (Jupyter's) is never touched.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _validator(validate: Validator | str | None) -> Validator | None:
    if validate is None or callable(validate):
        return validate
    if validate == "nonempty":
        return nonempty
    raise InputError(
        f"validate={validate!r} is not supported",
        hint='pass validate="nonempty" or a function outputs_dict -> bool',
    )


def measure_rps(
    urls: str | Sequence[str],
    model: str,
    *,
    concurrency: int | Sequence[int] | None = DEFAULT_CONCURRENCY,
    request_rate: float | Sequence[float] | None = None,
    duration: float = 10.0,
    warmup: float = 2.0,
    batch_size: int = 1,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    version: str | int | None = None,
    data: str = "random",
    validate: Validator | str | None = None,
    stability: float = 0.1,
    max_windows: int = 10,
    distribution: str = "constant",
    progress: Callable[[RPSProgress], None] | None = None,
    window: float | None = None,
    timeout: float = 30.0,
    max_inflight: int = 1024,
    seed: int = 0,
) -> RPSReport:
    """Measure the requests per second and latency ``model`` sustains on Triton at ``urls``.

    ``urls``: one ``host:port`` (a Service) or several (replicas; requests go round-robin).
    Closed loop over ``concurrency`` levels (requests kept in flight; None: the default
    levels), or, when ``request_rate`` is given instead, open loop at those rates
    (``distribution`` "constant" or "poisson"). Each level: ``warmup`` seconds discarded,
    then windows of ``window`` seconds (default ``duration / 3``) until the last three agree
    within ``stability`` (at most ``max_windows``); the last three are reported. Inputs come
    from the model's metadata (``data`` "random" or "zeros", ``shapes`` for -1 dims,
    ``batch_size`` when the model batches) unless ``inputs`` gives arrays (a dict, or a list of
    dicts used in turn).
    ``validate`` ("nonempty" or ``outputs -> bool``) checks every answer (costs client CPU).
    Server errors during the run are counted in the report, not raised; Ctrl-C returns the
    finished steps with ``interrupted=True``.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise InputError("urls= is empty", hint="pass at least one host:port of Triton")
    endpoints = [parse_url(u) for u in url_list]
    if request_rate is not None:
        if concurrency is not None and _as_levels(concurrency, "concurrency", int) != list(
            DEFAULT_CONCURRENCY
        ):
            raise InputError(
                "concurrency= and request_rate= are both given",
                hint="give concurrency= for a closed loop (requests kept in flight) or "
                "request_rate= for an open loop (requests sent per second), not both",
            )
        plan = [("request_rate", float(r)) for r in _as_levels(request_rate, "request_rate", float)]
    else:
        levels = DEFAULT_CONCURRENCY if concurrency is None else concurrency
        plan = [("concurrency", float(c)) for c in _as_levels(levels, "concurrency", int)]
    _check_number("duration", duration, minimum=0, strict=True)
    _check_number("warmup", warmup, minimum=0, strict=False)
    _check_number("stability", stability, minimum=0, strict=True)
    _check_number("timeout", timeout, minimum=0, strict=True)
    if max_windows < 1 or max_inflight < 1:
        raise InputError("max_windows and max_inflight must be >= 1", hint="use positive values")
    if distribution not in ("constant", "poisson"):
        raise InputError(
            f"distribution={distribution!r} is not supported",
            hint='use "constant" or "poisson"',
        )
    window_s = float(window) if window is not None else duration / STABLE_WINDOWS
    _check_number("window", window_s, minimum=0, strict=True)
    validator = _validator(validate)
    version_text = str(version) if version is not None else None

    metadata, config = describe_model(endpoints, model, version_text)
    sig = ModelSignature.from_metadata(metadata, config, version_text)
    if inputs is None:
        input_sets = [
            generate_inputs(sig, batch_size=batch_size, shapes=shapes, data=data, seed=seed)
        ]
    else:
        given = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        if not given:
            raise InputError("inputs= is an empty list", hint="give at least one dict of arrays")
        input_sets = [check_inputs(sig, one, batch_size=batch_size) for one in given]
    batches = [next(iter(s.values())).shape[0] if sig.batched and s else 1 for s in input_sets]
    batch = float(np.mean(batches))
    bodies = [build_infer_body(sig, s) for s in input_sets]
    path = infer_path(model, version_text)
    requests = [
        [build_http_request(endpoint_text(ep), path, body, hlen) for body, hlen in bodies]
        for ep in endpoints
    ]
    settings: dict[str, Any] = {
        "duration": duration,
        "warmup": warmup,
        "window": window_s,
        "stability": stability,
        "max_windows": max_windows,
        "distribution": distribution,
        "data": data,
        "timeout": timeout,
        "max_inflight": max_inflight,
        "seed": seed,
        "validate": None if validator is None else getattr(validator, "__name__", "callable"),
    }
    run = _Run(
        endpoints,
        sig,
        plan,
        requests,
        int(batch) if batch.is_integer() else batch,
        settings,
        validator,
    )
    report = RPSReport(
        model=model,
        version=version_text,
        urls=[endpoint_text(ep) for ep in endpoints],
        mode=plan[0][0],
        batch_size=int(batch) if batch.is_integer() else batch,  # type: ignore[arg-type]
        settings=settings,
        inputs=[
            {
                "name": n,
                "datatype": {t.name: t.datatype for t in sig.inputs}[n],
                "shape": list(a.shape),
            }
            for n, a in input_sets[0].items()
        ],
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    report.interrupted = run.execute(progress)
    report.steps = list(run.steps)
    return report


__all__ = ["DEFAULT_CONCURRENCY", "RPSProgress", "measure_rps"]
