"""Verified transfers between this machine and the claim.

Large files move in chunks (``chunk_size``, default 64 MiB) over ``streams`` parallel exec
sessions. Each chunk is written at its offset of a hidden part file next to the target and
read back and hashed by the helper pod (busybox ``sha256sum``); the local side hashes the
same bytes with hashlib while sending. A chunk whose stream drops or whose hash differs is
sent again; a verified chunk never is, and a part file left by an interrupted run is reused
(its chunks are hashed, matching ones kept). The part file becomes the target with one
rename, so a half-written file never appears under the target's name.

Downloads mirror this: each chunk is streamed into a local part file while the helper pod
hashes the same range in a second, concurrent session.

Trees of small files travel as tar streams (one exec per batch, not one per file), are
hashed in the same exec, and are moved into place by one ``mv`` per folder.

Every command that reads stdin reads an exact byte count (``dd count=N``), so all of this
works on ``v4.channel.k8s.io`` servers, which cannot signal the end of stdin.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelrepo.errors import TransferError
from modelrepo.fs import _shell as sh
from modelrepo.transport.exec import ExecStreamDropped

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.fs.pvc import PVCFileSystem

log = logging.getLogger(__name__)

PIECE = 1 << 20  # local read / hash granularity
MAX_ATTEMPTS = 6


@dataclass
class TransferStats:
    """What a transfer cost: bytes on the wire (resends included), chunks resent, time."""

    files: int = 0
    bytes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    chunks: int = 0
    chunks_resent: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0
    sha256: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def merge(self, other: TransferStats) -> None:
        with self._lock:
            for key in (
                "files",
                "bytes",
                "bytes_sent",
                "bytes_received",
                "chunks",
                "chunks_resent",
                "chunks_reused",
            ):
                setattr(self, key, getattr(self, key) + getattr(other, key))
            self.sha256.update(other.sha256)


class Progress:
    """A thread-safe wrapper of an fsspec Callback counting bytes (may go back on resend)."""

    def __init__(self, callback: Any) -> None:
        self._cb = callback
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        if self._cb is not None and n:
            with self._lock:
                self._cb.relative_update(n)


def _part_name(remote: str, key: str) -> str:
    parent, base = remote.rsplit("/", 1)
    return f"{parent}/.{base[:80]}.mrpart-{key}"


def local_part(lpath: str) -> str:
    """A hidden temp name next to ``lpath`` (short enough for any file name)."""
    parent, base = os.path.split(lpath)
    return os.path.join(parent, f".{base[:80]}.mrpart-{secrets.token_hex(4)}")


def part_key(remote: str, lpath: str | None, size: int) -> str:
    """Deterministic for a local file (so an interrupted upload resumes), random otherwise."""
    if lpath is None:
        return secrets.token_hex(6)
    st = os.stat(lpath)
    seed = f"{remote}\0{os.path.abspath(lpath)}\0{size}\0{st.st_mtime_ns}"
    return hashlib.sha256(seed.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class _Source:
    """Random access to the bytes being uploaded: a local file or an in-memory buffer."""

    def __init__(
        self, lpath: str | None = None, data: bytes | memoryview | None = None, base: int = 0
    ) -> None:
        self.lpath = lpath
        self.data = memoryview(data) if data is not None else None
        self.base = base  # the file offset of data[0]

    def pieces(
        self, offset: int, length: int, digest: Any, progress: Callable[[int], None]
    ) -> Iterator[bytes]:
        if self.data is not None:
            first, last = offset - self.base, offset - self.base + length
            if first < 0 or last > len(self.data):
                raise ValueError(f"bytes {offset}..{offset + length} are not in this buffer")
            for start in range(first, last, PIECE):
                piece = self.data[start : min(start + PIECE, last)]
                digest.update(piece)
                progress(len(piece))
                yield bytes(piece)
            return
        assert self.lpath is not None
        with open(self.lpath, "rb") as f:
            f.seek(offset)
            remaining = length
            while remaining:
                piece = f.read(min(PIECE, remaining))
                if not piece:
                    raise TransferError(
                        f"{self.lpath} shrank while it was being uploaded",
                        hint="do not modify files while they are being pushed; run it again",
                    )
                digest.update(piece)
                progress(len(piece))
                remaining -= len(piece)
                yield piece

    def digest(self, offset: int, length: int) -> str:
        h = hashlib.sha256()
        for _ in self.pieces(offset, length, h, lambda n: None):
            pass
        return h.hexdigest()


def upload(
    fs: PVCFileSystem,
    remote: str,
    *,
    lpath: str | None = None,
    data: bytes | memoryview | None = None,
    mode: str = "overwrite",
    progress: Progress | None = None,
) -> TransferStats:
    """Upload a local file (or bytes) to ``remote`` in verified chunks; see module doc."""
    source = _Source(lpath, data)
    size = os.path.getsize(lpath) if lpath is not None else len(source.data or b"")
    stats = TransferStats(files=1, bytes=size)
    started = time.monotonic()
    progress = progress or Progress(None)
    part = _part_name(remote, part_key(remote, lpath, size))
    res = fs._sh(sh.BEGIN_PARTS, remote, part, mode)
    sh.raise_for(res, fs._name(remote), "upload to")
    existing = int(sh.decode(res.stdout).strip() or 0)
    chunk = fs.chunk_size
    offsets = list(range(0, size, chunk)) or [0]
    stats.chunks = len(offsets)

    def length_at(offset: int) -> int:
        return min(chunk, size - offset)

    todo = offsets
    if existing > 0 and size > 0:
        todo = _resume(fs, source, part, offsets, length_at, existing, stats, progress)

    def send(offset: int) -> None:
        _send_chunk(fs, source, part, offset, length_at(offset), stats, progress)

    if size > 0:
        _run_parallel(send, todo, fs.streams)
    finish(fs, remote, part, mode, size)
    stats.seconds = time.monotonic() - started
    return stats


def finish(fs: PVCFileSystem, remote: str, part: str, mode: str, size: int) -> None:
    """Rename the verified part file onto the target, surviving a dropped stream."""
    for _ in range(3):
        try:
            res = fs._sh(sh.FINISH_PARTS, remote, part, mode, str(size), attempts=1)
        except ExecStreamDropped:
            # Done already if the part is gone and the target has the right size.
            check = fs._sh(sh.INFO, part)
            if check.exit_code == 2:
                info = fs._sh(sh.INFO, remote)
                entries = sh.parse_entries(info.stdout) if info.exit_code == 0 else []
                if entries and entries[0].size == size:
                    return
            continue
        sh.raise_for(res, fs._name(remote), "upload to")
        return
    raise TransferError(
        f"could not finish the upload of {fs._name(remote)}",
        hint="the connection to the cluster keeps failing; run the upload again (verified "
        "chunks are kept)",
    )


def _resume(
    fs: PVCFileSystem,
    source: _Source,
    part: str,
    offsets: list[int],
    length_at: Callable[[int], int],
    existing: int,
    stats: TransferStats,
    progress: Progress,
) -> list[int]:
    """Keep the chunks an interrupted upload already wrote correctly; return the rest."""
    full = [o for o in offsets if o + length_at(o) <= existing and length_at(o) == fs.chunk_size]
    if not full:
        return offsets
    res = fs._sh(sh.RANGES_SHA256, part, str(fs.chunk_size), *map(str, full))
    if res.exit_code != 0:
        return offsets
    remote = [line.split(" ", 1)[0] for line in sh.decode(res.stdout).splitlines()]
    kept = set()
    for offset, digest in zip(full, remote, strict=False):
        if digest == source.digest(offset, length_at(offset)):
            kept.add(offset)
            progress.update(length_at(offset))
    stats.add(chunks_reused=len(kept))
    log.info("resuming %s: %d verified chunk(s) kept", part, len(kept))
    return [o for o in offsets if o not in kept]


def _send_chunk(
    fs: PVCFileSystem,
    source: _Source,
    part: str,
    offset: int,
    length: int,
    stats: TransferStats,
    progress: Progress,
) -> None:
    for attempt in range(MAX_ATTEMPTS):
        digest = hashlib.sha256()
        moved = [0]

        def counted(n: int, moved: list[int] = moved) -> None:
            moved[0] += n
            progress.update(n)

        try:
            res = fs._sh(
                sh.WRITE_PART,
                part,
                str(offset),
                str(length),
                stdin=source.pieces(offset, length, digest, counted),
                attempts=1,
            )
        except ExecStreamDropped as exc:
            stats.add(bytes_sent=getattr(exc, "bytes_sent", moved[0]), chunks_resent=1)
            progress.update(-moved[0])
            log.info("chunk at %d of %s dropped (attempt %d); resending", offset, part, attempt)
            time.sleep(min(0.2 * 2**attempt, 5))
            continue
        stats.add(bytes_sent=res.bytes_sent)
        sh.raise_for(res, fs._name(part), "write a chunk of")
        if sh.first_digest(res.stdout) == digest.hexdigest():
            return
        stats.add(chunks_resent=1)
        progress.update(-moved[0])
        log.warning("chunk at %d of %s failed verification; resending", offset, part)
    raise TransferError(
        f"could not upload the chunk at byte {offset} of {fs._name(part)} after "
        f"{MAX_ATTEMPTS} attempts",
        hint="the connection to the cluster keeps failing; check it and run the upload again "
        "(verified chunks are kept and not sent again)",
    )


def _run_parallel(fn: Callable[[Any], None], items: list[Any], streams: int) -> None:
    if not items:
        return
    if streams <= 1 or len(items) == 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(streams, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        error: BaseException | None = None
        for fut in futures:
            try:
                fut.result()
            except BaseException as exc:  # keep the first, cancel the rest
                if error is None:
                    error = exc
                    for other in futures:
                        other.cancel()
        if error is not None:
            raise error


def download(
    fs: PVCFileSystem,
    remote: str,
    lpath: str,
    size: int,
    *,
    progress: Progress | None = None,
) -> TransferStats:
    """Download ``remote`` (``size`` bytes) to ``lpath`` in verified chunks."""
    stats = TransferStats(files=1, bytes=size)
    started = time.monotonic()
    progress = progress or Progress(None)
    chunk = fs.chunk_size
    offsets = list(range(0, size, chunk))
    stats.chunks = len(offsets)
    tmp = local_part(lpath)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        with ThreadPoolExecutor(max_workers=max(1, fs.streams)) as hashers:

            def fetch(offset: int) -> None:
                _fetch_chunk(
                    fs, remote, fd, offset, min(chunk, size - offset), stats, progress, hashers
                )

            _run_parallel(fetch, offsets, fs.streams)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, lpath)
    stats.seconds = time.monotonic() - started
    return stats


def _fetch_chunk(
    fs: PVCFileSystem,
    remote: str,
    fd: int,
    offset: int,
    length: int,
    stats: TransferStats,
    progress: Progress,
    hashers: ThreadPoolExecutor,
) -> None:
    for attempt in range(MAX_ATTEMPTS):
        digest = hashlib.sha256()
        got = [0]

        def sink(data: bytes, got: list[int] = got, digest: Any = digest) -> None:
            os.pwrite(fd, data, offset + got[0])
            digest.update(data)
            got[0] += len(data)
            progress.update(len(data))

        remote_hash = hashers.submit(
            fs._sh, sh.RANGE_SHA256, remote, str(offset), str(length), attempts=3
        )
        try:
            res = fs._sh(sh.CAT, remote, str(offset), str(offset + length), stdout=sink, attempts=1)
        except ExecStreamDropped:
            stats.add(bytes_received=got[0], chunks_resent=1)
            progress.update(-got[0])
            remote_hash.cancel()
            log.info(
                "chunk at %d of %s dropped (attempt %d); fetching again", offset, remote, attempt
            )
            time.sleep(min(0.2 * 2**attempt, 5))
            continue
        stats.add(bytes_received=res.bytes_received)
        sh.raise_for(res, fs._name(remote), "read")
        hres = remote_hash.result()
        sh.raise_for(hres, fs._name(remote), "hash")
        if got[0] == length and sh.first_digest(hres.stdout) == digest.hexdigest():
            return
        stats.add(chunks_resent=1)
        progress.update(-got[0])
        log.warning("chunk at %d of %s failed verification; fetching again", offset, remote)
    raise TransferError(
        f"could not download the chunk at byte {offset} of {fs._name(remote)} after "
        f"{MAX_ATTEMPTS} attempts",
        hint="the connection to the cluster keeps failing, or the file is being modified; "
        "check and run it again",
    )


# -- trees of small files -----------------------------------------------------------------


def _tar_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(mtime)
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.GNU_FORMAT, sh.ENC, sh.ERRORS)


@dataclass
class _Member:
    lpath: str
    rel: str  # path inside the staging folder
    remote: str  # final remote path
    size: int
    mtime: float


def tar_size(members: list[_Member]) -> int:
    total = 1024
    for m in members:
        total += len(_tar_header(m.rel, m.size, m.mtime)) + -(-m.size // 512) * 512
    return total


def _tar_stream(
    members: list[_Member], digests: dict[str, Any], progress: Progress
) -> Iterator[bytes]:
    """The tar bytes of ``members``, in >= 1 MiB pieces, hashing each file on the way."""
    buf = bytearray()
    for m in members:
        buf += _tar_header(m.rel, m.size, m.mtime)
        h = hashlib.sha256()
        digests[m.rel] = h
        remaining = m.size
        with open(m.lpath, "rb") as f:
            while remaining:
                piece = f.read(min(PIECE, remaining))
                if not piece:
                    raise TransferError(
                        f"{m.lpath} shrank while it was being uploaded",
                        hint="do not modify files while they are being pushed; run it again",
                    )
                h.update(piece)
                buf += piece
                remaining -= len(piece)
                if len(buf) >= PIECE:
                    yield bytes(buf)
                    buf.clear()
        progress.update(m.size)
        buf += b"\0" * (-m.size % 512)
        if len(buf) >= PIECE:
            yield bytes(buf)
            buf.clear()
    buf += b"\0" * 1024
    yield bytes(buf)


def upload_batch(
    fs: PVCFileSystem,
    staging: str,
    members: list[_Member],
    stats: TransferStats,
    progress: Progress,
) -> None:
    """Send ``members`` as one tar into ``staging`` and verify every file's sha256."""
    pending = members
    for attempt in range(MAX_ATTEMPTS):
        digests: dict[str, Any] = {}
        size = tar_size(pending)
        names = ["./" + m.rel for m in pending]
        try:
            res = fs._sh(
                sh.TAR_IN,
                staging,
                str(size),
                *names,
                stdin=_tar_stream(pending, digests, progress),
                attempts=1,
            )
        except ExecStreamDropped as exc:
            stats.add(bytes_sent=getattr(exc, "bytes_sent", 0), chunks_resent=1)
            progress.update(-sum(m.size for m in pending if m.rel in digests))
            time.sleep(min(0.2 * 2**attempt, 5))
            continue
        stats.add(bytes_sent=res.bytes_sent)
        sh.raise_for(res, fs._name(staging), "unpack files into")
        remote = sh.parse_sha256(res.stdout, names)
        failed = []
        for m, name in zip(pending, names, strict=False):
            local = digests[m.rel].hexdigest()
            if remote.get(name) == local:
                stats.sha256[fs._name(m.remote)] = local
            else:
                failed.append(m)
        if not failed:
            return
        stats.add(chunks_resent=1)
        progress.update(-sum(m.size for m in failed))
        log.warning("%d file(s) failed verification; sending them again", len(failed))
        pending = failed
    raise TransferError(
        f"could not upload {len(pending)} file(s) into {fs._name(staging)} after "
        f"{MAX_ATTEMPTS} attempts",
        hint="the connection to the cluster keeps failing; check it and run it again",
    )


