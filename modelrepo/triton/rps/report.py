"""What a run measured: one :class:`RPSStep` per load level, gathered in an :class:`RPSReport`.

The report is what a notebook shows (text and HTML tables, a plot) and what tools read
(``to_dict()`` / ``to_json()``: the ``steps`` list and its keys are a contract).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modelrepo._tables import html_table, text_table

#: The keys of a step's ``server`` dict (Triton's own view of the same window).
SERVER_KEYS = (
    "success",
    "fail",
    "rps",
    "infer_per_sec",
    "avg_request_ms",
    "avg_queue_ms",
    "avg_compute_ms",
    "avg_compute_input_ms",
    "avg_compute_infer_ms",
    "avg_compute_output_ms",
    "avg_batch_size",
    "executions",
    "replicas",
)


@dataclass
class RPSStep:
    """One load level, measured over its last (stable) windows.

    ``rps`` counts successful requests per second as the client received them;
    ``infer_per_sec`` multiplies by the batch size each request carries. Latencies are of
    successful requests, in milliseconds. ``server`` is Triton's statistics for the same span,
    summed over replicas (empty when they could not be read).
    """

    concurrency: int | None
    request_rate: float | None
    rps: float
    infer_per_sec: float
    requests: int
    duration_s: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    errors: int
    errors_by_kind: dict[str, int]
    error_samples: dict[str, str]
    late: int
    dropped: int
    client_cpu_s: float
    client_cpu_us_per_request: float
    stable: bool
    windows: int
    window_rps: list[float]
    server: dict[str, float]

    @property
    def load(self) -> str:
        """The load level as text: ``c=4`` or ``100/s``."""
        if self.concurrency is not None:
            return f"c={self.concurrency}"
        return f"{self.request_rate:g}/s"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN becomes None)."""
        return _json_safe(asdict(self))


