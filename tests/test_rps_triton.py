"""measure_rps against a real Triton (LocalTriton): counts, dtypes, errors, interrupts, CLI."""

from __future__ import annotations

import _thread
import argparse
import http.client
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelrepo.errors import TritonError
from modelrepo.testing import LocalTriton
from modelrepo.testing.models import write_add_one_model, write_identity_model
from modelrepo.triton.rps import InputError, RPSProgress, generate_inputs, measure_rps
from modelrepo.triton.rps.cli import add_rps_arguments, run_rps_command
from modelrepo.triton.rps.engine import DEFAULT_CONCURRENCY
from modelrepo.triton.rps.inputs import ModelSignature

# short steps: warm-up 0.2 s, three 0.2 s windows, at most 4 windows
QUICK = {"duration": 0.6, "warmup": 0.2, "max_windows": 4, "stability": 0.5}

IDENTITY_TYPES = {
    "B": ("TYPE_BOOL", "BOOL"),
    "U8": ("TYPE_UINT8", "UINT8"),
    "I16": ("TYPE_INT16", "INT16"),
    "I64": ("TYPE_INT64", "INT64"),
    "H": ("TYPE_FP16", "FP16"),
    "F": ("TYPE_FP32", "FP32"),
    "D": ("TYPE_FP64", "FP64"),
    "BF": ("TYPE_BF16", "BF16"),
    "S": ("TYPE_STRING", "BYTES"),
}

