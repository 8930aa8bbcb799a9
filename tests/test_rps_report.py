"""RPSReport and the statistics math behind it: no server needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from modelrepo.triton.rps import RPSReport, RPSStep
from modelrepo.triton.rps.report import latency_summary, server_delta, sum_model_stats


def step(concurrency: int, rps: float, p99: float, errors: int = 0) -> RPSStep:
    return RPSStep(
        concurrency=concurrency,
        request_rate=None,
        rps=rps,
        infer_per_sec=rps * 2,
        requests=int(rps),
        duration_s=1.0,
        avg_ms=p99 / 2,
        p50_ms=p99 / 2,
        p90_ms=p99 * 0.8,
        p95_ms=p99 * 0.9,
        p99_ms=p99,
        min_ms=0.1,
        max_ms=p99 * 2,
        errors=errors,
        errors_by_kind={"http_500": errors} if errors else {},
        error_samples={"http_500": "model raised"} if errors else {},
        late=0,
        dropped=0,
        client_cpu_s=0.01,
        client_cpu_us_per_request=10.0,
        stable=True,
        windows=3,
        window_rps=[rps, rps, rps],
        server={"rps": rps, "avg_batch_size": 1.5, "avg_queue_ms": math.nan},
    )


@pytest.fixture
def report() -> RPSReport:
    return RPSReport(
        model="add_one",
        version=None,
        urls=["127.0.0.1:8000"],
        mode="concurrency",
        batch_size=2,
        steps=[step(1, 100.0, 2.0), step(4, 300.0, 5.0), step(16, 350.0, 20.0, errors=3)],
        settings={"duration": 3},
    )


def test_best_respects_the_latency_bound(report: RPSReport) -> None:
    assert report.best().concurrency == 16
    assert report.best(max_p99_ms=10).concurrency == 4
    assert report.best(max_p99_ms=1) is None


def test_to_dict_contract_and_json(report: RPSReport, tmp_path: Path) -> None:
    data = report.to_dict()
    first = data["steps"][0]
    for key in (
        "concurrency",
        "rps",
        "infer_per_sec",
        "avg_ms",
        "p50_ms",
        "p90_ms",
        "p95_ms",
        "p99_ms",
        "errors",
        "errors_by_kind",
        "server",
    ):
        assert key in first, key
    assert data["steps"][2]["errors_by_kind"] == {"http_500": 3}
    assert first["server"]["avg_queue_ms"] is None  # NaN is not JSON
    path = tmp_path / "r.json"
    text = report.to_json(str(path))
    assert json.loads(path.read_text()) == json.loads(text) == data


def test_text_and_html_tables(report: RPSReport) -> None:
    text = repr(report)
    assert "p99 ms" in text and "c=16" in text and "350.0" in text
    assert "3 x http_500: model raised" in text
    html = report._repr_html_()
    assert html.count("<tr>") == 4 and "<th>p50 ms</th>" in html
    report.interrupted = True
    assert "[interrupted]" in repr(report)
    assert "(no step finished)" in repr(RPSReport("m", None, ["h:1"], "concurrency", 1))


def test_plot_returns_a_figure(report: RPSReport) -> None:
    fig = report.plot()
    lat, load = fig.axes
    assert lat.get_xlabel() == "throughput (inferences/s)" and lat.get_ylabel() == "latency (ms)"
    assert load.get_xlabel().startswith("concurrency")
    assert [list(line.get_ydata()) for line in lat.get_lines()][1] == [2.0, 5.0, 20.0]
    rate = RPSReport("m", None, ["h:1"], "request_rate", 1, steps=[step(1, 90.0, 3.0)])
    rate.steps[0].concurrency, rate.steps[0].request_rate = None, 100.0
    assert rate.plot().axes[1].get_xlabel().startswith("target request rate")
    assert "late" in repr(rate) and "100/s" in repr(rate)


def test_latency_summary_percentiles() -> None:
    summary = latency_summary(list(range(1_000_000, 101_000_000, 1_000_000)))  # 1..100 ms
    assert summary["min_ms"] == 1 and summary["max_ms"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert math.isnan(latency_summary([])["p50_ms"])


def _stats(success: int, inferences: int, executions: int, queue_ns: int) -> dict:
    counter = {"count": success, "ns": success * 1000}
    return {
        "model_stats": [
            {
                "inference_count": inferences,
                "execution_count": executions,
                "inference_stats": {
                    "success": counter,
                    "fail": {"count": 1, "ns": 5},
                    "queue": {"count": success, "ns": queue_ns},
                    "compute_input": counter,
                    "compute_infer": counter,
                    "compute_output": counter,
                },
            }
        ]
    }


def test_server_delta_sums_replicas_and_derives_averages() -> None:
    before = sum_model_stats([_stats(100, 100, 100, 0), _stats(50, 50, 50, 0)])
    after = sum_model_stats([_stats(300, 300, 150, 200_000_000), _stats(150, 150, 50, 0)])
    delta = server_delta(before, after, seconds=2.0)
    assert delta["success"] == 300 and delta["rps"] == 150 and delta["replicas"] == 2
    assert delta["fail"] == 0
    assert delta["avg_batch_size"] == pytest.approx(300 / 50)  # dynamic batching at work
    assert delta["avg_queue_ms"] == pytest.approx(200 / 300)
    assert delta["avg_compute_ms"] == pytest.approx(3 * 0.001)
    assert server_delta(None, after, 1.0) == {}