def latency_summary(latencies_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """avg/min/max/p50/p90/p95/p99 in ms (NaN when there is no sample)."""
    keys = ("avg_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms")
    if len(latencies_ns) == 0:
        return dict.fromkeys(keys, math.nan)
    arr = np.asarray(latencies_ns, dtype=np.int64)
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {
        "avg_ms": float(arr.mean()) / 1e6,
        "p50_ms": float(p50) / 1e6,
        "p90_ms": float(p90) / 1e6,
        "p95_ms": float(p95) / 1e6,
        "p99_ms": float(p99) / 1e6,
        "min_ms": float(arr.min()) / 1e6,
        "max_ms": float(arr.max()) / 1e6,
    }


def _stat(stats: Mapping[str, Any], key: str) -> tuple[int, int]:
    item = stats.get("inference_stats", {}).get(key, {})
    return int(item.get("count", 0)), int(item.get("ns", 0))


def sum_model_stats(answers: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counters of ``GET /v2/models/<m>/stats`` answers, summed over versions and replicas."""
    total: dict[str, int] = {"replicas": len(answers)}
    for answer in answers:
        for model in answer.get("model_stats", []):
            for key in ("success", "fail", "queue", "compute_input", "compute_infer"):
                count, ns = _stat(model, key)
                total[f"{key}_count"] = total.get(f"{key}_count", 0) + count
                total[f"{key}_ns"] = total.get(f"{key}_ns", 0) + ns
            count, ns = _stat(model, "compute_output")
            total["compute_output_count"] = total.get("compute_output_count", 0) + count
            total["compute_output_ns"] = total.get("compute_output_ns", 0) + ns
            total["inference_count"] = total.get("inference_count", 0) + int(
                model.get("inference_count", 0)
            )
            total["execution_count"] = total.get("execution_count", 0) + int(
                model.get("execution_count", 0)
            )
    return total


def server_delta(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None, seconds: float
) -> dict[str, float]:
    """Triton's view of a window: counts and averages from two summed stats samples."""
    if not before or not after or seconds <= 0:
        return {}

    def d(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    def avg_ms(key: str) -> float:
        count = d(f"{key}_count")
        return d(f"{key}_ns") / count / 1e6 if count > 0 else math.nan

    success = d("success_count")
    compute = [avg_ms(k) for k in ("compute_input", "compute_infer", "compute_output")]
    executions = d("execution_count")
    return {
        "success": success,
        "fail": d("fail_count"),
        "rps": success / seconds,
        "infer_per_sec": d("inference_count") / seconds,
        "avg_request_ms": avg_ms("success"),
        "avg_queue_ms": avg_ms("queue"),
        "avg_compute_ms": sum(compute) if not any(math.isnan(c) for c in compute) else math.nan,
        "avg_compute_input_ms": compute[0],
        "avg_compute_infer_ms": compute[1],
        "avg_compute_output_ms": compute[2],
        "avg_batch_size": d("inference_count") / executions if executions > 0 else math.nan,
        "executions": executions,
        "replicas": int(after.get("replicas", 0)),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


# (header, getter) of the table columns shown in text and HTML
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("load", lambda s: s.load),
    ("rps", lambda s: _fmt(s.rps, 1)),
    ("infer/s", lambda s: _fmt(s.infer_per_sec, 1)),
    ("avg ms", lambda s: _fmt(s.avg_ms, 3)),
    ("p50 ms", lambda s: _fmt(s.p50_ms, 3)),
    ("p90 ms", lambda s: _fmt(s.p90_ms, 3)),
    ("p95 ms", lambda s: _fmt(s.p95_ms, 3)),
    ("p99 ms", lambda s: _fmt(s.p99_ms, 3)),
    ("errors", lambda s: str(s.errors)),
    ("server rps", lambda s: _fmt(s.server.get("rps"), 1)),
    ("queue ms", lambda s: _fmt(s.server.get("avg_queue_ms"), 3)),
    ("compute ms", lambda s: _fmt(s.server.get("avg_compute_ms"), 3)),
    ("batch", lambda s: _fmt(s.server.get("avg_batch_size"), 2)),
    ("cpu us/req", lambda s: _fmt(s.client_cpu_us_per_request, 1)),
    ("stable", lambda s: "yes" if s.stable else f"no ({s.windows} windows)"),
)
# extra columns of an open-loop (request rate) run
_RATE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("late", lambda s: str(s.late)),
    ("dropped", lambda s: str(s.dropped)),
)


@dataclass
class RPSReport:
    """The result of :func:`~modelrepo.triton.rps.measure_rps`: one step per load level.

    ``interrupted`` is True when Ctrl-C stopped the run: ``steps`` then holds the finished ones.
    """

    model: str
    version: str | None
    urls: list[str]
    mode: str  # "concurrency" or "request_rate"
    batch_size: int
    steps: list[RPSStep] = field(default_factory=list)
    interrupted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    started_at: str = ""

    # -- queries ----------------------------------------------------------------------------
    def best(self, max_p99_ms: float | None = None) -> RPSStep | None:
        """The step with the highest rps whose p99 is within ``max_p99_ms`` (None if none is)."""
        ok = [
            s
            for s in self.steps
            if s.requests > 0
            and (max_p99_ms is None or (not math.isnan(s.p99_ms) and s.p99_ms <= max_p99_ms))
        ]
        return max(ok, key=lambda s: s.rps) if ok else None

    # -- export -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``steps[i]`` has ``concurrency`` or ``request_rate``, ``rps``,
        ``infer_per_sec``, ``avg_ms``, ``p50_ms`` ... ``p99_ms``, ``errors``,
        ``errors_by_kind`` and ``server``."""
        return {
            "model": self.model,
            "version": self.version,
            "urls": list(self.urls),
            "mode": self.mode,
            "batch_size": self.batch_size,
            "interrupted": self.interrupted,
            "started_at": self.started_at,
            "settings": _json_safe(dict(self.settings)),
            "inputs": list(self.inputs),
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self, path: str | None = None, *, indent: int | None = 2) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    # -- display ----------------------------------------------------------------------------
    def _title(self) -> str:
        where = ", ".join(self.urls)
        version = f" v{self.version}" if self.version else ""
        state = "  [interrupted]" if self.interrupted else ""
        return (
            f"RPSReport: {self.model}{version} @ {where}  batch_size={self.batch_size}  "
            f"duration={self.settings.get('duration', '?')}s/step{state}"
        )

    def _error_lines(self) -> list[str]:
        lines = []
        for s in self.steps:
            for kind, message in s.error_samples.items():
                lines.append(f"{s.load}: {s.errors_by_kind.get(kind, 0)} x {kind}: {message}")
        return lines[:10]

    def _columns(self) -> tuple[tuple[str, Any], ...]:
        if self.mode == "request_rate":
            return _COLUMNS[:-1] + _RATE_COLUMNS + _COLUMNS[-1:]
        return _COLUMNS

    def __repr__(self) -> str:
        columns = self._columns()
        rows = [[g(s) for _, g in columns] for s in self.steps]
        lines = [self._title(), text_table([h for h, _ in columns], rows, align="right")]
        if not self.steps:
            lines.append("(no step finished)")
        lines += [f"error {e}" for e in self._error_lines()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        columns = self._columns()
        rows = [[g(s) for _, g in columns] for s in self.steps]
        table = html_table([h for h, _ in columns], rows, align="right")
        errors = "".join(f"<li>{html.escape(e)}</li>" for e in self._error_lines())
        return (
            f"<div><b>{html.escape(self._title())}</b>{table}"
            + (f"<ul>{errors}</ul>" if errors else "")
            + "</div>"
        )

    def plot(self) -> Any:
        """Throughput vs latency (p50, p99) and throughput vs load; returns a matplotlib Figure.

        The figure is closed in pyplot right away: a notebook shows the returned figure once
        (through pyplot's display hook) instead of twice.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("RPSReport.plot() needs matplotlib: pip install matplotlib") from exc
        fig, (ax_lat, ax_load) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        plt.close(fig)
        steps = [s for s in self.steps if s.requests > 0]
        xs = [s.infer_per_sec for s in steps]
        ax_lat.plot(xs, [s.p50_ms for s in steps], "o-", label="p50")
        ax_lat.plot(xs, [s.p99_ms for s in steps], "s--", label="p99")
        for s in steps:
            ax_lat.annotate(
                s.load,
                (s.infer_per_sec, s.p99_ms),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        ax_lat.set_xlabel("throughput (inferences/s)")
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.set_title("Latency vs throughput")
        ax_lat.grid(True, alpha=0.3)
        ax_lat.legend()

        if self.mode == "concurrency":
            loads = [float(s.concurrency or 0) for s in steps]
            ax_load.set_xlabel("concurrency (requests in flight)")
            if len(loads) > 1 and min(loads) > 0:
                ax_load.set_xscale("log", base=2)
                ax_load.set_xticks(loads, [f"{x:g}" for x in loads])
        else:
            loads = [float(s.request_rate or 0) for s in steps]
            ax_load.set_xlabel("target request rate (requests/s)")
            ax_load.plot(
                loads, [x * self.batch_size for x in loads], ":", color="gray", label="target"
            )
        ax_load.plot(loads, xs, "o-", label="client infer/s")
        srv = [s.server.get("infer_per_sec", math.nan) for s in steps]
        if any(not math.isnan(v) for v in srv):
            ax_load.plot(loads, srv, "x", color="black", label="server infer/s")
        for s, x, y in zip(steps, loads, xs, strict=True):
            batch = s.server.get("avg_batch_size", math.nan)
            if not math.isnan(batch):
                ax_load.annotate(
                    f"batch {batch:.1f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=8,
                )
        ax_load.set_ylabel("throughput (inferences/s)")
        ax_load.set_title("Throughput vs load")
        ax_load.set_ylim(bottom=0)
        ax_load.grid(True, alpha=0.3)
        ax_load.legend()
        fig.suptitle(f"{self.model} @ {', '.join(self.urls)}", fontsize=10)
        # Jupyter renders a bare Figure as an image only once pyplot's inline backend is
        # active; a PNG repr of its own makes `report.plot()` show in a fresh kernel too.
        fig._repr_png_ = lambda: _figure_png(fig)
        return fig


def _figure_png(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