RAISER_CONFIG = """name: "raiser"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""
RAISER_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            if (x < 0).any():
                raise ValueError("raiser refuses negative input")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""


SLEEPER_PY = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.4)
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""


def _write_repository(repo: Path) -> None:
    write_add_one_model(repo, "add_one")
    write_add_one_model(repo, "victim")  # unloaded in the middle of a run
    write_add_one_model(repo, "sleeping")  # never loaded
    write_add_one_model(repo, "device", device_ms=20)  # a GPU-like model: off-CPU wait
    write_identity_model(
        repo,
        "identity",
        inputs=[(name, t, [3]) for name, (t, _) in IDENTITY_TYPES.items()],
    )
    (repo / "raiser" / "1").mkdir(parents=True)
    (repo / "raiser" / "config.pbtxt").write_text(RAISER_CONFIG)
    (repo / "raiser" / "1" / "model.py").write_text(RAISER_PY)
    (repo / "sleeper" / "1").mkdir(parents=True)
    (repo / "sleeper" / "config.pbtxt").write_text(RAISER_CONFIG.replace("raiser", "sleeper"))
    (repo / "sleeper" / "1" / "model.py").write_text(SLEEPER_PY)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    repo = tmp_path_factory.mktemp("rps") / "models"
    _write_repository(repo)
    with LocalTriton(
        repository=repo,
        load_models=["add_one", "victim", "identity", "raiser", "sleeper", "device"],
    ) as server:
        yield server


def _post(url: str, path: str) -> int:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=b"")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_unknown_model_lists_the_available_ones(triton: LocalTriton) -> None:
    with pytest.raises(TritonError, match="has no model 'nope'") as info:
        measure_rps(triton.url, "nope", **QUICK)
    assert "add_one" in str(info.value) and "raiser" in str(info.value)


def test_unloaded_model_says_how_to_load_it(triton: LocalTriton) -> None:
    with pytest.raises(TritonError, match="'sleeping' is not loaded") as info:
        measure_rps(triton.url, "sleeping", **QUICK)
    assert "repo.load('sleeping')" in str(info.value)
    assert "`modelrepo load sleeping`" in str(info.value)
    assert "/v2/repository/models/sleeping/load" in str(info.value)
    with pytest.raises(TritonError, match="version 7 is not loaded"):
        measure_rps(triton.url, "add_one", version=7, **QUICK)


def test_wrong_inputs_fail_before_the_run(triton: LocalTriton) -> None:
    with pytest.raises(InputError, match=r"shape \[5\]"):
        measure_rps(triton.url, "add_one", inputs={"INPUT0": np.ones(5, np.float32)}, **QUICK)
    with pytest.raises(InputError, match="int64"):
        measure_rps(triton.url, "add_one", inputs={"INPUT0": np.ones(4, np.int64)}, **QUICK)
    with pytest.raises(InputError, match="max_batch_size 64"):
        measure_rps(triton.url, "add_one", batch_size=65, **QUICK)


@pytest.mark.slow
def test_sweep_counts_agree_with_the_server(triton: LocalTriton) -> None:
    events: list[RPSProgress] = []
    report = measure_rps(
        triton.url, "add_one", concurrency=(1, 4), batch_size=2, progress=events.append, **QUICK
    )
    assert not report.interrupted and [s.concurrency for s in report.steps] == [1, 4]
    for s in report.steps:
        assert s.errors == 0 and s.requests > 50
        server = s.server
        # the client's count of successes and Triton's over the same windows
        assert abs(s.requests - server["success"]) <= s.concurrency + 0.02 * s.requests
        assert s.infer_per_sec == pytest.approx(2 * s.rps)
        # Triton counts a request's inferences and its success a moment apart: a request in
        # flight at a window boundary can be in one count and not yet in the other
        slack = 2 * s.concurrency / s.duration_s
        assert server["infer_per_sec"] == pytest.approx(2 * server["rps"], abs=slack)
        assert server["avg_batch_size"] >= 2  # batch 2 per request, maybe merged further
        assert 0 < s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
        assert s.client_cpu_us_per_request > 0
    assert next(e.phase for e in events if e.step_index == 0) == "warmup"
    assert [e.phase for e in events].count("step") == 2
    step = report.to_dict()["steps"][1]
    assert step["concurrency"] == 4 and step["server"]["success"] > 0
    assert report.best().rps == max(s.rps for s in report.steps)


def test_concurrency_none_sweeps_the_default_levels(triton: LocalTriton) -> None:
    quick = {**QUICK, "duration": 0.15, "warmup": 0.0, "max_windows": 3}
    report = measure_rps(triton.url, "add_one", concurrency=None, **quick)
    assert [s.concurrency for s in report.steps] == list(DEFAULT_CONCURRENCY)
    # a rate sweep leaves concurrency at its default (or None): not a conflict
    rated = measure_rps(triton.url, "add_one", concurrency=None, request_rate=[50.0], **quick)
    assert [s.request_rate for s in rated.steps] == [50.0]


def test_device_time_sets_the_latency_and_dynamic_batching_the_throughput(
    triton: LocalTriton,
) -> None:
    one, eight = measure_rps(triton.url, "device", concurrency=(1, 8), **QUICK).steps
    assert one.errors == eight.errors == 0
    assert one.p50_ms >= 20 and one.server["avg_compute_ms"] >= 20
    assert one.server["avg_batch_size"] == pytest.approx(1.0)
    # requests that queue behind a 20 ms batch are executed together
    assert eight.server["avg_batch_size"] > 2 and eight.rps > 2.5 * one.rps


@pytest.mark.slow
def test_identity_round_trip_of_every_dtype_with_validation(triton: LocalTriton) -> None:
    metadata = json.loads(_get(triton.url, "/v2/models/identity"))
    config = json.loads(_get(triton.url, "/v2/models/identity/config"))
    sig = ModelSignature.from_metadata(metadata, config)
    assert {i.datatype for i in sig.inputs} == {t for _, t in IDENTITY_TYPES.values()}
    sent = generate_inputs(sig, batch_size=2, seed=7)

    def same(outputs: dict[str, np.ndarray]) -> bool:
        return all(
            np.array_equal(outputs[f"OUTPUT{i}"], sent[name])
            for i, name in enumerate(IDENTITY_TYPES)
        )

    report = measure_rps(triton.url, "identity", concurrency=2, inputs=sent, validate=same, **QUICK)
    (s,) = report.steps
    assert s.errors == 0, s.error_samples
    assert s.requests > 20
    # a validator that fails is counted as such, and failed answers are not successes
    report = measure_rps(
        triton.url, "identity", concurrency=1, validate=lambda outputs: False, **QUICK
    )
    (s,) = report.steps
    assert s.requests == 0 and s.rps == 0
    assert set(s.errors_by_kind) == {"validation"} and s.errors > 10


def _get(url: str, path: str) -> bytes:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["constant", "poisson"])
def test_request_rate_mode(triton: LocalTriton, distribution: str) -> None:
    report = measure_rps(
        triton.url,
        "add_one",
        request_rate=(150, 400),
        distribution=distribution,
        duration=1.2,
        warmup=0.2,
        max_windows=4,
        stability=0.5,
    )
    assert report.mode == "request_rate"
    for s in report.steps:
        assert s.concurrency is None and s.errors == 0
        assert s.rps == pytest.approx(s.request_rate, rel=0.25)
        assert abs(s.requests - s.server["success"]) <= 10
    assert report.to_dict()["steps"][1]["request_rate"] == 400


@pytest.mark.slow
def test_model_errors_are_counted_not_raised(triton: LocalTriton) -> None:
    report = measure_rps(triton.url, "raiser", concurrency=2, inputs={"INPUT0": [-1.0]}, **QUICK)
    (s,) = report.steps
    assert s.requests == 0 and s.errors > 10
    (kind,) = s.errors_by_kind
    assert kind.startswith("http_5") or kind.startswith("http_4")
    assert "raiser refuses negative input" in s.error_samples[kind]
    assert s.server["fail"] > 0
    assert "raiser refuses negative input" in repr(report)


@pytest.mark.slow
def test_unload_in_the_middle_of_a_run_is_counted(triton: LocalTriton) -> None:
    def unload_after_first_window(event: RPSProgress) -> None:
        if event.phase == "window" and event.window == 1:
            assert _post(triton.url, "/v2/repository/models/victim/unload") == 200

    report = measure_rps(
        triton.url,
        "victim",
        concurrency=2,
        progress=unload_after_first_window,
        duration=0.9,
        warmup=0.2,
        max_windows=3,
    )
    (s,) = report.steps
    assert s.errors > 0 and any(k.startswith("http_") for k in s.errors_by_kind)
    assert "victim" in " ".join(s.error_samples.values())


@pytest.mark.slow
def test_ctrl_c_returns_the_finished_steps(triton: LocalTriton) -> None:
    def interrupt_after_first_step(event: RPSProgress) -> None:
        if event.phase == "step":
            _thread.interrupt_main()  # what Ctrl-C (or Jupyter's interrupt) does

    report = measure_rps(
        triton.url,
        "add_one",
        concurrency=(1, 2, 4),
        progress=interrupt_after_first_step,
        **QUICK,
    )
    assert report.interrupted
    assert [s.concurrency for s in report.steps] == [1]
    assert "[interrupted]" in repr(report)


@pytest.mark.slow
def test_replicas_share_the_load_round_robin(triton: LocalTriton) -> None:
    with LocalTriton(repository=triton.repository, load_models=["add_one"]) as second:
        report = measure_rps([triton.url, second.url], "add_one", concurrency=1, **QUICK)
    (s,) = report.steps
    assert s.server["replicas"] == 2 and s.errors == 0
    assert abs(s.requests - s.server["success"]) <= 2 + 0.02 * s.requests
    assert report.urls == [triton.url, second.url]


@pytest.mark.slow
def test_cli_prints_json(triton: LocalTriton, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_rps_arguments(parser)
    args = parser.parse_args(
        [
            "add_one",
            "--url",
            triton.url,
            "--concurrency",
            "2",
            "--duration",
            "0.6",
            "--warmup",
            "0.2",
            "--json",
            "--quiet",
        ]
    )
    assert run_rps_command(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"][0]["concurrency"] == 2 and data["steps"][0]["rps"] > 0
    args = parser.parse_args(["nope", "--url", triton.url, "--duration", "1"])
    assert run_rps_command(args) == 1
    assert "has no model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_works_inside_a_running_event_loop(triton: LocalTriton) -> None:
    """Jupyter runs cells inside an event loop: the engine must not need the caller's loop."""
    import asyncio

    async def cell() -> int:
        report = measure_rps(triton.url, "add_one", concurrency=1, **QUICK)
        return report.steps[0].requests

    assert asyncio.run(cell()) > 0


