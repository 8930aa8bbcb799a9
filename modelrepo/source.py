"""Where a push reads from: a local folder or any fsspec URL, validated before a byte moves.

A source is either a whole model folder (``config.pbtxt`` + numbered version folders, as
build tutorials produce in ``./model_repository/<name>``) or the files of one version (then
the config comes from ``config=`` or from the repository). Remote sources (``s3://...``)
are validated where they are, then copied to a local temporary folder once.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from modelrepo.errors import InputError
from modelrepo.layout import validate_model_dir, validate_version_files
from modelrepo.layout.config import parse_config

_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
# Build and editor by-products that are never part of a model (as git and the Hub ignore them).
IGNORED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".git", ".modelrepo"})
IGNORED_SUFFIXES = (".pyc", ".DS_Store")


@dataclass
class LocalFile:
    relpath: str  # inside the version folder, '/'-separated
    abspath: str
    size: int


@dataclass
class Source:
    """A validated source, readable from the local disk."""

    model: str
    display: str
    config_text: str | None  # None: keep the repository's config.pbtxt
    versions: dict[int, list[LocalFile]]  # source version number -> files
    _tmpdir: str | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_fs(
    source: str | os.PathLike[str], options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    text = os.fspath(source)
    if "://" in text:
        return fsspec.core.url_to_fs(text, **(options or {}))
    return LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def config_text_of(config: str | os.PathLike[str]) -> str:
    """``config=`` accepts the text of a config.pbtxt or a path to one."""
    text = os.fspath(config)
    if "\n" not in text and (os.path.exists(text) or text.endswith(".pbtxt")):
        try:
            return Path(text).read_text()
        except FileNotFoundError:
            raise InputError(
                f"config file not found: {text}",
                hint="pass the path of an existing config.pbtxt, or its text",
            ) from None
    return text


def _is_model_folder(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    entries = fs.ls(path, detail=True)
    names = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["type"] for e in entries}
    return "config.pbtxt" in names or any(
        t == "directory" and _VERSION_RE.match(n) for n, t in names.items()
    )


def _local_files(root: str, within: str | None = None) -> list[LocalFile]:
    """Files of one local version folder; refuses symlinks that lead out of ``within``.

    ``within`` is the source folder the user named (default: ``root`` itself), so a
    version folder that is itself a link out of the model folder is refused too.
    """
    base = os.path.realpath(within or root)
    _inside(root, base)
    out: list[LocalFile] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = _inside(dirpath, base)
        if real in seen:  # a link back into the tree: walk it once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for name in filenames:
            if name.endswith(IGNORED_SUFFIXES):
                continue
            full = os.path.join(dirpath, name)
            _inside(full, base)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                size = os.path.getsize(full)
            except OSError as exc:  # a dangling link, a file removed meanwhile
                raise InputError(
                    f"cannot read {full}: {exc.strerror}",
                    hint="fix or remove the broken link or file, then push again",
                ) from None
            out.append(LocalFile(rel, full, size))
    return sorted(out, key=lambda f: f.relpath)


def _inside(path: str, base: str) -> str:
    real = os.path.realpath(path)
    if os.path.commonpath([real, base]) != base:
        raise InputError(
            f"{path} is a symlink to {real}, outside the model folder",
            hint="copy the file into the model folder, or push from the folder it points to",
        )
    return real


def validate_layout(
    fs: fsspec.AbstractFileSystem,
    path: str,
    model: str,
    *,
    config: str | None,
    existing_config: str | None,
    known_models: set[str],
    display: str | None = None,
) -> tuple[dict[int, str], str | None]:
    """Validate a model folder, or one version's files, as Triton would see them published.

    Returns the version folders (source number -> path; ``0`` for a bare version) and the
    config text to publish (``None`` keeps the repository's own config.pbtxt).
    """
    if config is not None:
        parse_config(config, path="config=")
    if _is_model_folder(fs, path):
        layout = validate_model_dir(
            fs, path, name=model, repository_fs_names=known_models | {model}
        )
        version_dirs = {v: f"{path.rstrip('/')}/{v}" for v in sorted(layout.versions)}
        return version_dirs, config or layout.config_text
    text = config or existing_config
    if text is None:
        raise InputError(
            f"{display or path} holds the files of one version but {model} has no config.pbtxt yet",
            hint="pass config= (a config.pbtxt path or text), or push the whole model "
            "folder (config.pbtxt + 1/...)",
        )
    validate_version_files(fs, path, parse_config(text))
    return {0: path}, config


def open_source(
    model: str,
    source: str | os.PathLike[str] | None,
    *,
    config: str | os.PathLike[str] | None,
    existing_config: str | None,
    known_models: set[str],
    source_options: dict[str, Any] | None = None,
) -> Source:
    """Validate ``source`` for ``model`` and make it readable locally."""
    src = source if source is not None else os.path.join("model_repository", model)
    fs, path = _as_fs(src, source_options)
    display = os.fspath(src)
    if not fs.exists(path):
        raise InputError(
            f"source not found: {display}",
            hint=f"build the model into ./model_repository/{model}/ (config.pbtxt + 1/...), "
            "or pass source= a local folder or an fsspec URL such as s3://bucket/prefix",
        )
    if not fs.isdir(path):
        raise InputError(
            f"source {display} is a file, not a folder",
            hint="pass the model folder (config.pbtxt + version folders) or a version's folder",
        )
    if isinstance(fs, LocalFileSystem):
        # The config is read from the source too: a link out of it is refused (before it
        # is read) like a version file's.
        _inside(os.path.join(path, "config.pbtxt"), os.path.realpath(path))
    config_override = config_text_of(config) if config is not None else None
    version_dirs, config_text = validate_layout(
        fs,
        path,
        model,
        config=config_override,
        existing_config=existing_config,
        known_models=known_models,
        display=display,
    )
    tmpdir = None
    if not isinstance(fs, LocalFileSystem):
        tmpdir = tempfile.mkdtemp(prefix="modelrepo-src-")
        for v, vpath in version_dirs.items():
            fs.get(vpath.rstrip("/") + "/", os.path.join(tmpdir, str(v)) + "/", recursive=True)
        version_dirs = {v: os.path.join(tmpdir, str(v)) for v in version_dirs}
    within = path if tmpdir is None else None
    versions = {v: _local_files(d, within) for v, d in version_dirs.items()}
    return Source(model, display, config_text, versions, tmpdir)