def plan_batches(members: list[_Member], max_bytes: int, max_files: int) -> list[list[_Member]]:
    batches: list[list[_Member]] = []
    current: list[_Member] = []
    size = 0
    for m in members:
        if current and (size + m.size > max_bytes or len(current) >= max_files):
            batches.append(current)
            current, size = [], 0
        current.append(m)
        size += m.size
    if current:
        batches.append(current)
    return batches


def download_batch(
    fs: PVCFileSystem,
    items: list[tuple[str, str, int]],
    stats: TransferStats,
    progress: Progress,
) -> None:
    """Fetch many small remote files (remote, lpath, size) with one ``cat`` and one hash."""
    pending = items
    for attempt in range(MAX_ATTEMPTS):
        remotes = [r for r, _, _ in pending]
        with ThreadPoolExecutor(max_workers=1) as hasher:
            hashed = hasher.submit(fs._sh, sh.SHA256, *remotes, attempts=3)
            writer = _Splitter(pending, progress)
            try:
                res = fs._sh(sh.CAT_MANY, *remotes, stdout=writer.write, attempts=1)
            except ExecStreamDropped:
                stats.add(bytes_received=writer.total, chunks_resent=1)
                progress.update(-writer.total)
                writer.abort()
                time.sleep(min(0.2 * 2**attempt, 5))
                continue
            hres = hashed.result()
        stats.add(bytes_received=res.bytes_received)
        try:
            sh.raise_for(res, fs._name(remotes[0]), "read")
            sh.raise_for(hres, fs._name(remotes[0]), "hash")
            remote = sh.parse_sha256(hres.stdout, remotes)
        except BaseException:
            writer.abort()
            raise
        failed = writer.finish(remote)
        for (r, _, _), digest in zip(pending, writer.digests, strict=False):
            if (r, digest) not in failed:
                stats.sha256[fs._name(r)] = digest
        if not failed:
            return
        stats.add(chunks_resent=1)
        pending = [item for item in pending if item[0] in {r for r, _ in failed}]
    raise TransferError(
        f"could not download {len(pending)} file(s) after {MAX_ATTEMPTS} attempts",
        hint="the files may be changing while read, or the connection keeps failing; retry",
    )


