"""TritonReplicas against real Triton replicas (LocalTriton) sharing one repository."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from modelrepo.errors import TritonError
from modelrepo.testing import LocalTriton
from modelrepo.testing.models import (
    BROKEN_MODEL_MESSAGE,
    write_add_one_model,
    write_broken_model,
)
from modelrepo.testing.triton import _free_port
from modelrepo.triton import LoadResult, StatusTable, TritonReplicas

ADDRESSES = ("127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    write_add_one_model(repo, "add_one")
    write_add_one_model(repo, "pinned", version=1)
    write_add_one_model(repo, "pinned", version=2)
    write_broken_model(repo, "broken")
    slow = write_add_one_model(repo, "slow")
    model_py = slow / "1" / "model.py"
    model_py.write_text(
        model_py.read_text().replace(
            "class TritonPythonModel:\n",
            "class TritonPythonModel:\n"
            "    def initialize(self, args):\n"
            "        import time\n\n"
            "        time.sleep(2.5)\n\n",
        )
    )
    return repo


@pytest.fixture(scope="module")
def replicas(repository: Path) -> Iterator[list[LocalTriton]]:
    """Two replicas, each on its own loopback "pod IP", on the same port."""
    port = _free_port(ADDRESSES[0])
    servers = [LocalTriton(repository, http_address=a, http_port=port) for a in ADDRESSES]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def triton(replicas: list[LocalTriton]) -> TritonReplicas:
    return TritonReplicas([replicas[0].url, replicas[1].http_url])


def _infer(url: str, model: str) -> np.ndarray:
    x = np.ones((1, 4), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    return httpclient.InferenceServerClient(url).infer(model, [inp]).as_numpy("OUTPUT0")


@pytest.mark.slow
def test_load_status_unload_on_every_replica(
    triton: TritonReplicas, replicas: list[LocalTriton]
) -> None:
    result = triton.load("add_one")
    assert isinstance(result, LoadResult)
    assert result.ok, result
    assert [r.replica for r in result.replicas] == [s.url for s in replicas]
    assert all(r.outcome == "ok" for r in result.replicas)
    assert result.raise_for_errors() is result
    for s in replicas:  # each replica really serves it
        np.testing.assert_array_equal(_infer(s.url, "add_one"), np.full((1, 4), 2.0))

    status = triton.status("add_one")
    assert isinstance(status, StatusTable)
    assert status.ready("add_one") and status.ready("add_one", 1)
    assert not status.ready("add_one", 2)
    assert status.loaded_versions("add_one") == [1]
    text = repr(status)
    assert "add_one" in text and text.count("READY") == 2
    assert all(s.url in text for s in replicas)
    assert "<table>" in status._repr_html_() and "READY" in status._repr_html_()

    unloaded = triton.unload("add_one")
    assert unloaded.ok, unloaded
    after = triton.status("add_one")
    assert not after.ready("add_one")
    assert after.loaded_versions("add_one") == []
    assert {s.state for s in after.rows[0].replicas.values()} == {"UNAVAILABLE"}


def test_status_lists_every_model_of_the_repository(triton: TritonReplicas) -> None:
    status = triton.status()
    assert {"add_one", "pinned", "broken", "slow"} <= set(status.models)
    missing = triton.status("no_such_model")
    assert [r.model for r in missing.rows] == ["no_such_model"]
    assert {s.state for s in missing.rows[0].replicas.values()} == {"ABSENT"}


@pytest.mark.slow
def test_refused_load_quotes_triton_per_replica(
    triton: TritonReplicas, replicas: list[LocalTriton]
) -> None:
    result = triton.load("broken")
    assert not result.ok
    assert [r.outcome for r in result.replicas] == ["error", "error"]
    assert all(BROKEN_MODEL_MESSAGE in r.message for r in result.replicas)
    assert "FAILED" in repr(result) and BROKEN_MODEL_MESSAGE in repr(result)
    with pytest.raises(TritonError) as info:
        result.raise_for_errors()
    text = str(info.value)
    assert "2 of 2" in text and all(s.url in text for s in replicas)
    assert text.count(BROKEN_MODEL_MESSAGE) == 2
    row = triton.status("broken").rows[0]
    assert all(
        s.state == "UNAVAILABLE" and BROKEN_MODEL_MESSAGE in s.reason for s in row.replicas.values()
    )


def test_unknown_model_says_what_to_check(triton: TritonReplicas) -> None:
    result = triton.load("no_such_model")
    assert [r.outcome for r in result.replicas] == ["error", "error"]
    assert "failed to poll from model repository" in result.replicas[0].message
    assert "config.pbtxt" in result.replicas[0].message


@pytest.mark.slow
def test_one_replica_down_is_reported_others_load(replicas: list[LocalTriton]) -> None:
    down = f"127.0.0.4:{replicas[0].http_port}"  # nothing listens there
    triton = TritonReplicas([*(s.url for s in replicas), down], connect_timeout=2)
    result = triton.load("add_one")
    outcomes = {r.replica: r.outcome for r in result.replicas}
    assert outcomes == {replicas[0].url: "ok", replicas[1].url: "ok", down: "unreachable"}
    assert not result.ok
    with pytest.raises(TritonError, match="1 of 3") as info:
        result.raise_for_errors()
    assert down in str(info.value) and "reachable" in str(info.value)

    status = triton.status("add_one")
    assert status.unreachable.keys() == {down}
    assert status.rows[0].replicas[down].state == "UNREACHABLE"
    assert status.rows[0].replicas[replicas[0].url].state == "READY"
    assert not status.ready("add_one")  # not on every replica
    assert "unreachable" in repr(status)
    with pytest.raises(TritonError, match=down):
        triton.index()
    assert triton.unload("add_one").errors[0].replica == down


@pytest.mark.slow
def test_config_override_pins_a_version(triton: TritonReplicas) -> None:
    tensor = {"data_type": "TYPE_FP32", "dims": [4]}
    config = {
        "name": "pinned",
        "backend": "python",
        "max_batch_size": 64,
        "input": [{"name": "INPUT0", **tensor}],
        "output": [{"name": "OUTPUT0", **tensor}],
        "version_policy": {"specific": {"versions": [2]}},
    }
    assert triton.load("pinned", config=config).ok
    assert triton.status("pinned").loaded_versions("pinned") == [2]
    assert triton.unload("pinned").ok


def test_invalid_json_config_is_refused_before_any_request(triton: TritonReplicas) -> None:
    with pytest.raises(TritonError, match="not valid JSON"):
        triton.load("pinned", config="{not json")
    with pytest.raises(TritonError, match="config="):
        triton.load("pinned", files={"1/model.py": b""})


@pytest.mark.slow
def test_load_without_waiting_reports_pending(triton: TritonReplicas) -> None:
    result = triton.load("slow", wait=False)
    assert [r.outcome for r in result.replicas] == ["pending", "pending"]
    assert result.ok
    deadline = time.monotonic() + 30
    while not triton.status("slow").ready("slow"):
        assert time.monotonic() < deadline, triton.status("slow")
        time.sleep(0.2)
    assert triton.unload("slow").ok


def test_server_metadata_of_each_replica(triton: TritonReplicas) -> None:
    meta = triton.server_metadata()
    assert list(meta) == triton.urls
    assert all(m["version"] == "2.51.0" for m in meta.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["poll", "none"])
def test_wrong_control_mode_says_to_use_explicit(tmp_path: Path, mode: str) -> None:
    with LocalTriton(tmp_path, model_control_mode=mode) as server:
        triton = TritonReplicas(server.url)
        with pytest.raises(TritonError, match="--model-control-mode=explicit") as info:
            triton.load("anything")
        assert "explicit model load / unload is not allowed" in str(info.value)
        with pytest.raises(TritonError, match="explicit"):
            triton.unload("anything")


def test_urls_are_normalised_and_checked() -> None:
    triton = TritonReplicas(["127.0.0.2:8001", "http://127.0.0.3:8001", "http://h"])
    assert triton.urls == ["127.0.0.2:8001", "127.0.0.3:8001", "h:8000"]
    assert TritonReplicas("127.0.0.2:8001").urls == ["127.0.0.2:8001"]
    with pytest.raises(TritonError, match="host:port"):
        TritonReplicas(["ftp://x:1"])
    with pytest.raises(TritonError, match="No Triton URL"):
        TritonReplicas([])
