"""fsspec's own abstract test-suite (copy, get, put, open, pipe) against PVCFileSystem.

Runs on LocalCluster: every call goes through a real helper pod over the exec WebSocket.
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Iterator

import pytest
from fsspec.tests import abstract

from modelrepo.fs import PVCFileSystem
from modelrepo.testing import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as c:
        c.create_pvc("abstract")
        yield c


class PVCFixtures(abstract.AbstractFixtures):
    """Fixtures the abstract suite needs: a PVCFileSystem and a fresh folder per test."""

    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, cluster: LocalCluster) -> Iterator[PVCFileSystem]:
        fs = PVCFileSystem("abstract", kubeconfig=str(cluster.kubeconfig), skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return posixpath.join

    @pytest.fixture
    def fs_path(self, fs: PVCFileSystem) -> Iterator[str]:
        path = f"/suite-{secrets.token_hex(4)}"
        fs.makedirs(path)
        yield path
        fs.rm(path, recursive=True)


class TestPVCCopy(abstract.AbstractCopyTests, PVCFixtures):
    pass


class TestPVCGet(abstract.AbstractGetTests, PVCFixtures):
    pass


class TestPVCPut(abstract.AbstractPutTests, PVCFixtures):
    pass


class TestPVCOpen(abstract.AbstractOpenTests, PVCFixtures):
    pass


class TestPVCPipe(abstract.AbstractPipeTests, PVCFixtures):
    pass
