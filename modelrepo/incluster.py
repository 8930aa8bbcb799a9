"""Publishing what a Job wrote on the claim (seed Options A and B), with push's guarantees.

A Job (``aws s3 sync`` or a build) writes into a workspace folder of the model on the claim,
invisible to Triton. Then, exactly as for a push from the notebook: the layout is validated,
a version number is reserved atomically, the version folder is renamed into place, and a
manifest with sha256 is written. A failed Job publishes nothing and leaves no workspace.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelrepo.errors import InputError
from modelrepo.source import validate_layout
from modelrepo.store import FileEntry, Manifest, RepositoryStore

if TYPE_CHECKING:
    from modelrepo.repo import PushResult


def claim_path(fs: Any, path: str) -> str:
    """``path`` of the filesystem as a path relative to the claim's root (for Job mounts)."""
    root = str(getattr(fs, "root", "/")).strip("/")
    inner = fs._strip_protocol(path).strip("/")
    return posixpath.join(root, inner) if root else inner


def publish_workspace(
    store: RepositoryStore,
    name: str,
    workspace: str,
    *,
    version: int | None,
    config: str | None,
    existing_config: str | None,
    published: list[int],
    known_models: set[str],
    started: float,
) -> PushResult:
    """Publish the version a Job wrote into ``workspace`` (then remove the workspace)."""
    from modelrepo.repo import PushResult

    fs = store.fs
    if not fs.ls(workspace, detail=False):
        raise InputError(
            f"the Job finished but wrote nothing into {workspace}",
            hint="check the source (an empty S3 prefix?) or the build command's output folder",
        )
    version_dirs, new_config = validate_layout(
        fs,
        workspace,
        name,
        config=config,
        existing_config=existing_config,
        known_models=known_models,
    )
    version_dir = version_dirs[max(version_dirs)]
    files = {e["relpath"]: int(e.get("size") or 0) for e in _files_under(store, version_dir)}
    hashes = fs.sha256([f"{version_dir}/{p}" for p in files]) if hasattr(fs, "sha256") else {}
    entries = {
        p: FileEntry(p, size, hashes.get(fs._strip_protocol(f"{version_dir}/{p}"), ""))
        for p, size in files.items()
    }
    number = store.reserve_version(name, version, published)
    try:
        if new_config is not None and new_config != existing_config:
            store.write_text_atomic(f"{store.model_path(name)}/config.pbtxt", new_config)
        path = store.publish(name, number, version_dir, Manifest(name, number, entries))
    except BaseException:
        store.release_version(name, number)
        raise
    finally:
        store._rm_quiet(workspace, recursive=True)
    return PushResult(
        model=name,
        version=number,
        files=len(files),
        bytes_sent=sum(files.values()),
        bytes_skipped=0,
        seconds=time.perf_counter() - started,
        path=path,
    )


def _files_under(store: RepositoryStore, folder: str) -> list[dict]:
    fs = store.fs
    prefix = fs._strip_protocol(folder).rstrip("/") + "/"
    out = []
    for name, info in fs.find(folder, detail=True).items():
        stripped = fs._strip_protocol(name)
        if stripped.startswith(prefix) and info["type"] == "file":
            out.append({**info, "relpath": stripped[len(prefix) :]})
    return out


def run_into_workspace(
    store: RepositoryStore,
    name: str,
    make_job: Callable[[str, str], Mapping[str, Any]],
    run: Callable[[Mapping[str, Any]], Any],
) -> str:
    """Create a workspace, run the Job that ``make_job(job_name, claim_path)`` describes.

    The workspace is removed if the Job fails or is interrupted.
    """
    from modelrepo.jobs import unique_name

    workspace = store.new_staging(name)
    try:
        run(make_job(unique_name(f"modelrepo-{name}"), claim_path(store.fs, workspace)))
    except BaseException:
        store._rm_quiet(workspace, recursive=True)
        raise
    return workspace
