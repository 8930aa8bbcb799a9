"""Verified transfers between this machine and the claim.

Large files move in chunks (``chunk_size``, default 64 MiB) over ``streams`` parallel exec
sessions shared by all the files of a call. Each chunk is written at its offset of a hidden
part file next to the target; a chunk whose stream drops is sent again at once. Then the
file is verified by the transfer checksum (:data:`_shell.CHECKSUM`, sha256) on both sides: the
helper pod hashes it in a few ranges in parallel (:func:`hash_ranges`; busybox ``sha256sum``
reads 4 KiB at a time, so the last range is read straight from the file and only the others
go through a pipe, which costs about a third more CPU), and a local thread hashes the same
ranges of the source while the chunks go out. A range whose digests differ is checked chunk
by chunk and only its bad chunks are sent again, each verified as it lands. A part file
left by an interrupted run is reused: its chunks are not sent again, and are verified with
the rest. One exec then renames every part file onto its target, so a half-written file
never appears under its name.

Downloads mirror this: chunks stream in parallel into local part files while the helper
pod hashes each whole file and a local thread hashes the chunks in order as they land.

Files that fit in one chunk, and trees of small files, travel as tar streams (one exec per
batch, not one per file); the pod hashes the unpacked files in the same exec (reading the
files themselves) and, for ``atomic`` puts, one ``mv`` per folder moves them into place.

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
    #: each batched file's transfer checksum (:data:`_shell.CHECKSUM`), by path
    checksums: dict[str, str] = field(default_factory=dict)
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
            self.checksums.update(other.checksums)


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

    def size(self) -> int:
        if self.lpath is not None:
            return os.path.getsize(self.lpath)
        return len(self.data or b"")

    def pieces(
        self, offset: int, length: int, digest: Any, progress: Callable[[int], None]
    ) -> Iterator[bytes]:
        """The bytes [offset, offset+length) in pieces, fed to ``digest`` unless it is None."""
        if self.data is not None:
            first, last = offset - self.base, offset - self.base + length
            if first < 0 or last > len(self.data):
                raise ValueError(f"bytes {offset}..{offset + length} are not in this buffer")
            for start in range(first, last, PIECE):
                piece = self.data[start : min(start + PIECE, last)]
                if digest is not None:
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
                if digest is not None:
                    digest.update(piece)
                progress(len(piece))
                remaining -= len(piece)
                yield piece

    def digest(self, offset: int, length: int) -> str:
        h = sh.new_checksum()
        for _ in self.pieces(offset, length, h, lambda n: None):
            pass
        return h.hexdigest()


def hash_ranges(size: int, chunk: int, parts: int = 2) -> list[tuple[int, int]]:
    """How the helper pod verifies a file: (offset, length) ranges hashed in parallel.

    The last range is hashed straight from the file (see :data:`_shell.HASH_RANGE`), the
    other through a pipe, which costs busybox ``sha256sum`` about a third more CPU: it gets
    the smaller share (40%, whole chunks). A file of one chunk, or ``parts=1``, is one range.
    """
    chunks = -(-size // chunk)
    if chunks < 2 or parts < 2:
        return [(0, size)]
    front = max(1, round(chunks * 0.4)) * chunk
    return [(0, front), (front, size - front)]


def _pod_digest(fs: PVCFileSystem, path: str, offset: int, length: int, size: int) -> str:
    """The checksum of bytes [offset, offset+length) of a file on the claim (to its end if
    last)."""
    to_end = offset + length >= size
    res = fs._sh(sh.HASH_RANGE, path, str(offset), "" if to_end else str(length))
    sh.raise_for(res, fs._name(path), "hash")
    return sh.first_digest(res.stdout)


def upload(
    fs: PVCFileSystem,
    remote: str,
    *,
    lpath: str | None = None,
    data: bytes | memoryview | None = None,
    mode: str = "overwrite",
    progress: Progress | None = None,
) -> TransferStats:
    """Upload a local file (or bytes) to ``remote``; see :func:`upload_many`."""
    return upload_many(fs, [(_Source(lpath, data), remote)], mode=mode, progress=progress)


def upload_files(
    fs: PVCFileSystem,
    pairs: list[tuple[str, str]],
    *,
    mode: str = "overwrite",
    progress: Progress | None = None,
) -> TransferStats:
    """Upload (local path, remote path) pairs; see :func:`upload_many`."""
    return upload_many(
        fs, [(_Source(lpath), remote) for lpath, remote in pairs], mode=mode, progress=progress
    )


@dataclass
class _Upload:
    source: _Source
    remote: str
    size: int
    part: str

    def length_at(self, offset: int, chunk: int) -> int:
        return min(chunk, self.size - offset)


def upload_many(
    fs: PVCFileSystem,
    items: list[tuple[_Source, str]],
    *,
    mode: str = "overwrite",
    progress: Progress | None = None,
) -> TransferStats:
    """Upload sources to remote paths in chunks, then verify each file by checksum ranges.

    One exec prepares every file's hidden part file. The chunks of all files share
    ``fs.streams`` sessions, each written at its offset (a dropped one is sent again at
    once). Meanwhile a local thread hashes the sources' :func:`hash_ranges`; once the bytes
    are on the claim, the helper pod hashes the same ranges in parallel. A range whose
    digests differ is checked chunk by chunk (range hash per chunk) and only the bad chunks
    are sent again, each verified as it lands. The chunks of a part file left by an
    interrupted run are not sent again; they are verified with the rest. Finally one exec
    renames every part file onto its target, so no half-written file appears by name.
    """
    started = time.monotonic()
    progress = progress or Progress(None)
    chunk = fs.chunk_size
    uploads = []
    for source, remote in items:
        size = source.size()
        uploads.append(
            _Upload(source, remote, size, _part_name(remote, part_key(remote, source.lpath, size)))
        )
    stats = TransferStats(files=len(uploads), bytes=sum(u.size for u in uploads))
    if not uploads:
        return stats
    res = fs._sh(sh.BEGIN_MANY, mode, *[w for u in uploads for w in (u.remote, u.part)])
    sh.raise_for(res, fs._name(uploads[0].remote), "upload to")
    tasks: list[tuple[_Upload, int]] = []
    for u, existing in zip(uploads, sh.decode(res.stdout).split(), strict=True):
        offsets = list(range(0, u.size, chunk))
        stats.chunks += len(offsets) or 1
        kept = {o for o in offsets if o + u.length_at(o, chunk) <= int(existing)}
        if kept:
            log.info("resuming %s: %d chunk(s) already written", u.part, len(kept))
            stats.add(chunks_reused=len(kept))
            progress.update(sum(u.length_at(o, chunk) for o in kept))
        tasks += [(u, o) for o in offsets if o not in kept]

    def ours() -> list[list[str]]:
        return [[u.source.digest(o, n) for o, n in hash_ranges(u.size, chunk)] for u in uploads]

    def send(task: tuple[_Upload, int]) -> None:
        u, offset = task
        length = u.length_at(offset, chunk)
        _send_chunk(fs, u.source, u.part, offset, length, stats, progress, verify=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelrepo-hash") as side:
        local = side.submit(ours)
        _run_parallel(send, tasks, fs.streams)
        digests = local.result()
    jobs = [(u, o, n) for u in uploads for o, n in hash_ranges(u.size, chunk)]
    theirs: dict[tuple[str, int], str] = {}

    def verify(job: tuple[_Upload, int, int]) -> None:
        u, o, n = job
        theirs[(u.part, o)] = _pod_digest(fs, u.part, o, n, u.size)

    _run_parallel(verify, jobs, fs.streams)
    for u, local_digests in zip(uploads, digests, strict=True):
        for (o, n), digest in zip(hash_ranges(u.size, chunk), local_digests, strict=True):
            if theirs[(u.part, o)] != digest:
                _mend(fs, u, o, n, stats, progress)
    finish_many(fs, [(u.remote, u.part, u.size) for u in uploads], mode)
    stats.seconds = time.monotonic() - started
    return stats


def _mend(
    fs: PVCFileSystem,
    u: _Upload,
    offset: int,
    length: int,
    stats: TransferStats,
    progress: Progress,
) -> None:
    """A range of a part file failed verification: resend its bad chunks, each verified."""
    chunk = fs.chunk_size
    offsets = list(range(offset, offset + length, chunk))
    res = fs._sh(sh.RANGES_CHECKSUM, u.part, str(chunk), *map(str, offsets))
    sh.raise_for(res, fs._name(u.part), "hash")
    theirs = [line.split(" ", 1)[0] for line in sh.decode(res.stdout).splitlines()]
    bad = [
        o
        for i, o in enumerate(offsets)
        if i >= len(theirs) or theirs[i] != u.source.digest(o, u.length_at(o, chunk))
    ]
    log.warning("%d chunk(s) of %s failed verification; resending", len(bad), u.remote)
    stats.add(chunks_resent=len(bad))
    for o in bad:
        progress.update(-u.length_at(o, chunk))
    _run_parallel(
        lambda o: _send_chunk(fs, u.source, u.part, o, u.length_at(o, chunk), stats, progress),
        bad,
        fs.streams,
    )


def finish(fs: PVCFileSystem, remote: str, part: str, mode: str, size: int) -> None:
    """Rename the verified part file onto the target, surviving a dropped stream."""
    finish_many(fs, [(remote, part, size)], mode)


def finish_many(fs: PVCFileSystem, items: list[tuple[str, str, int]], mode: str) -> None:
    """Rename verified part files onto their targets in one exec, surviving a dropped stream.

    ``items``: (target, part file, size). After a drop the script runs again in "retry"
    mode, where a file whose part is gone and whose target has the right size counts as
    done (the dropped run committed it).
    """
    flat = [word for remote, part, size in items for word in (remote, part, str(size))]
    for attempt in range(3):
        try:
            res = fs._sh(sh.FINISH_MANY, mode, "retry" if attempt else "first", *flat, attempts=1)
        except ExecStreamDropped:
            continue
        sh.raise_for(res, fs._name(items[0][0]), "upload to")
        return
    raise TransferError(
        f"could not finish the upload of {fs._name(items[0][0])}",
        hint="the connection to the cluster keeps failing; run the upload again (verified "
        "chunks are kept)",
    )


def _send_chunk(
    fs: PVCFileSystem,
    source: _Source,
    part: str,
    offset: int,
    length: int,
    stats: TransferStats,
    progress: Progress,
    *,
    verify: bool = True,
) -> None:
    """Write one chunk at its offset of ``part``; a dropped stream sends it again.

    ``verify``: the pod hashes what it wrote and the chunk is sent again until that matches
    the sent bytes' hash; without, the caller verifies later (by range).
    """
    for attempt in range(MAX_ATTEMPTS):
        digest = sh.new_checksum() if verify else None
        moved = [0]

        def counted(n: int, moved: list[int] = moved) -> None:
            moved[0] += n
            progress.update(n)

        try:
            res = fs._sh(
                sh.WRITE_PART if verify else sh.WRITE_CHUNK,
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
        if digest is None or sh.first_digest(res.stdout) == digest.hexdigest():
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
    """Download ``remote`` (``size`` bytes) to ``lpath``, verified; see :func:`download_many`."""
    return download_many(fs, [(remote, lpath, size)], progress=progress)


@dataclass
class _Download:
    remote: str
    lpath: str
    size: int
    tmp: str
    fd: int = -1

    def chunks(self, chunk: int) -> list[tuple[int, int]]:
        return [(o, min(chunk, self.size - o)) for o in range(0, self.size, chunk)]


def download_many(
    fs: PVCFileSystem,
    items: list[tuple[str, str, int]],
    *,
    progress: Progress | None = None,
) -> TransferStats:
    """Download (remote, local path, size) files in chunks, each verified by its checksum.

    The chunks of every file stream in parallel into local part files. Meanwhile the
    helper pod hashes each whole file straight from the claim (two files at a time) and a
    local thread hashes the chunks in order as they land. One hash per file, not a range
    each: it runs while the bytes travel, and a range through a pipe costs busybox
    ``sha256sum`` a third more CPU (see :func:`hash_ranges`). A file whose digests differ
    is checked chunk by chunk and only its bad chunks are fetched again. A file appears
    under its name only once verified.
    """
    started = time.monotonic()
    progress = progress or Progress(None)
    stats = TransferStats(files=len(items), bytes=sum(size for _, _, size in items))
    chunk = fs.chunk_size
    downloads = [_Download(r, lp, size, local_part(lp)) for r, lp, size in items]
    try:
        for d in downloads:
            d.fd = os.open(d.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(d.fd, d.size)
        local = _InOrderHasher(
            [(d.fd, d.chunks(chunk), hash_ranges(d.size, chunk, parts=1)) for d in downloads]
        )
        jobs = [(d, o, n) for d in downloads for o, n in hash_ranges(d.size, chunk, parts=1)]
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="modelrepo-verify") as side:
            ours = side.submit(local.run)
            theirs = [side.submit(_pod_digest, fs, d.remote, o, n, d.size) for d, o, n in jobs]

            def fetch(task: tuple[int, int, int]) -> None:
                index, offset, length = task
                fd = downloads[index].fd
                _fetch_chunk(fs, downloads[index].remote, fd, offset, length, stats, progress)
                local.landed(index, offset)

            tasks = [(i, o, n) for i, d in enumerate(downloads) for o, n in d.chunks(chunk)]
            stats.chunks = len(tasks)
            try:
                _run_parallel(fetch, tasks, fs.streams)
            except BaseException:
                for pending in theirs:
                    pending.cancel()
                raise
            finally:
                local.stop()
            mine = iter(digest for per_file in ours.result() for digest in per_file)
            for (d, o, n), pod in zip(jobs, theirs, strict=True):
                if pod.result() != next(mine):
                    bad = [(co, cn) for co, cn in d.chunks(chunk) if o <= co < o + n]
                    _repair(fs, d.remote, d.fd, bad, stats, progress)
        for d in downloads:
            os.fsync(d.fd)
    except BaseException:
        for d in downloads:
            if d.fd >= 0:
                os.close(d.fd)
            with contextlib.suppress(OSError):
                os.unlink(d.tmp)
        raise
    for d in downloads:
        os.close(d.fd)
        os.replace(d.tmp, d.lpath)
    stats.seconds = time.monotonic() - started
    return stats


class _InOrderHasher:
    """The checksum of local files' ranges, chunk by chunk in order, each once it landed.

    ``files``: (fd, chunks [(offset, length)], hash ranges [(offset, length)]) per file,
    ranges starting on chunk boundaries; :meth:`run` returns each file's range digests.
    """

    def __init__(
        self, files: list[tuple[int, list[tuple[int, int]], list[tuple[int, int]]]]
    ) -> None:
        self._files = files
        self._landed: set[tuple[int, int]] = set()
        self._stopped = False
        self._cond = threading.Condition()

    def landed(self, index: int, offset: int) -> None:
        with self._cond:
            self._landed.add((index, offset))
            self._cond.notify_all()

    def stop(self) -> None:
        """Unblock :meth:`run` (a chunk that never lands would otherwise be waited for)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self) -> list[list[str]]:
        out: list[list[str]] = []
        for index, (fd, chunks, ranges) in enumerate(self._files):
            starts = {o for o, _ in ranges}
            digests: list[str] = []
            digest = sh.new_checksum()
            for offset, length in chunks:
                if offset in starts and offset:
                    digests.append(digest.hexdigest())
                    digest = sh.new_checksum()
                with self._cond:
                    while (index, offset) not in self._landed and not self._stopped:
                        self._cond.wait()
                    if (index, offset) not in self._landed:
                        return out
                _hash_range(fd, offset, length, digest)
            digests.append(digest.hexdigest())
            out.append(digests)
        return out