class _Splitter:
    """Splits a concatenation of files back into local part files, hashing each."""

    def __init__(self, items: list[tuple[str, str, int]], progress: Progress) -> None:
        self.items = items
        self.progress = progress
        self.index = 0
        self.left = items[0][2] if items else 0
        self.total = 0
        self.tmps: list[str] = []
        self.digests: list[str] = []
        self._h = hashlib.sha256()
        self._f: Any = None
        self._open_next()

    def _open_next(self) -> None:
        while self.index < len(self.items):
            _, lpath, size = self.items[self.index]
            parent = os.path.dirname(lpath)
            if parent:
                os.makedirs(parent, exist_ok=True)
            tmp = local_part(lpath)
            self.tmps.append(tmp)
            self._f = open(tmp, "wb")  # noqa: SIM115 - closed in _close_current
            self._h = hashlib.sha256()
            self.left = size
            if size > 0:
                return
            self._close_current()
        self._f = None

    def _close_current(self) -> None:
        self._f.close()
        self.digests.append(self._h.hexdigest())
        self.index += 1

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        self.total += len(view)
        self.progress.update(len(view))
        while view:
            if self._f is None:
                raise TransferError(
                    "the helper pod sent more bytes than the files' listed sizes",
                    hint="a file grew while it was downloaded; run it again",
                )
            take = view[: self.left]
            self._f.write(take)
            self._h.update(take)
            self.left -= len(take)
            view = view[len(take) :]
            if self.left == 0:
                self._close_current()
                self._open_next()

    def finish(self, remote: dict[str, str]) -> set[tuple[str, str]]:
        """Move verified files into place; return (remote, digest) of those that failed."""
        if self._f is not None:
            self._f.close()
            self.abort()
            return {(r, "") for r, _, _ in self.items}
        failed = set()
        for (r, lpath, _), tmp, digest in zip(self.items, self.tmps, self.digests, strict=False):
            if remote.get(r) == digest:
                os.replace(tmp, lpath)
            else:
                failed.add((r, digest))
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return failed

    def abort(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        for tmp in self.tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
