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
from modelrepo.hashing import HashCache

pytestmark = pytest.mark.slow

MiB = 1 << 20


# The cluster (claim "models"), claim_dir and fs fixtures: tests/conftest.py
FS_OPTIONS = {"chunk_size": MiB, "small_file_limit": 256 * 1024, "streams": 3}


def sessions(fs: PVCFileSystem) -> int:
    return fs.helper.exec_client.sessions


def test_many_big_files_share_the_streams(
    fs: PVCFileSystem, tmp_path: Path, claim_dir: Path
) -> None:
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
        assert (claim_dir / "many" / path.name).read_bytes() == data
    assert not [p for p in (claim_dir / "many").iterdir() if ".mrpart-" in p.name]

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
    fs: PVCFileSystem, tmp_path: Path, claim_dir: Path
) -> None:
    data = bytearray(os.urandom(5 * MiB + 77))
    (claim_dir / "repair.bin").write_bytes(data)
    local = tmp_path / "repair.bin"
    fs.get_file("/repair.bin", str(local))
    assert local.read_bytes() == data
    # The claim's copy changes in one chunk after the download: the whole-file digests now
    # differ, and the repair must find and fetch exactly that chunk.
    data[2 * MiB + 5 : 2 * MiB + 9] = b"\xff\x00\xff\x00"
    (claim_dir / "repair.bin").write_bytes(data)
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


def test_finish_many_after_a_drop_counts_committed_files(
    fs: PVCFileSystem, claim_dir: Path
) -> None:
    (claim_dir / "fin").mkdir()
    for name in ("a", "b"):
        (claim_dir / "fin" / f".{name}.mrpart-x").write_bytes(name.encode() * 10)
    triples = [
        word
        for name in ("a", "b")
        for word in (fs._remote(f"/fin/{name}"), fs._remote(f"/fin/.{name}.mrpart-x"), "10")
    ]
    tx.finish_many(fs, [tuple(triples[i : i + 3]) for i in (0, 3)], "overwrite")  # type: ignore[misc]
    assert (claim_dir / "fin/a").read_bytes() == b"a" * 10
    assert (claim_dir / "fin/b").read_bytes() == b"b" * 10
    # a second run after a dropped stream: both are done already
    assert fs._sh(sh.FINISH_MANY, "overwrite", "retry", *triples).exit_code == 0
    # but a first run whose part files are missing is an error
    assert fs._sh(sh.FINISH_MANY, "overwrite", "first", *triples).exit_code == 2


def test_link_many_is_one_exec(fs: PVCFileSystem, claim_dir: Path) -> None:
    (claim_dir / "v1").mkdir()
    for i in range(5):
        (claim_dir / "v1" / f"f{i}").write_bytes(str(i).encode())
    pairs = [(f"/v1/f{i}", f"/v2/sub{i % 2}/f{i}") for i in range(5)]
    before = sessions(fs)
    fs.link_many(pairs)
    assert sessions(fs) - before == 1
    for i in range(5):
        target = claim_dir / "v2" / f"sub{i % 2}" / f"f{i}"
        assert target.stat().st_ino == (claim_dir / "v1" / f"f{i}").stat().st_ino
    fs.link_many(pairs)  # retry-safe: links that already point at their source are done
    (claim_dir / "v1" / "other").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        fs.link_many([("/v1/other", "/v2/sub0/f0")])
    assert (
        hashlib.sha256((claim_dir / "v2/sub0/f0").read_bytes()).hexdigest()
        == hashlib.sha256(b"0").hexdigest()
    )


def test_a_corrupt_leftover_part_is_mended(
    fs: PVCFileSystem, tmp_path: Path, claim_dir: Path
) -> None:
    data = os.urandom(5 * MiB + 11)
    src = tmp_path / "mend.bin"
    src.write_bytes(data)
    remote = fs._remote("/mend/m.bin")
    part = tx._part_name(remote, tx.part_key(remote, str(src), len(data)))
    # An interrupted run left the whole part file, with one byte wrong in the fourth chunk.
    leftover = bytearray(data)
    leftover[3 * MiB + 100] ^= 0xFF
    (claim_dir / "mend").mkdir()
    (claim_dir / part.removeprefix(fs._base + "/")).write_bytes(leftover)
    stats = fs.put_files([(str(src), "/mend/m.bin")])
    assert stats.chunks_reused == 6
    assert stats.chunks_resent == 1
    assert MiB <= stats.bytes_sent < MiB + 64 * 1024
    assert (claim_dir / "mend/m.bin").read_bytes() == data
    assert not [p for p in (claim_dir / "mend").iterdir() if ".mrpart-" in p.name]


