"""``LocalCluster.deploy_triton``: real Triton replicas as pods behind a Service."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.models import write_add_one_model

pytestmark = pytest.mark.slow


def _post(url: str) -> int:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def test_replicas_serve_the_claim_and_are_listed_by_the_service() -> None:
    with LocalCluster() as cluster:
        claim = cluster.create_pvc("triton-model-repo")
        write_add_one_model(claim)
        deployment = cluster.deploy_triton("triton", claim="triton-model-repo", replicas=2)
        assert len(deployment.urls) == 2 and len(set(deployment.urls)) == 2
        for url in deployment.urls:
            assert url.startswith("127.")
            assert _post(f"http://{url}/v2/repository/models/add_one/load") == 200
            with urllib.request.urlopen(f"http://{url}/v2/models/add_one/ready") as ready:
                assert ready.status == 200
        pods = cluster.list("Pod")
        replicas = [p for p in pods if p["metadata"].get("labels", {}).get("app") == "triton"]
        assert sorted(p["metadata"]["name"] for p in replicas) == sorted(deployment.pods)
        ips = {p["status"]["podIP"] for p in replicas}
        assert {u.split(":")[0] for u in deployment.urls} == ips
        endpoints = json.loads(
            cluster.kubectl("get", "endpoints", "triton", "-o", "json", check=True).stdout
        )
        assert {a["ip"] for a in endpoints["subsets"][0]["addresses"]} == ips
        assert "2/2" in cluster.kubectl("get", "deployment", "triton", check=True).stdout

        victim = deployment.pods[0]
        cluster.kill_pod(victim)
        assert not deployment.servers[victim].is_running()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            endpoints = cluster.get("Endpoints", "triton") or {}
            ready = {a["ip"] for s in endpoints.get("subsets") or [] for a in s["addresses"]}
            if len(ready) == 1:
                break
            time.sleep(0.05)
        assert len(ready) == 1
        servers = list(deployment.servers.values())
    assert not any(s.is_running() for s in servers)
