"""Verified transfers' fast paths on LocalCluster: many files over shared streams, downloads
checked by whole-file digests (and repaired chunk by chunk when those differ), batched
begin/finish/link in one exec each."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo.fs import PVCFileSystem
from modelrepo.fs import _shell as sh
from modelrepo.fs import _transfer as tx
from modelrepo.testing import LocalCluster

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as c:
        c.create_pvc("models")
        yield c


@pytest.fixture(scope="module")
def host(cluster: LocalCluster) -> Path:
    path = cluster.pvc_path("models")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def fs(cluster: LocalCluster) -> Iterator[PVCFileSystem]:
    fs = PVCFileSystem(
        "models",
        kubeconfig=str(cluster.kubeconfig),
        chunk_size=MiB,
        small_file_limit=256 * 1024,
        streams=3,
        skip_instance_cache=True,
    )
    yield fs
    fs.close()


def sessions(fs: PVCFileSystem) -> int:
    return fs.helper.exec_client.sessions


def test_many_big_files_share_the_streams(fs: PVCFileSystem, tmp_path: Path, host: Path) -> None:
    files = {tmp_path / f"w{i}.bin": os.urandom(MiB + MiB // 2 + i) for i in range(6)}
    for path, data in files.items():
        path.write_bytes(data)
    before = sessions(fs)
    stats = fs.put_files([(str(p), f"/many/{p.name}") for p in files])
    # one exec to begin all six, one per chunk (2 each), one per hash range (2 each: see
    # hash_ranges), one to finish all six
    assert sessions(fs) - before == 1 + 12 + 12 + 1
    assert stats.files == 6 and stats.chunks == 12 and stats.chunks_resent == 0
    for path, data in files.items():
        assert (host / "many" / path.name).read_bytes() == data
    assert not [p for p in (host / "many").iterdir() if ".mrpart-" in p.name]

    back = tmp_path / "back"
    before = sessions(fs)
    stats = fs.get_files([(f"/many/{p.name}", str(back / p.name)) for p in files])
    # a stat of all six, one exec per chunk, one whole-file hash each
    assert sessions(fs) - before <= 1 + 12 + 6
    assert stats.chunks_resent == 0
    for path, data in files.items():
        assert (back / path.name).read_bytes() == data
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in files)


def test_download_repairs_only_the_chunks_that_differ(
    fs: PVCFileSystem, tmp_path: Path, host: Path
) -> None:
    data = bytearray(os.urandom(5 * MiB + 77))
    (host / "repair.bin").write_bytes(data)
    local = tmp_path / "repair.bin"
    fs.get_file("/repair.bin", str(local))
    assert local.read_bytes() == data
    # The claim's copy changes in one chunk after the download: the whole-file digests now
    # differ, and the repair must find and fetch exactly that chunk.
    data[2 * MiB + 5 : 2 * MiB + 9] = b"\xff\x00\xff\x00"
    (host / "repair.bin").write_bytes(data)
    ranges = [(o, min(MiB, len(data) - o)) for o in range(0, len(data), MiB)]
    stats = tx.TransferStats()
    fd = os.open(local, os.O_RDWR)
    try:
        tx._repair(fs, fs._remote("/repair.bin"), fd, ranges, stats, tx.Progress(None))
    finally:
        os.close(fd)
    assert stats.chunks_resent == 1
    assert stats.bytes_received == MiB
    assert local.read_bytes() == data


def test_finish_many_after_a_drop_counts_committed_files(fs: PVCFileSystem, host: Path) -> None:
    (host / "fin").mkdir()
    for name in ("a", "b"):
        (host / "fin" / f".{name}.mrpart-x").write_bytes(name.encode() * 10)
    triples = [
        word
        for name in ("a", "b")
        for word in (fs._remote(f"/fin/{name}"), fs._remote(f"/fin/.{name}.mrpart-x"), "10")
    ]
    tx.finish_many(fs, [tuple(triples[i : i + 3]) for i in (0, 3)], "overwrite")  # type: ignore[misc]
    assert (host / "fin/a").read_bytes() == b"a" * 10
    assert (host / "fin/b").read_bytes() == b"b" * 10
    # a second run after a dropped stream: both are done already
    assert fs._sh(sh.FINISH_MANY, "overwrite", "retry", *triples).exit_code == 0
    # but a first run whose part files are missing is an error
    assert fs._sh(sh.FINISH_MANY, "overwrite", "first", *triples).exit_code == 2


def test_link_many_is_one_exec(fs: PVCFileSystem, host: Path) -> None:
    (host / "v1").mkdir()
    for i in range(5):
        (host / "v1" / f"f{i}").write_bytes(str(i).encode())
    pairs = [(f"/v1/f{i}", f"/v2/sub{i % 2}/f{i}") for i in range(5)]
    before = sessions(fs)
    fs.link_many(pairs)
    assert sessions(fs) - before == 1
    for i in range(5):
        target = host / "v2" / f"sub{i % 2}" / f"f{i}"
        assert target.stat().st_ino == (host / "v1" / f"f{i}").stat().st_ino
    fs.link_many(pairs)  # retry-safe: links that already point at their source are done
    (host / "v1" / "other").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        fs.link_many([("/v1/other", "/v2/sub0/f0")])
    assert (
        hashlib.sha256((host / "v2/sub0/f0").read_bytes()).hexdigest()
        == hashlib.sha256(b"0").hexdigest()
    )


def test_a_corrupt_leftover_part_is_mended(fs: PVCFileSystem, tmp_path: Path, host: Path) -> None:
    data = os.urandom(5 * MiB + 11)
    src = tmp_path / "mend.bin"
    src.write_bytes(data)
    remote = fs._remote("/mend/m.bin")
    part = tx._part_name(remote, tx.part_key(remote, str(src), len(data)))
    # An interrupted run left the whole part file, with one byte wrong in the fourth chunk.
    leftover = bytearray(data)
    leftover[3 * MiB + 100] ^= 0xFF
    (host / "mend").mkdir()
    (host / part.removeprefix(fs._base + "/")).write_bytes(leftover)
    stats = fs.put_files([(str(src), "/mend/m.bin")])
    assert stats.chunks_reused == 6
    assert stats.chunks_resent == 1
    assert MiB <= stats.bytes_sent < MiB + 64 * 1024
    assert (host / "mend/m.bin").read_bytes() == data
    assert not [p for p in (host / "mend").iterdir() if ".mrpart-" in p.name]


def test_known_digests_are_checked_not_recomputed(
    fs: PVCFileSystem, tmp_path: Path, host: Path
) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(300_000))
    b.write_bytes(os.urandom(200_000))
    known = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    stats = fs.put_files([(str(a), "/known/a.bin"), (str(b), "/known/b.bin")], sha256=known)
    assert stats.sha256 == {"/known/a.bin": known[str(a)], "/known/b.bin": known[str(b)]}
    assert (host / "known/b.bin").read_bytes() == b.read_bytes()
    # a file that changed after the caller hashed it is refused, not published
    b.write_bytes(os.urandom(200_000))
    with pytest.raises(tx.TransferError, match="changed after it was hashed"):
        fs.put_files([(str(b), "/known/b2.bin")], sha256=known)
    assert not (host / "known/b2.bin").exists()


def test_recursive_rm_of_one_path_is_one_exec(fs: PVCFileSystem, host: Path) -> None:
    (host / "gone" / "a" / "b").mkdir(parents=True)
    (host / "gone" / "a" / "b" / "f").write_bytes(b"x")
    before = sessions(fs)
    fs.rm("/gone", recursive=True)
    assert sessions(fs) - before == 1
    assert not (host / "gone").exists()
    with pytest.raises(FileNotFoundError):
        fs.rm("/gone", recursive=True)