def test_known_checksums_are_checked_not_recomputed(
    fs: PVCFileSystem, tmp_path: Path, claim_dir: Path
) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(300_000))
    b.write_bytes(os.urandom(200_000))
    cache = HashCache(tmp_path / "cache.sqlite")
    digests = cache.digests([str(a), str(b)])
    assert digests[str(a)] == hashlib.sha256(a.read_bytes()).hexdigest()
    known = cache.checksums(digests)  # the sha256 itself, or computed in the same read
    assert known == {str(p): sh.checksum_of(p.read_bytes()) for p in (a, b)}
    stats = fs.put_files([(str(a), "/known/a.bin"), (str(b), "/known/b.bin")], checksums=known)
    assert stats.checksums == {"/known/a.bin": known[str(a)], "/known/b.bin": known[str(b)]}
    assert (claim_dir / "known/b.bin").read_bytes() == b.read_bytes()
    # a file that changed after the caller hashed it is refused, not published
    b.write_bytes(os.urandom(200_000))
    with pytest.raises(tx.TransferError, match="changed after it was hashed"):
        fs.put_files([(str(b), "/known/b2.bin")], checksums=known)
    assert not (claim_dir / "known/b2.bin").exists()
    # the cache gives checksums by content: still the old content's, so still refused...
    assert HashCache(cache.path).checksums({str(b): digests[str(b)]}) == {str(b): known[str(b)]}
    if sh.CHECKSUM != "sha256":
        # ...and a content it never saw is read again, refused if it is not that sha256 any
        # more (with sha256 the digest is the checksum: put_files refuses it, as above)
        with pytest.raises(tx.TransferError, match="changed after it was hashed"):
            HashCache(tmp_path / "other.sqlite").checksums({str(b): digests[str(b)]})


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


class _Damage:
    """Damages bytes once, for scripts matching ``script``: in the stream sent to the pod
    (``"stdin"``), in the stream read from it (``"stdout"``), or in the claim's file right
    before the pod hashes it (``"claim"``: a byte of the range that ``HASH_RANGE`` call
    hashes, so it cannot have been read before the damage)."""

    def __init__(self, fs: PVCFileSystem, script: str, where: str, claim_dir: Path) -> None:
        self.fs, self.script, self.where, self.claim_dir = fs, script, where, claim_dir
        self.done = False
        self.inner = fs._sh

    def __call__(self, script: str, *args: str, **kwargs: object) -> object:
        if script == self.script and not self.done:
            self.done = True
            if self.where == "claim":
                _flip(
                    self.claim_dir / args[0].removeprefix(self.fs._base + "/"), int(args[1]) + 1000
                )
            elif self.where == "stdin":
                kwargs["stdin"] = self._damaged(kwargs["stdin"])
            else:
                sink = kwargs["stdout"]
                flipped = [False]

                def damaged(data: bytes) -> None:
                    if not flipped[0] and data:
                        flipped[0] = True
                        data = bytes([data[0] ^ 0x01]) + data[1:]
                    sink(data)  # type: ignore[operator]

                kwargs["stdout"] = damaged
        return self.inner(script, *args, **kwargs)  # type: ignore[operator]

    @staticmethod
    def _damaged(stdin: object) -> Iterator[bytes]:
        if isinstance(stdin, bytes | bytearray | memoryview):
            stdin = iter([bytes(stdin)])
        first = True
        for piece in stdin:  # type: ignore[attr-defined]
            if first and len(piece) > 600:
                piece = piece[:600] + bytes([piece[600] ^ 0x01]) + piece[601:]
                first = False
            yield piece


@pytest.mark.parametrize(
    ("route", "script", "where"),
    [
        ("chunked put, claim damaged before the pod hashes it", "HASH_RANGE", "claim"),
        ("chunked put, chunk damaged on its way", "WRITE_CHUNK", "stdin"),
        ("tar batch put, damaged on its way", "TAR_IN", "stdin"),
        ("one-exec write, damaged on its way", "WRITE", "stdin"),
        ("chunked get, damaged on its way", "CAT", "stdout"),
        ("batched get, damaged on its way", "CAT_MANY", "stdout"),
    ],
)
def test_a_damaged_byte_is_caught_by_the_transfer_checksum(
    fs: PVCFileSystem,
    tmp_path: Path,
    claim_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    script: str,
    where: str,
) -> None:
    assert sh.CHECKSUM in ("sha256", "md5")
    big = os.urandom(3 * MiB + 5)  # chunked (chunk_size is 1 MiB here)
    small = os.urandom(100_000)  # tar batches, one-exec writes, batched gets
    damage = _Damage(fs, getattr(sh, script), where, claim_dir)
    monkeypatch.setattr(fs, "_sh", damage)
    name = script.lower()
    if script == "WRITE":
        fs.pipe_file(f"/dmg/{name}.bin", small)
        data = small
    elif where == "stdout":
        data = big if script == "CAT" else small
        (claim_dir / "dmg").mkdir(exist_ok=True)
        (claim_dir / "dmg" / f"{name}.bin").write_bytes(data)
        fs.invalidate_cache()
        fs.get_files([(f"/dmg/{name}.bin", str(tmp_path / "back.bin"))])
        assert (tmp_path / "back.bin").read_bytes() == data
    else:
        data = big if script != "TAR_IN" else small
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        stats = fs.put_files([(str(src), f"/dmg/{name}.bin")])
        assert stats.chunks_resent >= 1
    assert damage.done, f"{route}: the damage was not applied"
    assert (claim_dir / "dmg" / f"{name}.bin").read_bytes() == data, route
    assert not [p for p in (claim_dir / "dmg").iterdir() if ".mr" in p.name]


def test_recursive_rm_of_one_path_is_one_exec(fs: PVCFileSystem, claim_dir: Path) -> None:
    (claim_dir / "gone" / "a" / "b").mkdir(parents=True)
    (claim_dir / "gone" / "a" / "b" / "f").write_bytes(b"x")
    before = sessions(fs)
    fs.rm("/gone", recursive=True)
    assert sessions(fs) - before == 1
    assert not (claim_dir / "gone").exists()
    with pytest.raises(FileNotFoundError):
        fs.rm("/gone", recursive=True)
