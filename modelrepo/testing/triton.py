"""A real Triton Inference Server on this machine, for tests, notebooks and ``modelrepo demo``.

The server is the one bundled in the ``nvidia-pytriton`` wheel (the ``local`` extra): the
``tritonserver`` binary, its shared libraries and the python backend. Running the real
server, not a mock, is what lets tests judge load errors, readiness and throughput.

Several servers may run at once (the replicas of a local "Deployment"), so each gets its own
free ports, its own shared-memory prefix and its own log, while the backends folder is
prepared once per process.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelrepo.errors import LocalStackError
from modelrepo.testing._service import LocalService

__all__ = ["LocalTriton", "TritonInstall", "locate_triton"]

#: Environment variable naming the folder (a ``site-packages``) that holds ``pytriton/`` and
#: ``nvidia_pytriton.libs/``; by default the folder ``pytriton`` is imported from.
PYTRITON_PATH_ENV = "MODELREPO_PYTRITON_PATH"

_INSTALL_HINT = "pip install 'modelrepo[local]'  (it brings nvidia-pytriton, which bundles Triton)"
_LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the bundled Triton server are."""

    binary: Path
    libs: Path
    backends: Path
    stub: Path


def locate_triton(search_path: str | Path | None = None) -> TritonInstall:
    """Find the Triton server bundled in the ``nvidia-pytriton`` wheel.

    ``search_path`` (or the ``MODELREPO_PYTRITON_PATH`` environment variable) names the folder
    holding ``pytriton/``; without either, the installed ``pytriton`` package is used.
    """
    if search_path is None:
        search_path = os.environ.get(PYTRITON_PATH_ENV) or None
    if search_path is not None:
        base = Path(search_path)
    else:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")  # finds the folder, runs no pytriton code
        if spec is None or not spec.submodule_search_locations:
            raise LocalStackError(
                "The Triton server bundled in nvidia-pytriton is not installed.",
                hint=_INSTALL_HINT,
            )
        base = Path(next(iter(spec.submodule_search_locations))).parent
    root = base / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libs=base / "nvidia_pytriton.libs",
        backends=root / "backends",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    missing = [p for p in (install.binary, install.libs, install.backends) if not p.exists()]
    if missing:
        raise LocalStackError(
            f"The Triton server bundled in nvidia-pytriton was not found under {base} "
            f"(missing: {', '.join(str(p) for p in missing)}).",
            hint=_INSTALL_HINT,
        )
    if not install.stub.exists():
        raise LocalStackError(
            f"nvidia-pytriton has no python-backend stub for Python {version} ({install.stub}).",
            hint="Use a Python version nvidia-pytriton ships a stub for (3.8 to 3.13), "
            "or upgrade it: " + _INSTALL_HINT,
        )
    return install


# --- process-wide state: one backends copy, one folder for logs, removed at exit ------------

_STATE_LOCK = threading.Lock()
_BACKENDS: dict[Path, Path] = {}
_WORK_ROOT: Path | None = None


def _work_root() -> Path:
    """A private temp folder for this process (backends copy, logs); removed at exit."""
    global _WORK_ROOT
    with _STATE_LOCK:
        if _WORK_ROOT is None:
            _WORK_ROOT = Path(tempfile.mkdtemp(prefix="modelrepo-triton-"))
            atexit.register(shutil.rmtree, str(_WORK_ROOT), True)
        return _WORK_ROOT


def _backends_dir(install: TritonInstall) -> Path:
    """A writable copy of the backends folder with the python stub in place (once per process).

    Triton wants the stub beside ``libtriton_python.so``; the wheel's folder may be read-only
    and is shared, so pytriton's own approach is followed: copy, then add the stub.
    """
    root = _work_root()
    with _STATE_LOCK:
        done = _BACKENDS.get(install.backends)
        if done is not None:
            return done
        target = root / f"backends-{len(_BACKENDS)}"
        shutil.copytree(install.backends, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub, target / "python" / "triton_python_backend_stub")
        _BACKENDS[install.backends] = target
        return target