def _hash_range(fd: int, offset: int, length: int, digest: Any) -> Any:
    end = offset + length
    while offset < end:
        piece = os.pread(fd, min(4 * PIECE, end - offset), offset)
        if not piece:
            raise TransferError(
                "a downloaded part file shrank on this machine",
                hint="something else is modifying the download folder; run it again",
            )
        digest.update(piece)
        offset += len(piece)
    return digest


def _repair(
    fs: PVCFileSystem,
    remote: str,
    fd: int,
    chunks: list[tuple[int, int]],
    stats: TransferStats,
    progress: Progress,
) -> None:
    """A range's digests differ: find its chunks that do by range hashes, fetch those again."""
    offsets = [o for o, _ in chunks]
    for _attempt in range(MAX_ATTEMPTS):
        res = fs._sh(sh.RANGES_CHECKSUM, remote, str(fs.chunk_size), *map(str, offsets))
        sh.raise_for(res, fs._name(remote), "hash")
        theirs = [line.split(" ", 1)[0] for line in sh.decode(res.stdout).splitlines()]
        bad = [
            (o, n)
            for i, (o, n) in enumerate(chunks)
            if i >= len(theirs) or theirs[i] != _hash_range(fd, o, n, sh.new_checksum()).hexdigest()
        ]
        if not bad:
            return
        log.warning("%d chunk(s) of %s failed verification; fetching again", len(bad), remote)
        stats.add(chunks_resent=len(bad))
        _run_parallel(
            lambda r: _fetch_chunk(fs, remote, fd, r[0], r[1], stats, progress), bad, fs.streams
        )
    raise TransferError(
        f"{fs._name(remote)} kept changing while it was downloaded",
        hint="stop whatever writes to it (or wait for it to finish), then download it again",
    )