@pytest.mark.parametrize("installed", [True, False], ids=["uvloop", "asyncio"])
def test_the_load_runs_on_uvloop_when_installed_else_on_asyncio(
    triton: LocalTriton, monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    import asyncio

    if not installed:
        monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now fails
    loops: set[str] = set()

    def validate(outputs: dict) -> bool:  # runs on the load's own loop
        loops.add(type(asyncio.get_running_loop()).__module__.split(".")[0])
        return bool(np.all(outputs["OUTPUT0"] == 1.0))

    zeros = {"INPUT0": np.zeros(4, np.float32)}
    step = measure_rps(
        triton.url, "add_one", concurrency=2, inputs=zeros, validate=validate, **QUICK
    ).steps[0]
    assert step.errors == 0 and step.requests > 0
    assert loops == {"uvloop" if installed else "asyncio"}


@pytest.mark.slow
def test_slow_answers_count_as_timeouts(triton: LocalTriton) -> None:
    report = measure_rps(triton.url, "sleeper", concurrency=1, timeout=0.15, **QUICK)
    (s,) = report.steps
    assert s.requests == 0 and s.errors_by_kind.get("timeout", 0) >= 1
    assert "no response within 0.15 s" in s.error_samples["timeout"]


@pytest.mark.slow
def test_a_replica_going_away_is_counted_and_the_run_goes_on(triton: LocalTriton) -> None:
    with LocalTriton(repository=triton.repository, load_models=["add_one"]) as second:

        def kill_second(event: RPSProgress) -> None:
            if event.phase == "window" and event.window == 1:
                os.killpg(second.pid, signal.SIGKILL)  # a replica that dies, not one that drains

        report = measure_rps(
            [triton.url, second.url],
            "add_one",
            concurrency=2,
            progress=kill_second,
            duration=0.9,
            warmup=0.2,
            max_windows=3,
        )
    (s,) = report.steps
    assert s.errors_by_kind.get("connection", 0) >= 1
    assert s.requests > 100  # the first replica kept answering
    assert s.server == {}  # the stopped replica's statistics could not be read
