"""ModelRepo's in-cluster routes: push(via="job") from S3, build(), manifests(), and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo import ModelRepo
from modelrepo.cli import main as cli_main
from modelrepo.errors import InputError
from modelrepo.jobs import JobFailedError
from modelrepo.testing import LocalCluster
from modelrepo.testing.models import write_add_one_model

CLAIM = "jobs-repo"
TRITON_REPLICAS = 1  # the cluster and repo fixtures: tests/conftest.py
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A local S3 with s3://models/model-repo/s3_model and a Secret holding its keys."""
    from modelrepo.testing import LocalS3

    with LocalS3(access_key="AKIAEXAMPLEKEY", secret_key="very-secret-value") as server:
        model = write_add_one_model(tmp_path_factory.mktemp("s3src"), "s3_model")
        (model / "1" / "weights.bin").write_bytes(bytes(range(256)) * 2048)
        server.upload(model, "s3://models/model-repo/s3_model")
        cluster.create(server.secret_manifest("aws-creds"), namespace="default")
        yield {"endpoint": server.endpoint_url, "model": model, "keys": server.credentials}


def test_push_via_job_syncs_s3_in_the_cluster_and_publishes(
    repo: ModelRepo, cluster: LocalCluster, s3: dict, capsys
):
    result = repo.push(
        "s3_model",
        source="s3://models/model-repo/s3_model",
        via="job",
        secret="aws-creds",
        endpoint_url=s3["endpoint"],
        load=True,
    )
    claim = cluster.pvc_path(CLAIM)
    assert result.version == 1 and result.loaded is not None and result.loaded.ok
    published = claim / "s3_model" / "1" / "weights.bin"
    assert published.read_bytes() == (s3["model"] / "1" / "weights.bin").read_bytes()
    assert (claim / "s3_model" / "config.pbtxt").read_text() == (
        s3["model"] / "config.pbtxt"
    ).read_text()
    # the workspace is gone, the manifest records real digests
    meta = claim / "s3_model" / ".modelrepo"
    assert not [p for p in meta.iterdir() if p.name.startswith("staging-")]
    manifest = json.loads((meta / "manifests" / "1.json").read_text())
    assert len(manifest["files"]["weights.bin"]["sha256"]) == 64
    # no credential reached anything we print or keep
    for text in (repr(result), repr(repo), json.dumps(manifest)):
        assert s3["keys"]["AWS_SECRET_ACCESS_KEY"] not in text
    # a second sync becomes version 2
    again = repo.push(
        "s3_model",
        source="s3://models/model-repo/s3_model",
        via="job",
        secret="aws-creds",
        endpoint_url=s3["endpoint"],
    )
    assert again.version == 2
    assert repo.list_versions("s3_model") == [1, 2]


def test_failed_sync_publishes_nothing(repo: ModelRepo, cluster: LocalCluster, s3: dict):
    with pytest.raises(JobFailedError):
        repo.push(
            "s3_missing",
            source="s3://no-such-bucket/model",
            via="job",
            secret="aws-creds",
            endpoint_url=s3["endpoint"],
        )
    assert repo.list_versions("s3_missing") == []
    meta = cluster.pvc_path(CLAIM) / "s3_missing" / ".modelrepo"
    assert not meta.exists() or not [p for p in meta.iterdir() if p.name.startswith("staging-")]


def test_push_via_job_refuses_non_s3_sources(repo: ModelRepo, tmp_path: Path):
    with pytest.raises(InputError, match="syncs from S3"):
        repo.push("x", source=str(tmp_path), via="job")


def test_build_publishes_what_the_job_wrote(repo: ModelRepo, cluster: LocalCluster, tmp_path):
    # An input folder on the claim, as a checkpoint would be.
    checkpoint = cluster.pvc_path(CLAIM) / "checkpoints" / "add"
    checkpoint.mkdir(parents=True)
    model = write_add_one_model(tmp_path / "src", "built")
    (checkpoint / "model.py").write_bytes((model / "1" / "model.py").read_bytes())
    script = "cp {inputs[ckpt]}/model.py {output}/model.py && echo built > {output}/NOTES"
    result = repo.build(
        "built",
        image="busybox",
        command=script,
        inputs={"ckpt": "checkpoints/add"},
        config=str(model / "config.pbtxt"),
        load=True,
    )
    assert result.version == 1 and result.loaded is not None and result.loaded.ok
    published = cluster.pvc_path(CLAIM) / "built" / "1"
    names = sorted(p.name for p in published.iterdir() if p.name != "__pycache__")  # Triton's
    assert names == ["NOTES", "model.py"]


def test_failed_build_publishes_nothing(repo: ModelRepo, cluster: LocalCluster):
    with pytest.raises(JobFailedError) as err:
        repo.build("fails", image="busybox", command="echo boom >&2; exit 3")
    assert err.value.exit_code == 3
    assert repo.list_versions("fails") == []


def test_build_input_must_exist(repo: ModelRepo):
    with pytest.raises(InputError, match="not on the claim"):
        repo.build("x", image="busybox", command="true", inputs={"ckpt": "nope/nothing"})


def test_manifests_write_yaml_that_kubectl_accepts(
    repo: ModelRepo, cluster: LocalCluster, tmp_path: Path
):
    path = tmp_path / "triton.yaml"
    docs = repo.manifests(mode="pvc", path=path)
    kinds = [d["kind"] for d in docs]
    assert {"Deployment", "Service", "Role", "RoleBinding"} <= set(kinds)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = json.dumps(deployment["spec"]["template"]["spec"]["containers"][0])
    assert "--model-control-mode=explicit" in args
    out = cluster.kubectl("apply", "--dry-run=client", "-f", str(path))
    assert out.returncode == 0, out.stderr
    assert "deployment.apps/triton" in out.stdout


def test_cli_manifests_and_build(cluster: LocalCluster, tmp_path: Path, capsys):
    common = ["--pvc", CLAIM, "--kubeconfig", str(cluster.kubeconfig), "-n", "default"]
    assert (
        cli_main(
            [
                "manifests",
                *common,
                "--mode",
                "init-sync",
                "--s3-source",
                "s3://b/model-repo",
                "--secret",
                "aws-creds",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "kind: Deployment" in text and "initContainers" in text
    assert (
        cli_main(
            ["build", "cli_built", *common, "--image", "busybox", "--command", "exit 4", "--json"]
        )
        == 1
    )
    assert "exit" in capsys.readouterr().err.lower()
