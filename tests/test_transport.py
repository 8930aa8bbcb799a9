"""The Kubernetes transport against LocalCluster: API retries and errors, exec (v5 and v4),
the helper pod's lifecycle (reuse, recreation after a kill, deletion, reaping)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from modelrepo.errors import ClusterError
from modelrepo.testing import LocalCluster
from modelrepo.testing.cluster import V4, V5
from modelrepo.transport import (
    MOUNT_PATH,
    ExecClient,
    ExecRefused,
    ExecStreamDropped,
    HelperOptions,
    HelperPod,
    KubeAPI,
    RetryPolicy,
    api_error,
    cleanup,
    connect,
)
from modelrepo.transport.api import parse_retry_after

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> KubeAPI:
    return connect(cluster.kubeconfig, retry=RetryPolicy(attempts=4, base_delay=0.05))


@pytest.fixture(scope="module")
def helper(api: KubeAPI) -> Iterator[HelperPod]:
    h = HelperPod(api, "models")
    yield h
    h.close()


# -- api -------------------------------------------------------------------------------------


def test_connect_uses_the_context_namespace(cluster: LocalCluster, tmp_path: Path) -> None:
    text = cluster.kubeconfig.read_text()
    assert connect(cluster.kubeconfig).namespace == "default"
    import yaml

    doc = yaml.safe_load(text)
    doc["contexts"][0]["context"]["namespace"] = "team-a"
    other = tmp_path / "kubeconfig"
    other.write_text(yaml.safe_dump(doc))
    assert connect(other).namespace == "team-a"
    assert connect(other, namespace="team-b").namespace == "team-b"


def test_connect_without_kubeconfig_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as err:
        connect(tmp_path / "missing")
    assert "kubeconfig" in str(err.value) and "KUBECONFIG" in str(err.value)


def test_429_is_retried_honouring_retry_after(cluster: LocalCluster, api: KubeAPI) -> None:
    cluster.faults.fail_requests(
        "GET", r"/persistentvolumeclaims/models$", status=429, times=2, retry_after=1
    )
    started = time.monotonic()
    pvc = api.call(
        api.core.read_namespaced_persistent_volume_claim,
        "models",
        namespace="default",
        action="get persistentvolumeclaims models",
    )
    assert pvc.metadata.name == "models"
    assert time.monotonic() - started >= 1.9  # two Retry-After: 1 waits


def test_5xx_retried_only_when_idempotent(cluster: LocalCluster, api: KubeAPI) -> None:
    cluster.faults.fail_requests("GET", r"/persistentvolumeclaims/models$", status=503)
    api.call(
        api.core.read_namespaced_persistent_volume_claim,
        "models",
        namespace="default",
        action="get persistentvolumeclaims models",
    )
    cluster.faults.fail_requests("GET", r"/persistentvolumeclaims/models$", status=500)
    with pytest.raises(ClusterError) as err:
        api.call(
            api.core.read_namespaced_persistent_volume_claim,
            "models",
            namespace="default",
            action="get persistentvolumeclaims models",
            idempotent=False,
        )
    assert "HTTP 500" in str(err.value)
    cluster.faults.clear()


def test_missing_claim_error_says_create_it(api: KubeAPI) -> None:
    with pytest.raises(ClusterError) as err:
        HelperPod(api, "no-such-claim").ensure()
    text = str(err.value)
    assert "HTTP 404" in text and "create the PVC 'no-such-claim'" in text


def test_403_names_the_missing_rbac_rule() -> None:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = '{"kind":"Status","message":"pods is forbidden: User \\"bob\\" cannot create"}'
    err = api_error(exc, "create pods", namespace="ml")
    assert "verb 'create' on resource 'pods'" in str(err)
    assert "namespace 'ml'" in str(err)
    assert "cannot create" in str(err)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# -- exec ------------------------------------------------------------------------------------


def test_exec_exit_codes_stdout_stderr(helper: HelperPod) -> None:
    res = helper.exec(["sh", "-c", "printf out; printf err >&2; exit 3"])
    assert (res.exit_code, res.stdout, res.stderr) == (3, b"out", b"err")
    assert res.protocol == V5
    assert helper.exec(["true"]).exit_code == 0


def test_exec_streams_stdin_both_ways(helper: HelperPod) -> None:
    size = 24 << 20
    chunk = os.urandom(1 << 20)
    received = bytearray()
    res = helper.exec(
        ["sh", "-c", f"dd bs=1048576 count={size} iflag=count_bytes,fullblock 2>/dev/null"],
        stdin=(chunk for _ in range(size >> 20)),
        stdout=received.extend,
    )
    assert res.exit_code == 0 and res.bytes_sent == size
    assert bytes(received) == chunk * (size >> 20)


def test_v5_closes_stdin_so_readers_to_eof_finish(helper: HelperPod) -> None:
    res = helper.exec(["wc", "-c"], stdin=b"x" * 100_000)
    assert res.stdout.strip() == b"100000"


def test_v4_only_server(cluster: LocalCluster) -> None:
    with LocalCluster(exec_protocols=(V4,)) as v4:
        v4.create_pvc("models")
        h = HelperPod(connect(v4.kubeconfig), "models")
        try:
            res = h.exec(
                ["sh", "-c", "dd bs=65536 count=5 iflag=count_bytes,fullblock 2>/dev/null | wc -c"],
                stdin=b"hello",
            )
            assert res.protocol == V4 and res.stdout.strip() == b"5"
        finally:
            h.close()


def test_client_offering_only_v4(api: KubeAPI, helper: HelperPod) -> None:
    client = ExecClient(api.configuration, protocols=(V4,))
    res = client.run("default", helper.ensure(), ["echo", "hi"], container="helper")
    assert res.protocol == V4 and res.stdout == b"hi\n"
    client.close()


def test_dropped_stream_raises(cluster: LocalCluster, helper: HelperPod) -> None:
    cluster.faults.drop_exec_after(1000, direction="stdout", command="yes")
    with pytest.raises(ExecStreamDropped):
        helper.exec(["sh", "-c", "yes | head -c 100000"])
    assert helper.exec(["true"]).exit_code == 0


def test_exec_into_missing_pod_is_refused(api: KubeAPI) -> None:
    client = ExecClient(api.configuration)
    with pytest.raises(ExecRefused) as err:
        client.run("default", "no-such-pod", ["true"])
    assert err.value.status == 404
    client.close()


def test_exec_handshake_429_is_retried(cluster: LocalCluster, helper: HelperPod) -> None:
    helper.ensure()
    cluster.faults.fail_requests("GET", r"/exec\?", status=429, times=1, retry_after=0)
    assert helper.exec(["echo", "ok"]).stdout == b"ok\n"
    assert any(f.detail == "429" for f in cluster.faults.fired)


# -- helper pod --------------------------------------------------------------------------------


def test_helper_pod_is_reused_and_well_formed(cluster: LocalCluster, helper: HelperPod) -> None:
    created = helper.pods_created
    for _ in range(3):
        helper.exec(["true"])
    assert helper.pods_created == max(created, 1)
    pod = cluster.get("Pod", helper.ensure())
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelrepo"
    assert meta["labels"]["modelrepo.io/claim"] == "models"
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["containers"][0]["image"] == "busybox"
    assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == MOUNT_PATH
    assert spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "50m"


def test_non_root_option(api: KubeAPI) -> None:
    h = HelperPod(api, "models", options=HelperOptions(run_as_user=1000))
    manifest = h.manifest("x")
    assert manifest["spec"]["securityContext"]["runAsUser"] == 1000
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    assert manifest["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_killed_helper_is_recreated_transparently(cluster: LocalCluster, api: KubeAPI) -> None:
    h = HelperPod(api, "models")
    try:
        first = h.ensure()
        cluster.kill_pod(first)
        # LocalCluster quirk: kill_pod returns while the pod still says Running, and an exec
        # in that window fails inside the sandbox (nsenter, exit 1); wait for Failed.
        cluster.wait_for_pod(first, phase="Failed")
        assert h.exec(["echo", "back"]).stdout == b"back\n"
        assert h.pod_name != first and h.pods_created == 2
    finally:
        h.close()


def test_close_deletes_the_pod(cluster: LocalCluster, api: KubeAPI) -> None:
    h = HelperPod(api, "models")
    name = h.ensure()
    h.close()
    deadline = time.monotonic() + 10
    while cluster.get("Pod", name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.get("Pod", name) is None


def test_cleanup_reaps_dead_helpers_only(cluster: LocalCluster, api: KubeAPI) -> None:
    dead = HelperPod(api, "models")
    dead_name = dead.ensure()
    cluster.kill_pod(dead_name)
    dead._pod = None  # simulate another process: this one no longer owns it
    dead._finalizer.detach()  # type: ignore[union-attr]
    live = HelperPod(api, "models")
    live_name = live.ensure()
    try:
        deadline = time.monotonic() + 10
        while cluster.get("Pod", dead_name)["status"].get("phase") != "Failed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        reaped = cleanup(api, claim="models")
        assert dead_name in reaped and live_name not in reaped
    finally:
        live.close()


def test_ready_timeout_quotes_pod_status(cluster: LocalCluster, api: KubeAPI) -> None:
    cluster.faults.delay_pod_start(r"^modelrepo-", seconds=5)
    h = HelperPod(api, "models", options=HelperOptions(ready_timeout=1))
    try:
        with pytest.raises(ClusterError) as err:
            h.ensure()
        assert "not Running after 1s" in str(err.value) and "phase=Pending" in str(err.value)
    finally:
        cluster.faults.clear()
        h.close()


def _claim_user(cluster: LocalCluster, name: str, claim: str) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "triton"}},
            "spec": {
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "600"]}],
                "volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": claim}}],
            },
        }
    )
    cluster.wait_for_pod(name)


def test_rwo_claim_in_use_pins_the_helper_to_that_node(cluster: LocalCluster, api: KubeAPI) -> None:
    cluster.create_pvc("rwo", access_modes=("ReadWriteOnce",))
    _claim_user(cluster, "triton-0", "rwo")
    node = cluster.get("Pod", "triton-0")["spec"]["nodeName"]
    h = HelperPod(api, "rwo")
    try:
        spec = cluster.get("Pod", h.ensure())["spec"]
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node]
    finally:
        h.close()
        cluster.delete("Pod", "triton-0", grace_period=0)


def test_rwop_claim_in_use_is_refused_clearly(cluster: LocalCluster, api: KubeAPI) -> None:
    cluster.create_pvc("rwop", access_modes=("ReadWriteOncePod",))
    _claim_user(cluster, "only-user", "rwop")
    try:
        with pytest.raises(ClusterError, match="ReadWriteOncePod"):
            HelperPod(api, "rwop").ensure()
    finally:
        cluster.delete("Pod", "only-user", grace_period=0)


def test_helper_is_deleted_when_the_interpreter_exits(cluster: LocalCluster) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from modelrepo.fs import PVCFileSystem\n"
        "fs = PVCFileSystem('models', kubeconfig=sys.argv[1])\n"
        "fs.ls('/')\n"
        "print(fs.helper.pod_name)\n"  # no close(): exit must clean up
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    name = out.stdout.strip()
    assert name.startswith("modelrepo-models-")
    assert "Unclosed" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    deadline = time.monotonic() + 10
    while cluster.get("Pod", name) is not None:
        assert time.monotonic() < deadline, "helper pod left behind after exit"
        time.sleep(0.1)


def test_hung_requests_time_out_and_are_retried(cluster: LocalCluster) -> None:
    api = connect(
        cluster.kubeconfig,
        retry=RetryPolicy(attempts=3, base_delay=0.05, request_timeout=(2.0, 1.0)),
    )
    cluster.faults.hang_requests("GET", r"/persistentvolumeclaims/models$", seconds=5)
    started = time.monotonic()
    pvc = api.call(
        api.core.read_namespaced_persistent_volume_claim,
        "models",
        namespace="default",
        action="get persistentvolumeclaims models",
    )
    assert pvc.metadata.name == "models" and 1.0 <= time.monotonic() - started < 5


def test_hung_exec_handshake_is_retried(cluster: LocalCluster, api: KubeAPI) -> None:
    h = HelperPod(api, "models", connect_timeout=1.0)
    try:
        h.ensure()
        cluster.faults.hang_requests("GET", r"/exec\?", seconds=5)
        assert h.exec(["echo", "ok"]).stdout == b"ok\n"
    finally:
        cluster.faults.clear()
        h.close()
