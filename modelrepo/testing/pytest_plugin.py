"""pytest fixtures for the local stack, registered through the ``pytest11`` entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo.testing.cluster import LocalCluster
from modelrepo.testing.triton import LocalTriton


@pytest.fixture
def local_triton(tmp_path: Path) -> Iterator[LocalTriton]:
    """A running LocalTriton (explicit model control) on an empty repository.

    Write models into ``local_triton.repository``, then load them through the HTTP API.
    """
    with LocalTriton(repository=tmp_path / "model_repository") as triton:
        yield triton


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A running LocalCluster (kubeconfig at ``local_cluster.kubeconfig``), stopped afterwards.

    ``local_cluster.create_pvc("name")`` returns the host folder that backs a claim.
    """
    with LocalCluster(base_dir=tmp_path / "cluster") as cluster:
        yield cluster
