"""Fixtures shared by the end-to-end tests: one LocalCluster per test module.

A module shapes its cluster with constants: ``CLAIM`` (the PVC, default ``"models"``),
``TRITON_REPLICAS`` (a Triton Deployment named ``triton`` reading the claim; default 0,
none), ``HELPER_POD`` (a busybox pod of that name mounting the claim; default none) and
``FS_OPTIONS`` (keyword arguments of the module's ``fs``, a PVCFileSystem on the claim).
A module that needs something else defines its own ``cluster`` or ``fs`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from modelrepo import ModelRepo
from modelrepo.fs import PVCFileSystem
from modelrepo.testing import LocalCluster


def _claim(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.module, "CLAIM", "models"))


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    from modelrepo.testing.cluster.manifests import busybox_pod

    claim = _claim(request)
    replicas = int(getattr(request.module, "TRITON_REPLICAS", 0))
    helper = getattr(request.module, "HELPER_POD", None)
    with LocalCluster(base_dir=tmp_path_factory.mktemp("cluster")) as c:
        c.create_pvc(claim)
        if replicas:
            c.deploy_triton(name="triton", claim=claim, replicas=replicas)
        if helper:
            c.create(busybox_pod(helper, claim=claim))
            c.wait_for_pod(helper)
        yield c


@pytest.fixture(scope="module")
def claim_dir(request: pytest.FixtureRequest, cluster: LocalCluster) -> Path:
    """The host folder behind the module's claim: what the cluster really holds."""
    path = cluster.pvc_path(_claim(request))
    assert path is not None
    return path


@pytest.fixture(scope="module")
def fs(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[PVCFileSystem]:
    """A PVCFileSystem of its own (no fsspec instance sharing) on the module's claim."""
    fs = PVCFileSystem(
        _claim(request),
        kubeconfig=str(cluster.kubeconfig),
        skip_instance_cache=True,
        **getattr(request.module, "FS_OPTIONS", {}),
    )
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def core(cluster: LocalCluster) -> client.CoreV1Api:
    """The real ``kubernetes`` client, configured from the cluster's kubeconfig."""
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture
def repo(
    request: pytest.FixtureRequest, cluster: LocalCluster, tmp_path: Path, monkeypatch
) -> Iterator[ModelRepo]:
    """A ModelRepo on the module's claim (and its Triton, if any), with a private hash cache."""
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    with ModelRepo(
        pvc=_claim(request),
        namespace="default",
        kubeconfig=cluster.kubeconfig,
        triton="triton" if getattr(request.module, "TRITON_REPLICAS", 0) else None,
        progress=False,
    ) as repo:
        yield repo