def _fetch_chunk(
    fs: PVCFileSystem,
    remote: str,
    fd: int,
    offset: int,
    length: int,
    stats: TransferStats,
    progress: Progress,
) -> None:
    """Fetch one chunk into ``fd`` at its offset; a dropped stream fetches it again."""
    for attempt in range(MAX_ATTEMPTS):
        got = [0]

        def sink(data: bytes, got: list[int] = got) -> None:
            os.pwrite(fd, data, offset + got[0])
            got[0] += len(data)
            progress.update(len(data))

        try:
            res = fs._sh(sh.CAT, remote, str(offset), str(offset + length), stdout=sink, attempts=1)
        except ExecStreamDropped:
            stats.add(bytes_received=got[0], chunks_resent=1)
            progress.update(-got[0])
            log.info(
                "chunk at %d of %s dropped (attempt %d); fetching again", offset, remote, attempt
            )
            time.sleep(min(0.2 * 2**attempt, 5))
            continue
        stats.add(bytes_received=res.bytes_received)
        sh.raise_for(res, fs._name(remote), "read")
        if got[0] == length:
            return
        stats.add(chunks_resent=1)
        progress.update(-got[0])
        log.warning("chunk at %d of %s came back short; fetching again", offset, remote)
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
    checksum: str | None = None  # known already (the caller hashed the file): not hashed again


