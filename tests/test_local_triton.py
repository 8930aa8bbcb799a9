"""LocalTriton runs the real Triton server: load, infer, unload, errors, clean stop."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelrepo.errors import LocalStackError
from modelrepo.testing import LocalTriton
from modelrepo.testing.models import (
    BROKEN_MODEL_MESSAGE,
    write_add_one_model,
    write_broken_model,
    write_identity_model,
)
from modelrepo.testing.triton import PYTRITON_PATH_ENV


def _post(triton: LocalTriton, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(triton.http_url + path, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _live_group(pgid: int) -> list[psutil.Process]:
    """Live processes of the server's group (zombies waiting for init to reap don't count)."""
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return alive


def _infer_add_one(url: str, model: str = "add_one") -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


@pytest.mark.slow
def test_load_infer_unload(local_triton: LocalTriton) -> None:
    write_add_one_model(local_triton.repository)
    assert _post(local_triton, "/v2/repository/models/add_one/load") == (200, {})
    out = _infer_add_one(local_triton.url)
    np.testing.assert_array_equal(out, np.arange(8, dtype=np.float32).reshape(2, 4) + 1)

    status, index = _post(local_triton, "/v2/repository/index")
    assert status == 200
    assert {"name": "add_one", "version": "1", "state": "READY"} in index

    assert _post(local_triton, "/v2/repository/models/add_one/unload")[0] == 200
    with pytest.raises(InferenceServerException):
        _infer_add_one(local_triton.url)


@pytest.mark.slow
def test_refused_model_surfaces_tritons_own_error(local_triton: LocalTriton) -> None:
    write_broken_model(local_triton.repository, "broken")
    status, body = _post(local_triton, "/v2/repository/models/broken/load")
    assert status == 400
    assert "load failed for model 'broken'" in body["error"]
    assert BROKEN_MODEL_MESSAGE in body["error"]
    assert BROKEN_MODEL_MESSAGE in local_triton.log_text()  # the log keeps it too


@pytest.mark.slow
def test_identity_round_trips_every_dtype(local_triton: LocalTriton) -> None:
    import ml_dtypes

    values = {
        "TYPE_STRING": np.array([[b"a\x00b", b"xyz"]], dtype=object),
        "TYPE_FP16": np.array([[1.5, -2.0]], dtype=np.float16),
        "TYPE_BF16": np.array([[1.5, -3.25]], dtype=ml_dtypes.bfloat16),
        "TYPE_BOOL": np.array([[True, False]]),
        "TYPE_INT64": np.array([[2**40, -1]], dtype=np.int64),
        "TYPE_UINT8": np.array([[0, 255]], dtype=np.uint8),
    }
    specs = [(f"IN_{dt[5:]}", dt, (2,)) for dt in values]
    write_identity_model(local_triton.repository, "ident", inputs=specs)
    assert _post(local_triton, "/v2/repository/models/ident/load")[0] == 200
    inputs = []
    for (name, dt, _), arr in zip(specs, values.values(), strict=True):
        wire = "BYTES" if dt == "TYPE_STRING" else dt[5:]
        inp = httpclient.InferInput(name, list(arr.shape), wire)
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    result = httpclient.InferenceServerClient(local_triton.url).infer("ident", inputs)
    for i, arr in enumerate(values.values()):
        out = result.as_numpy(f"OUTPUT{i}")
        assert out.dtype == arr.dtype
        np.testing.assert_array_equal(out, arr)


@pytest.mark.slow
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    write_add_one_model(tmp_path)
    triton = LocalTriton(tmp_path, load_models=["add_one"]).start()
    pgid = triton.pid
    assert pgid is not None
    # the python backend runs a stub process per model instance, in the server's group
    stubs = [p for p in _live_group(pgid) if p.pid != pgid]
    assert stubs, "expected a python-backend stub process"
    triton.stop()
    assert not triton.is_running()
    assert _live_group(pgid) == []
    triton.stop()  # idempotent


def test_context_manager_on_given_address_and_ports(tmp_path: Path) -> None:
    from modelrepo.testing.triton import _free_port

    port = _free_port("127.0.0.2")
    with LocalTriton(tmp_path, http_address="127.0.0.2", http_port=port) as triton:
        assert triton.url == f"127.0.0.2:{port}"
        assert triton.grpc_url.startswith("127.0.0.2:")
        with urllib.request.urlopen(triton.http_url + "/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(triton.metrics_url, timeout=5) as r:
            assert b"nv_" in r.read()
        pid = triton.pid
    assert pid is not None
    assert _live_group(pid) == []


def test_missing_wheel_says_which_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PYTRITON_PATH_ENV, str(tmp_path / "empty"))
    with pytest.raises(LocalStackError, match=r"pip install 'modelrepo\[local\]'"):
        LocalTriton(tmp_path / "repo").start()


def test_url_before_start_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(LocalStackError, match="start"):
        _ = LocalTriton(tmp_path).url


@pytest.mark.slow
def test_failed_startup_quotes_the_log(tmp_path: Path) -> None:
    write_broken_model(tmp_path, "broken")
    with pytest.raises(LocalStackError) as info:
        LocalTriton(tmp_path, load_models=["broken"], startup_timeout=30).start()
    assert BROKEN_MODEL_MESSAGE in str(info.value)


def test_replicas_share_a_port_on_their_own_addresses(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from modelrepo.testing.triton import _free_port

    port = _free_port("127.0.0.2")
    replicas = [
        LocalTriton(tmp_path, http_address=a, http_port=port, grpc_port=_free_port("127.0.0.2"))
        for a in ("127.0.0.2", "127.0.0.3")
    ]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(LocalTriton.start, replicas))
        assert [r.url for r in replicas] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
        assert replicas[0].pid != replicas[1].pid
    finally:
        for r in replicas:
            r.stop()
