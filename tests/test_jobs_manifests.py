"""Manifests of modelrepo.jobs: judged by the kubernetes client's own models and by kubectl."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from modelrepo.jobs import (
    RBAC_RULES,
    ManifestError,
    build_job,
    rbac_manifests,
    render_command,
    s3_sync_job,
    to_yaml,
    triton_manifests,
    unique_name,
    write_yaml,
)

MODEL_OF_KIND = {
    "Job": "V1Job",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
}


def _sync(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "claim": "triton-model-repo",
        "namespace": "ml",
        "source": "s3://bucket/model-repo/llama2_7b",
        "dest_path": "llama2_7b/.modelrepo/staging-ab12",
    }
    return s3_sync_job("sync-llama", **{**args, **kw})


def _build(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "claim": "triton-model-repo",
        "image": "nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3",
        "inputs": {"checkpoint": "checkpoints/llama2_7b"},
        "output_path": "llama2_7b/.modelrepo/staging-cd34/1",
    }
    return build_job("build-llama", **{**args, **kw})


def all_manifests() -> list[dict[str, Any]]:
    """One of everything the module produces, with most options switched on."""
    return [
        _sync(),
        _sync(secret="aws-creds", endpoint_url="http://minio:9000", region="eu-west-1"),
        _sync(service_account="s3-reader", extra_args=["--exclude", "*.tmp"], dest_path=""),
        _sync(node="node-7", security_context={"runAsUser": 1000, "runAsGroup": 1000}),
        _build(gpus=1, env={"CUDA_VISIBLE_DEVICES": "0"}, secret_env={"HF_TOKEN": ("hf", "t")}),
        _build(
            command="cp -r {inputs[checkpoint]}/. {output}/ && echo done",
            security_context={"runAsUser": 1000, "fsGroup": 1000},
            node_selector={"gpu": "a100"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            image_pull_secrets=["ngc"],
        ),
        *triton_manifests(claim="triton-model-repo", namespace="ml", replicas=2, gpus=1),
        *triton_manifests(
            "triton-s3",
            mode="init-sync",
            s3_source="s3://bucket/model-repo",
            secret="aws-creds",
            endpoint_url="http://minio:9000",
            cache_size="20Gi",
            load_models=["*"],
        ),
        *rbac_manifests(namespace="ml", users=["alice@example.com"], groups=["ml-team"]),
        *rbac_manifests("modelrepo-sa", service_account="notebook"),
    ]


@pytest.mark.parametrize(
    "manifest",
    all_manifests(),
    ids=lambda m: f"{m['kind']}-{m['metadata']['name']}",
)
def test_manifest_is_a_valid_kubernetes_object(manifest: dict[str, Any]) -> None:
    """Deserialized by the client's own model, nothing is lost: no misspelled field."""
    api = k8s.ApiClient()
    model_name = MODEL_OF_KIND[manifest["kind"]]
    model = api._ApiClient__deserialize(manifest, model_name)  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(model) == manifest
    model_cls = getattr(k8s, model_name)
    if hasattr(model_cls, "model_validate"):  # pydantic clients also refuse unknown fields
        model_cls.model_validate(manifest)


def test_model_check_catches_a_misspelled_field() -> None:
    """The check above can fail: a typo is dropped by the model, so the round trip differs."""
    bad = _sync()
    bad["spec"]["backofLimit"] = bad["spec"].pop("backoffLimit")
    api = k8s.ApiClient()
    model = api._ApiClient__deserialize(bad, "V1Job")  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(model) != bad


def test_s3_sync_job_command_mounts_and_credentials() -> None:
    job = _sync(secret="aws-creds", endpoint_url="http://minio:9000", region="eu-west-1")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "amazon/aws-cli"
    assert container["command"] == [
        "aws",
        "s3",
        "sync",
        "--no-progress",
        "s3://bucket/model-repo/llama2_7b",
        "/models/llama2_7b/.modelrepo/staging-ab12",
        "--endpoint-url",
        "http://minio:9000",
    ]
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]
    assert pod["volumes"] == [
        {"name": "models", "persistentVolumeClaim": {"claimName": "triton-model-repo"}}
    ]
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "aws-creds", "key": key}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_DEFAULT_REGION"] == {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelrepo"


def test_s3_sync_job_never_inlines_credentials_and_uses_the_service_account() -> None:
    job = _sync(service_account="s3-reader")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "s3-reader"
    assert "env" not in pod["containers"][0]
    assert "SECRET" not in to_yaml(job).upper().replace("SECRET_ACCESS", "")


def test_node_pins_the_pod_where_a_read_write_once_claim_is_attached() -> None:
    for job in (_sync(node="node-7"), _build(node="node-7")):
        affinity = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term == {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-7"]}]
        }
    assert "affinity" not in _sync()["spec"]["template"]["spec"]


