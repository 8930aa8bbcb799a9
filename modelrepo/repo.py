"""``ModelRepo``: push, list, load and measure models in a Triton model repository.

The repository is any fsspec filesystem: by default a PersistentVolumeClaim reached through
an exec'd helper pod (:class:`modelrepo.fs.PVCFileSystem`), or ``s3://`` / ``file://`` via
:meth:`ModelRepo.from_url`. Triton is one URL, a list of URLs, or the name of a Kubernetes
Service whose pods are each addressed (every replica keeps its own model state).
"""

from __future__ import annotations

import contextlib
import html
import os
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec

from modelrepo._tables import html_table, text_table
from modelrepo.errors import InputError, ModelRepoError, TransferError, TritonError
from modelrepo.hashing import HashCache
from modelrepo.incluster import claim_path as claim_relative
from modelrepo.progress import BytesProgress, ProgressListener
from modelrepo.source import LocalFile, Source, open_source
from modelrepo.store import (
    STALE_STAGING_SECONDS,
    FileEntry,
    Manifest,
    RepositoryStore,
    _mtime,
    check_model_name,
)

if TYPE_CHECKING:
    from modelrepo.transport.api import KubeAPI
    from modelrepo.triton.control import LoadResult, StatusTable, TritonReplicas
    from modelrepo.triton.rps import RPSReport
    from modelrepo.widgets import ModelRepoPanel

