"""``PVCFileSystem``: a PersistentVolumeClaim as an fsspec filesystem (protocol ``pvc``).

The claim is reached through a helper pod that mounts it (see
:mod:`modelrepo.transport.helper`); every operation is one or a few busybox commands run
over the exec API. Paths are absolute inside the claim: ``pvc://models/llama/1/model.py``
names ``/llama/1/model.py`` on the claim ``models``; ``..`` may not leave the claim.

Few round-trips: ``find``/``du``/``glob``/``expand_path`` of a whole tree is one exec and
fills the listing cache; ``sha256`` of many files is one exec; ``put``/``get`` of a tree
send small files as one tar stream per batch. Large files move in verified, resumable
chunks (:mod:`modelrepo.fs._transfer`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path

from modelrepo.errors import TransferError
from modelrepo.fs import _shell as sh
from modelrepo.fs import _transfer as tx
from modelrepo.fs._shell import PVCPathError
from modelrepo.transport.api import RetryPolicy
from modelrepo.transport.exec import PROTOCOLS, ExecResult, ExecStreamDropped, StdinSource
from modelrepo.transport.helper import MOUNT_PATH, HelperOptions, HelperPod, get_helper

MiB = 1 << 20
# The command travels in the exec URL; API servers and proxies cap request lines (often at
# 8 KiB), so a longer command travels over stdin instead.
_URL_LIMIT = 6000
_ARGS_PER_EXEC = 1000  # paths per command line (kernels cap argv at about 2 MB)
_MAGIC = re.compile(r"[*?\[]")  # glob characters, as fsspec decides what to expand


class PVCFileSystem(AbstractFileSystem):
    """A Kubernetes PersistentVolumeClaim, read and written through an exec'd helper pod.

    ``claim``: the PVC's name. ``namespace`` defaults to the kubeconfig context's.
    ``kubeconfig``/``context`` choose the cluster (default: ``$KUBECONFIG``/
    ``~/.kube/config``, or the in-cluster service account). ``root``: a folder inside the
    claim that all paths are relative to. Helper pod: ``image``, ``run_as_user`` (None: the
    image's user, root for busybox), ``active_deadline_seconds``, ``ready_timeout``.
    Transfers: ``chunk_size`` (bytes per verified chunk), ``streams`` (parallel exec
    sessions), ``small_file_limit`` (files up to this size go in tar batches / one exec).
    ``exec_protocols``: the exec sub-protocols offered (tests use ``("v4.channel.k8s.io",)``).
    ``retry``: how API calls are retried and timed out (a
    :class:`~modelrepo.transport.api.RetryPolicy`; shorter timeouts for a flaky link).
    """

    protocol = "pvc"
    root_marker = "/"

    def __init__(
        self,
        claim: str,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        *,
        root: str = "/",
        image: str = "busybox",
        run_as_user: int | None = None,
        active_deadline_seconds: int = 7200,
        ready_timeout: float = 120.0,
        chunk_size: int = 64 * MiB,
        streams: int = 3,
        small_file_limit: int = 8 * MiB,
        batch_bytes: int = 32 * MiB,
        exec_protocols: Iterable[str] = PROTOCOLS,
        retry: RetryPolicy | None = None,
        **storage_options: Any,
    ) -> None:
        storage_options.setdefault("listings_expiry_time", 5)
        super().__init__(**storage_options)
        if not claim or "/" in claim:
            raise PVCPathError(
                f"invalid claim name {claim!r}",
                hint="pass the PersistentVolumeClaim's name, e.g. claim='triton-model-repo'",
            )
        self.claim = claim
        self.namespace = namespace
        self.kubeconfig = os.fspath(kubeconfig) if kubeconfig is not None else None
        self.context = context
        self.root = "/" + "/".join(self._components(root))
        self.helper_options = HelperOptions(
            image=image,
            run_as_user=run_as_user,
            active_deadline_seconds=active_deadline_seconds,
            ready_timeout=ready_timeout,
        )
        self.chunk_size = int(chunk_size)
        self.streams = max(1, int(streams))
        self.small_file_limit = int(small_file_limit)
        self.batch_bytes = int(batch_bytes)
        self.exec_protocols = tuple(exec_protocols)
        self.retry = retry
        self._api: Any = None
        self._helper: HelperPod | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        base = MOUNT_PATH if self.root == "/" else MOUNT_PATH + self.root
        self._base = base

    # -- connection -----------------------------------------------------------------------

    @property
    def helper(self) -> HelperPod:
        """The helper pod serving this claim (shared by every instance in the process)."""
        with self._lock:
            if self._helper is None:
                from modelrepo.transport.api import connect

                if self._api is None:
                    self._api = connect(
                        self.kubeconfig, self.context, self.namespace, retry=self.retry
                    )
                self._helper = get_helper(
                    self._api,
                    self.claim,
                    self.namespace or self._api.namespace,
                    options=self.helper_options,
                    protocols=self.exec_protocols,
                )
            return self._helper

    def close(self) -> None:
        """Delete the helper pod now (the next call creates a new one)."""
        if self._helper is not None:
            self._helper.close()

    def _sh(
        self,
        script: str,
        *args: str,
        stdin: StdinSource = None,
        stdout: Any = None,
        attempts: int = 3,
    ) -> ExecResult:
        """Run a prelude+script in the helper with positional ``args`` (internal only).

        Long argument lists travel over stdin ahead of the data (``dd`` reads exactly the
        script's length, so the data that follows stays intact). A dropped stream is
        retried ``attempts`` times when stdin can be replayed (None or bytes).
        """
        text = sh.PRELUDE + script
        argv = ["sh", "-c", text, "sh", *args]
        if sum(len(quote(a, safe="")) + 9 for a in argv) > _URL_LIMIT:
            program = sh.encode(
                sh.PRELUDE + "set -- " + " ".join(sh.q(a) for a in args) + "\n" + script + "\n"
            )
            argv = [
                "sh",
                "-c",
                f'eval "$(dd bs=1048576 count={len(program)} iflag=count_bytes,fullblock '
                f'2>/dev/null)"',
            ]
            stdin = _prefixed(program, stdin)
        replayable = stdin is None or isinstance(stdin, bytes | bytearray | memoryview)
        tries = attempts if replayable else 1
        for attempt in range(tries):
            try:
                return self.helper.exec(argv, stdin=stdin, stdout=stdout)
            except ExecStreamDropped:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- paths ----------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith("pvc://"):
            path = "/" + path[6:].partition("/")[2]
        elif path.startswith("pvc:"):
            path = path[4:]
        path = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        return path

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("pvc://"):
            claim = path[6:].partition("/")[0]
            if claim:
                return {"claim": claim}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return f"pvc://{self.claim}{self._strip_protocol(name)}"

    @staticmethod
    def _components(path: str) -> list[str]:
        if "\0" in path:
            raise PVCPathError(
                f"path {path!r} contains a NUL byte", hint="remove the NUL byte from the name"
            )
        parts: list[str] = []
        for comp in path.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise PVCPathError(
                        f"path {path!r} leads outside the claim",
                        hint="paths are relative to the claim's root; remove the '..'",
                    )
                parts.pop()
                continue
            if len(comp.encode("utf-8", "surrogateescape")) > 255:
                raise PVCPathError(
                    f"the name {comp[:40]!r}... is longer than 255 bytes",
                    hint="use a shorter file or folder name",
                )
            parts.append(comp)
        return parts

    def _remote(self, path: str) -> str:
        """The absolute path inside the helper pod for an fsspec path (confined)."""
        parts = self._components(self._strip_protocol(path))
        return posixpath.join(self._base, *parts) if parts else self._base

    def _name(self, remote: str) -> str:
        """The fsspec path of a remote path (inverse of _remote)."""
        if remote == self._base:
            return "/"
        return remote[len(self._base) :] if self._base != "/" else remote

    # -- listing --------------------------------------------------------------------------

    def _info(self, e: sh.Entry) -> dict[str, Any]:
        return {
            "name": self._name(e.path),
            "size": e.size if e.type != "directory" else 0,
            "type": e.type,
            "mtime": float(e.mtime),
            "created": float(e.ctime),
            "mode": e.mode,
            "nlink": e.nlink,
            "ino": e.ino,
            "islink": e.islink,
        }

    def _entries(self, script: str, *args: str, path: str, what: str) -> list[dict[str, Any]]:
        for attempt in range(3):
            res = self._sh(script, *args)
            sh.raise_for(res, path, what)
            try:
                return [self._info(e) for e in sh.parse_entries(res.stdout)]
            except sh.ListingError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def ls(self, path: str, detail: bool = True, refresh: bool = False, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        listing = None if refresh else self._cached_listing(path)
        if listing is None:
            infos = self._entries(sh.LS, self._remote(path), path=path, what="list")
            if len(infos) == 1 and infos[0]["name"] == path and infos[0]["type"] != "directory":
                listing = infos
            else:
                self.dircache[path] = infos
                listing = infos
        return listing if detail else sorted(i["name"] for i in listing)

    def _cached_listing(self, path: str) -> list[dict[str, Any]] | None:
        try:
            listing = self._ls_from_cache(path)
            # fsspec answers from the parent's listing with the entry itself: right for a
            # file, but a folder's contents are not known yet.
            itself = listing is not None and len(listing) == 1 and listing[0]["name"] == path
            return None if itself and listing[0]["type"] == "directory" else listing
        except FileNotFoundError:
            raise
        except Exception:  # pragma: no cover - a cache problem is never fatal
            return None

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path != "/":
            parent = self._parent(path)
            try:
                siblings = self.dircache[parent]
            except KeyError:
                siblings = None
            if siblings is not None:
                for item in siblings:
                    if item["name"] == path:
                        return item
                raise sh.PVCFileNotFoundError(
                    f"no such file or folder on claim {self.claim!r}: {path!r}",
                    hint="check the path (fs.ls the parent folder)",
                    path=path,
                )
        infos = self._entries(sh.INFO, self._remote(path), path=path, what="stat")
        return infos[0]

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Everything below ``path`` in ONE exec (fills the listing cache for later ls)."""
        path = self._strip_protocol(path)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        infos = self._entries(
            sh.FIND,
            self._remote(path),
            str(maxdepth) if maxdepth else "",
            path=path,
            what="find in",
        )
        out: dict[str, dict[str, Any]] = {}
        top = next((i for i in infos if i["name"] == path), None)
        if top is not None and top["type"] != "directory":
            out[path] = top
        elif top is not None:
            self._fill_cache(path, infos, maxdepth)
            for info in infos:
                if info["name"] == path:
                    if withdirs:
                        out[path] = info
                elif withdirs or info["type"] != "directory":
                    out[info["name"]] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def _fill_cache(self, top: str, infos: list[dict[str, Any]], maxdepth: int | None) -> None:
        children: dict[str, list[dict[str, Any]]] = {}
        depth0 = top.rstrip("/").count("/") if top != "/" else 0
        for info in infos:
            if info["name"] == top:
                continue
            children.setdefault(self._parent(info["name"]), []).append(info)
        for info in infos:
            if info["type"] != "directory":
                continue
            name = info["name"]
            depth = (name.count("/") if name != "/" else 0) - depth0
            if maxdepth is None or depth < maxdepth:
                self.dircache[name] = children.get(name, [])

    def _parent_cached(self, path: str) -> bool:
        try:
            self.dircache[self._parent(path)]
        except KeyError:
            return False
        return True

    def _parent(self, path: str) -> str:
        path = self._strip_protocol(path)
        return posixpath.dirname(path) or "/"

    def invalidate_cache(self, path: str | None = None) -> None:
        if path is None:
            self.dircache.clear()
        else:
            path = self._strip_protocol(path)
            for key in list(self.dircache):
                if key == path or key.startswith(path.rstrip("/") + "/"):
                    self.dircache.pop(key, None)
            parent = self._parent(path)
            while True:
                self.dircache.pop(parent, None)
                if parent == "/":
                    break
                parent = self._parent(parent)
        super().invalidate_cache(path)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    def created(self, path: str) -> datetime:
        """The inode change time (busybox cannot report a birth time; as fsspec's local fs)."""
        return datetime.fromtimestamp(self.info(path)["created"], tz=timezone.utc)

    def sha256(self, paths: str | Iterable[str]) -> dict[str, str]:
        """sha256 hex digests of many files, computed in the helper pod in ONE exec.

        For content addresses (what a manifest records), whatever transfers verify with
        (:data:`modelrepo.fs.CHECKSUM`).
        """
        names = (
            [self._strip_protocol(paths)]
            if isinstance(paths, str)
            else [self._strip_protocol(p) for p in paths]
        )
        return self._hash_many(names, sh.SHA256, 64)

    def _checksums(self, names: list[str]) -> dict[str, str]:
        """The transfer checksum (:data:`_shell.CHECKSUM`) of many files, in one exec."""
        return self._hash_many(names, sh.CHECKSUMS, sh.checksum_hex_length())

    def _hash_many(self, names: list[str], script: str, hex_length: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for group in _groups(names, _ARGS_PER_EXEC):
            remotes = [self._remote(n) for n in group]
            res = self._sh(script, *remotes)
            sh.raise_for(res, group[0] if len(group) == 1 else f"{len(group)} files", "hash")
            digests = sh.parse_digests(res.stdout, remotes, hex_length)
            out.update({n: digests[r] for n, r in zip(group, remotes, strict=True)})
        return out

    def exists(self, path: str, **kwargs: Any) -> bool:
        """True if ``path`` exists; cluster errors are raised, not taken for "no"."""
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def stat_many(self, paths: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """``info`` of many paths in one exec per 1,000 (None for a missing path)."""
        names = [self._strip_protocol(p) for p in paths]
        out: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
        for group in _groups(names, _ARGS_PER_EXEC):
            remotes = [self._remote(n) for n in group]
            for info in self._entries(sh.STAT_MANY, *remotes, path=group[0], what="stat"):
                out[info["name"]] = info
        return out

    # -- reads ----------------------------------------------------------------------------

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        res = self._sh(
            sh.CAT,
            self._remote(path),
            "" if start is None else str(int(start)),
            "" if end is None else str(int(end)),
        )
        sh.raise_for(res, path, "read")
        return res.stdout

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PVCFile:
        path = self._strip_protocol(path)
        self._remote(path)  # validate early
        if mode == "rb":
            info = self.info(path)
            if info["type"] == "directory":
                raise sh.PVCIsADirectoryError(
                    f"cannot open folder {path!r} as a file",
                    hint="open a file inside it (fs.ls lists them)",
                    path=path,
                )
            return PVCFile(
                self,
                path,
                mode,
                block_size=block_size or 8 * MiB,
                cache_options=cache_options,
                size=info["size"],
                **kwargs,
            )
        if mode == "xb" and self.exists(path):
            raise sh.PVCFileExistsError(
                f"{path!r} already exists on claim {self.claim!r}",
                hint="open it with mode 'wb' to replace it, or choose another name",
                path=path,
            )
        return PVCFile(
            self,
            path,
            mode,
            block_size=block_size or 32 * MiB,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    # -- writes ---------------------------------------------------------------------------

    def _tmp_name(self, remote: str) -> str:
        parent, base = remote.rsplit("/", 1)
        return f"{parent}/.{base[:80]}.mrtmp-{secrets.token_hex(4)}"

    def _write_small(self, path: str, data: bytes, mode: str) -> ExecResult:
        """Write ``data`` in one exec: temp file, checksum check, then rename (or link)."""
        remote = self._remote(path)
        digest = sh.checksum_of(data)
        for attempt in range(tx.MAX_ATTEMPTS):
            tmp = self._tmp_name(remote)
            try:
                res = self._sh(
                    sh.WRITE, remote, tmp, mode, str(len(data)), digest, stdin=data, attempts=1
                )
            except ExecStreamDropped:
                self._discard(tmp)
                continue
            if res.exit_code == sh.EXIT_MISMATCH and attempt < tx.MAX_ATTEMPTS - 1:
                continue
            sh.raise_for(res, path, "write")
            return res
        raise TransferError(
            f"could not write {path!r} after {tx.MAX_ATTEMPTS} attempts",
            hint="the connection to the cluster keeps failing; check it and retry",
        )

    def _discard(self, remote_tmp: str) -> None:
        with contextlib.suppress(Exception):
            self._sh(sh.DISCARD, remote_tmp, attempts=1)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        data = bytes(value)
        if len(data) <= self.small_file_limit:
            self._write_small(path, data, mode)
        else:
            tx.upload(self, self._remote(path), data=data, mode=mode)
        self.invalidate_cache(path)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate:
            self._write_small(path, b"", "overwrite")
        else:
            sh.raise_for(self._sh(sh.TOUCH, self._remote(path)), path, "touch")
        self.invalidate_cache(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Create a folder; raises FileExistsError if it exists (atomically: mkdir(2))."""
        path = self._strip_protocol(path)
        res = self._sh(
            sh.MKDIR, self._remote(path), "parents" if create_parents else "exact", attempts=1
        )
        sh.raise_for(res, path, "create folder")
        self.invalidate_cache(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        res = self._sh(
            sh.MAKEDIRS,
            self._remote(path),
            "ok" if exist_ok else "fail",
            attempts=3 if exist_ok else 1,
        )
        sh.raise_for(res, path, "create folders")
        self.invalidate_cache(path)

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        sh.raise_for(self._sh(sh.RMDIR, self._remote(path), attempts=1), path, "remove folder")
        self.invalidate_cache(path)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        sh.raise_for(self._sh(sh.RM_FILE, self._remote(path), attempts=1), path, "remove")
        self.invalidate_cache(path)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files/folders; a recursive delete is ONE exec (``rm -rf``)."""
        script = sh.RM_TREES
        if recursive and maxdepth is None and isinstance(path, str) and not _MAGIC.search(path):
            paths = [self._strip_protocol(path)]  # one known path: no listing first
            script = sh.RM_TREE
        else:
            paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        if "/" in paths and self.root == "/":
            raise PVCPathError(
                f"refusing to delete the whole claim {self.claim!r}",
                hint="delete the folders inside it instead (fs.ls('/') lists them)",
            )
        if recursive and maxdepth is None:
            tops = [p for p in paths if not any(p.startswith(q.rstrip("/") + "/") for q in paths)]
            res = self._sh(script, *[self._remote(p) for p in tops])
            sh.raise_for(res, tops[0] if len(tops) == 1 else f"{len(tops)} paths", "remove")
        else:
            for p in reversed(paths):
                if self.isdir(p):
                    if not recursive:
                        raise sh.PVCIsADirectoryError(
                            f"{p!r} is a folder",
                            hint="use recursive=True to delete folders",
                            path=p,
                        )
                    self.rmdir(p)
                else:
                    self.rm_file(p)
        for p in paths:
            self.invalidate_cache(p)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        remote2 = self._remote(path2)
        res = self._sh(sh.COPY, self._remote(path1), remote2, self._tmp_name(remote2))
        sh.raise_for(res, path1, "copy")
        self.invalidate_cache(path2)

    def link(self, src: str, dst: str) -> None:
        """Hard-link ``src`` as ``dst`` (no bytes move); falls back to a copy.

        ``dst`` must not exist; its parent folders are created. Used to carry unchanged
        files into a new model version at no transfer cost.
        """
        src, dst = self._strip_protocol(src), self._strip_protocol(dst)
        # Retry-safe: a link that already points at src counts as done.
        res = self._sh(sh.LINK, self._remote(src), self._remote(dst))
        sh.raise_for(res, dst, "link")
        self.invalidate_cache(dst)

    def link_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """:meth:`link` for many (src, dst) pairs in one exec per 500 pairs.

        A push carrying unchanged files into a new version links them all with one round
        trip instead of one each. Stops at the first failure (nothing is undone).
        """
        items = [(self._strip_protocol(a), self._strip_protocol(b)) for a, b in pairs]
        for group in _groups(items, _ARGS_PER_EXEC // 2):
            args = [self._remote(p) for pair in group for p in pair]
            res = self._sh(sh.LINK_MANY, *args)
            sh.raise_for(res, group[0][1] if len(group) == 1 else f"{len(group)} files", "link")
        if items:
            self.invalidate_cache(posixpath.commonpath([dst for _, dst in items]))

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` to ``dst``; FileExistsError if ``dst`` exists.

        For a folder, ``dst`` is reserved with mkdir(2) (atomic, fails if taken) and the
        folder then replaces that empty reservation with one rename(2): readers see either
        nothing or the complete folder. For a file, link(2) fails atomically if ``dst``
        exists. ``dst``'s parent must exist.
        """
        src, dst = self._strip_protocol(src), self._strip_protocol(dst)
        try:
            res = self._sh(sh.RENAME, self._remote(src), self._remote(dst), attempts=1)
        except ExecStreamDropped:
            # Did it happen? Only the names tell: src gone and dst there means yes.
            self.invalidate_cache(src)
            self.invalidate_cache(dst)
            if not self.exists(src) and self.exists(dst):
                return
            if self.exists(src) and not self.exists(dst):
                res = self._sh(sh.RENAME, self._remote(src), self._remote(dst), attempts=1)
            else:
                raise
        sh.raise_for(res, dst if res.exit_code == 17 else src, "rename")
        self.invalidate_cache(src)
        self.invalidate_cache(dst)

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Move like ``mv``: a rename in the helper pod (into ``path2`` if it is a folder)."""
        if (
            isinstance(path1, list)
            or isinstance(path2, list)
            or maxdepth is not None
            or _MAGIC.search(str(path1))
        ):
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        p1, p2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if p1 == p2:
            return
        res = self._sh(sh.MOVE, self._remote(p1), self._remote(p2), attempts=1)
        sh.raise_for(res, p1, "move")
        self.invalidate_cache(p1)
        self.invalidate_cache(p2)

    # -- transfers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _recording(self) -> Iterator[list[tuple[str, str]]]:
        pairs: list[tuple[str, str]] = []
        self._local.record = pairs
        try:
            yield pairs
        finally:
            self._local.record = None

    def _record(self, a: str, b: str) -> bool:
        pairs = getattr(self._local, "record", None)
        if pairs is None:
            return False
        pairs.append((a, b))
        return True

    def put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        if self._record(os.fspath(lpath), rpath):
            return
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        size = os.path.getsize(lpath)
        callback.set_size(size)
        if size <= self.small_file_limit:
            with open(lpath, "rb") as f:
                data = f.read()
            self._write_small(rpath, data, mode)
            callback.relative_update(size)
        else:
            tx.upload(
                self,
                self._remote(rpath),
                lpath=os.fspath(lpath),
                mode=mode,
                progress=tx.Progress(callback),
            )
        self.invalidate_cache(rpath)

    def put(
        self,
        lpath: Any,
        rpath: Any,
        recursive: bool = False,
        callback: Any = DEFAULT_CALLBACK,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """fsspec ``put``, batched: small files travel as tar streams, big ones in chunks."""
        with self._recording() as pairs:
            super().put(lpath, rpath, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if pairs:
            self.put_files(pairs, callback=callback, mode=kwargs.get("mode", "overwrite"))

    def put_files(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        callback: Any = None,
        mode: str = "overwrite",
        atomic: bool = True,
        checksums: Mapping[str, str] | None = None,
    ) -> tx.TransferStats:
        """Upload many (local path, remote path) pairs; returns what it cost.

        Local folders become remote folders; parents are created. Files that fit in one
        chunk (up to ``chunk_size`` or ``small_file_limit``, whichever is larger) travel in
        tar batches, are hashed in the pod in the same exec (``sha256sum`` reading the
        unpacked files: cheaper than hashing a chunk through a pipe) and, with
        ``atomic=True``, are staged and renamed into place (a reader never sees a partial
        file); ``atomic=False`` unpacks them in place (for a caller that stages the whole
        tree itself, like ModelRepo). Bigger files go in verified, resumable chunks, all
        files' chunks sharing the ``streams`` parallel sessions.
        Every byte is verified on both sides by the transfer checksum
        (:data:`modelrepo.fs.CHECKSUM`, sha256).
        ``stats.checksums`` maps each batched file's path to its checksum (chunked files are
        verified by ranges; their whole-file checksum is not computed). ``callback`` (an
        fsspec Callback) gets ``set_size(total bytes)`` and ``relative_update(n)`` as bytes
        go out (negative when a chunk is resent). ``mode="create"`` refuses to replace
        existing files.
        ``checksums``: transfer checksums already known by local path (a push computed them
        with its manifest's sha256, in the same read: :meth:`HashCache.checksums
        <modelrepo.hashing.HashCache.checksums>`); batched files are then checked against
        them instead of hashed again here, and one that changed since is refused.
        """
        stats = tx.TransferStats()
        started = tx.time.monotonic()
        progress = tx.Progress(callback)
        dirs: list[str] = []
        small: list[tuple[str, str, int]] = []
        big: list[tuple[str, str, int]] = []
        batch_limit = max(self.small_file_limit, self.chunk_size)
        for lpath, rpath in pairs:
            lpath = os.fspath(lpath)
            remote = self._remote(rpath)
            if os.path.isdir(lpath):
                dirs.append(remote)
                continue
            size = os.path.getsize(lpath)
            (small if size <= batch_limit else big).append((lpath, remote, size))
        if callback is not None:
            callback.set_size(sum(size for _, _, size in small + big))
        if mode == "create":
            existing = [r for _, r, _ in small + big if self.exists(self._name(r))]
            if existing:
                raise sh.PVCFileExistsError(
                    f"{self._name(existing[0])!r} already exists on claim {self.claim!r}",
                    hint="use mode='overwrite' or remove it first",
                    path=self._name(existing[0]),
                )
        if small:
            self._put_small(small, dirs, stats, progress, atomic, checksums or {})
        elif dirs:
            res = self._sh(sh.merge_script(None, [], dirs))
            sh.raise_for(res, self._name(dirs[0]), "create folders")
        if big:
            pairs = [(lpath, remote) for lpath, remote, _ in big]
            stats.merge(tx.upload_files(self, pairs, mode=mode, progress=progress))
        stats.files = len(small) + len(big)
        stats.bytes = sum(s for _, _, s in small + big)
        stats.seconds = tx.time.monotonic() - started
        self.invalidate_cache()
        return stats

    def _put_small(
        self,
        files: list[tuple[str, str, int]],
        dirs: list[str],
        stats: tx.TransferStats,
        progress: tx.Progress,
        atomic: bool,
        known: Mapping[str, str],
    ) -> None:
        remotes = [r for _, r, _ in files]
        common = posixpath.commonpath([posixpath.dirname(r) for r in remotes])
        staging = f"{common}/.mrstage-{secrets.token_hex(4)}" if atomic else common
        members = []
        for lpath, remote, size in files:
            rel = posixpath.relpath(remote, common)
            mtime = os.path.getmtime(lpath)
            members.append(tx._Member(lpath, rel, remote, size, mtime, known.get(lpath)))
        batches = tx.plan_batches(members, self.batch_bytes, _ARGS_PER_EXEC)

        def send(batch: list[tx._Member]) -> None:
            tx.upload_batch(self, staging, batch, stats, progress)

        try:
            tx._run_parallel(send, batches, self.streams)
            if atomic:
                moves = [(m.rel, m.remote) for m in members]
                res = self._sh(sh.merge_script(staging, moves, dirs))
                sh.raise_for(res, self._name(common), "move files into")
            elif dirs:
                res = self._sh(sh.merge_script(None, [], dirs))
                sh.raise_for(res, self._name(common), "create folders")
        except BaseException:
            if atomic:
                with contextlib.suppress(Exception):
                    self._sh(sh.RM_TREES, staging, attempts=1)
            raise

    def get_file(
        self,
        rpath: str,
        lpath: str,
        callback: Any = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        if outfile is None and self._record(rpath, os.fspath(lpath)):
            return
        rpath = self._strip_protocol(rpath)
        info = self.info(rpath)
        if info["type"] == "directory":
            if outfile is None:
                os.makedirs(lpath, exist_ok=True)
            return
        size = int(info["size"])
        callback.set_size(size)
        if outfile is not None:
            data = self._get_small(rpath)
            outfile.write(data)
            callback.relative_update(len(data))
            return
        lpath = os.fspath(lpath)
        parent = os.path.dirname(lpath)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if size <= self.small_file_limit:
            tx.download_batch(
                self,
                [(self._remote(rpath), lpath, size)],
                tx.TransferStats(),
                tx.Progress(callback),
            )
        else:
            tx.download(self, self._remote(rpath), lpath, size, progress=tx.Progress(callback))

    def _get_small(self, rpath: str) -> bytes:
        remote = self._remote(rpath)
        for _ in range(tx.MAX_ATTEMPTS):
            data = self.cat_file(rpath)
            if sh.checksum_of(data) == self._checksums([rpath])[rpath]:
                return data
        raise TransferError(
            f"{rpath!r} changed while it was read ({remote})",
            hint="stop whatever writes to it, then read it again",
        )

    def get(
        self,
        rpath: Any,
        lpath: Any,
        recursive: bool = False,
        callback: Any = DEFAULT_CALLBACK,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """fsspec ``get``, batched: small files come as one ``cat`` per batch."""
        with self._recording() as pairs:
            super().get(rpath, lpath, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if pairs:
            self.get_files(pairs, callback=callback)

    def get_files(
        self, pairs: Iterable[tuple[str, str]], *, callback: Any = None
    ) -> tx.TransferStats:
        """Download many (remote path, local path) pairs, verified; returns what it cost."""
        stats = tx.TransferStats()
        started = tx.time.monotonic()
        progress = tx.Progress(callback)
        small: list[tuple[str, str, int]] = []
        big: list[tuple[str, str, int]] = []
        pairs = [(self._strip_protocol(r), os.fspath(lp)) for r, lp in pairs]
        known: dict[str, dict[str, Any] | None] = {}
        unknown = []
        for rpath, _ in pairs:
            try:
                known[rpath] = self.info(rpath) if self._parent_cached(rpath) else None
            except FileNotFoundError:
                known[rpath] = None
            if known[rpath] is None:
                unknown.append(rpath)
        if unknown:
            known.update(self.stat_many(unknown))
        for rpath, lpath in pairs:
            info = known[rpath]
            if info is None:
                raise sh.PVCFileNotFoundError(
                    f"no such file on claim {self.claim!r}: {rpath!r}",
                    hint="check the path (fs.ls the parent folder)",
                    path=rpath,
                )
            if info["type"] == "directory":
                os.makedirs(lpath, exist_ok=True)
                continue
            parent = os.path.dirname(lpath)
            if parent:
                os.makedirs(parent, exist_ok=True)
            item = (self._remote(rpath), lpath, int(info["size"]))
            (small if item[2] <= self.small_file_limit else big).append(item)
        if callback is not None:
            callback.set_size(sum(s for _, _, s in small + big))
        batches: list[list[tuple[str, str, int]]] = []
        current: list[tuple[str, str, int]] = []
        size = 0
        for item in small:
            if current and (size + item[2] > self.batch_bytes or len(current) >= _ARGS_PER_EXEC):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += item[2]
        if current:
            batches.append(current)
        tx._run_parallel(
            lambda b: tx.download_batch(self, b, stats, progress), batches, self.streams
        )
        if big:
            stats.merge(tx.download_many(self, big, progress=progress))
        stats.files = len(small) + len(big)
        stats.bytes = sum(s for _, _, s in small + big)
        stats.seconds = tx.time.monotonic() - started
        return stats

    def copy(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        on_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().copy(
            path1, path2, recursive=recursive, maxdepth=maxdepth, on_error=on_error, **kwargs
        )


def _groups(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prefixed(program: bytes, stdin: StdinSource) -> StdinSource:
    if stdin is None:
        return program
    if isinstance(stdin, bytes | bytearray | memoryview):
        return program + bytes(stdin)

    def chained() -> Iterator[bytes]:
        yield program
        if hasattr(stdin, "read"):
            while True:
                piece = stdin.read(MiB)  # type: ignore[union-attr]
                if not piece:
                    return
                yield piece
        else:
            yield from stdin  # type: ignore[misc]

    return chained()


class PVCFile(AbstractBufferedFile):
    """A file on the claim: ranged reads with readahead; writes staged then renamed.

    Writes go to a hidden temp file next to the target in verified chunks and become the
    target with one rename when the file is closed; leaving the ``with`` block through an
    exception discards them, so a half-written file never appears.
    """

    fs: PVCFileSystem

    def __init__(self, fs: PVCFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        super().__init__(fs, path, mode, **kwargs)
        self._remote_path = fs._remote(path)
        self._part: str | None = None
        self._write_mode = "create" if mode == "xb" else "overwrite"
        self._stats = tx.TransferStats()

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=end)

    def _initiate_upload(self) -> None:
        """Nothing yet: a file that fits in one block is written by a single exec."""

    def _begin_parts(self) -> None:
        self._part = self.fs._tmp_name(self._remote_path)
        res = self.fs._sh(sh.BEGIN_PARTS, self._remote_path, self._part, self._write_mode)
        sh.raise_for(res, self.path, "write")
        if self.mode == "ab" and self.fs.exists(self.path):
            res = self.fs._sh(sh.COPY, self._remote(), self._part, self._part + ".cp")
            sh.raise_for(res, self.path, "append to")
            self.offset = int(self.fs.info(self.path)["size"])

    def _remote(self) -> str:
        return self._remote_path

    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        if final and self._part is None and self.autocommit and self.mode != "ab":
            self.fs._write_small(self.path, data, self._write_mode)
            return True
        if self._part is None:
            self._begin_parts()
        assert self._part is not None
        if data:
            source = tx._Source(data=data, base=self.offset)
            tx._send_chunk(
                self.fs, source, self._part, self.offset, len(data), self._stats, tx.Progress(None)
            )
        if final and self.autocommit:
            self._finish(self.offset + len(data))
        return True

    def commit(self) -> None:
        """Make the written bytes the target's content (one rename)."""
        self._finish(self.offset or 0)

    def _finish(self, size: int) -> None:
        if self._part is None:
            self._begin_parts()
        assert self._part is not None
        tx.finish(self.fs, self._remote_path, self._part, self._write_mode, size)
        self._part = None
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Throw the written bytes away; the target is untouched."""
        if self._part is not None:
            self.fs._discard(self._part)
            self._part = None

    def __exit__(self, exc_type: Any, *args: Any) -> None:
        if exc_type is not None and self.writable():
            self.discard()
            self.closed = True
            return
        self.close()