def test_paths_are_confined_to_the_claim() -> None:
    assert _sync(dest_path="/a//b/./c/")["spec"]["template"]["spec"]["containers"][0]["command"][
        5
    ] == ("/models/a/b/c")
    for bad in ("../x", "a/../../x", "a/.."):
        with pytest.raises(ManifestError, match=r"'\.\.'"):
            _sync(dest_path=bad)
        with pytest.raises(ManifestError, match=r"'\.\.'"):
            _build(inputs={"checkpoint": bad})
        with pytest.raises(ManifestError, match=r"'\.\.'"):
            _build(output_path=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "bucket/prefix"}, "not an S3 URL"),
        ({"source": "s3:///prefix"}, "not an S3 URL"),
        ({"claim": "Bad_Claim"}, "claim"),
        ({"secret": "no spaces"}, "secret"),
        ({"namespace": "ML"}, "namespace"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        _sync(**kwargs)
    assert info.value.hint
    assert isinstance(info.value, ValueError)


def test_job_names_are_checked_and_unique_name_makes_valid_ones() -> None:
    with pytest.raises(ManifestError, match="job name"):
        s3_sync_job("Sync_Llama", claim="c", source="s3://b/p", dest_path="x")
    with pytest.raises(ManifestError, match="job name"):
        s3_sync_job("x" * 64, claim="c", source="s3://b/p", dest_path="x")
    names = {unique_name("Sync Llama2_7B!" * 10) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert len(name) <= 63
        assert name.startswith("sync-llama2-7b")
        s3_sync_job(name, claim="c", source="s3://b/p", dest_path="x")


def test_build_job_mounts_inputs_read_only_and_output_read_write() -> None:
    job = _build(gpus=2)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "trtllm-build",
        "--checkpoint_dir",
        "/inputs/checkpoint",
        "--output_dir",
        "/output",
        "--gemm_plugin",
        "auto",
    ]
    assert container["volumeMounts"] == [
        {
            "name": "models",
            "mountPath": "/output",
            "subPath": "llama2_7b/.modelrepo/staging-cd34/1",
        },
        {
            "name": "models",
            "mountPath": "/inputs/checkpoint",
            "subPath": "checkpoints/llama2_7b",
            "readOnly": True,
        },
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_build_default_command_needs_a_checkpoint_input() -> None:
    with pytest.raises(ManifestError, match="checkpoint"):
        _build(inputs={})
    with pytest.raises(ManifestError, match="input name"):
        _build(command=["true"], inputs={"a b": "x"})


def test_shell_command_quotes_every_substituted_value() -> None:
    argv = render_command(
        "cp {inputs[src]}/model.py {output}/{name} && echo {{literal}}",
        inputs={"src": "/in/it's here"},
        output="/out put",
        params={"name": "$(reboot)"},
    )
    assert argv[:2] == ["/bin/sh", "-c"]
    words = shlex.split(argv[2])
    assert words == [
        "cp",
        "/in/it's here/model.py",
        "/out put/$(reboot)",
        "&&",
        "echo",
        "{literal}",
    ]


def test_argv_command_is_passed_as_is() -> None:
    argv = render_command(
        ["python", "build.py", "--in={inputs[a]}", "--out", "{output}", "--n", "{n}"],
        inputs={"a": "/inputs/a"},
        output="/output",
        params={"n": 3},
    )
    assert argv == ["python", "build.py", "--in=/inputs/a", "--out", "/output", "--n", "3"]


def test_unknown_template_field_is_a_clear_error() -> None:
    with pytest.raises(ManifestError, match="cannot be filled") as info:
        render_command("echo {outptu}", inputs={}, output="/output")
    assert "{output}" in (info.value.hint or "")


@pytest.mark.parametrize("make", [_sync, _build])
def test_job_options_shape_both_jobs_and_typos_are_named(make: Any) -> None:
    job = make(
        node="node-2",
        labels={"team": "a"},
        backoff_limit=2,
        ttl_seconds_after_finished=None,
        image_pull_secrets=["regcred"],
    )
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-2"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert job["metadata"]["labels"]["team"] == "a"
    assert job["spec"]["backoffLimit"] == 2 and "ttlSecondsAfterFinished" not in job["spec"]
    assert make()["spec"]["activeDeadlineSeconds"] == 6 * 3600  # the defaults still apply
    with pytest.raises(ManifestError, match=r"unknown Job option.*node_selectr") as info:
        make(node_selectr={"gpu": "a100"})
    assert "node_selector" in (info.value.hint or "")


def test_triton_pvc_variant() -> None:
    pvc, deploy, svc = triton_manifests(claim="repo", replicas=1, root="team-a")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["command"][:3] == [
        "tritonserver",
        "--model-repository=/models/team-a",
        "--model-control-mode=explicit",
    ]
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "repo"
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"] == {"app": "triton"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 8001, 8002]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())


def test_triton_pvc_variant_shares_the_claim_between_replicas() -> None:
    pvc, deploy, _ = triton_manifests(claim="repo", replicas=3, storage_class="efs")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "efs"
    assert deploy["spec"]["replicas"] == 3
    assert len(triton_manifests(claim="repo", create_pvc=False)) == 2


def test_triton_init_sync_variant() -> None:
    deploy, svc = triton_manifests(
        mode="init-sync", s3_source="s3://bucket/repo", secret="aws", endpoint_url="http://m:9000"
    )
    pod = deploy["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "amazon/aws-cli"
    assert init["command"] == [
        "aws",
        "s3",
        "sync",
        "--no-progress",
        "s3://bucket/repo",
        "/models",
        "--endpoint-url",
        "http://m:9000",
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["models"]
    assert "persistentVolumeClaim" not in volumes["models"]
    assert {"name": "models", "mountPath": "/models"} in pod["containers"][0]["volumeMounts"]
    assert svc["kind"] == "Service"


def test_triton_arguments_are_checked() -> None:
    with pytest.raises(ManifestError, match="claim"):
        triton_manifests(mode="pvc")
    with pytest.raises(ManifestError, match="s3_source"):
        triton_manifests(mode="init-sync")
    with pytest.raises(ManifestError, match="mode"):
        triton_manifests(claim="c", mode="hostpath")  # type: ignore[arg-type]


def test_rbac_grants_what_modelrepo_needs_and_no_more() -> None:
    sa, role, binding = rbac_manifests(namespace="ml", users=["alice"])
    assert sa["kind"] == "ServiceAccount"
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        *(("", "pods", v) for v in ("create", "get", "list", "watch", "delete")),
        ("", "pods/exec", "create"),
        ("", "pods/exec", "get"),
        ("", "pods/log", "get"),
        ("", "persistentvolumeclaims", "get"),
        ("", "persistentvolumeclaims", "list"),
        *(("", r, v) for r in ("services", "endpoints") for v in ("get", "list")),
        *(("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")),
    }
    assert granted == needed
    assert not any("*" in str(rule) for rule in RBAC_RULES)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "modelrepo",
    }
    assert {"kind": "ServiceAccount", "name": "modelrepo", "namespace": "ml"} in binding["subjects"]
    assert {s["name"] for s in binding["subjects"]} == {"modelrepo", "alice"}
    role2, binding2 = rbac_manifests(service_account="notebook")
    assert role2["kind"] == "Role"
    assert binding2["subjects"] == [
        {"kind": "ServiceAccount", "name": "notebook", "namespace": "default"}
    ]


def test_yaml_round_trips_without_aliases(tmp_path: Path) -> None:
    docs = all_manifests()
    text = to_yaml(docs)
    assert "&id" not in text
    assert "*id" not in text
    assert list(yaml.safe_load_all(text)) == docs
    path = write_yaml(docs[0], tmp_path / "sub" / "job.yaml")
    assert list(yaml.safe_load_all(path.read_text())) == [docs[0]]


# --------------------------------------------------------------------------- kubectl

KUBECTL = "/usr/bin/kubectl"


def _kubectl_apply(kubeconfig: Path, dry_run: str = "client") -> list[str]:
    return [KUBECTL, "--kubeconfig", str(kubeconfig), "apply", f"--dry-run={dry_run}"]


@pytest.fixture(scope="module")
def cluster_kubeconfig() -> Any:
    """A LocalCluster for kubectl to discover the API of (no pod is run)."""
    from modelrepo.testing import LocalCluster

    with LocalCluster(sandbox=False) as cluster:
        cluster.create_namespace("ml")
        yield cluster.kubeconfig


@pytest.mark.parametrize("dry_run", ["client", "server"])
def test_kubectl_accepts_every_manifest(
    cluster_kubeconfig: Path, tmp_path: Path, dry_run: str
) -> None:
    """kubectl maps every kind through the cluster's discovery (and the server admits them)."""
    path = write_yaml(all_manifests(), tmp_path / "all.yaml")
    out = subprocess.run(
        [*_kubectl_apply(cluster_kubeconfig, dry_run), "-f", str(path), "-o", "name"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    names = out.stdout.split()
    assert len(names) == len(all_manifests())
    assert "job.batch/sync-llama" in names
    assert "deployment.apps/triton" in names
    assert "role.rbac.authorization.k8s.io/modelrepo" in names


def test_kubectl_check_can_fail(cluster_kubeconfig: Path, tmp_path: Path) -> None:
    bad = _sync()
    bad["kind"] = "Jobb"
    path = write_yaml(bad, tmp_path / "bad.yaml")
    out = subprocess.run(
        [*_kubectl_apply(cluster_kubeconfig), "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
