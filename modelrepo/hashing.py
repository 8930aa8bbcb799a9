"""sha256 of local files, remembered between pushes, with their transfer checksum.

Re-pushing an unchanged 13 GB model must not re-read 13 GB: like git's index, a small
cache keyed by (path, size, mtime, inode) returns the digest of a file that has not changed.
The transfer checksum the helper pod verifies with (:data:`modelrepo.fs.CHECKSUM`) is that
same sha256, so sending a file does not read and hash it again. Were it another algorithm,
the same read would compute it too, kept by content (by sha256) so that it always belongs to
exactly the bytes the manifest's sha256 describes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelrepo.errors import TransferError
from modelrepo.fs import CHECKSUM, new_checksum

_CHUNK = 4 << 20


def cache_dir() -> Path:
    base = os.environ.get("MODELREPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelrepo"
    )
    return Path(base)


def hash_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(sha256, transfer checksum) of a file, in one read."""
    sha = hashlib.sha256()
    check = None if CHECKSUM == "sha256" else new_checksum()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            if check is not None:
                check.update(chunk)
    digest = sha.hexdigest()
    return digest, digest if check is None else check.hexdigest()


class HashCache:
    """A persistent map from a file's identity to its sha256 (safe across processes), and
    from a sha256 to the transfer checksum of the same content."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "sha256.sqlite"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._checksums: dict[str, str] = {}  # sha256 -> checksum (also without a database)

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute(
                    "CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, size INT,"
                    " mtime_ns INT, inode INT, digest TEXT)"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS checksums (sha256 TEXT, algorithm TEXT,"
                    " digest TEXT, PRIMARY KEY (sha256, algorithm))"
                )
                self._db = db
            except (OSError, sqlite3.Error):
                return None  # a read-only home only costs the re-hash
        return self._db

    def digests(self, paths: Iterable[str], workers: int = 4) -> dict[str, str]:
        """sha256 of every path, hashing in parallel only what changed since last time."""
        stats = {p: os.stat(p) for p in paths}
        known: dict[str, str] = {}
        with self._lock:
            db = self._conn()
            if db is not None:
                for p, st in stats.items():
                    row = db.execute(
                        "SELECT digest FROM sha256"
                        " WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                        (p, st.st_size, st.st_mtime_ns, st.st_ino),
                    ).fetchone()
                    if row:
                        known[p] = row[0]
        todo = [p for p in stats if p not in known]
        if todo:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                fresh = dict(zip(todo, pool.map(hash_file, todo), strict=True))
            known.update({p: sha for p, (sha, _) in fresh.items()})
            self._remember({sha: check for sha, check in fresh.values()})
            with self._lock:
                db = self._conn()
                if db is not None:
                    db.executemany(
                        "INSERT OR REPLACE INTO sha256 VALUES (?, ?, ?, ?, ?)",
                        [
                            (p, stats[p].st_size, stats[p].st_mtime_ns, stats[p].st_ino, sha)
                            for p, (sha, _) in fresh.items()
                        ],
                    )
                    db.commit()
        return known

    def checksums(self, digests: Mapping[str, str], workers: int = 4) -> dict[str, str]:
        """The transfer checksum of each path's content, given its sha256 (from :meth:`digests`).

        Looked up by the sha256, so each checksum is of exactly the bytes that sha256 is of,
        whatever happened to the file since. A content hashed before this cache kept
        checksums is read again, and refused if it no longer has that sha256.
        """
        if CHECKSUM == "sha256":
            return dict(digests)
        out: dict[str, str] = {}
        with self._lock:
            db = self._conn()
            for path, sha in digests.items():
                check = self._checksums.get(sha)
                if check is None and db is not None:
                    row = db.execute(
                        "SELECT digest FROM checksums WHERE sha256=? AND algorithm=?",
                        (sha, CHECKSUM),
                    ).fetchone()
                    check = row[0] if row else None
                if check is not None:
                    out[path] = check
        todo = [p for p in digests if p not in out]
        if todo:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                fresh = dict(zip(todo, pool.map(hash_file, todo), strict=True))
            for path, (sha, check) in fresh.items():
                if sha != digests[path]:
                    raise TransferError(
                        f"{path} changed after it was hashed",
                        hint="do not modify files while they are being pushed; run it again",
                    )
                out[path] = check
            self._remember(dict(fresh.values()))
        return out

    def _remember(self, checksums: dict[str, str]) -> None:
        """Keep sha256 -> transfer checksum pairs (in memory, and in the database if any)."""
        with self._lock:
            self._checksums.update(checksums)
            db = self._conn()
            if db is not None and checksums:
                db.executemany(
                    "INSERT OR REPLACE INTO checksums VALUES (?, ?, ?)",
                    [(sha, CHECKSUM, check) for sha, check in checksums.items()],
                )
                db.commit()