class _Known:
    """A digest the caller already knows: nothing to compute while the bytes go out."""

    def __init__(self, hexdigest: str) -> None:
        self._hex = hexdigest

    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return self._hex


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
        h: Any = _Known(m.checksum) if m.checksum else sh.new_checksum()
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
                remaining -= len(piece)
                if len(piece) >= PIECE // 2:  # a big file's piece goes as it is (no copy)
                    if buf:
                        yield bytes(buf)
                        buf.clear()
                    yield piece
                    continue
                buf += piece
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
    """Send ``members`` as one tar into ``staging`` and verify every file's checksum."""
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
        remote = sh.parse_digests(res.stdout, names)
        failed = []
        for m, name in zip(pending, names, strict=False):
            local = digests[m.rel].hexdigest()
            if remote.get(name) == local:
                stats.checksums[fs._name(m.remote)] = local
            else:
                failed.append(m)
        if not failed:
            return
        for m in failed:
            if m.checksum and _Source(m.lpath).digest(0, m.size) != m.checksum:
                raise TransferError(
                    f"{m.lpath} changed after it was hashed (while being uploaded)",
                    hint="do not modify files while they are being pushed; run it again",
                )
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
            hashed = hasher.submit(fs._sh, sh.CHECKSUMS, *remotes, attempts=3)
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
            remote = sh.parse_digests(hres.stdout, remotes)
        except BaseException:
            writer.abort()
            raise
        failed = writer.finish(remote)
        for (r, _, _), digest in zip(pending, writer.digests, strict=False):
            if (r, digest) not in failed:
                stats.checksums[fs._name(r)] = digest
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
        self._h = sh.new_checksum()
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
            self._h = sh.new_checksum()
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
