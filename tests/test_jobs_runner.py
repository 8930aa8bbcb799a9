"""run_job against LocalCluster: real Jobs and pods in the busybox sandbox, through the real API.

Option A runs the real ``aws s3 sync`` against a local S3 server (moto) and Triton loads the
result; Option B runs a busybox build that writes a model from read-only inputs; Option C's
init container fills the emptyDir the Triton container reads.
"""

from __future__ import annotations

import contextlib
import filecmp
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from modelrepo.errors import ClusterError
from modelrepo.jobs import (
    JobFailedError,
    JobResult,
    JobTimeoutError,
    build_job,
    run_job,
    s3_sync_job,
    triton_manifests,
    unique_name,
)
from modelrepo.testing.models import write_add_one_model
from modelrepo.transport.api import KubeAPI, connect

NAMESPACE = "default"
CLAIM = "jobs-claim"

pytestmark = pytest.mark.timeout(180)


class Cluster:
    """What the tests need from one LocalCluster: the API, the claim and its host folder."""

    def __init__(self, cluster: Any, api: KubeAPI, claim_dir: Path) -> None:
        self.cluster = cluster
        self.api = api
        self.claim_dir = claim_dir
        self.batch = k8s.BatchV1Api(api.api_client)

    def job_exists(self, name: str) -> bool:
        try:
            self.batch.read_namespaced_job(name, NAMESPACE)
        except k8s.ApiException as exc:
            assert exc.status == 404
            return False
        return True

    def pods_of(self, name: str) -> list[str]:
        pods = self.api.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}")
        return [p.metadata.name for p in pods.items]

    def wait_gone(self, name: str, timeout: float = 20.0) -> None:
        """The Job and (Background deletion) its pods disappear."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.job_exists(name) and not self.pods_of(name):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {name} or its pods still exist: {self.pods_of(name)}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from modelrepo.testing import LocalCluster

    with LocalCluster() as local:
        claim_dir = Path(local.create_pvc(CLAIM, namespace=NAMESPACE))
        api = connect(kubeconfig=local.kubeconfig, namespace=NAMESPACE)
        try:
            yield Cluster(local, api, claim_dir)
        finally:
            api.close()


def _busybox(name: str, command: str, **kw: Any) -> dict[str, Any]:
    """A Job running ``command`` (sh) in busybox with ``{output}`` = claim folder ``out/<name>``."""
    kw.setdefault("output_path", f"out/{name}")
    return build_job(name, claim=CLAIM, image="busybox", command=command, **kw)


def test_job_succeeds_streams_its_log_and_writes_into_the_claim(cluster: Cluster) -> None:
    name = unique_name("ok")
    lines: list[str] = []
    manifest = _busybox(
        name, "echo start; for i in 1 2 3; do echo line $i; done; echo hi > {output}/hello.txt"
    )
    result = run_job(cluster.api, manifest, timeout=60, log=lines.append, poll=0.2)
    assert isinstance(result, JobResult)
    assert result.succeeded
    assert result.exit_code == 0
    assert (cluster.claim_dir / "out" / name / "hello.txt").read_text() == "hi\n"
    container_lines = [line for line in lines if not line.startswith(f"job {name}:")]
    assert container_lines == ["start", "line 1", "line 2", "line 3"]
    assert result.log_tail == ("start", "line 1", "line 2", "line 3")
    assert any("succeeded" in line for line in lines if line.startswith(f"job {name}:"))
    assert "succeeded=True" in repr(result)
    assert name in repr(result)
    cluster.wait_gone(name)


def test_failed_job_raises_with_exit_code_reason_and_log_tail(cluster: Cluster) -> None:
    name = unique_name("fail")
    manifest = _busybox(name, "echo about to fail; echo 'cannot open input' >&2; exit 3")
    with pytest.raises(JobFailedError) as info:
        run_job(cluster.api, manifest, timeout=60, log=None, poll=0.2)
    err = info.value
    assert isinstance(err, ClusterError)
    assert err.exit_code == 3
    assert err.reason == "BackoffLimitExceeded"
    assert err.log_tail == ["about to fail", "cannot open input"]
    text = str(err)
    assert "exit code 3" in text
    assert "cannot open input" in text
    assert "->" in text  # a hint says what to do
    assert not err.result.succeeded
    cluster.wait_gone(name)


@pytest.mark.slow
def test_active_deadline_ends_the_job_with_deadline_exceeded(cluster: Cluster) -> None:
    name = unique_name("deadline")
    manifest = _busybox(name, "echo sleeping; sleep 60", active_deadline_seconds=5)
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        run_job(cluster.api, manifest, timeout=60, log=None, poll=0.2)
    assert time.monotonic() - started < 30
    assert info.value.reason == "DeadlineExceeded"
    assert "activeDeadlineSeconds" in str(info.value)
    assert "sleeping" in info.value.log_tail
    cluster.wait_gone(name)


@pytest.mark.slow
def test_timeout_deletes_the_job(cluster: Cluster) -> None:
    name = unique_name("slow")
    manifest = _busybox(name, "echo working; sleep 60")
    with pytest.raises(JobTimeoutError) as info:
        run_job(cluster.api, manifest, timeout=3, log=None, poll=0.2)
    assert isinstance(info.value, TimeoutError)
    assert "timeout=" in str(info.value)
    cluster.wait_gone(name)


def test_interrupt_deletes_the_job(cluster: Cluster) -> None:
    """Ctrl-C while the log streams (the callback runs in the caller's thread)."""
    name = unique_name("interrupt")
    manifest = _busybox(name, "echo first; sleep 60")

    def interrupt(line: str) -> None:
        if line == "first":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(cluster.api, manifest, timeout=60, log=interrupt, poll=0.2)
    cluster.wait_gone(name)


def test_keep_leaves_the_finished_job_and_a_plain_api_client_works(cluster: Cluster) -> None:
    name = unique_name("keep")
    plain = cluster.api.api_client  # a kubernetes ApiClient, not modelrepo's KubeAPI
    result = run_job(plain, _busybox(name, "true"), timeout=60, log=None, keep=True)
    assert result.succeeded
    job = cluster.batch.read_namespaced_job(name, NAMESPACE)
    assert job.spec.ttl_seconds_after_finished == 600
    cluster.batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
    cluster.wait_gone(name)


def test_missing_secret_fails_fast(cluster: Cluster) -> None:
    name = unique_name("nosecret")
    manifest = s3_sync_job(
        name, claim=CLAIM, source="s3://bucket/x", dest_path="out/x", secret="does-not-exist"
    )
    started = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        run_job(cluster.api, manifest, timeout=60, log=None, poll=0.2)
    assert time.monotonic() - started < 30
    assert info.value.reason == "CreateContainerConfigError"
    assert "kubectl create secret" in str(info.value)
    cluster.wait_gone(name)


def test_api_refusal_is_a_cluster_error(cluster: Cluster) -> None:
    manifest = _busybox(unique_name("nons"), "true", namespace="no-such-namespace")
    with pytest.raises(ClusterError, match="no-such-namespace"):
        run_job(cluster.api, manifest, timeout=30, log=None)


# --------------------------------------------------------------------------- Option B


def test_option_b_build_reads_inputs_read_only_and_writes_a_model(cluster: Cluster) -> None:
    source = write_add_one_model(cluster.claim_dir / "sources", "add_one")
    name = unique_name("build")
    script = (
        "set -e; "
        "if touch {inputs[src]}/x 2>/dev/null; then echo inputs are writable; exit 9; fi; "
        "mkdir -p {output}/1; "
        "cp {inputs[src]}/1/model.py {output}/1/model.py; "
        "sed 's/add_one/built_{tag}/' {inputs[src]}/config.pbtxt > {output}/config.pbtxt; "
        "echo built {tag}"
    )
    manifest = build_job(
        name,
        claim=CLAIM,
        image="busybox",
        command=script,
        inputs={"src": "sources/add_one"},
        params={"tag": "v2"},
        output_path=f"staging/{name}",
    )
    lines: list[str] = []
    result = run_job(cluster.api, manifest, timeout=90, log=lines.append, poll=0.2)
    assert "built v2" in lines
    out = cluster.claim_dir / "staging" / name
    assert (out / "1" / "model.py").read_bytes() == (source / "1" / "model.py").read_bytes()
    assert 'name: "built_v2"' in (out / "config.pbtxt").read_text()
    assert not (source / "x").exists()
    assert result.succeeded


# --------------------------------------------------------------------------- Option A


class Bucket:
    """A local S3 server holding ``s3://models/model-repo/add_one`` and a Secret to read it."""

    def __init__(self, endpoint: str, model: Path, secret: str) -> None:
        self.endpoint, self.model, self.secret = endpoint, model, secret


@pytest.fixture
def bucket(cluster: Cluster, tmp_path: Path) -> Iterator[Bucket]:
    from modelrepo.testing import LocalS3

    secret = unique_name("aws")
    with LocalS3() as s3:
        model = write_add_one_model(tmp_path / "src", "add_one")
        (model / "1" / "weights.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
        s3.upload(model, "s3://models/model-repo/add_one")
        cluster.api.core.create_namespaced_secret(NAMESPACE, s3.secret_manifest(secret, NAMESPACE))
        try:
            yield Bucket(s3.endpoint_url, model, secret)
        finally:
            with contextlib.suppress(k8s.ApiException):
                cluster.api.core.delete_namespaced_secret(secret, NAMESPACE)


@pytest.mark.slow
def test_option_a_real_aws_s3_sync_into_the_claim_then_triton_loads_it(
    cluster: Cluster, bucket: Bucket
) -> None:
    import tritonclient.http as httpclient

    from modelrepo.testing import LocalTriton

    name = unique_name("sync")
    manifest = s3_sync_job(
        name,
        claim=CLAIM,
        source="s3://models/model-repo/add_one",
        dest_path="repo/add_one",
        secret=bucket.secret,
        endpoint_url=bucket.endpoint,
        region="us-east-1",
    )
    lines: list[str] = []
    result = run_job(cluster.api, manifest, timeout=120, log=lines.append, poll=0.2)
    assert result.succeeded
    downloads = [line for line in lines if line.startswith("download: s3://models/")]
    assert len(downloads) == 3
    copied = cluster.claim_dir / "repo" / "add_one"
    compared = filecmp.dircmp(bucket.model, copied)
    assert not compared.left_only and not compared.right_only and not compared.diff_files
    for rel in ("config.pbtxt", "1/model.py", "1/weights.bin"):
        assert (copied / rel).read_bytes() == (bucket.model / rel).read_bytes()

    with LocalTriton(repository=cluster.claim_dir / "repo") as triton:
        client = httpclient.InferenceServerClient(triton.url)
        client.load_model("add_one")
        assert client.is_model_ready("add_one")


@pytest.mark.slow
def test_option_c_init_container_fills_the_shared_empty_dir(
    cluster: Cluster, bucket: Bucket
) -> None:
    """The Deployment's pod template, run as one pod: Triton swapped for a busybox lister.

    (LocalCluster runs no Deployment controller and has no Triton image; the init container
    and the volume wiring are what this checks.)
    """
    deployment, _service = triton_manifests(
        "triton-init",
        mode="init-sync",
        s3_source="s3://models/model-repo",
        secret=bucket.secret,
        endpoint_url=bucket.endpoint,
        region="us-east-1",
    )
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    triton = pod_spec["containers"][0]
    triton.update(image="busybox", command=["sh", "-c", "cd /models && find . -type f | sort"])
    for key in ("readinessProbe", "livenessProbe", "startupProbe"):
        triton.pop(key)
    pod_spec["restartPolicy"] = "Never"
    name = unique_name("triton-init")
    cluster.api.core.create_namespaced_pod(
        NAMESPACE,
        {"metadata": {"name": name, "labels": template["metadata"]["labels"]}, "spec": pod_spec},
    )
    try:
        end = time.monotonic() + 90
        phase = "Pending"
        while time.monotonic() < end and phase not in ("Succeeded", "Failed"):
            time.sleep(0.3)
            phase = cluster.api.core.read_namespaced_pod(name, NAMESPACE).status.phase
        pod = cluster.api.core.read_namespaced_pod(name, NAMESPACE)
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        assert phase == "Succeeded", [(c.name, c.state) for c in statuses]
        listed = cluster.api.core.read_namespaced_pod_log(name, NAMESPACE, container="triton")
        assert listed.split() == [
            "./add_one/1/model.py",
            "./add_one/1/weights.bin",
            "./add_one/config.pbtxt",
        ]
    finally:
        cluster.api.core.delete_namespaced_pod(name, NAMESPACE)
