"""sha256 of local files, remembered between pushes.

Re-pushing an unchanged 13 GB model must not re-read 13 GB: like git's index, a small
cache keyed by (path, size, mtime, inode) returns the digest of a file that has not changed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_CHUNK = 4 << 20


def cache_dir() -> Path:
    base = os.environ.get("MODELREPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelrepo"
    )
    return Path(base)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """A persistent map from a file's identity to its sha256 (safe across processes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "sha256.sqlite"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                db.execute(
                    "CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, size INT,"
                    " mtime_ns INT, inode INT, digest TEXT)"
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
                fresh = dict(zip(todo, pool.map(sha256_file, todo), strict=True))
            known.update(fresh)
            with self._lock:
                db = self._conn()
                if db is not None:
                    db.executemany(
                        "INSERT OR REPLACE INTO sha256 VALUES (?, ?, ?, ?, ?)",
                        [
                            (p, stats[p].st_size, stats[p].st_mtime_ns, stats[p].st_ino, d)
                            for p, d in fresh.items()
                        ],
                    )
                    db.commit()
        return known
