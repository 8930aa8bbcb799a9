"""The on-repository layout that makes a push atomic: reservations, staging, manifests.

Triton sees ``<root>/<model>/<N>/`` folders only. Everything modelrepo needs to publish
safely lives beside them in ``<root>/<model>/.modelrepo/`` (Triton ignores folders whose
name is not a number):

- ``reserved/<N>/``: a version number taken by a push in flight (one atomic ``mkdir``);
- ``staging-<id>/``: the files of that version while they are being written;
- ``manifests/<N>.json``: the size and sha256 of every file of a published version, so the
  next push can skip (hard-link) what is already there without reading it back.

A version appears to Triton in one ``rename`` of the staging folder, or not at all.
Works on any fsspec filesystem; the PVC filesystem makes each step one exec round trip.
"""

from __future__ import annotations

import contextlib
import json
import operator
import posixpath
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.local import LocalFileSystem

from modelrepo.errors import InputError, ModelRepoError, VersionExistsError

META_DIR = ".modelrepo"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
STALE_STAGING_SECONDS = 6 * 3600
#: Triton reads version folder names as int64.
MAX_VERSION = 2**63 - 1


def check_model_name(name: str) -> str:
    """Refuse names Triton or a shell would trip on, before anything touches the claim."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name) or name in (".", ".."):
        raise InputError(
            f"invalid model name {name!r}",
            hint="use 1-128 characters from letters, digits, '_', '-' and '.', not starting "
            "with '.' or '-' (Triton uses the folder name as the model name)",
        )
    return name


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path inside the version folder, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a published version holds, as written next to it on the repository."""

    model: str
    version: int
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        files = {p: {"size": e.size, "sha256": e.sha256} for p, e in sorted(self.files.items())}
        body = {"model": self.model, "version": self.version, "created": self.created}
        return json.dumps({**body, "files": files}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        files = {
            p: FileEntry(p, int(v["size"]), str(v["sha256"])) for p, v in data["files"].items()
        }
        return cls(data["model"], int(data["version"]), files, float(data.get("created", 0)))


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class RepositoryStore:
    """Versioned model folders on an fsspec filesystem, published atomically."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str = "") -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    # -- paths -------------------------------------------------------------------------
    def model_path(self, model: str) -> str:
        check_model_name(model)
        return f"{self.root}/{model}" if self.root else model

    def version_path(self, model: str, version: int) -> str:
        return f"{self.model_path(model)}/{int(version)}"

    def meta_path(self, model: str, *parts: str) -> str:
        return posixpath.join(self.model_path(model), META_DIR, *parts)

    # -- reading -----------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """Model folders in the repository (one listing)."""
        try:
            entries = self.fs.ls(self.root or "", detail=True)
        except FileNotFoundError:
            return []
        names = [_basename(e["name"]) for e in entries if e["type"] == "directory"]
        return sorted(n for n in names if not n.startswith("."))

    def tree(self, model: str) -> list[dict]:
        """Every file and folder under the model (one ``find``: one exec on a PVC)."""
        path = self.model_path(model)
        try:
            found = self.fs.find(path, detail=True, withdirs=True)
        except FileNotFoundError:
            return []
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        out = []
        for name, info in found.items():
            stripped = self.fs._strip_protocol(name)
            if stripped.startswith(prefix):
                out.append({**info, "relpath": stripped[len(prefix) :]})
        return out

    @staticmethod
    def versions_in(tree: Iterable[dict]) -> list[int]:
        return sorted(
            int(e["relpath"])
            for e in tree
            if e["type"] == "directory" and _VERSION_RE.match(e["relpath"])
        )

    def list_versions(self, model: str) -> list[int]:
        return self.versions_in(self.tree(model))

    def read_manifest(self, model: str, version: int) -> Manifest | None:
        try:
            return Manifest.from_json(
                self.fs.cat_file(self.meta_path(model, "manifests", f"{version}.json"))
            )
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def read_config(self, model: str) -> str | None:
        try:
            return self.fs.cat_file(f"{self.model_path(model)}/config.pbtxt").decode()
        except FileNotFoundError:
            return None

    # -- writing -----------------------------------------------------------------------
    def _mkdir_exclusive(self, path: str) -> None:
        """Create ``path`` or raise FileExistsError: the one atomic step of allocation."""
        if isinstance(self.fs, LocalFileSystem):
            import os

            os.mkdir(self.fs._strip_protocol(path))
        else:
            self.fs.mkdir(path, create_parents=False)

    def reserve_version(self, model: str, version: int | None, taken: Iterable[int]) -> int:
        """Take the next free version number (or exactly ``version``) for this push.

        Two pushes racing for the same number both try ``mkdir reserved/<N>``; the loser
        moves on to N+1, so concurrent notebooks get distinct versions.
        """
        published = set(taken)
        if version is not None:
            # Checked before anything is created: a refused push leaves the claim untouched.
            number = _as_int(version)
            if number is None or not 1 <= number <= MAX_VERSION:
                raise InputError(
                    f"version must be an integer from 1 to {MAX_VERSION}, got {version!r}",
                    hint="Triton ignores version folders that are 0 or not a number, and "
                    "reads version numbers as 64-bit integers",
                )
            version = number
            if version in published:
                raise VersionExistsError(
                    f"{model} version {version} already exists",
                    hint=f"leave version= unset to publish as the next version, or "
                    f"delete it first with repo.delete_version({model!r}, {version})",
                )
        self.fs.makedirs(self.meta_path(model, "reserved"), exist_ok=True)
        if version is not None:
            try:
                self._mkdir_exclusive(self.meta_path(model, "reserved", str(version)))
            except FileExistsError:
                raise VersionExistsError(
                    f"{model} version {version} is being pushed by someone else right now",
                    hint="pick another version number or wait for that push to finish",
                ) from None
            return version
        reserved = {
            int(_basename(p))
            for p in self.fs.ls(self.meta_path(model, "reserved"), detail=False)
            if _VERSION_RE.match(_basename(p))
        }
        candidate = max(published | reserved, default=0) + 1
        for _ in range(1000):
            try:
                self._mkdir_exclusive(self.meta_path(model, "reserved", str(candidate)))
            except FileExistsError:
                candidate += 1
                continue
            try:
                if not self.fs.exists(self.version_path(model, candidate)):
                    return candidate
            except BaseException:
                # Interrupted (Ctrl-C) or failed while checking: give the number back.
                with contextlib.suppress(Exception):
                    self.release_version(model, candidate)
                raise
            self.release_version(model, candidate)
            candidate += 1
        raise ModelRepoError(f"could not reserve a version number for {model}")

    def release_version(self, model: str, version: int) -> None:
        self._rm_quiet(self.meta_path(model, "reserved", str(version)), recursive=True)

    def new_staging(self, model: str) -> str:
        stamp = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        path = self.meta_path(model, f"staging-{stamp}")
        self.fs.makedirs(path, exist_ok=False)
        return path

    def write_text_atomic(self, path: str, text: str) -> None:
        """Replace a small file in one rename, so readers see the old or the new text."""
        parent = posixpath.dirname(path)
        tmp = posixpath.join(parent, f".{_basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        self.fs.pipe_file(tmp, text.encode())
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            self._rm_quiet(tmp)
            raise

    def publish(self, model: str, version: int, staging: str, manifest: Manifest) -> str:
        """Make the staged version visible to Triton in one rename."""
        target = self.version_path(model, version)
        if self.fs.exists(target):
            raise VersionExistsError(
                f"{model} version {version} appeared while pushing",
                hint="push again: the next free version will be used",
            )
        self.fs.makedirs(self.meta_path(model, "manifests"), exist_ok=True)
        self.fs.pipe_file(
            self.meta_path(model, "manifests", f"{version}.json"), manifest.to_json().encode()
        )
        self.fs.mv(staging, target, recursive=True)
        self.release_version(model, version)
        return target

    def delete_version(self, model: str, version: int) -> None:
        """Remove a published version: first out of Triton's sight (rename), then its bytes."""
        target = self.version_path(model, version)
        if not self.fs.exists(target):
            raise FileNotFoundError(f"{model} version {version} does not exist")
        trash = self.meta_path(model, f"deleting-{int(time.time())}-{uuid.uuid4().hex[:8]}")
        self.fs.mv(target, trash, recursive=True)
        self._rm_quiet(trash, recursive=True)
        self._rm_quiet(self.meta_path(model, "manifests", f"{version}.json"))

    def cleanup(self, model: str, *, older_than: float = STALE_STAGING_SECONDS) -> list[str]:
        """Remove staging folders and reservations left by interrupted pushes."""
        removed = []
        now = time.time()
        meta = self.meta_path(model)
        try:
            entries = self.fs.ls(meta, detail=True)
        except FileNotFoundError:
            return []
        for entry in entries:
            base = _basename(entry["name"])
            if base.startswith(("staging-", "deleting-")):
                started = _staging_started(base)
                if started is None or now - started >= older_than:
                    self._rm_quiet(entry["name"], recursive=True)
                    removed.append(entry["name"])
        try:
            reserved = self.fs.ls(self.meta_path(model, "reserved"), detail=True)
        except FileNotFoundError:
            reserved = []
        for entry in reserved:
            if now - _mtime(entry, default=0.0) >= older_than:
                self._rm_quiet(entry["name"], recursive=True)
                removed.append(entry["name"])
        return removed

    def _rm_quiet(self, path: str, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=recursive)


def _mtime(info: dict, default: float | None = None) -> float | None:
    """Modification time of an fsspec ``info`` dict, whatever key the filesystem uses."""
    for key in ("mtime", "modified", "LastModified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return default


def _as_int(value: object) -> int | None:
    """``value`` as an int if it is one (numpy integers too), else None."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _staging_started(base: str) -> float | None:
    parts = base.split("-")
    if len(parts) >= 2 and parts[1].isdigit():
        return float(parts[1])
    return None