# How many recent versions are searched for files a push can link instead of sending.
_DEDUP_VERSIONS = 3


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _identity(path: str) -> tuple[int, int, int]:
    """(size, mtime, inode): what changes when a file is rewritten (git's and rsync's test)."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _refuse_changed(files: list[LocalFile], before: dict[str, tuple[int, int, int]]) -> None:
    """A file rewritten while it was hashed or sent would publish bytes its manifest lies about."""
    changed = [f.relpath for f in files if _identity(f.abspath) != before[f.abspath]]
    if changed:
        raise TransferError(
            f"{len(changed)} file(s) changed while they were being pushed: "
            + ", ".join(changed[:5])
            + ("..." if len(changed) > 5 else ""),
            hint="let the build that writes them finish, then push again (nothing was published)",
        )


# The ModelRepos not closed yet: close() keeps a filesystem another one still uses.
_OPEN: weakref.WeakSet[ModelRepo] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


@dataclass
class PushResult:
    """What a push published: which version, how many bytes went over the wire."""

    model: str
    version: int
    files: int
    bytes_sent: int
    bytes_skipped: int
    seconds: float
    path: str = ""
    loaded: LoadResult | None = field(default=None, repr=False)

    @property
    def rate(self) -> float:
        """Bytes published per second (sent + skipped)."""
        return (self.bytes_sent + self.bytes_skipped) / self.seconds if self.seconds else 0.0

    def __repr__(self) -> str:
        text = (
            f"PushResult(model={self.model!r}, version={self.version}, files={self.files}, "
            f"sent={format_bytes(self.bytes_sent)}, skipped={format_bytes(self.bytes_skipped)}, "
            f"{self.seconds:.2f} s)"
        )
        if self.loaded is not None:
            text += f"\n  loaded: {'ok' if self.loaded.ok else 'FAILED'}"
        return text

    def _repr_html_(self) -> str:
        rows = [
            ("model", self.model),
            ("version", self.version),
            ("files", self.files),
            ("sent", format_bytes(self.bytes_sent)),
            ("skipped (already on the claim)", format_bytes(self.bytes_skipped)),
            ("time", f"{self.seconds:.2f} s ({format_bytes(self.rate)}/s)"),
            ("path", self.path),
        ]
        return html_table(("", ""), rows, caption=f"Pushed {self.model}")


@dataclass(frozen=True)
class VersionInfo:
    """One published version: its number, total size, file count and last change."""

    version: int
    size: int
    files: int
    modified: float | None

    def __repr__(self) -> str:
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified)) if self.modified else "?"
        )
        return (
            f"VersionInfo(version={self.version}, size={format_bytes(self.size)}, "
            f"files={self.files}, modified={when})"
        )


class VersionList(list):
    """``list_versions(detail=True)``: a list of VersionInfo that prints as a table."""

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            (
                str(v.version),
                format_bytes(v.size),
                str(v.files),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(v.modified)) if v.modified else "?",
            )
            for v in self
        ]

    _HEADERS = ("version", "size", "files", "modified")

    def __repr__(self) -> str:
        return text_table(self._HEADERS, self._rows(), align="right")

    def _repr_html_(self) -> str:
        return html_table(self._HEADERS, self._rows(), align="right")


class ModelRepo:
    """A Triton model repository on a PVC (or any fsspec URL), and the Triton servers using it.

    >>> repo = ModelRepo(pvc="triton-model-repo", namespace="ml", triton="triton")
    >>> repo.push("llama2_7b")  # ./model_repository/llama2_7b -> next version
    >>> repo.load("llama2_7b")  # on every Triton replica
    """

    def __init__(
        self,
        pvc: str = "triton-model-repo",
        namespace: str | None = None,
        *,
        root: str = "",
        triton: str | Sequence[str] | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        image: str = "busybox",
        fs: fsspec.AbstractFileSystem | None = None,
        progress: bool = True,
        workers: int = 4,
        timeout: float = 600.0,
    ) -> None:
        # A given filesystem decides which claim this is (None: not a PVC).
        self.pvc: str | None = pvc if fs is None else getattr(fs, "claim", None)
        self.kubeconfig = os.fspath(kubeconfig) if kubeconfig is not None else None
        self.context = context
        if fs is None:
            from modelrepo.fs import PVCFileSystem

            fs = PVCFileSystem(
                claim=pvc,
                namespace=namespace,
                kubeconfig=self.kubeconfig,
                context=context,
                image=image,
            )
        self.fs = fs
        self.namespace = namespace or getattr(fs, "namespace", None)
        self.root = root.rstrip("/")
        self.store = RepositoryStore(fs, self.root)
        self.triton = triton
        self.progress = progress
        self.workers = workers
        self.timeout = timeout
        self._hashes = HashCache()
        self._kube_api: KubeAPI | None = None
        with _OPEN_LOCK:
            _OPEN.add(self)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        triton: str | Sequence[str] | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        namespace: str | None = None,
        progress: bool = True,
        **storage_options: Any,
    ) -> ModelRepo:
        """A repository at any fsspec URL: ``pvc://claim/path``, ``s3://bucket/prefix``, ``file:///p``.

        ``storage_options`` go to the filesystem (e.g. ``endpoint_url=`` for s3fs).
        """
        if url.startswith("pvc://"):
            storage_options.update(kubeconfig=kubeconfig, context=context, namespace=namespace)
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        return cls(
            pvc=getattr(fs, "claim", None),
            namespace=namespace,
            root=path,
            triton=triton,
            kubeconfig=kubeconfig,
            context=context,
            fs=fs,
            progress=progress,
        )

    def __repr__(self) -> str:
        where = f"pvc={self.pvc!r}, namespace={self.namespace!r}" if self.pvc else repr(self.fs)
        root = f", root={self.root!r}" if self.root else ""
        return f"ModelRepo({where}{root}, triton={self.triton!r})"

    def _repr_html_(self) -> str:
        models = self.list_models()
        items = (
            "".join(f"<li><code>{html.escape(m)}</code></li>" for m in models) or "<li>(empty)</li>"
        )
        return f"<b>{html.escape(repr(self))}</b><ul>{items}</ul>"

    # -- reading -----------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """Names of the model folders in the repository (one round trip)."""
        return self.store.list_models()

    def list_versions(self, name: str, detail: bool = False) -> list[int] | VersionList:
        """Published versions of ``name``, sorted; ``detail=True`` adds size, files, modified."""
        tree = self.store.tree(name)
        versions = self.store.versions_in(tree)
        if not detail:
            return versions
        out = VersionList()
        for v in versions:
            prefix = f"{v}/"
            files = [
                e
                for e in tree
                if e["relpath"].startswith(prefix)
                and e["type"] == "file"
                and "/__pycache__/" not in e["relpath"]  # written by Triton's python backend
            ]
            folder = next(e for e in tree if e["relpath"] == str(v))
            times = [t for t in (_mtime(e) for e in [folder, *files]) if t is not None]
            out.append(
                VersionInfo(
                    version=v,
                    size=sum(int(e.get("size") or 0) for e in files),
                    files=len(files),
                    modified=max(times) if times else None,
                )
            )
        return out

    # -- pushing -----------------------------------------------------------------------
    def push(
        self,
        name: str,
        source: str | os.PathLike[str] | None = None,
        *,
        version: int | None = None,
        config: str | os.PathLike[str] | None = None,
        load: bool = False,
        keep_versions: bool = False,
        source_version: int | None = None,
        source_options: dict[str, Any] | None = None,
        progress: bool | ProgressListener | None = None,
        via: str = "exec",
        secret: str | None = None,
        endpoint_url: str | None = None,
        image: str | None = None,
        job_options: dict[str, Any] | None = None,
    ) -> PushResult:
        """Publish a model folder (or one version's files) as the next version of ``name``.

        The layout is validated before any byte moves; files already on the repository are
        linked, not sent; the version appears to Triton in one rename. ``version=N`` asks for
        that number (refused if it exists); ``keep_versions=True`` publishes every version
        folder of the source under its own number. ``source_options`` go to the source's
        fsspec filesystem (e.g. ``{"endpoint_url": ...}`` for an S3-compatible store).
        ``progress``: a ``tqdm.auto`` bar of the bytes sent (default: the repo's setting),
        ``False`` for none, or a function told ``(bytes sent, bytes to send)`` as they go.

        ``via="job"`` (seed Option A): an ``s3://`` source is synced by a Kubernetes Job
        running ``aws s3 sync`` in the cluster (``image``, default ``amazon/aws-cli``;
        credentials from the Secret named ``secret`` or the pod's service account;
        ``endpoint_url`` for S3-compatible stores; more in ``job_options``), then published
        the same way. The bytes never pass through the notebook.
        """
        check_model_name(name)
        if via == "job":
            return self._push_via_job(
                name,
                source,
                version=version,
                config=config,
                load=load,
                secret=secret,
                endpoint_url=endpoint_url,
                image=image,
                job_options=job_options,
            )
        if via != "exec":
            raise InputError(
                f"via must be 'exec' or 'job', not {via!r}",
                hint="'exec' sends the files from here; 'job' syncs s3:// in the cluster",
            )
        started = time.perf_counter()
        published, existing_config = self._model_state(name)
        with open_source(
            name,
            source,
            config=config,
            existing_config=existing_config,
            known_models=set(self.list_models()),
            source_options=source_options,
        ) as src:
            plan = self._version_plan(src, version, keep_versions, source_version)
            results = [
                self._push_version(src, sv, target, published, existing_config, progress, started)
                for sv, target in plan
            ]
        result = results[-1]
        if len(results) > 1:
            result.files = sum(r.files for r in results)
            result.bytes_sent = sum(r.bytes_sent for r in results)
            result.bytes_skipped = sum(r.bytes_skipped for r in results)
        result.seconds = time.perf_counter() - started
        if load:
            self._load_published(result)
        return result

    def _load_published(self, result: PushResult) -> None:
        """``push(load=True)``: load, and if that fails still say which version was published."""
        try:
            result.loaded = self.load(result.model)
        except TritonError as exc:
            error = TritonError(
                f"{result.model} version {result.version} was published, but loading it "
                f"failed: {exc.message}",
                hint=exc.hint or f"fix the model, push again, then repo.load({result.model!r})",
            )
            error.push_result = result  # type: ignore[attr-defined]
            raise error from exc

    def _model_state(self, name: str) -> tuple[list[int], str | None]:
        """Published versions and config.pbtxt text of ``name`` (one listing, one read)."""
        tree = self.store.tree(name)
        has_config = any(e["relpath"] == "config.pbtxt" for e in tree)
        return self.store.versions_in(tree), self.store.read_config(name) if has_config else None

    @staticmethod
    def _version_plan(
        src: Source, version: int | None, keep_versions: bool, source_version: int | None
    ) -> list[tuple[int, int | None]]:
        """(source version, target version or None for next) pairs, in publishing order."""
        available = sorted(src.versions)
        if keep_versions:
            if version is not None:
                raise InputError(
                    "version= and keep_versions=True contradict each other",
                    hint="keep_versions publishes each source version under its own number",
                )
            if available == [0]:
                raise InputError(
                    "keep_versions=True needs numbered version folders in the source",
                    hint="push a model folder with 1/, 2/... or pass version=N",
                )
            return [(v, v) for v in available]
        if source_version is None:
            return [(available[-1], version)]
        if source_version not in src.versions:
            raise InputError(
                f"the source has no version {source_version} (it has {available})",
                hint="pass source_version= one of those numbers",
            )
        return [(source_version, version)]

    def _dedup_index(self, name: str, published: list[int]) -> dict[str, str]:
        """sha256 -> path of a published file with that content (recent versions only)."""
        index: dict[str, str] = {}
        for v in sorted(published)[-_DEDUP_VERSIONS:]:
            manifest = self.store.read_manifest(name, v)
            if manifest is None:
                continue
            for entry in manifest.files.values():
                index[entry.sha256] = f"{self.store.version_path(name, v)}/{entry.path}"
        return index

    def _push_version(
        self,
        src: Source,
        source_version: int,
        target: int | None,
        published: list[int],
        existing_config: str | None,
        progress: bool | ProgressListener | None,
        started: float,
    ) -> PushResult:
        name = src.model
        files: list[LocalFile] = src.versions[source_version]
        before = {f.abspath: _identity(f.abspath) for f in files}
        digests = self._hashes.digests([f.abspath for f in files], workers=self.workers)
        known = self._dedup_index(name, published)
        to_link = [f for f in files if digests[f.abspath] in known]
        to_send = [f for f in files if digests[f.abspath] not in known]
        version = self.store.reserve_version(name, target, published)
        staging = None
        done = False
        try:
            staging = self.store.new_staging(name)
            self._link(known, digests, to_link, staging)
            self._send(to_send, digests, staging, f"{name} v{version}", progress)
            _refuse_changed(to_send, before)
            if src.config_text is not None and src.config_text != existing_config:
                self.store.write_text_atomic(
                    f"{self.store.model_path(name)}/config.pbtxt", src.config_text
                )
            manifest = Manifest(
                name,
                version,
                {f.relpath: FileEntry(f.relpath, f.size, digests[f.abspath]) for f in files},
            )
            path = self.store.publish(name, version, staging, manifest)
            done = True
        finally:
            if not done:
                # Failed or interrupted (Ctrl-C): drop the half-made staging folder and the
                # reservation. A failure here must not hide the original error: anything
                # left is reaped by repo.cleanup() / `modelrepo cleanup`.
                if staging is not None:
                    with contextlib.suppress(Exception):
                        self.store._rm_quiet(staging, recursive=True)
                with contextlib.suppress(Exception):
                    self.store.release_version(name, version)
        published.append(version)
        return PushResult(
            model=name,
            version=version,
            files=len(files),
            bytes_sent=sum(f.size for f in to_send),
            bytes_skipped=sum(f.size for f in to_link),
            seconds=time.perf_counter() - started,
            path=path,
        )

    def _link(
        self, known: dict[str, str], digests: dict[str, str], files: list[LocalFile], staging: str
    ) -> None:
        """Carry files already on the repository into the staging folder: no bytes move.

        A hard link costs nothing and published versions are never modified in place; a
        filesystem without links copies instead. A PVC links every file in one exec.
        """
        if not files:
            return
        pairs = [(known[digests[f.abspath]], f"{staging}/{f.relpath}") for f in files]
        link_many = getattr(self.fs, "link_many", None)
        if link_many is not None:
            link_many(pairs)
            return
        for parent in sorted({dst.rsplit("/", 1)[0] for _, dst in pairs} - {staging}):
            self.fs.makedirs(parent, exist_ok=True)
        link = getattr(self.fs, "link", None)
        for src, dst in pairs:
            try:
                if link is None:
                    raise NotImplementedError
                link(src, dst)
            except (NotImplementedError, OSError):
                self.fs.cp_file(src, dst)

    def _send(
        self,
        files: list[LocalFile],
        digests: dict[str, str],
        staging: str,
        label: str,
        progress: bool | ProgressListener | None,
    ) -> None:
        """Upload ``files`` into the staging folder with one byte progress bar.

        A PVC takes them in one batched, verified ``put_files`` (in place: the staging
        folder is the unit that gets published) and checks them against the transfer
        checksums computed in the same read as the manifest's sha256 ``digests`` (so a file
        changed since is refused, not published); any other filesystem gets fsspec's ``put``.
        """
        if not files:
            return
        choice = self.progress if progress is None else progress
        listener = choice if callable(choice) else None
        total = sum(f.size for f in files)
        with BytesProgress(total, label, enabled=choice is True, listener=listener) as bar:
            put_files = getattr(self.fs, "put_files", None)
            if put_files is not None:
                put_files(
                    [(f.abspath, f"{staging}/{f.relpath}") for f in files],
                    callback=bar.bytes_callback(),
                    atomic=False,
                    checksums=self._hashes.checksums(
                        {f.abspath: digests[f.abspath] for f in files}, workers=self.workers
                    ),
                )
                return
            self.fs.put(
                [f.abspath for f in files],
                [f"{staging}/{f.relpath}" for f in files],
                callback=bar,
            )

    # -- in-cluster routes (seed Options A, B, C) -------------------------------------------
    def _kube(self) -> KubeAPI:
        from modelrepo.transport.api import connect

        if self._kube_api is None:
            self._kube_api = connect(self.kubeconfig, self.context, self.namespace)
        return self._kube_api

    def _context_namespace(self) -> str:
        """The kubeconfig context's namespace, or "default" without a usable kubeconfig."""
        try:
            return self._kube().namespace
        except ModelRepoError:
            return "default"

    def _require_claim(self, what: str) -> str:
        if not self.pvc or not hasattr(self.fs, "claim"):
            raise InputError(
                f"{what} needs a repository on a PVC",
                hint="create the ModelRepo with pvc=<claim> (or from_url('pvc://claim/...'))",
            )
        return str(self.pvc)

    def _publish_job_output(
        self,
        name: str,
        make_job: Any,
        *,
        version: int | None,
        config: str | os.PathLike[str] | None,
        load: bool,
        timeout: float | None,
    ) -> PushResult:
        from modelrepo.incluster import publish_workspace, run_into_workspace
        from modelrepo.jobs import run_job
        from modelrepo.source import config_text_of

        started = time.perf_counter()
        config_text = config_text_of(config) if config is not None else None
        if config_text is not None:
            from modelrepo.layout.config import parse_config

            parse_config(config_text, path="config=")
        published, existing_config = self._model_state(name)
        log = None if not self.progress else print
        workspace = run_into_workspace(
            self.store,
            name,
            make_job,
            lambda manifest: run_job(self._kube(), manifest, timeout=timeout, log=log),
        )
        result = publish_workspace(
            self.store,
            name,
            workspace,
            version=version,
            config=config_text,
            existing_config=existing_config,
            published=published,
            known_models=set(self.list_models()),
            started=started,
        )
        if load:
            self._load_published(result)
        return result

    def _push_via_job(
        self,
        name: str,
        source: str | os.PathLike[str] | None,
        *,
        version: int | None,
        config: str | os.PathLike[str] | None,
        load: bool,
        secret: str | None,
        endpoint_url: str | None,
        image: str | None,
        job_options: dict[str, Any] | None,
    ) -> PushResult:
        from modelrepo.jobs import DEFAULT_AWS_IMAGE, s3_sync_job

        claim = self._require_claim("push(via='job')")
        url = os.fspath(source) if source is not None else ""
        if not url.startswith("s3://"):
            raise InputError(
                f"push(via='job') syncs from S3, got source={url or None!r}",
                hint="pass source='s3://bucket/prefix/<model>', or push a local folder "
                "with via='exec'",
            )
        options = dict(job_options or {})
        timeout = options.pop("timeout", None)

        def make_job(job_name: str, dest: str) -> dict[str, Any]:
            return s3_sync_job(
                job_name,
                claim=claim,
                namespace=self._kube().namespace,
                source=url,
                dest_path=dest,
                image=image or DEFAULT_AWS_IMAGE,
                secret=secret,
                endpoint_url=endpoint_url,
                **options,
            )

        return self._publish_job_output(
            name, make_job, version=version, config=config, load=load, timeout=timeout
        )

    def build(
        self,
        name: str,
        *,
        image: str,
        command: str | Sequence[str] | None = None,
        inputs: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        version: int | None = None,
        config: str | os.PathLike[str] | None = None,
        load: bool = False,
        gpus: int = 0,
        timeout: float | None = None,
        **job_options: Any,
    ) -> PushResult:
        """Build a model in the cluster (seed Option B) and publish it as the next version.

        A Job runs ``command`` (default: the TensorRT-LLM ``trtllm-build`` template) in
        ``image`` with each of ``inputs`` (name -> folder on the claim) mounted read-only at
        ``/inputs/<name>`` and a fresh output folder at ``/output``. What it writes there is
        published like a push: one version's files (config from ``config=`` or the
        repository), or a whole model folder. A failed build publishes nothing.
        """
        from modelrepo.jobs import build_job

        check_model_name(name)
        claim = self._require_claim("build()")
        inputs = dict(inputs or {})
        for key, folder in inputs.items():
            # subPath mounts create missing folders: a typo would build from nothing.
            if not self.fs.isdir(folder):
                raise InputError(
                    f"build input {key!r}: folder {folder!r} is not on the claim",
                    hint="pass inputs={name: <folder relative to the claim root>} that exists",
                )
        inputs = {k: claim_relative(self.fs, v) for k, v in inputs.items()}

        def make_job(job_name: str, dest: str) -> dict[str, Any]:
            return build_job(
                job_name,
                claim=claim,
                namespace=self._kube().namespace,
                image=image,
                output_path=dest,
                command=command,
                inputs=inputs,
                params=params,
                env=env,
                gpus=gpus,
                **job_options,
            )

        return self._publish_job_output(
            name, make_job, version=version, config=config, load=load, timeout=timeout
        )

    def manifests(
        self,
        mode: str = "pvc",
        *,
        name: str = "triton",
        path: str | os.PathLike[str] | None = None,
        rbac: bool = True,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Kubernetes manifests for Triton on this repository (seed Option C) and RBAC.

        ``mode="pvc"``: PVC + Deployment (``--model-control-mode=explicit``) + Service.
        ``mode="init-sync"``: an init container syncs ``s3_source=`` into an emptyDir on
        every pod start. ``rbac=True`` adds the Role/RoleBinding modelrepo itself needs.
        ``path`` also writes them as one YAML file for ``kubectl apply -f``.
        """
        from modelrepo.jobs import rbac_manifests, triton_manifests, write_yaml

        namespace = self.namespace or self._context_namespace()
        docs = triton_manifests(
            name, claim=self.pvc, namespace=namespace, mode=mode, root=self.root, **options
        )
        if rbac:
            docs += rbac_manifests("modelrepo", namespace)
        if path is not None:
            write_yaml(docs, path)
        return docs

    # -- deleting ------------------------------------------------------------------------
    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """Remove one version; refused while a Triton replica serves it unless ``force``."""
        if not force:
            self._refuse_if_loaded(name, [version])
        self.store.delete_version(name, version)

    def prune(self, name: str, keep: int = 3, *, force: bool = False) -> list[int]:
        """Delete all but the ``keep`` newest versions (never a loaded one without ``force``)."""
        if keep < 1:
            raise InputError(
                "prune(keep=) must be at least 1",
                hint="to remove a model entirely, delete its versions one by one with force=True",
            )
        versions = self.list_versions(name)
        doomed = versions[:-keep]
        loaded = set() if force or not doomed else self._loaded_versions(name)
        removed = []
        for v in doomed:
            if v in loaded:
                continue
            self.store.delete_version(name, v)
            removed.append(v)
        return removed

    def cleanup(
        self, name: str | None = None, *, older_than: float = STALE_STAGING_SECONDS
    ) -> list[str]:
        """Remove staging folders and reservations left behind by interrupted pushes.

        Only leftovers older than ``older_than`` seconds go (default 6 h), so pushes still
        running in other notebooks are safe; ``older_than=0`` removes every leftover.
        """
        names = [name] if name else self.list_models()
        removed = []
        for model in names:
            removed += self.store.cleanup(model, older_than=older_than)
        return removed

    def _loaded_versions(self, name: str) -> set[int]:
        if self.triton is None:
            return set()
        return set(self.status(name).loaded_versions(name))

    def _refuse_if_loaded(self, name: str, versions: list[int]) -> None:
        busy = sorted(set(versions) & self._loaded_versions(name))
        if busy:
            raise ModelRepoError(
                f"{name} version(s) {busy} are loaded on Triton",
                hint=f"unload first (repo.unload({name!r})) or pass force=True",
            )

    # -- Triton ------------------------------------------------------------------------------
    def triton_urls(self, replicas: str = "all") -> list[str]:
        """Triton's HTTP addresses: every replica's (``"all"``: for a Service name, its pods,
        found through the API), or the one a client of Triton would use (``"service"``: the
        Service's cluster DNS name, or the first URL given)."""
        if replicas not in ("all", "service"):
            raise InputError(
                f"replicas must be 'all' or 'service', not {replicas!r}",
                hint="'all' addresses every replica; 'service' sends everything through the "
                "Service (or the first URL given)",
            )
        if self.triton is None:
            raise TritonError(
                "no Triton server given",
                hint="pass triton= a URL, a list of URLs, or the name of the Triton Service",
            )
        if isinstance(self.triton, str):
            from modelrepo.discovery import triton_addresses

            return triton_addresses(self.triton, replicas, self._kube)
        return list(self.triton)[:1] if replicas == "service" else list(self.triton)

    def replicas(self) -> TritonReplicas:
        """A client of every Triton replica (a Service name is resolved again on each call)."""
        from modelrepo.triton.control import TritonReplicas

        return TritonReplicas(self.triton_urls())

    def load(
        self,
        name: str,
        *,
        version: int | None = None,
        config: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        strict: bool = False,
    ) -> LoadResult:
        """Load ``name`` on every replica; ``version=N`` pins that version (config override).

        Returns the per-replica result. Raises :class:`TritonError` with Triton's own message
        when no replica loaded it (or any failed, with ``strict=True``); otherwise warns.
        """
        check_model_name(name)
        from modelrepo.layout.config import config_to_json, parse_config, with_specific_version

        # The config always travels with the request: Triton keeps a previous override (and
        # skips a reload it thinks unchanged), so "what the repository says now" must be sent.
        text = config or self.store.read_config(name)
        if text is None:
            raise InputError(
                f"{name} is not in the repository (no {name}/config.pbtxt)",
                hint=f"push it first: repo.push({name!r}); models here: {self.list_models()}",
            )
        if version is not None:
            published = self.list_versions(name)
            if version not in published:
                raise InputError(
                    f"{name} has no version {version}",
                    hint=f"published versions: {published}",
                )
            text = with_specific_version(text, version)
        override = config_to_json(parse_config(text))
        result = self.replicas().load(
            name, config=override, wait=wait, timeout=timeout or self.timeout
        )
        if not result.ok:
            if strict or not any(r.ok for r in result.replicas):
                result.raise_for_errors()
            warnings.warn(f"{name} did not load on every replica:\n{result}", stacklevel=2)
        return result

    def unload(self, name: str, *, timeout: float | None = None) -> LoadResult:
        """Unload ``name`` from every replica."""
        check_model_name(name)
        return self.replicas().unload(name, timeout=timeout or self.timeout)

    def status(self, name: str | None = None) -> StatusTable:
        """The repository index and each model's state on every replica, as a table."""
        return self.replicas().status(name)

    def measure_rps(
        self,
        name: str,
        *,
        concurrency: Sequence[int] | None = (1, 2, 4, 8, 16),
        request_rate: Sequence[float] | None = None,
        duration: float = 10,
        warmup: float = 2,
        batch_size: int = 1,
        inputs: Any = None,
        shapes: dict[str, Sequence[int]] | None = None,
        version: int | None = None,
        replicas: str = "all",
        **options: Any,
    ) -> RPSReport:
        """Requests per second and latency ``name`` sustains, per concurrency (or rate) step.

        ``replicas="all"`` spreads the requests round-robin over every replica (each one's
        capacity counts); ``"service"`` sends them through the Service, as clients would.
        """
        from modelrepo.triton.rps import measure_rps

        return measure_rps(
            self.triton_urls(replicas),
            name,
            concurrency=concurrency,
            request_rate=request_rate,
            duration=duration,
            warmup=warmup,
            batch_size=batch_size,
            inputs=inputs,
            shapes=shapes,
            version=version,
            **options,
        )

    def panel(self) -> ModelRepoPanel:
        """A notebook widget: models, versions and replica states; push, load, measure RPS."""
        from modelrepo.widgets import ModelRepoPanel

        return ModelRepoPanel(self)

    def close(self) -> None:
        """Delete the helper pod (if any) now rather than at interpreter exit.

        fsspec gives every ModelRepo on the same claim the same filesystem (and helper pod):
        the pod stays while another open ModelRepo of this process still uses it.
        """
        with _OPEN_LOCK:
            _OPEN.discard(self)
            shared = any(other.fs is self.fs for other in _OPEN)
        closer = getattr(self.fs, "close", None)
        if callable(closer) and not shared:
            closer()
        if self._kube_api is not None:
            self._kube_api.close()
            self._kube_api = None

    def __enter__(self) -> ModelRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
