"""ModelRepo end to end: LocalCluster (helper pod over exec) + real Triton replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelrepo import ModelRepo
from modelrepo.cli import main as cli_main
from modelrepo.errors import ClusterError, InputError, LayoutError, ModelRepoError, TritonError
from modelrepo.testing import LocalCluster
from modelrepo.testing.models import write_add_one_model, write_broken_model
from modelrepo.triton.rps._http import parse_url, request_json
from modelrepo.triton.rps.report import sum_model_stats

CLAIM = "triton-model-repo"
TRITON_REPLICAS = 2  # the cluster, claim_dir and repo fixtures: tests/conftest.py
pytestmark = pytest.mark.slow


def model_source(tmp_path: Path, name: str, payload: bytes = b"") -> Path:
    folder = write_add_one_model(tmp_path / "model_repository", name)
    if payload:
        (folder / "1" / "weights.bin").write_bytes(payload)
    return folder


def test_push_load_measure_on_every_replica(repo: ModelRepo, tmp_path: Path, claim_dir: Path):
    source = model_source(tmp_path, "e2e_add", os.urandom(3 << 20))
    first = repo.push("e2e_add", source=source)
    assert first.version == 1 and first.bytes_sent == 3 * 2**20 + len(
        (source / "1" / "model.py").read_bytes()
    )
    again = repo.push("e2e_add", source=source)
    assert (again.version, again.bytes_sent, again.bytes_skipped) == (2, 0, first.bytes_sent)
    assert repo.list_versions("e2e_add") == [1, 2]
    assert (claim_dir / "e2e_add" / "2" / "weights.bin").read_bytes() == (
        source / "1" / "weights.bin"
    ).read_bytes()

    loaded = repo.load("e2e_add")
    assert loaded.ok and len(loaded.replicas) == 2
    status = repo.status("e2e_add")
    assert status.ready("e2e_add", 2)
    assert status.loaded_versions("e2e_add") == [2]

    pinned = repo.load("e2e_add", version=1)
    assert pinned.ok
    assert repo.status("e2e_add").loaded_versions("e2e_add") == [1]

    report = repo.measure_rps("e2e_add", concurrency=[1, 4], duration=0.6, warmup=0.2)
    steps = report.to_dict()["steps"]
    assert [s["concurrency"] for s in steps] == [1, 4]
    for step in steps:
        assert step["rps"] > 0 and step["errors"] == 0
        assert step["p50_ms"] <= step["p99_ms"]
        # both replicas served: the server-side count covers the client's claim
        assert abs(step["server"]["success"] - step["requests"]) <= max(2, 0.02 * step["requests"])
    repo.unload("e2e_add")
    assert repo.status("e2e_add").loaded_versions("e2e_add") == []


def test_triton_given_as_url_list(cluster: LocalCluster, repo: ModelRepo, tmp_path: Path):
    urls = repo.triton_urls()
    assert len(urls) == 2 and len(set(urls)) == 2
    repo.push("by_url", source=model_source(tmp_path, "by_url"))
    with ModelRepo(
        pvc=CLAIM, namespace="default", kubeconfig=cluster.kubeconfig, triton=urls, progress=False
    ) as direct:
        assert direct.load("by_url").ok
        assert direct.status("by_url").ready("by_url", 1)


def _served(url: str, model: str) -> int:
    """Triton's own count of successful requests for ``model`` on one replica."""
    status, stats = request_json(parse_url(url), "GET", f"/v2/models/{model}/stats")
    assert status == 200, stats
    return sum_model_stats([stats])["success_count"]


def test_replicas_service_means_the_front_door(
    cluster: LocalCluster, repo: ModelRepo, tmp_path: Path
):
    # a Service name: its cluster DNS name and Service port (the pods listen elsewhere here)
    assert repo.triton_urls("service") == ["triton.default.svc:8000"]
    assert all(not url.startswith("triton.") for url in repo.triton_urls())
    with pytest.raises(InputError, match="replicas must be 'all' or 'service'"):
        repo.measure_rps("any", replicas="one")
    common = {"pvc": CLAIM, "namespace": "default", "kubeconfig": cluster.kubeconfig}
    with (
        ModelRepo(**common, triton="no-such-svc") as nameless,
        pytest.raises(ClusterError, match="no Service 'no-such-svc'") as info,
    ):
        nameless.triton_urls("service")
    assert "replicas='all'" in str(info.value)
    # URLs given: the first one is the front door; the other replica gets no request
    urls = repo.triton_urls()
    repo.push("front_door", source=model_source(tmp_path, "front_door"))
    with ModelRepo(**common, triton=urls, progress=False) as direct:
        assert direct.load("front_door").ok
        report = direct.measure_rps(
            "front_door", replicas="service", concurrency=[2], duration=0.3, warmup=0.1
        )
    (step,) = report.steps
    assert step.requests > 0 and step.errors == 0
    assert _served(urls[0], "front_door") >= step.requests and _served(urls[1], "front_door") == 0


def test_broken_model_surfaces_triton_message_per_replica(repo: ModelRepo, tmp_path: Path):
    from modelrepo.testing.models import BROKEN_MODEL_MESSAGE

    repo.push("broken", source=write_broken_model(tmp_path / "src", "broken"))
    with pytest.raises(TritonError) as err:
        repo.load("broken")
    text = str(err.value)
    assert BROKEN_MODEL_MESSAGE in text
    for url in repo.triton_urls():
        assert url in text


def test_unknown_model_load_says_push_first(repo: ModelRepo):
    with pytest.raises(ModelRepoError, match=r"repo\.push\('ghost_model'\)"):
        repo.load("ghost_model")