def _free_port(address: str) -> int:
    """A port the OS reports free on ``address`` (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group ``pgid`` (Linux /proc)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _kill_group(proc: subprocess.Popen[bytes], timeout: float, shm_prefix: str) -> None:
    """Stop the server, then make sure nothing of its process group survives.

    SIGTERM goes to the server alone so it can unload models and end its python-backend stubs
    itself; whatever is left in its process group after ``timeout`` gets SIGKILL. Its
    shared-memory regions are removed last. Also the finalizer of a :class:`LocalTriton`, so
    it must not need the object itself.
    """
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(shm_prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()


class LocalTriton(LocalService):
    """A real Triton server process serving ``repository``, on loopback ports.

    Use it as a context manager (``with LocalTriton(repository=path) as triton: triton.url``)
    or call :meth:`start` and :meth:`stop`. The process (and its python-backend stubs) is
    stopped at the latest when this object is garbage-collected or the interpreter exits.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        http_address: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "explicit",
        load_models: Sequence[str] = (),
        log_path: str | Path | None = None,
        startup_timeout: float = 60,
        extra_args: Sequence[str] = (),
        stop_timeout: float = 10,
        pytriton_path: str | Path | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.http_address = http_address
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self._given_ports = (http_port, grpc_port, metrics_port)
        self._given_log = Path(log_path) if log_path is not None else None
        self._pytriton_path = pytriton_path
        self.http_port: int | None = http_port
        self.grpc_port: int | None = grpc_port
        self.metrics_port: int | None = metrics_port
        self.log_path: Path | None = self._given_log
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., LocalTriton] | None = None

    # --- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint (what ``tritonclient.http`` takes)."""
        self._require_started()
        return f"{self.http_address}:{self.http_port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP endpoint."""
        return f"http://{self.url}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        self._require_started()
        return f"{self.http_address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL."""
        self._require_started()
        return f"http://{self.http_address}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process-group id), or None when not running."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be starting)."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The server log so far (empty before start)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalTriton:
        """Start the server and wait until ``/v2/health/ready`` answers 200."""
        if self.is_running():
            return self
        install = locate_triton(self._pytriton_path)
        backends = _backends_dir(install)
        self.repository.mkdir(parents=True, exist_ok=True)
        # a port chosen here may be taken before the server binds it: retry with new ones
        attempts = 1 if all(p is not None for p in self._given_ports) else 3
        for attempt in range(attempts):
            try:
                self._launch(install, backends)
                self._wait_ready()
                return self
            except LocalStackError:
                lost_race = "address already in use" in self.log_text().lower()
                self.stop()
                if not lost_race or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, install: TritonInstall, backends: Path) -> None:
        addr = self.http_address
        shm_prefix = f"modelrepo-{uuid.uuid4().hex[:12]}-"
        http_port, grpc_port, metrics_port = self._given_ports
        self.http_port = http_port or _free_port(addr)
        self.grpc_port = grpc_port or _free_port(addr)
        self.metrics_port = metrics_port or _free_port(addr)
        if self._given_log is None:
            log_dir = Path(tempfile.mkdtemp(prefix="server-", dir=_work_root()))
            self.log_path = log_dir / "tritonserver.log"
        else:
            self._given_log.parent.mkdir(parents=True, exist_ok=True)
            self.log_path = self._given_log
        args = [
            str(install.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--model-control-mode={self.model_control_mode}",
            f"--backend-directory={backends}",
            # unique per server so replicas' python backends never share shared memory
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-address={addr}",
            f"--http-port={self.http_port}",
            f"--grpc-address={addr}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={addr}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=1",  # clients keeping connections open delay exit this long
            *(f"--load-model={m}" for m in self.load_models),
            *self.extra_args,
        ]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # the stub runs "python"-side code: it must find this environment's numpy
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.log_path.parent),
                start_new_session=True,  # own process group: stop() reaches the stubs too
            )
        self._finalizer = weakref.finalize(
            self, _kill_group, self._proc, self.stop_timeout, shm_prefix
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._startup_error(f"exited with code {self._proc.returncode}")
            if self._ready():
                return
            time.sleep(0.05)
        raise self._startup_error(f"was not ready after {self.startup_timeout:g} s")

    def _ready(self) -> bool:
        # Triton starts its metrics server after HTTP answers ready: wait for both, so
        # every address this object hands out answers.
        return self._answers(self.http_port, "/v2/health/ready") and self._answers(
            self.metrics_port, "/metrics"
        )

    def _answers(self, port: int | None, path: str) -> bool:
        if port is None:
            return True
        conn = http.client.HTTPConnection(self.http_address, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _startup_error(self, what: str) -> LocalStackError:
        return LocalStackError(
            f"Triton on {self.http_address}:{self.http_port} {what}. "
            f"Last lines of its log ({self.log_path}):\n{self.log_tail()}",
            hint="Read the log above: a model listed in load_models that fails to load, "
            "a port in use or a bad repository path are the usual causes.",
        )

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_timeout``; idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # runs _kill_group once, then detaches
            self._finalizer = None

    def _require_started(self) -> None:
        if self.http_port is None or self._proc is None:
            raise LocalStackError(
                "This LocalTriton has not been started.",
                hint="Call .start() or use it as a context manager: "
                "`with LocalTriton(repository=path) as triton: ...`.",
            )

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = f"{self.http_address}:{self.http_port}" if self.http_port else "not started"
        return f"LocalTriton({str(self.repository)!r}, {where}, {state})"
