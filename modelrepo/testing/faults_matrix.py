"""The reliability matrix: faults, hostile input, concurrency and least privilege, measured.

ONE implementation serves CI and the documentation: ``tests/test_reliability.py`` runs every
section and asserts that each row holds; ``python benchmarks/reliability_matrix.py
--write-docs`` runs the same sections with the same seed and trial counts and renders
``docs/reliability.md`` from the results.

Everything runs on a :class:`~modelrepo.testing.cluster.LocalCluster` (real exec
WebSockets, sandboxed busybox helper pods, real Triton replicas) with its fault hooks. The
judge of every trial is the claim's folder on the host, read directly rather than through
modelrepo:

- every numeric version folder is complete (byte-identical to a pushed source) the first
  time it can be seen: a thread polls the model folder while the push runs, as Triton could
  load a version at any instant;
- no published file, manifest or config is corrupt after the trial;
- the same push called again succeeds;
- leftovers (helper pods, staging folders, reservations, temp files) are gone after the
  next call, or after ``repo.cleanup()`` and helper clean-up (what ``modelrepo cleanup``
  runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from modelrepo.errors import InputError, LayoutError, ModelRepoError
from modelrepo.fs._shell import SUM, checksum_hex_length
from modelrepo.repo import ModelRepo
from modelrepo.testing.models import write_add_one_model
from modelrepo.transport.api import RetryPolicy

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.testing.cluster import LocalCluster

MiB = 1 << 20
CLAIM = "reliability"
NAMESPACE = "default"
TRITON = "triton"
SEED = 20250611
_VERSION = re.compile(r"^[1-9][0-9]*$")
_TEMP_NAME = re.compile(r"\.(mrtmp|mrpart|mrstage|tmp)-[0-9a-f]+")
#: Triton's python backend writes this into a version folder it loads: not ours to judge.
_TRITON_BY_PRODUCTS = frozenset({"__pycache__"})

#: How each exec command the transfer layer runs is recognised in the exec request's URL
#: (the command travels as query parameters). Kept loose on purpose; a trial whose fault
#: does not fire fails, so a drift here is caught, not hidden.
COMMANDS: dict[str, str] = {
    "chunk": r"seek_bytes",  # a chunk written at its offset (stdin: the chunk)
    "verify": r'skip="\$2"[\s\S]*' + SUM,  # the checksum of a written range (stdout)
    "tar": r"tar x",  # a batch of small files as one tar stream (stdin: the tar)
    "write": SUM + " < ",  # one small file in one exec: manifest, config (stdin)
    "listing": r'there "\$1" \|\| exit 0',  # find of a whole model tree (stdout)
    "read": r'\[ -z "\$2\$3" \]',  # cat of one file, e.g. a manifest (stdout)
}


# --------------------------------------------------------------------------- results


@dataclass
class Trial:
    """One injected fault and what became of the push it hit."""

    index: int
    fault: str
    fired: int = 0
    outcome: str = ""
    calls: int = 1  # push calls until one succeeded (1: recovered inside the call)
    retries: int = 0  # re-sent exec sessions / retried API requests the recovery used
    bytes_lost: int = 0
    leftovers: list[str] = field(default_factory=list)  # after the next call
    reaped_by: str = ""  # "" (nothing was left) or "cleanup"
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.problems


@dataclass
class FaultRow:
    """All trials of one fault kind."""

    kind: str
    injected: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return bool(self.trials) and all(t.holds for t in self.trials)

    @property
    def problems(self) -> list[str]:
        return [f"trial {t.index} ({t.fault}): {p}" for t in self.trials for p in t.problems]

    def outcomes(self) -> Counter[str]:
        return Counter(t.outcome for t in self.trials)


@dataclass
class Check:
    """One hostile input, concurrency, privilege or credential check."""

    section: str
    name: str
    outcome: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Shape:
    """The model pushed in fault trials: one chunked file plus a batch of small ones."""

    weights: int = 4 * MiB
    shards: int = 4
    shard_max: int = 192 << 10
    chunk_size: int = 1 * MiB
    small_file_limit: int = 512 << 10
    streams: int = 2


@dataclass
class MatrixReport:
    """Everything one run measured; :func:`render_markdown` turns it into the doc."""

    seed: int
    faults: list[FaultRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    shape: Shape = field(default_factory=Shape)

    def section(self, name: str) -> list[Check]:
        return [c for c in self.checks if c.section == name]

    @property
    def holds(self) -> bool:
        return all(r.holds for r in self.faults) and all(c.holds for c in self.checks)


# --------------------------------------------------------------------------- the judge


def tree_digest(folder: Path) -> dict[str, tuple[int, str]]:
    """relpath -> (size, sha256) of every file below ``folder`` (Triton's by-products aside)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _TRITON_BY_PRODUCTS]
        for name in filenames:
            path = Path(dirpath, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while piece := f.read(MiB):
                    digest.update(piece)
            out[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return out


def _fingerprint(digest: dict[str, tuple[int, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(digest.items())).encode()).hexdigest()


def _signature(folder: Path) -> tuple[Any, ...]:
    items = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in _TRITON_BY_PRODUCTS]
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            items.append((dirpath, name, st.st_size, st.st_ino, st.st_mtime_ns))
    return tuple(sorted(items))


class ClaimJudge:
    """Reads the claim's host folder directly: the ground truth of every trial."""

    def __init__(self, claim_dir: Path) -> None:
        self.claim_dir = claim_dir
        self._sources: dict[str, dict[str, str]] = {}  # model -> fingerprint -> label
        self._digests: dict[str, dict[str, tuple[int, str]]] = {}  # fingerprint -> digest
        self._configs: dict[str, set[str]] = {}
        self._verified: dict[tuple[str, int], tuple[Any, dict[str, tuple[int, str]]]] = {}
        self._lock = threading.Lock()

    def model_dir(self, model: str) -> Path:
        return self.claim_dir / model

    def expect(self, model: str, version_dir: Path, config: str | None, label: str) -> str:
        """Register what a push of ``model`` may publish; returns its fingerprint."""
        digest = tree_digest(version_dir)
        fp = _fingerprint(digest)
        with self._lock:
            self._sources.setdefault(model, {})[fp] = label
            self._digests[fp] = digest
            if config is not None:
                self._configs.setdefault(model, set()).add(config)
        return fp

    def versions(self, model: str) -> list[int]:
        try:
            names = os.listdir(self.model_dir(model))
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _VERSION.match(n))

    def _digest(self, model: str, version: int) -> dict[str, tuple[int, str]]:
        """The version folder's digest, re-hashed only when a file's stat changed."""
        folder = self.model_dir(model) / str(version)
        signature = _signature(folder)
        with self._lock:
            cached = self._verified.get((model, version))
        if cached is not None and cached[0] == signature:
            return cached[1]
        digest = tree_digest(folder)
        with self._lock:
            self._verified[(model, version)] = (signature, digest)
        return digest

    def version_problem(self, model: str, version: int) -> str | None:
        """None if version folder ``version`` is byte-identical to a registered source."""
        folder = self.model_dir(model) / str(version)
        if folder.is_symlink() or not folder.is_dir():
            return f"{model}/{version} is not a plain folder"
        digest = self._digest(model, version)
        if _fingerprint(digest) not in self._sources.get(model, {}):
            files = ", ".join(f"{p} ({s} B)" for p, (s, _) in sorted(digest.items()))
            return (
                f"{model}/{version} is not byte-identical to any pushed source "
                f"(holds: {files or 'nothing'})"
            )
        return None

    def bytes_lost(self, model: str, version: int | None, fingerprint: str) -> int:
        """Bytes of the source not found byte-identical in ``version`` on the claim."""
        expected = self._digests[fingerprint]
        total = sum(size for size, _ in expected.values())
        if version is None or not (self.model_dir(model) / str(version)).is_dir():
            return total
        got = self._digest(model, version)
        return sum(size for rel, (size, sha) in expected.items() if got.get(rel) != (size, sha))

    def problems(self, model: str) -> list[str]:
        """Corruption: a partial/foreign version, a lying manifest, an unknown config."""
        out = []
        root = self.model_dir(model)
        for v in self.versions(model):
            problem = self.version_problem(model, v)
            if problem:
                out.append(problem)
        config = root / "config.pbtxt"
        if config.exists():
            if config.read_text() not in self._configs.get(model, set()):
                out.append(f"{model}/config.pbtxt is not the config of any push")
        elif self.versions(model):
            out.append(f"{model} has versions but no config.pbtxt")
        manifests = root / ".modelrepo" / "manifests"
        for path in sorted(manifests.glob("*.json")) if manifests.is_dir() else []:
            number = path.stem
            if not _VERSION.match(number) or not (root / number).is_dir():
                continue  # an orphan: reported as a leftover
            try:
                files = json.loads(path.read_text())["files"]
                told = {p: (int(e["size"]), str(e["sha256"])) for p, e in files.items()}
            except (ValueError, KeyError, TypeError):
                out.append(f"{model} manifest {number}.json does not parse")
                continue
            if told != self._digest(model, int(number)):
                out.append(f"{model} manifest {number}.json does not describe version {number}")
        return out

    def leftovers(self, model: str) -> list[str]:
        """Staging folders, reservations, temp files and orphan manifests of ``model``."""
        root = self.model_dir(model)
        if not root.is_dir():
            return []
        out = []
        for name in os.listdir(root):
            if not _VERSION.match(name) and name not in ("config.pbtxt", ".modelrepo"):
                out.append(f"{model}/{name}")
        meta = root / ".modelrepo"
        if meta.is_dir():
            for name in os.listdir(meta):
                if name not in ("manifests", "reserved"):
                    out.append(f"{model}/.modelrepo/{name}")
            for sub in ("reserved", "manifests"):
                folder = meta / sub
                for name in os.listdir(folder) if folder.is_dir() else []:
                    orphan = sub == "manifests" and not (root / Path(name).stem).is_dir()
                    if sub == "reserved" or orphan or _TEMP_NAME.search(name):
                        out.append(f"{model}/.modelrepo/{sub}/{name}")
        return sorted(out)

    def snapshot(self, exclude: Sequence[str] = ()) -> dict[str, tuple[Any, ...]]:
        """(type, size, mtime, inode) of everything on the claim outside ``exclude``.

        Any write changes one of them, so comparing two snapshots finds every change.
        """
        out: dict[str, tuple[Any, ...]] = {}
        for name in os.listdir(self.claim_dir):
            if name in exclude:
                continue
            top = self.claim_dir / name
            paths = [top]
            if top.is_dir() and not top.is_symlink():
                for dirpath, dirnames, filenames in os.walk(top):
                    paths += [Path(dirpath, n) for n in dirnames + filenames]
            for path in paths:
                st = path.lstat()
                key = path.relative_to(self.claim_dir).as_posix()
                out[key] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
        return out


def staged_bytes(model_dir: Path) -> int:
    """Bytes on disk in the model's staging folders (what a push has sent so far)."""
    total = 0
    meta = model_dir / ".modelrepo"
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(meta):
            if name.startswith("staging-"):
                for dirpath, _, filenames in os.walk(meta / name):
                    for f in filenames:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def reserved_any(model_dir: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return bool(os.listdir(model_dir / ".modelrepo" / "reserved"))
    return False


class ClaimMonitor:
    """Polls a model folder while a trial runs, as Triton could look at any instant.

    Every numeric folder must be complete the first time it is seen. ``trigger`` (a
    predicate on the model folder) fires ``action`` once, from this thread, when it first
    holds: that is how faults land at a chosen point of a push (bytes staged, version
    reserved...).
    """

    def __init__(
        self,
        judge: ClaimJudge,
        model: str,
        *,
        trigger: Callable[[Path], bool] | None = None,
        action: Callable[[], None] | None = None,
        interval: float = 0.003,
    ) -> None:
        self.judge = judge
        self.model = model
        self.trigger = trigger
        self.action = action
        self.interval = interval
        self.problems: list[str] = []
        self.fired = False
        self._seen = set(judge.versions(model))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-monitor", daemon=True)

    def __enter__(self) -> ClaimMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._look()

    def _run(self) -> None:
        folder = self.judge.model_dir(self.model)
        while not self._stop.is_set():
            self._look()
            if self.trigger is not None and not self.fired and self.trigger(folder):
                self.fired = True
                if self.action is not None:
                    try:
                        self.action()
                    except Exception as exc:  # reported, the trial fails
                        self.problems.append(f"the fault action failed: {exc!r}")
            self._stop.wait(self.interval)

    def _look(self) -> None:
        for v in self.judge.versions(self.model):
            if v in self._seen:
                continue
            self._seen.add(v)
            try:
                problem = self.judge.version_problem(self.model, v)
            except FileNotFoundError:
                problem = None  # deleted again (a trial's clean-up): it was never partial
            if problem:
                self.problems.append(f"visible while incomplete: {problem}")


class CtrlC:
    """Deliver a real SIGINT to the main thread, as Ctrl-C in a notebook or terminal would.

    Only while armed: a signal that lands after the push returned is recorded, not raised.
    """

    def __init__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the Ctrl-C trials must run in the main thread")
        self.delivered = False
        self.late = False
        self._armed = False
        self._old: Any = None

    def __enter__(self) -> CtrlC:
        self._old = signal.signal(signal.SIGINT, self._handler)
        self._armed = True
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self._armed:
            self._armed = False
            self.delivered = True
            raise KeyboardInterrupt
        self.late = True

    def fire(self) -> None:
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)

    def disarm(self) -> None:
        self._armed = False

    def __exit__(self, *exc: object) -> None:
        self._armed = False
        time.sleep(0.02)  # a signal still pending runs our (now inert) handler, not Python's
        signal.signal(signal.SIGINT, self._old)


class SecretLog(logging.Handler):
    """Keeps every log line of a run, so a test can prove no credential was printed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


# --------------------------------------------------------------------------- the matrix


class ReliabilityMatrix:
    """Runs every section against one LocalCluster; each method returns rows to judge."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        seed: int = SEED,
        shape: Shape | None = None,
        stdin_drops: int = 20,
        stdout_drops: int = 10,
        kills: int = 5,
        interrupts: int = 10,
    ) -> None:
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.seed = seed
        self.shape = shape or Shape()
        self.stdin_drops = stdin_drops
        self.stdout_drops = stdout_drops
        self.kills = kills
        self.interrupts = interrupts
        self.rng = random.Random(seed)
        claim_dir = cluster.pvc_path(CLAIM)
        if claim_dir is None:
            claim_dir = cluster.create_pvc(CLAIM)
        self.judge = ClaimJudge(claim_dir)
        # Short API timeouts, so a hung request costs a trial seconds, not a minute.
        self.retry = RetryPolicy(request_timeout=(3.0, 1.0))
        self._sources = 0
        self._admin: ModelRepo | None = None
        self._repos: list[ModelRepo] = []
        self.errors_seen: list[str] = []  # every error text the SDK raised, for the secrets row

    # -- helpers --------------------------------------------------------------------------
    def repo(
        self, kubeconfig: Path | None = None, *, triton: str | None = TRITON, fresh: bool = False
    ) -> ModelRepo:
        """A ModelRepo on the matrix claim (the admin's one is shared unless ``fresh``)."""
        from modelrepo.fs import PVCFileSystem

        if kubeconfig is None and not fresh and self._admin is not None:
            return self._admin
        kc = str(kubeconfig or self.cluster.kubeconfig)
        fs = PVCFileSystem(
            CLAIM,
            namespace=NAMESPACE,
            kubeconfig=kc,
            chunk_size=self.shape.chunk_size,
            small_file_limit=self.shape.small_file_limit,
            streams=self.shape.streams,
            retry=self.retry,
            skip_instance_cache=True,
        )
        repo = ModelRepo(
            pvc=CLAIM, namespace=NAMESPACE, kubeconfig=kc, fs=fs, triton=triton, progress=False
        )
        if kubeconfig is None and not fresh:
            self._admin = repo
        self._repos.append(repo)
        return repo

    def close(self) -> None:
        """Delete every helper pod this matrix made (before its cluster stops)."""
        for repo in self._repos:
            with contextlib.suppress(Exception):
                repo.close()

    def new_source(self, model: str, *, weights: int | None = None) -> tuple[Path, str]:
        """A fresh model folder with random bytes; returns it and its judge fingerprint."""
        self._sources += 1
        root = self.workdir / "sources" / f"{self._sources:04d}"
        folder = write_add_one_model(root, model)
        version = folder / "1"
        size = self.shape.weights if weights is None else weights
        (version / "weights.bin").write_bytes(self.rng.randbytes(size))
        for i in range(self.shape.shards):
            n = self.rng.randrange(16 << 10, self.shape.shard_max)
            (version / f"shard-{i}.bin").write_bytes(self.rng.randbytes(n))
        fp = self.judge.expect(model, version, (folder / "config.pbtxt").read_text(), root.name)
        return folder, fp

    def _sessions(self, since: int, pattern: str, until: int | None = None) -> int:
        """Exec sessions whose command matches ``pattern`` among requests [since:until]."""
        regex = re.compile(pattern)
        return sum(
            1
            for r in self.cluster.requests[since:until]
            if "/exec?" in r.path and regex.search(unquote(r.path))
        )

    def _helper_leftovers(self, keep: Sequence[ModelRepo]) -> list[str]:
        live = {_helper(r).pod_name for r in keep}
        out = []
        for pod in self.cluster.list("Pod", NAMESPACE):
            meta = pod["metadata"]
            if meta.get("labels", {}).get("app.kubernetes.io/component") != "pvc-helper":
                continue
            phase = pod.get("status", {}).get("phase")
            if meta["name"] not in live or phase != "Running":
                out.append(f"helper pod {meta['name']} ({phase})")
        return out

    def _reap(self, repo: ModelRepo, model: str) -> None:
        """What ``modelrepo cleanup`` runs: the store's leftovers, then stale helper pods."""
        from modelrepo.transport.api import connect
        from modelrepo.transport.helper import cleanup

        repo.cleanup(model, older_than=0)
        api = connect(self.cluster.kubeconfig, namespace=NAMESPACE)
        try:
            cleanup(api, claim=CLAIM)
        finally:
            api.close()

    def _short(self, text: str) -> str:
        """The first line of an error, without this run's temporary paths."""
        first = text.splitlines()[0].replace(str(self.workdir), "<tmp>")
        return first if len(first) <= 110 else first[:107] + "..."

    def _note_error(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        self.errors_seen.append(text)
        return text

    # -- one push trial ---------------------------------------------------------------------
    def push_trial(
        self,
        index: int,
        model: str,
        fault: str,
        *,
        arm: Callable[[], None] = lambda: None,
        trigger: Callable[[Path], bool] | None = None,
        action: Callable[[], None] | None = None,
        ctrl_c: bool = False,
        retries: Callable[[int, int], int] | None = None,
        before: Callable[[], None] = lambda: None,
    ) -> Trial:
        """Push a fresh source under one fault, then judge everything the issue asks for.

        ``arm`` sets the fault up; ``trigger``/``action`` fire it from the monitor thread;
        ``ctrl_c`` makes ``action`` a real SIGINT; ``retries(first, last)`` measures the
        retries the recovery used from the API server's requests [first:last] (the call,
        plus its re-run when the call failed); default: the faults that fired.
        """
        repo = self.repo()
        trial = Trial(index, fault)
        source, fp = self.new_source(model)
        before()
        fired_before = len(self.cluster.faults.fired)
        requests_before = len(self.cluster.requests)
        started = time.perf_counter()
        published: int | None = None
        interrupt = CtrlC() if ctrl_c else None
        fire = interrupt.fire if interrupt is not None else action
        with contextlib.ExitStack() as stack:
            if interrupt is not None:
                stack.enter_context(interrupt)
            monitor = stack.enter_context(
                ClaimMonitor(self.judge, model, trigger=trigger, action=fire)
            )
            arm()
            try:
                published = repo.push(model, source=source).version
                trial.outcome = "recovered inside the call"
            except KeyboardInterrupt:
                trial.outcome = "interrupted; the re-run published"
            except Exception as exc:
                self._note_error(exc)
                trial.outcome = f"{type(exc).__name__}; the re-run published"
            finally:
                if interrupt is not None:
                    interrupt.disarm()
        self.cluster.faults.clear()
        trial.seconds = time.perf_counter() - started
        fired = self.cluster.faults.fired[fired_before:]
        trial.fired = len(fired) + int(monitor.fired)
        if interrupt is not None and not interrupt.delivered:
            trial.outcome = "finished before the interrupt landed"
            trial.problems.append("the Ctrl-C landed after the push returned")
        if trial.fired == 0:
            trial.problems.append("the fault did not fire")
        requests_after = len(self.cluster.requests)
        trial.problems += monitor.problems
        trial.problems += self.judge.problems(model)
        # The same push, called again, must succeed.
        with ClaimMonitor(self.judge, model) as again:
            try:
                rerun = repo.push(model, source=source).version
            except Exception as exc:
                trial.problems.append(f"the re-run failed: {self._note_error(exc)}")
                rerun = None
        trial.problems += again.problems
        if published is None:
            trial.calls = 2
            published = rerun
            requests_after = len(self.cluster.requests)
        if retries is None:
            trial.retries = max(len(fired), trial.calls - 1)
        else:
            trial.retries = retries(requests_before, requests_after)
        trial.bytes_lost = self.judge.bytes_lost(model, published, fp)
        if trial.bytes_lost:
            trial.problems.append(f"{trial.bytes_lost} bytes of the source are not on the claim")
        trial.leftovers = self.judge.leftovers(model) + self._helper_leftovers([repo])
        if trial.leftovers:
            self._reap(repo, model)
            trial.reaped_by = "cleanup"
            still = self.judge.leftovers(model) + self._helper_leftovers([repo])
            if still:
                trial.problems.append(f"left behind even after cleanup: {still}")
        trial.problems += self.judge.problems(model)
        return trial

    def _baseline(self, model: str) -> dict[str, int]:
        """Exec sessions of each command in a push without a fault (same shape, warm model)."""
        repo = self.repo()
        for _ in range(3 - len(self.judge.versions(model))):  # dedup index at full depth
            repo.push(model, source=self.new_source(model)[0])
        since = len(self.cluster.requests)
        repo.push(model, source=self.new_source(model)[0])
        return {name: self._sessions(since, pattern) for name, pattern in COMMANDS.items()}

    # -- sections -----------------------------------------------------------------------------
    def exec_drops(self, direction: str) -> FaultRow:
        """Exec streams cut at seeded random offsets while a push writes or reads."""
        if direction == "stdin":
            count = self.stdin_drops
            targets = [
                ("chunk", self.shape.chunk_size, 5),
                ("tar", 16 << 10, 3),
                ("write", 500, 2),
            ]
            fast_fail = ["write"]
            what = "upload (stdin) of a chunk, a tar batch or a small file"
        else:
            count = self.stdout_drops
            digest = checksum_hex_length()  # a cut inside the digest the pod prints
            targets = [
                ("listing", 200, 3),
                ("verify", digest, 3),
                ("tar", 120, 2),
                ("read", 300, 2),
            ]
            fast_fail = ["listing", "read"]
            what = "answer (stdout): a listing, a chunk's or a batch's digest, a manifest"
        row = FaultRow(
            f"exec-drop-{direction}",
            f"exec WebSocket cut without a status at a seeded random byte offset of the "
            f"{what}; every 5th trial cuts every attempt (the call must fail cleanly)",
        )
        model = f"drop_{direction}"
        names = [t for t, _, w in targets for _ in range(w)]
        limits = {t: n for t, n, _ in targets}
        baselines = self._baseline(model)
        for i in range(count):
            target = self.rng.choice(names)
            persistent = i % 5 == 4
            if persistent:
                # Where the SDK gives up at once (a chunk or a tar batch is resent with
                # backoff, 6 times: ~11-23 s per trial, too slow for CI).
                target = fast_fail[(i // 5) % len(fast_fail)]
            offset = self.rng.randrange(0, limits[target])
            times = 50 if persistent else 1
            pattern = COMMANDS[target]

            def arm(offset: int = offset, times: int = times, pattern: str = pattern) -> None:
                drop: Any = self.cluster.faults.drop_exec_after
                drop(offset, direction=direction, times=times, command=pattern)

            def retries(since: int, until: int, pattern: str = pattern, t: str = target) -> int:
                return max(0, self._sessions(since, pattern, until=until) - baselines[t])

            label = f"{target} {direction} cut at byte {offset}" + (
                f" (all {times} attempts)" if persistent else ""
            )
            row.trials.append(self.push_trial(i, model, label, arm=arm, retries=retries))
        return row

    def api_faults(self, status: int) -> FaultRow:
        """429 (Retry-After: 1) / 500 / hung requests on each API call a helper pod needs."""
        helper = r"/namespaces/default/pods/modelrepo-reliability-[0-9a-f]+"
        targets = [
            ("GET", r"/persistentvolumeclaims/reliability$", "get the claim"),
            ("POST", r"/namespaces/default/pods(\?|$)", "create the helper pod"),
            ("GET", helper + "$", "poll the helper pod"),
            ("GET", helper + r"/exec\?", "open an exec session"),
        ]
        if status == 429:
            kind, injected = "api-429", "HTTP 429 Too Many Requests with Retry-After: 1"
        elif status == 500:
            kind, injected = "api-500", "HTTP 500 Internal Server Error"
        else:
            kind = "api-timeout"
            injected = (
                "request left unanswered 2.5 s: past the client's 1 s read timeout (an exec "
                "handshake is answered 504 after 1 s)"
            )
        row = FaultRow(kind, injected + "; the helper pod is recreated in each trial")
        model = f"api_{status or 'timeout'}"
        repo = self.repo()
        for i, (method, path, what) in enumerate(targets):
            times = 2 if i % 2 else 1

            def arm(method: str = method, path: str = path, times: int = times) -> None:
                faults = self.cluster.faults
                if status == 0:
                    seconds = 1.0 if path.endswith(r"/exec\?") else 2.5
                    faults.hang_requests(method, path, seconds=seconds, times=times)
                else:
                    faults.fail_requests(method, path, status=status, times=times, retry_after=1)

            trial = self.push_trial(i, model, f"{what}: {times}x", arm=arm, before=repo.close)
            if status == 429 and trial.seconds < times * 1.0:
                trial.problems.append(
                    f"Retry-After not honoured: {times} x 429 (Retry-After: 1) took only "
                    f"{trial.seconds:.2f} s"
                )
            row.trials.append(trial)
        return row

    def helper_kills(self) -> FaultRow:
        """The helper pod SIGKILLed (exit 137, pod Failed) once a share of the bytes is staged."""
        row = FaultRow(
            "helper-killed",
            "helper pod SIGKILLed (exit 137, phase Failed) when a seeded random share "
            "(10-80 %) of the model's bytes is staged on the claim",
        )
        model = "killed"
        repo = self.repo()
        total = self.shape.weights
        pattern = f"{COMMANDS['chunk']}|{COMMANDS['tar']}"
        counts = self._baseline(model)
        baseline = counts["chunk"] + counts["tar"]

        def retries(since: int, until: int) -> int:
            return max(0, self._sessions(since, pattern, until=until) - baseline)

        for i in range(self.kills):
            share = self.rng.uniform(0.1, 0.8)
            at = int(total * share)
            helper = _helper(repo)
            helper.ensure()

            def kill(helper: Any = helper) -> None:
                self.cluster.kill_pod(helper.pod_name, NAMESPACE)

            row.trials.append(
                self.push_trial(
                    i,
                    model,
                    f"kill at {share:.0%} staged",
                    trigger=lambda d, at=at: staged_bytes(d) >= at,
                    action=kill,
                    retries=retries,
                )
            )
        return row

    def ctrl_c(self) -> FaultRow:
        """Ctrl-C (a real SIGINT) before, during and at the end of the transfer."""
        row = FaultRow(
            "keyboard-interrupt",
            "a real SIGINT to the main thread (KeyboardInterrupt, as Ctrl-C): once the "
            "version is reserved, at a seeded random share of the bytes staged, or once "
            "all bytes are staged",
        )
        model = "interrupted"
        total = self.shape.weights
        for i in range(self.interrupts):
            phase = ("reserved", "bytes", "bytes", "bytes", "staged")[i % 5]
            if phase == "reserved":
                label, trigger = "after the reservation", reserved_any
            elif phase == "staged":
                label = "all bytes staged"
                trigger = lambda d: staged_bytes(d) >= total  # noqa: E731
            else:
                share = self.rng.uniform(0.05, 0.85)
                label = f"at {share:.0%} staged"
                trigger = lambda d, at=int(total * share): staged_bytes(d) >= at  # noqa: E731
            row.trials.append(self.push_trial(i, model, label, trigger=trigger, ctrl_c=True))
        return row

    def triton_replica_down(self) -> FaultRow:
        """One of two Triton replicas down during a load: reported per replica, other loads."""
        row = FaultRow(
            "triton-replica-down",
            "one of 2 Triton replicas down during repo.load(): server stopped before the "
            "load, SIGKILLed during it, or its pod killed (out of the Endpoints)",
        )
        model = "replicas"
        repo = self.repo()
        source, _ = self.new_source(model, weights=64 << 10)
        repo.push(model, source=source)
        for i, how in enumerate(("stopped", "sigkill", "pod-killed")):
            trial = Trial(i, f"replica {how}")
            row.trials.append(trial)
            name = f"triton-down-{i}"
            deployment = self.cluster.deploy_triton(name, claim=CLAIM, replicas=2)
            target = self.repo(triton=name, fresh=True)
            try:
                healthy, down = deployment.pods
                server = deployment.servers[down]
                if how == "stopped":
                    server.stop()
                elif how == "pod-killed":
                    self.cluster.kill_pod(down, NAMESPACE)
                else:
                    pid = server.pid
                    assert pid is not None
                    threading.Timer(0.3, os.killpg, (pid, signal.SIGKILL)).start()
                started = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        result = target.load(model)
                    except ModelRepoError as exc:
                        trial.problems.append(f"load raised: {self._note_error(exc)}")
                        continue
                trial.seconds = time.perf_counter() - started
                trial.fired = 1
                by_url = {r.replica: r for r in result.replicas}
                up_url = deployment.servers[healthy].url
                if not by_url.get(up_url) or not by_url[up_url].ok:
                    trial.problems.append(f"the healthy replica did not load: {result!r}")
                failed = [r for r in result.replicas if not r.ok]
                if how == "pod-killed":
                    if len(result.replicas) != 1:
                        trial.problems.append(f"a killed pod was still addressed: {result!r}")
                    trial.outcome = "down replica left the Endpoints; the other loaded"
                else:
                    if len(failed) != 1 or not failed[0].message:
                        trial.problems.append(f"the down replica was not reported: {result!r}")
                    if not any("did not load on every replica" in str(w.message) for w in caught):
                        trial.problems.append("no warning named the partial load")
                    trial.outcome = (
                        f"reported per replica ({failed[0].outcome if failed else '?'}); "
                        "the other loaded"
                    )
                loaded = target.status(model).loaded_versions(model)
                for v in loaded:
                    problem = self.judge.version_problem(model, v)
                    if problem:
                        trial.problems.append(f"Triton serves a bad version: {problem}")
                if not loaded:
                    trial.problems.append("no replica reports the model loaded")
                # The retry: the replica is back (or only the healthy one is addressed).
                if how != "pod-killed":
                    server.stop()
                    server.start()
                    trial.calls = 2
                again = target.load(model)
                if not again.ok:
                    trial.problems.append(f"the retried load failed: {again!r}")
            finally:
                target.close()
                deployment.stop()
        return row

    # -- hostile input ---------------------------------------------------------------------
    def hostile_inputs(self) -> list[Check]:
        """Names, paths and links built to escape: refused clearly or handled safely."""
        repo = self.repo()
        claim = self.judge.claim_dir
        sentinel = self.workdir / "outside-sentinel"
        sentinel.mkdir(parents=True, exist_ok=True)
        secret = b"SENTINEL-" + self.rng.randbytes(16).hex().encode()
        (sentinel / "secret.txt").write_bytes(secret)
        pwned = [f"pwned-{n}" for n in range(8)]
        # No '/' (file names cannot hold one): $M is /pvc in the helper's scripts and
        # ${M%pvc} is '/', so a payload that runs leaves /pvc/pwned-N on the claim.
        mark = [f"$M${{M%pvc}}{p}" for p in pwned]
        payloads = {
            "command substitution": f"$(touch {mark[0]})",
            "backticks": f"`touch {mark[1]}`",
            "semicolon": f"x; touch {mark[2]}; y",
            "pipe and redirection": f"a | touch {mark[3]} > b",
            "double quotes": f'q"uote$(touch {mark[4]})"',
            "single quotes": f"it's '$(touch {mark[5]})'",
            "newline": f"line\n$(touch {mark[6]})",
            "a relative $(touch)": f"$(touch {pwned[7]})",
        }
        checks: list[Check] = []
        before = self.judge.snapshot()
        sentinel_before = _stat_tree(sentinel)

        refused = self._refused

        # 1. model names: refused before anything touches the claim
        good, _ = self.new_source("hostile_ok", weights=1024)
        names = {
            **{f"model name with {k}": v for k, v in payloads.items()},
            "model name '..'": "..",
            "model name '.'": ".",
            "model name '../escape'": "../escape",
            "model name with a slash": "a/b",
            "absolute model name": "/etc",
            "model name starting with '-'": "-rf",
            "hidden model name": ".modelrepo",
            "unicode model name": "модель",
            "model name of 129 characters": "m" * 129,
            "empty model name": "",
            "model name with NUL": "a\0b",
        }
        for label, name in names.items():
            checks.append(refused(label, lambda n=name: repo.push(n, source=good), InputError))
        checks.append(refused("load of a hostile name", lambda: repo.load("../x"), InputError))
        checks.append(
            refused("versions of a hostile name", lambda: repo.list_versions("a;b"), InputError)
        )
        checks.append(
            refused("version=0", lambda: repo.push("hostile_ok", good, version=0), InputError)
        )
        checks.append(
            refused(
                "version=2**70 (beyond Triton's int64)",
                lambda: repo.push("hostile_ok", good, version=2**70),
                InputError,
            )
        )
        for folder in ("../..", "/etc"):
            checks.append(
                refused(
                    f"build input folder {folder!r}",
                    lambda f=folder: repo.build("hostile_ok", image="busybox", inputs={"x": f}),
                    ValueError,
                )
            )
        checks.append(
            refused(
                "root='../..' (leaves the claim)",
                lambda: ModelRepo.from_url(
                    "pvc://reliability/../..", kubeconfig=self.cluster.kubeconfig
                ).list_models(),
                ValueError,
            )
        )
        # 2. file names inside a model: handled, byte-identical, nothing executed
        checks.append(self._hostile_files(repo, payloads))
        checks.append(self._long_names(repo))
        # 3. source paths
        checks.append(self._hostile_source_path(repo, payloads))
        # 4. symlinks in a source, and on the claim
        checks += self._symlinks(repo, sentinel, secret)
        # 5. a config whose name differs from the folder / the model
        checks += self._config_names(repo)
        checks.append(self._long_model_name(repo))
        # Nothing outside the pushed model folders changed; no payload ever ran.
        pushed = {
            "hostile_files",
            "hostile_long",
            "hostile_src",
            "hostile_links_ok",
            "hostile_cfg_folder",
            "m" * 128,
        }
        after = self.judge.snapshot(exclude=sorted(pushed))
        outside = Check("hostile", "nothing outside the pushed models' folders changed")
        before_kept = {k: v for k, v in before.items() if k.split("/", 1)[0] not in pushed}
        if after != before_kept:
            changed = sorted(set(after.items()) ^ set(before_kept.items()))
            outside.problems.append(f"changed outside the model folders: {changed[:5]}")
        found = [str(p) for p in claim.rglob("pwned-*")]
        found += [p for p in pwned if Path("/tmp", p).exists()]
        found += self._pod_find(repo, "pwned-*")
        if found:
            outside.problems.append(f"a payload ran: {found}")
        if any(secret in data for data in _all_bytes(claim)):
            outside.problems.append("the sentinel's secret reached the claim")
        if _stat_tree(sentinel) != sentinel_before:
            outside.problems.append("the sentinel folder outside the claim changed")
        outside.outcome = (
            "claim unchanged outside the pushed models; no payload's file on the claim, in "
            "the helper pod or in the host's /tmp; the sentinel folder outside the source "
            "and the claim is unchanged and its secret never reached the claim"
            if not outside.problems
            else "VIOLATED"
        )
        checks.append(outside)
        return checks

    def _pod_find(self, repo: ModelRepo, pattern: str) -> list[str]:
        """Files named ``pattern`` anywhere in the helper pod (its own root and the claim)."""
        script = 'find / -path /proc -prune -o -name "$1" -print 2>/dev/null; true'
        result = _helper(repo).exec(["sh", "-c", script, "sh", pattern])
        return result.stdout.decode(errors="replace").split()

    def _push_and_compare(
        self, repo: ModelRepo, model: str, source: Path, check: Check, twice: bool = True
    ) -> None:
        version = source / "1"
        self.judge.expect(model, version, (source / "config.pbtxt").read_text(), "hostile")
        try:
            results = [repo.push(model, source=source) for _ in range(2 if twice else 1)]
        except Exception as exc:
            check.problems.append(f"push failed: {self._note_error(exc)}")
            return
        for result in results:
            problem = self.judge.version_problem(model, result.version)
            if problem:
                check.problems.append(problem)
        check.problems += self.judge.problems(model)
        check.problems += self.judge.leftovers(model)
        linked = " (the re-push hard-linked every file)" if twice else ""
        if twice and results[1].bytes_sent:
            check.problems.append(f"the re-push sent {results[1].bytes_sent} bytes again")
        check.outcome = f"handled: published byte-identical{linked}"

    def _hostile_files(self, repo: ModelRepo, payloads: dict[str, str]) -> Check:
        check = Check("hostile", "file names with " + ", ".join(payloads) + ", and more")
        source = write_add_one_model(self.workdir / "hostile", "hostile_files")
        version = source / "1"
        names = [
            *(f"{v}.bin" for v in payloads.values()),
            "tab\tname.bin",
            "sp ace.bin",
            "-rf",
            "--help",
            "*glob?[x].bin",
            "back\\slash.bin",
            "%s%n%x.bin",
            "$HOME.bin",
            "~root.bin",
            "..data",
            ".hidden",
            "модель-веса.bin",
            "emoji-\U0001f680.bin",
            "e\u0301-nfd.bin",
            "x" * 255,
        ]
        for n, name in enumerate(names):
            (version / name).write_bytes(self.rng.randbytes(100 + n))
        nested = version.joinpath(*(["d" * 100] * 12), "deep.bin")
        nested.parent.mkdir(parents=True)
        nested.write_bytes(b"deep")
        (version / "sub dir $(x)").mkdir()
        (version / "sub dir $(x)" / "big;one.bin").write_bytes(self.rng.randbytes(1536 << 10))
        self._push_and_compare(repo, "hostile_files", source, check)
        return check

    def _long_names(self, repo: ModelRepo) -> Check:
        check = Check("hostile", "60 files with 200-byte names (> 6 KB of arguments per exec)")
        source = write_add_one_model(self.workdir / "hostile", "hostile_long")
        for n in range(60):
            (source / "1" / f"{n:03d}-{'n' * 196}").write_bytes(bytes([n]) * 10)
        self._push_and_compare(repo, "hostile_long", source, check)
        return check

    def _hostile_source_path(self, repo: ModelRepo, payloads: dict[str, str]) -> Check:
        check = Check("hostile", "source path with $(...), quotes, newline, unicode, 2 KB long")
        deep = Path(*(["s" * 200] * 10))
        parent = self.workdir / "hostile" / deep / (payloads["newline"] + " 'q' \"d\" модель")
        source = write_add_one_model(parent, "hostile_src")
        (source / "1" / "weights.bin").write_bytes(self.rng.randbytes(4096))
        self._push_and_compare(repo, "hostile_src", source, check, twice=False)
        return check

    def _symlinks(self, repo: ModelRepo, sentinel: Path, secret: bytes) -> list[Check]:
        checks = []
        base = self.workdir / "links"

        def linked(model: str, make: Callable[[Path], None]) -> Path:
            source = write_add_one_model(base / model, model)
            make(source)
            return source

        cases: list[tuple[str, Callable[[Path], None]]] = [
            (
                "file symlink to a file outside the source",
                lambda s: (s / "1" / "leak.bin").symlink_to(sentinel / "secret.txt"),
            ),
            (
                "folder symlink to a folder outside the source",
                lambda s: (s / "1" / "leakdir").symlink_to(sentinel, target_is_directory=True),
            ),
            (
                "version folder that is a symlink outside the model folder",
                lambda s: _swap_for_link(s / "1", sentinel.parent / "outside-version"),
            ),
            (
                "config.pbtxt that is a symlink outside the source",
                lambda s: _swap_for_link(
                    s / "config.pbtxt", sentinel.parent / "outside-config" / "config.pbtxt"
                ),
            ),
            ("dangling symlink", lambda s: (s / "1" / "gone.bin").symlink_to(base / "nowhere")),
            ("dangling symlink inside it", lambda s: (s / "1" / "gone.bin").symlink_to("x.bin")),
        ]
        for n, (label, make) in enumerate(cases):
            source = linked(f"hostile_links_{n}", make)
            checks.append(
                self._refused_push(
                    f"source with a {label}",
                    repo,
                    f"hostile_links_{n}",
                    source,
                    expect=(InputError, LayoutError),
                )
            )
        ok = Check("hostile", "symlinks inside the source (to a file, a loop to '.')")

        def inside(s: Path) -> None:
            (s / "1" / "weights.bin").write_bytes(self.rng.randbytes(2048))
            (s / "1" / "alias.bin").symlink_to("weights.bin")
            (s / "1" / "loop").symlink_to(".", target_is_directory=True)

        source = linked("hostile_links_ok", inside)
        self._push_and_compare(repo, "hostile_links_ok", source, ok, twice=False)
        checks.append(ok)
        # On the claim: a model folder, and its .modelrepo, planted as links out of it.
        claim = self.judge.claim_dir
        (claim / "planted").symlink_to("/", target_is_directory=True)
        (claim / "planted_meta").mkdir()
        (claim / "planted_meta" / ".modelrepo").symlink_to("/tmp", target_is_directory=True)
        try:
            for model in ("planted", "planted_meta"):
                good = write_add_one_model(base / f"good_{model}", model)
                checks.append(
                    self._refused_push(
                        f"model folder on the claim that is a symlink out of it ({model})",
                        repo,
                        model,
                        good,
                        expect=OSError,
                    )
                )
        finally:
            (claim / "planted").unlink()
            (claim / "planted_meta" / ".modelrepo").unlink()
            (claim / "planted_meta").rmdir()
        return checks

    def _refused(
        self,
        label: str,
        call: Callable[[], Any],
        expect: type[BaseException] | tuple[type[BaseException], ...] = InputError,
    ) -> Check:
        """``call`` must raise ``expect`` saying what to do, and leave the claim untouched."""
        check = Check("hostile", label)
        shot = self.judge.snapshot()
        try:
            call()
        except expect as exc:
            text = str(exc)
            self._note_error(exc)
            check.outcome = f"refused: {type(exc).__name__}: {self._short(text)}"
            if "->" not in text and not isinstance(exc, LayoutError):
                check.problems.append(f"the error says not what to do: {text!r}")
        except Exception as exc:
            check.outcome = f"unexpected {type(exc).__name__}"
            check.problems.append(f"raised {self._note_error(exc)}, not {expect}")
        else:
            check.outcome = "accepted"
            check.problems.append("accepted; should have been refused")
        if self.judge.snapshot() != shot:
            check.problems.append("the claim changed")
        return check

    def _refused_push(
        self,
        label: str,
        repo: ModelRepo,
        model: str,
        source: Path,
        expect: type[BaseException] | tuple[type[BaseException], ...] = InputError,
    ) -> Check:
        return self._refused(label, lambda: repo.push(model, source=source), expect)

    def _config_names(self, repo: ModelRepo) -> list[Check]:
        mismatch = write_add_one_model(self.workdir / "cfg", "cfg_mismatch")
        config = mismatch / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "cfg_mismatch"', 'name: "other"'))
        refused = self._refused_push(
            "config.pbtxt whose name differs from the model",
            repo,
            "cfg_mismatch",
            mismatch,
            expect=LayoutError,
        )
        handled = Check("hostile", "model folder named differently from the model pushed")
        folder = write_add_one_model(self.workdir / "cfg2", "hostile_cfg_folder")
        renamed = folder.with_name("some_other_folder")
        folder.rename(renamed)
        self._push_and_compare(repo, "hostile_cfg_folder", renamed, handled, twice=False)
        handled.outcome = "handled: published under the config's (= the pushed) name"
        return [refused, handled]

    def _long_model_name(self, repo: ModelRepo) -> Check:
        check = Check("hostile", "model name of 128 characters (the longest allowed)")
        name = "m" * 128
        source = write_add_one_model(self.workdir / "long", name)
        self._push_and_compare(repo, name, source, check, twice=False)
        return check

    # -- concurrency ------------------------------------------------------------------------
    def concurrency(self) -> list[Check]:
        """4 pushes of one model at once; list/load meanwhile see only complete versions."""
        return [
            self._concurrent("concurrent_shared", "one ModelRepo shared by 4 threads"),
            self._concurrent("concurrent_own", "4 ModelRepos", shared=False),
            self._concurrent(
                "concurrent_same", "identical content, hard-linked from v1", same=True
            ),
        ]

    def _concurrent(self, model: str, label: str, shared: bool = True, same: bool = False) -> Check:
        check = Check("concurrency", f"4 pushes of the same model at once ({label})")
        first = self.repo()
        seed = self.new_source(model)
        first.push(model, source=seed[0])
        sources = [seed if same else self.new_source(model) for _ in range(4)]
        repos = [first if shared else self.repo(fresh=True) for _ in range(4)]
        results: list[Any] = [None] * 4
        errors: list[str] = []
        stop = threading.Event()
        lists = [0]
        loads: list[Any] = []

        def push(n: int) -> None:
            try:
                results[n] = repos[n].push(model, source=sources[n][0])
            except Exception as exc:
                errors.append(self._note_error(exc))

        def reader() -> None:
            # The admin's ModelRepo (shared with the pushers in the first case).
            try:
                while not stop.is_set():
                    for v in first.list_versions(model):
                        problem = self.judge.version_problem(model, v)
                        if problem:
                            errors.append(f"list_versions showed a bad version: {problem}")
                    lists[0] += 1
            except Exception as exc:
                errors.append(f"reader: {self._note_error(exc)}")

        def loader() -> None:
            try:
                loads.append(first.load(model))
            except Exception as exc:
                errors.append(f"load: {self._note_error(exc)}")

        threads = [threading.Thread(target=push, args=(n,)) for n in range(4)]
        readers = [threading.Thread(target=reader), threading.Thread(target=loader)]
        with ClaimMonitor(self.judge, model) as monitor:
            for t in readers + threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            stop.set()
            for t in readers:
                t.join(timeout=60)
        check.problems += errors + monitor.problems + self.judge.problems(model)
        versions = [r.version for r in results if r is not None]
        if len(set(versions)) != 4:
            check.problems.append(f"versions not 4 distinct ones: {versions}")
        for (_source, fp), result in zip(sources, results, strict=True):
            if result is not None and self.judge.bytes_lost(model, result.version, fp):
                check.problems.append(f"version {result.version} is not its own source")
        load_ok = bool(loads) and loads[0].ok
        if not load_ok:
            check.problems.append(f"the load during the pushes failed: {loads}")
        if same and any(r is not None and r.bytes_sent for r in results):
            check.problems.append("identical content was sent again instead of linked")
        check.problems += self.judge.leftovers(model)
        for r in repos[1:] if not shared else []:
            r.close()
        own = "0 bytes sent, each" if same else "each"
        check.outcome = (
            f"versions {sorted(versions)}, {own} byte-identical to its own source; "
            f"{lists[0]} list_versions calls and a load on both replicas during the pushes "
            f"saw only complete versions"
        )
        return check

    # -- least privilege ----------------------------------------------------------------------
    def least_privilege(self) -> list[Check]:
        """The SDK works with exactly the documented Role; a missing rule is named."""
        from modelrepo.jobs import RBAC_RULES, rbac_manifests

        checks = []
        exact = Check("privilege", "a user bound to exactly rbac_manifests()'s Role")
        kubeconfig = self._user("least", rbac_manifests("least", NAMESPACE, users=["least"]))
        role = next(d for d in rbac_manifests("least", NAMESPACE) if d["kind"] == "Role")
        if role["rules"] != [{k: list(v) for k, v in r.items()} for r in RBAC_RULES]:
            exact.problems.append("the Role is not RBAC_RULES")
        repo = self.repo(kubeconfig)
        done = []
        try:
            source, _ = self.new_source("privileged", weights=256 << 10)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("push", lambda: repo.push("privileged", source=source)),
                ("list", lambda: repo.list_models() and repo.list_versions("privileged")),
                ("load (Service discovery)", lambda: repo.load("privileged")),
                ("status", lambda: repo.status("privileged")),
                (
                    "build (a Job)",
                    lambda: repo.build(
                        "privileged_built",
                        image="busybox",
                        command="cp /inputs/src/1/model.py /output/model.py",
                        inputs={"src": "privileged"},
                        config=str(source / "config.pbtxt"),
                    ),
                ),
                ("cleanup", lambda: repo.cleanup("privileged")),
                ("modelrepo cleanup (CLI)", lambda: self._cli_cleanup(kubeconfig)),
                ("close (delete the helper pod)", repo.close),
            ]
            for name, step in steps:
                try:
                    step()
                    done.append(name)
                except Exception as exc:
                    exact.problems.append(f"{name} failed: {self._note_error(exc)}")
        finally:
            repo.close()
        exact.outcome = "works: " + ", ".join(done)
        checks.append(exact)
        missing = [
            ("pods/exec", None, "pods/exec"),
            ("persistentvolumeclaims", None, "persistentvolumeclaims"),
            ("pods", "create", "'create' on resource 'pods'"),
            ("pods", "get", "'get' on resource 'pods'"),
        ]
        for n, (resource, verb, expected) in enumerate(missing):
            rules = []
            for rule in RBAC_RULES:
                rule = {k: list(v) for k, v in rule.items()}
                if resource in rule["resources"]:
                    if verb is None:
                        rule["resources"].remove(resource)
                    else:
                        rule["verbs"].remove(verb)
                if rule["resources"] and rule["verbs"]:
                    rules.append(rule)
            name = f"lacking-{n}"
            docs = rbac_manifests(name, NAMESPACE, users=[name])
            for doc in docs:
                if doc["kind"] == "Role":
                    doc["rules"] = rules
            kc = self._user(name, docs)
            what = f"{verb} {resource}" if verb else resource
            check = Check("privilege", f"the Role without {what}: push")
            lacking = self.repo(kc)
            try:
                lacking.push("privileged", source=source)
            except ModelRepoError as exc:
                text = str(exc)
                self._note_error(exc)
                check.outcome = f"refused: {self._short(text)} -> {exc.hint}"
                if expected not in text or "ask" not in text:
                    check.problems.append(f"the error does not name {expected!r}: {text}")
            except Exception as exc:
                check.problems.append(f"raised {self._note_error(exc)}")
            else:
                check.problems.append("pushed without the permission")
            finally:
                lacking.close()
            checks.append(check)
        return checks

    def _user(self, name: str, docs: list[dict[str, Any]]) -> Path:
        kubeconfig = self.cluster.add_user(name)
        for doc in docs:
            self.cluster.create(doc, NAMESPACE)
        return kubeconfig

    def _cli_cleanup(self, kubeconfig: Path) -> None:
        from modelrepo.cli import main

        args = ["cleanup", "--pvc", CLAIM, "--kubeconfig", str(kubeconfig), "-n", NAMESPACE]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main([*args, "--older-than", "0", "--json"])
        if code != 0:
            raise ModelRepoError(f"modelrepo cleanup exited {code}")

    # -- credentials ------------------------------------------------------------------------
    def credentials(self, log: SecretLog) -> list[Check]:
        """No token or S3 key in reprs, errors, logs or Job specs (Secrets referenced)."""
        from modelrepo.fs import PVCFileSystem
        from modelrepo.jobs import s3_sync_job

        repo = self.repo()
        keys = {"AWS_ACCESS_KEY_ID": "AKIAMATRIXKEY", "AWS_SECRET_ACCESS_KEY": "matrix-secret"}
        job = Check("credentials", "s3 sync Job manifest with secret=: keys referenced")
        manifest = s3_sync_job(
            "sync", claim=CLAIM, source="s3://b/m", dest_path="m/.modelrepo/x", secret="s3-keys"
        )
        text = json.dumps(manifest)
        refs = re.findall(r'"secretKeyRef": \{[^}]*"name": "s3-keys"', text)
        if len(refs) < 2:
            job.problems.append(f"the keys are not secretKeyRef'd: {text}")
        job.problems += _leaks([text], list(keys.values()))
        job.outcome = f"{len(refs)} secretKeyRef entries, no literal key"
        checks = [job, self._job_with_secret(repo, keys)]
        # Searched last, so the texts above (and every earlier section's) are included.
        secrets = [*_tokens(self.cluster), *keys.values()]
        reprs = Check("credentials", "repr() of ModelRepo, PVCFileSystem, KubeAPI, helper pod")
        fs: Any = repo.fs
        texts = [repr(repo), repr(fs), str(fs.storage_options), repr(fs.helper)]
        texts += [repr(PVCFileSystem(CLAIM, kubeconfig=str(self.cluster.kubeconfig)))]
        texts += [repr(fs.helper.api), repr(fs.helper.api.configuration)]
        reprs.problems += _leaks(texts, secrets)
        reprs.outcome = f"{len(texts)} reprs, no token"
        errors = Check("credentials", "every error message the matrix provoked")
        errors.problems += _leaks(self.errors_seen, secrets)
        errors.outcome = f"{len(self.errors_seen)} errors, no token or key"
        logs = Check("credentials", "every log line of the run (all loggers, DEBUG)")
        logs.problems += _leaks(log.lines, secrets)
        logs.outcome = f"{len(log.lines)} log lines, no token or key"
        return [reprs, errors, logs, *checks]

    def _job_with_secret(self, repo: ModelRepo, keys: dict[str, str]) -> Check:
        """push(via="job", secret=...) for real: the Job and pod specs the cluster stored,
        the error and the pod log it quotes carry no key (an S3 stand-in refuses access)."""
        import base64

        check = Check("credentials", "push(via='job', secret=...) run in the cluster")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"}}
        self.cluster.create({**secret, "type": "Opaque", "data": data}, NAMESPACE)
        seen: list[str] = []
        stop = threading.Event()

        def spy() -> None:  # the Job and its pod are deleted once it failed: look meanwhile
            while not stop.is_set():
                jobs = self.cluster.list("Job", NAMESPACE, api_version="batch/v1")
                pods = self.cluster.list("Pod", NAMESPACE)
                seen.extend(json.dumps(o) for o in jobs + pods if "creds" in json.dumps(o))
                stop.wait(0.02)

        watcher = threading.Thread(target=spy, daemon=True)
        with _denying_s3() as endpoint:
            watcher.start()
            try:
                repo.push(
                    "creds",
                    source="s3://bucket/model",
                    via="job",
                    secret="s3-keys",
                    endpoint_url=endpoint,
                    job_options={"timeout": 60},
                )
                check.problems.append("the sync Job succeeded against a denying endpoint")
                error = ""
            except ModelRepoError as exc:
                error = self._note_error(exc)
            finally:
                stop.set()
                watcher.join(timeout=10)
        specs = [t for t in seen if '"kind": "Job"' in t or '"kind": "Pod"' in t]
        if not specs or not any("secretKeyRef" in t for t in specs):
            check.problems.append("no Job/pod spec referencing the Secret was seen")
        check.problems += _leaks([*specs, error], list(keys.values()))
        check.outcome = (
            f"{len(set(specs))} distinct Job/pod states seen while it ran: keys only as "
            "secretKeyRef; the error (quoting the pod log) has no key"
        )
        return check


# --------------------------------------------------------------------------- running


def _helper(repo: ModelRepo) -> Any:
    """The helper pod object behind a ModelRepo on a PVC."""
    fs: Any = repo.fs
    return fs.helper


def _tokens(cluster: LocalCluster) -> list[str]:
    """Every bearer token the cluster knows (the admin's and each added user's)."""
    found = [cluster.token]
    for path in cluster.base_dir.glob("kubeconfig*"):
        found += re.findall(r"token: (\S+)", path.read_text())
    return sorted(set(found))


def _leaks(texts: Sequence[str], secrets: Sequence[str]) -> list[str]:
    return [
        f"a credential appears in: {text[:120]!r}..."
        for text in texts
        for secret in secrets
        if secret and secret in text
    ]


def _stat_tree(folder: Path) -> dict[str, tuple[int, int, int]]:
    """relpath -> (size, mtime, inode) of everything below ``folder`` (a write changes one)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _all_bytes(folder: Path) -> Iterator[bytes]:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with contextlib.suppress(OSError):
                yield Path(dirpath, name).read_bytes()


@contextlib.contextmanager
def _denying_s3() -> Iterator[str]:
    """An S3 stand-in answering 403 AccessDenied to everything (aws fails fast, no retries)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Deny(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _swap_for_link(path: Path, target: Path) -> None:
    """Move ``path`` to ``target`` (outside the source) and leave a symlink in its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        import shutil

        shutil.rmtree(target) if target.is_dir() else target.unlink()
    path.rename(target)
    path.symlink_to(target, target_is_directory=target.is_dir())


SECTIONS: tuple[str, ...] = (
    "exec-drop-stdin",
    "exec-drop-stdout",
    "api-429",
    "api-500",
    "api-timeout",
    "helper-killed",
    "keyboard-interrupt",
    "triton-replica-down",
    "hostile",
    "concurrency",
    "privilege",
    "credentials",
)


def run_section(matrix: ReliabilityMatrix, name: str, log: SecretLog) -> list[FaultRow | Check]:
    """Run one named section (see :data:`SECTIONS`)."""
    runners: dict[str, Callable[[], Any]] = {
        "exec-drop-stdin": lambda: matrix.exec_drops("stdin"),
        "exec-drop-stdout": lambda: matrix.exec_drops("stdout"),
        "api-429": lambda: matrix.api_faults(429),
        "api-500": lambda: matrix.api_faults(500),
        "api-timeout": lambda: matrix.api_faults(0),
        "helper-killed": matrix.helper_kills,
        "keyboard-interrupt": matrix.ctrl_c,
        "triton-replica-down": matrix.triton_replica_down,
        "hostile": matrix.hostile_inputs,
        "concurrency": matrix.concurrency,
        "privilege": matrix.least_privilege,
        "credentials": lambda: matrix.credentials(log),
    }
    out = runners[name]()
    return out if isinstance(out, list) else [out]


@contextlib.contextmanager
def matrix_cluster(workdir: Path) -> Iterator[LocalCluster]:
    """The LocalCluster every section runs on: the claim and 2 Triton replicas."""
    from modelrepo.testing.cluster import LocalCluster

    with LocalCluster(base_dir=workdir / "cluster") as cluster:
        cluster.create_pvc(CLAIM)
        cluster.deploy_triton(TRITON, claim=CLAIM, replicas=2)
        yield cluster


@contextlib.contextmanager
def capture_logs() -> Iterator[SecretLog]:
    """Record every log line (all loggers at DEBUG) while the matrix runs."""
    handler = SecretLog()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run_matrix(
    workdir: Path,
    *,
    seed: int = SEED,
    sections: Sequence[str] = SECTIONS,
    progress: Callable[[str, float], None] | None = None,
) -> MatrixReport:
    """The sections (all, in order, by default) on a fresh LocalCluster: the doc's report.

    ``progress(section, seconds)`` is called after each section.
    """
    started = time.perf_counter()
    report = MatrixReport(seed=seed)
    with capture_logs() as log, matrix_cluster(workdir) as cluster:
        matrix = ReliabilityMatrix(cluster, workdir, seed=seed)
        report.shape = matrix.shape
        try:
            for name in sections:
                began = time.perf_counter()
                for item in run_section(matrix, name, log):
                    if isinstance(item, FaultRow):
                        report.faults.append(item)
                    else:
                        report.checks.append(item)
                if progress is not None:
                    progress(name, time.perf_counter() - began)
        finally:
            matrix.close()
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- the doc


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def render_markdown(report: MatrixReport) -> str:
    """docs/reliability.md: the tables of one run of the matrix."""
    shape = report.shape
    lines = [
        "# Reliability: faults, hostile input, concurrency, least privilege",
        "",
        "<!-- Generated by `python benchmarks/reliability_matrix.py --write-docs`; do not "
        "edit by hand. -->",
        "",
        "Every figure below comes from one run of the reliability matrix "
        "(`modelrepo/testing/faults_matrix.py`) on `LocalCluster`: real exec WebSockets, "
        "sandboxed busybox helper pods, two real Triton replicas, and the cluster's fault "
        f"hooks. Seed {report.seed}; the run took {report.seconds:.0f} s. CI runs the same "
        "matrix, same seed, same trial counts (`tests/test_reliability.py`) and fails if "
        "any row does not hold.",
        "",
        f"Each fault trial pushes a fresh model ({shape.weights // MiB} MiB `weights.bin` "
        f"sent in {shape.chunk_size // MiB} MiB verified chunks over {shape.streams} parallel exec "
        f"streams, {shape.shards} small files in one tar batch, `model.py`, `config.pbtxt`) "
        "under one fault, then checks, on the claim's host folder and not through modelrepo:",
        "",
        "- **never partial**: a thread polls the model folder during the push; every numeric "
        "version folder must be byte-identical to a pushed source the first time it is seen "
        "(Triton could load it at that instant);",
        "- **nothing corrupt**: every version, every manifest (size + sha256 of each file) "
        "and `config.pbtxt` match what was pushed;",
        "- **a retry succeeds**: the same `repo.push(...)` is called again and must publish;",
        "- **bytes lost**: bytes of the source not byte-identical in the version that "
        "was published (by the call or its re-run);",
        "- **leftovers**: staging folders, reservations, temp files, orphan manifests and "
        "helper pods after the next call; if any, `repo.cleanup()` plus the helper clean-up "
        "(`modelrepo cleanup` runs both) must remove them all.",
        "",
        "## Faults",
        "",
        "| fault | injected | trials | fired | outcomes | re-runs | retries | bytes lost "
        "| leftovers after next call | holds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.faults:
        outcomes = "; ".join(f"{n}x {o}" for o, n in sorted(row.outcomes().items()))
        left = [t for t in row.trials if t.leftovers]
        leftovers = (
            "none"
            if not left
            else f"{len(left)} trial(s), all reaped by cleanup"
            if all(t.reaped_by == "cleanup" and t.holds for t in left)
            else f"{len(left)} trial(s), NOT all reaped"
        )
        lines.append(
            f"| `{row.kind}` | {_cell(row.injected)} | {len(row.trials)} "
            f"| {sum(t.fired for t in row.trials)} | {_cell(outcomes)} "
            f"| {sum(t.calls - 1 for t in row.trials)} | {sum(t.retries for t in row.trials)} "
            f"| {sum(t.bytes_lost for t in row.trials)} | {leftovers} "
            f"| {'yes' if row.holds else '**NO**'} |"
        )
    lines += [
        "",
        "*fired*: faults that actually fired (from the cluster's own record). *re-runs*: "
        "push calls that had to be repeated. *retries*: for exec drops, sessions of the "
        "faulted command beyond a fault-free push of the same shape (measured from the API "
        "server's request log); for API faults, the refused or hung requests retried.",
        "",
        "### Every trial",
        "",
        "| fault | # | injected at | outcome | retries | bytes lost | left after next call "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.faults:
        for t in row.trials:
            left = ", ".join(f"`{x}`" for x in t.leftovers) or "-"
            if t.leftovers:
                left += f" (reaped by {t.reaped_by})"
            lines.append(
                f"| `{row.kind}` | {t.index} | {_cell(t.fault)} | {_cell(t.outcome)} "
                f"| {t.retries} | {t.bytes_lost} | {_cell(left)} | {t.seconds:.2f} |"
            )
    titles = {
        "hostile": (
            "Hostile names and paths",
            "Refused inputs must raise a modelrepo error that says what to do and leave the "
            "claim untouched; handled inputs must publish byte-identical files. The last "
            "row compares the whole claim outside the pushed models' folders before and "
            "after, looks for the payloads' marker files on the claim, in the helper pod "
            "and on the host, and for a sentinel file's bytes on the claim.",
        ),
        "concurrency": ("Concurrency on the claim", ""),
        "privilege": (
            "Least privilege",
            "Users created with `LocalCluster.add_user` and bound by RBAC that the "
            "emulator enforces. The Role is `modelrepo.jobs.rbac_manifests()` "
            "(`RBAC_RULES`), and variants lacking one rule.",
        ),
        "credentials": (
            "Credentials",
            "The cluster's bearer tokens (admin and every added user) and the S3 keys of "
            "a Secret are searched for in the texts below.",
        ),
    }
    for section, (title, intro) in titles.items():
        lines += ["", f"## {title}", ""]
        if intro:
            lines += [intro, ""]
        lines += ["| input / check | outcome | holds |", "|---|---|---|"]
        for c in report.section(section):
            lines.append(
                f"| {_cell(c.name)} | {_cell(c.outcome)} | {'yes' if c.holds else '**NO**'} |"
            )
    lines.append("")
    return "\n".join(lines)