def test_invalid_model_never_reaches_the_claim(repo: ModelRepo, tmp_path: Path, claim_dir: Path):
    source = model_source(tmp_path, "bad_cfg")
    config = source / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: -3"))
    with pytest.raises(LayoutError):
        repo.push("bad_cfg", source=source)
    assert not (claim_dir / "bad_cfg").exists()


def test_missing_claim_is_a_clear_error(cluster: LocalCluster, tmp_path: Path):
    repo = ModelRepo(pvc="no-such-claim", namespace="default", kubeconfig=cluster.kubeconfig)
    with pytest.raises(ClusterError, match="no-such-claim") as err:
        repo.list_models()
    assert "PVC" in str(err.value) or "claim" in str(err.value)


def test_push_from_s3_source(repo: ModelRepo, tmp_path: Path, claim_dir: Path, monkeypatch):
    from modelrepo.testing import LocalS3

    with LocalS3() as s3:
        for key, value in s3.credentials.items():
            monkeypatch.setenv(key, value)  # what the source's s3fs reads, as boto3 would
        monkeypatch.setenv("AWS_DEFAULT_REGION", s3.region)
        source = model_source(tmp_path, "from_s3", b"s3-bytes" * 1000)
        s3.upload(source, "s3://models/model-repo/from_s3")
        result = repo.push(
            "from_s3",
            source="s3://models/model-repo/from_s3",
            source_options={"endpoint_url": s3.endpoint_url},
        )
    assert result.version == 1
    assert (claim_dir / "from_s3" / "1" / "weights.bin").read_bytes() == b"s3-bytes" * 1000
    assert repo.load("from_s3").ok


def test_cli_push_versions_load_status_json(cluster: LocalCluster, tmp_path: Path, capsys):
    source = model_source(tmp_path, "cli_model")
    common = ["--kubeconfig", str(cluster.kubeconfig), "-n", "default", "--json"]
    assert cli_main(["push", "cli_model", str(source), *common]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["version"] == 1 and pushed["model"] == "cli_model"
    assert cli_main(["versions", "cli_model", *common]) == 0
    assert json.loads(capsys.readouterr().out) == [1]
    assert cli_main(["load", "cli_model", "--triton", "triton", *common]) == 0
    capsys.readouterr()
    assert cli_main(["status", "cli_model", "--triton", "triton", *common]) == 0
    assert "READY" in capsys.readouterr().out
    # bad input: exit code 2 and a message naming the problem
    assert cli_main(["push", "cli_model", str(tmp_path / "nowhere"), *common]) == 2
    assert "source not found" in capsys.readouterr().err


def test_cli_rps_replicas_service_goes_to_the_service_address(cluster: LocalCluster, capsys):
    common = ["--kubeconfig", str(cluster.kubeconfig), "-n", "default", "--duration", "0.3"]
    # outside a cluster the Service's DNS name does not resolve: the error names it
    assert cli_main(["rps", "any", "--triton", "triton", "--replicas", "service", *common]) == 1
    assert "cannot reach Triton at triton.default.svc:8000" in capsys.readouterr().err


def test_demo_command_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "modelrepo.cli", "demo", "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Loaded on every replica" in proc.stdout
    assert "requests/s" in proc.stdout


def test_cleanup_right_after_a_push_keeps_the_repository_usable(repo: ModelRepo, tmp_path: Path):
    source = model_source(tmp_path, "after_cleanup")
    repo.push("after_cleanup", source=source)
    assert repo.cleanup("after_cleanup") == []  # nothing stale: in-flight pushes are safe
    repo.cleanup("after_cleanup", older_than=0)
    assert repo.push("after_cleanup", source=source).version == 2
    assert repo.list_versions("after_cleanup") == [1, 2]


def test_empty_folder_lists_as_empty_after_its_parent_was_listed(repo: ModelRepo):
    fs = repo.fs
    fs.makedirs("/listing_probe/empty", exist_ok=True)
    fs.ls("/listing_probe")  # caches the parent's listing
    assert fs.ls("/listing_probe/empty", detail=False) == []
    fs.rm("/listing_probe", recursive=True)


def test_closing_one_repo_keeps_the_helper_another_still_uses(cluster: LocalCluster):
    def open_repo() -> ModelRepo:
        return ModelRepo(pvc=CLAIM, namespace="default", kubeconfig=cluster.kubeconfig)

    first, second = open_repo(), open_repo()
    first.list_models()
    assert second.fs is first.fs  # fsspec hands both the same filesystem
    pod = first.fs.helper.pod_name
    assert pod is not None
    second.close()
    assert cluster.get("Pod", pod) is not None  # still first's
    first.list_models()
    assert first.fs.helper.pod_name == pod
    first.close()
    gone = cluster.get("Pod", pod)
    assert gone is None or gone["metadata"].get("deletionTimestamp")


def test_a_file_rewritten_during_a_pvc_push_is_refused(repo: ModelRepo, tmp_path: Path):
    source = model_source(tmp_path, "rewritten", os.urandom(2 << 20))
    weights = source / "1" / "weights.bin"

    def build_still_writing(done: int, total: int) -> None:
        if weights.stat().st_size == 2 << 20:
            with weights.open("ab") as f:
                f.write(b"more")

    with pytest.raises(ModelRepoError, match="changed while they were being pushed"):
        repo.push("rewritten", source=source, progress=build_still_writing)
    assert repo.list_versions("rewritten") == []
    assert repo.push("rewritten", source=source).version == 1
