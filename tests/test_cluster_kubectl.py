"""The real kubectl against LocalCluster, at two kubectl releases (1.30 and 1.33).

kubectl's dispatcher runs the release matching the server's /version, so each cluster is
judged by a different kubectl binary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.cluster.manifests import busybox_pod


@pytest.fixture(scope="module", params=["1.30", "1.33"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(version=request.param) as c:
        c.create_pvc("models")
        c.create(busybox_pod("helper", claim="models"))
        c.wait_for_pod("helper")
        yield c


def test_dispatcher_runs_the_matching_kubectl(cluster: LocalCluster) -> None:
    result = cluster.kubectl("version", "-o", "json", check=True)
    versions = json.loads(result.stdout)
    assert versions["serverVersion"]["gitVersion"] == f"v{cluster.version}.0"
    assert versions["clientVersion"]["minor"] == cluster.version.split(".")[1]


def test_get_pods_json(cluster: LocalCluster) -> None:
    result = cluster.kubectl("get", "pods", "-o", "json", check=True)
    pods = {p["metadata"]["name"]: p for p in json.loads(result.stdout)["items"]}
    helper = pods["helper"]
    assert helper["status"]["phase"] == "Running"
    assert helper["status"]["podIP"].startswith("127.")
    assert helper["spec"]["nodeName"] == "local-node"
    assert helper["status"]["containerStatuses"][0]["ready"] is True
    table = cluster.kubectl("get", "pods", check=True).stdout
    assert table.split("\n")[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert "helper" in table and "Running" in table and "1/1" in table


def test_get_missing_pod_is_notfound(cluster: LocalCluster) -> None:
    result = cluster.kubectl("get", "pod", "nope")
    assert result.returncode == 1
    assert 'Error from server (NotFound): pods "nope" not found' in result.stderr


def test_exec_stdout_stderr_and_exit_code(cluster: LocalCluster) -> None:
    result = cluster.kubectl(
        "exec", "helper", "--", "sh", "-c", "cat /etc/hostname; echo to-stderr >&2; exit 3"
    )
    assert result.returncode == 3
    assert result.stdout == "helper\n"
    assert "to-stderr" in result.stderr


def test_exec_with_piped_stdin(cluster: LocalCluster) -> None:
    data = "line\n" * 10000
    result = cluster.kubectl(
        "exec", "-i", "helper", "--", "sh", "-c", "wc -c; wc -l </dev/null", input=data, check=True
    )
    assert result.stdout.split()[0] == str(len(data))


def test_cp_into_and_out_of_a_pod(cluster: LocalCluster, tmp_path: Path) -> None:
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    payload = os.urandom(3 << 20)
    (source / "weights.bin").write_bytes(payload)
    (source / "sub" / "config.pbtxt").write_text('name: "m"\n')
    claim = cluster.pvc_path("models")
    assert claim is not None
    cluster.kubectl("cp", str(source), "helper:/models/tree", check=True)
    assert (claim / "tree" / "weights.bin").read_bytes() == payload
    assert (claim / "tree" / "sub" / "config.pbtxt").read_text() == 'name: "m"\n'
    back = tmp_path / "back"
    cluster.kubectl("cp", "helper:/models/tree", str(back), check=True)
    digest = hashlib.sha256((back / "weights.bin").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(payload).hexdigest()
    assert (back / "sub" / "config.pbtxt").exists()


def test_logs_and_tail(cluster: LocalCluster) -> None:
    pod = busybox_pod(
        "printer",
        restart_policy="Never",
        command=["sh", "-c", "for i in 1 2 3 4; do echo line $i; done"],
    )
    cluster.create(pod)
    cluster.wait_for_pod("printer", phase="Succeeded")
    assert cluster.kubectl("logs", "printer", check=True).stdout == "".join(
        f"line {i}\n" for i in range(1, 5)
    )
    assert cluster.kubectl("logs", "printer", "--tail=1", check=True).stdout == "line 4\n"
    table = cluster.kubectl("get", "pod", "printer", check=True).stdout
    assert "Completed" in table


def test_logs_follow_streams_until_exit(cluster: LocalCluster) -> None:
    pod = busybox_pod(
        "ticker",
        restart_policy="Never",
        command=["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done"],
    )
    cluster.create(pod)
    cluster.wait_for_pod("ticker", phase=("Running", "Succeeded"))
    result = cluster.kubectl("logs", "-f", "ticker", timeout=30, check=True)
    assert result.stdout == "tick 1\ntick 2\ntick 3\n"


MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: explicit
---
apiVersion: v1
kind: Pod
metadata:
  name: applied
  labels: {app: applied}
spec:
  containers:
  - name: main
    image: busybox:1.36
    command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: applied
spec:
  selector: {app: applied}
  ports: [{port: 8000}]
"""


def test_apply_dry_run_then_apply_and_delete(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST)
    dry = cluster.kubectl("apply", "--dry-run=client", "-f", str(path), check=True)
    assert "pod/applied created (dry run)" in dry.stdout
    assert cluster.get("Pod", "applied") is None
    created = cluster.kubectl("apply", "-f", str(path), check=True)
    assert "configmap/settings created" in created.stdout
    assert "service/applied created" in created.stdout
    assert cluster.kubectl("apply", "-f", str(path), check=True).stdout.count("unchanged") == 3
    path.write_text(MANIFEST.replace("mode: explicit", "mode: poll"))
    assert (
        "configmap/settings configured"
        in cluster.kubectl("apply", "-f", str(path), check=True).stdout
    )
    settings = cluster.get("ConfigMap", "settings")
    assert settings is not None and settings["data"] == {"mode": "poll"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in settings["metadata"]["annotations"]
    cluster.wait_for_pod("applied")
    endpoints = json.loads(
        cluster.kubectl("get", "endpoints", "applied", "-o", "json", check=True).stdout
    )
    pod_ip = cluster.get("Pod", "applied")["status"]["podIP"]  # type: ignore[index]
    assert endpoints["subsets"][0]["addresses"][0]["ip"] == pod_ip
    cluster.kubectl("delete", "-f", str(path), check=True)
    assert cluster.get("Pod", "applied") is None
    assert cluster.get("ConfigMap", "settings") is None


def test_label_and_field_selectors(cluster: LocalCluster) -> None:
    cluster.kubectl("label", "pod", "helper", "role=helper", "--overwrite", check=True)
    by_label = cluster.kubectl(
        "get", "pods", "-l", "role in (helper,other)", "-o", "name", check=True
    ).stdout.split()
    assert by_label == ["pod/helper"]
    running = cluster.kubectl(
        "get", "pods", "--field-selector", "status.phase=Running", "-o", "name", check=True
    ).stdout.split()
    assert "pod/helper" in running
    assert (
        cluster.kubectl("get", "pods", "-l", "role!=helper,role", "-o", "name", check=True).stdout
        == ""
    )


def test_wait_for_condition_uses_watch(cluster: LocalCluster) -> None:
    result = cluster.kubectl(
        "wait", "--for=condition=Ready", "pod/helper", "--timeout=20s", check=True
    )
    assert "condition met" in result.stdout
