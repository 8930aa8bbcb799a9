"""LocalCluster's fault hooks: each one fires, and fires only as often as asked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.cluster.kube_exec import run_exec
from modelrepo.testing.cluster.manifests import busybox_pod

HELPER_POD = "helper"  # the cluster and core fixtures: tests/conftest.py


@pytest.fixture(scope="module", autouse=True)
def _big(claim_dir: Path) -> None:
    (claim_dir / "big.bin").write_bytes(b"x" * (8 << 20))


@pytest.fixture(autouse=True)
def _clear(cluster: LocalCluster) -> Iterator[None]:
    yield
    cluster.faults.clear()


def _running_commands(core: client.CoreV1Api) -> str:
    return run_exec(core, "helper", ["ps", "-o", "args"]).stdout.decode()


@pytest.fixture(scope="module")
def core_no_retries(cluster: LocalCluster) -> client.CoreV1Api:
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    configuration.retries = False
    return client.CoreV1Api(client.ApiClient(configuration))


def test_429_with_retry_after_then_success(
    cluster: LocalCluster, core_no_retries: client.CoreV1Api
) -> None:
    core = core_no_retries
    cluster.faults.fail_requests("GET", r"/pods/helper$", status=429, retry_after=2, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.read_namespaced_pod("helper", "default")
        assert err.value.status == 429
        assert err.value.headers["Retry-After"] == "2"
        assert '"retryAfterSeconds": 2' in err.value.body
    assert core.read_namespaced_pod("helper", "default").metadata.name == "helper"
    assert [f.detail for f in cluster.faults.fired if f.kind == "request"][-2:] == ["429", "429"]


def test_retry_after_is_honoured_by_the_client(
    cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    cluster.faults.fail_requests("GET", r"/pods/helper$", status=429, retry_after=1)
    started = time.monotonic()
    assert core.read_namespaced_pod("helper", "default").metadata.name == "helper"
    assert time.monotonic() - started >= 1.0


def test_500_on_a_chosen_method_only(
    cluster: LocalCluster, core_no_retries: client.CoreV1Api
) -> None:
    core = core_no_retries
    cluster.faults.fail_requests("POST", r"/namespaces/default/configmaps", status=500)
    core.list_namespaced_config_map("default")  # a GET is not affected
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c1"}})
    assert err.value.status == 500
    core.create_namespaced_config_map("default", {"metadata": {"name": "c1"}})


def test_hang_until_client_timeout(
    cluster: LocalCluster, core_no_retries: client.CoreV1Api
) -> None:
    core = core_no_retries
    cluster.faults.hang_requests("GET", r"/namespaces/default/secrets", seconds=3)
    started = time.monotonic()
    with pytest.raises(Exception) as err:  # urllib3's ReadTimeoutError
        core.list_namespaced_secret("default", _request_timeout=0.5)
    assert "timed out" in str(err.value).lower()
    assert time.monotonic() - started < 2.5
    core.list_namespaced_secret("default")


def test_drop_exec_stdout_after_n_bytes(cluster: LocalCluster, core: client.CoreV1Api) -> None:
    cluster.faults.drop_exec_after(1 << 20, direction="stdout", command=r"^cat /models/big")
    result = run_exec(core, "helper", ["cat", "/models/big.bin"])
    assert result.dropped and result.status is None
    assert len(result.stdout) == 1 << 20
    assert "cat /models/big.bin" not in _running_commands(core)
    again = run_exec(core, "helper", ["cat", "/models/big.bin"])
    assert len(again.stdout) == 8 << 20 and again.returncode == 0


def test_drop_exec_stdin_after_n_bytes(cluster: LocalCluster, core: client.CoreV1Api) -> None:
    cluster.faults.drop_exec_after(300_000, direction="stdin")
    chunks = [b"y" * 100_000] * 10
    result = run_exec(core, "helper", ["sh", "-c", "cat > /models/partial.bin"], stdin=chunks)
    assert result.dropped and result.status is None
    claim = cluster.pvc_path("models")
    assert claim is not None
    deadline = time.monotonic() + 5
    while "cat" in _running_commands(core).split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (claim / "partial.bin").stat().st_size == 300_000
    assert cluster.faults.fired[-1].kind == "exec-drop"


def test_delay_pod_start(cluster: LocalCluster, core: client.CoreV1Api) -> None:
    cluster.delay_pod_start(r"^slow-", 1.5)
    started = time.monotonic()
    cluster.create(busybox_pod("slow-1"))
    time.sleep(0.5)
    assert cluster.get("Pod", "slow-1")["status"]["phase"] == "Pending"  # type: ignore[index]
    cluster.wait_for_pod("slow-1")
    assert time.monotonic() - started >= 1.5
    cluster.create(busybox_pod("quick"))
    cluster.wait_for_pod("quick", timeout=1.5)


def test_kill_pod(cluster: LocalCluster, core: client.CoreV1Api) -> None:
    cluster.create(busybox_pod("victim"))
    cluster.wait_for_pod("victim")
    cluster.kill_pod("victim")
    pod = cluster.wait_for_pod("victim", phase="Failed", timeout=5)
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 137
    time.sleep(1.2)  # no restart although restartPolicy is Always
    assert cluster.get("Pod", "victim")["status"]["phase"] == "Failed"  # type: ignore[index]
    with pytest.raises(ApiException):
        run_exec(core, "victim", ["true"])
