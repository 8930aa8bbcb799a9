"""Container sandboxes: a busybox root folder, namespaces, and processes started in them.

A container is a folder that looks like the ``busybox`` image (Debian's static busybox bind-
mounted read-only at ``/bin/busybox`` plus its applet links, ``/etc/passwd``, ``/tmp``...),
with the pod's volumes bind-mounted at their mountPaths. ``_launcher.py`` turns it into the
root of new mount/PID/UTS/IPC namespaces and execs the container's command as PID 1.
``kubectl exec`` then joins those namespaces with ``nsenter``: no mount work per exec, so an
exec costs about one process start.

Images: the sandbox has no image store. An :class:`ImageRegistry` maps image names to what
the container should get from the host (extra read-only paths, PATH entries, entrypoint).
``busybox`` gets nothing more; ``amazon/aws-cli`` and ``python`` get the host's ``/usr`` and
this Python environment (so ``aws`` and ``python`` run). Unknown images behave like busybox
unless the registry is strict (then the pod waits with ``ErrImagePull``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrepo.errors import LocalStackError

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
READ_CHUNK = 1 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LAUNCHER = Path(__file__).with_name("_launcher.py")

_PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
_GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""


@dataclass(frozen=True)
class Image:
    """What a container image provides inside the sandbox, on top of busybox.

    ``host_paths`` are bind-mounted read-only at the same path (a host symlink such as
    Debian's ``/lib -> usr/lib`` is recreated as a symlink); ``path`` entries go first on
    ``PATH``; ``entrypoint``/``cmd`` are used when the container spec gives no
    ``command``/``args``, as with a real image.
    """

    host_paths: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    env: Mapping[str, str] = field(default_factory=dict)


def host_tools_image(*, entrypoint: Sequence[str] = (), cmd: Sequence[str] = ()) -> Image:
    """An image whose tools come from the host: its ``/usr`` and this Python environment."""
    paths = [
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/etc/ssl",
        "/etc/alternatives",
        "/etc/ca-certificates",
    ]
    env_bin: list[str] = []
    # this environment, and the interpreter it is made from (a venv's python is a symlink
    # to e.g. /root/.pyenv/versions/3.11.7/bin/python3)
    for prefix in dict.fromkeys(
        (sys.prefix, sys.base_prefix, str(Path(os.path.realpath(sys.executable)).parent.parent))
    ):
        if not prefix.startswith("/usr"):
            paths.append(prefix)
    if not sys.prefix.startswith("/usr"):
        env_bin.append(str(Path(sys.prefix) / "bin"))
    return Image(
        host_paths=tuple(p for p in paths if os.path.lexists(p)),
        path=tuple(env_bin),
        entrypoint=tuple(entrypoint),
        cmd=tuple(cmd),
    )


BUSYBOX = Image()


def _normalize(ref: str) -> str:
    """``docker.io/library/busybox:1.36@sha256:..`` -> ``busybox``."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name


class ImageRegistry:
    """Maps image names (``fnmatch`` patterns on the name without tag) to :class:`Image`."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._entries: list[tuple[str, Image]] = []
        self.register("busybox", BUSYBOX)
        self.register("*/busybox", BUSYBOX)
        aws = host_tools_image(entrypoint=("aws",))
        self.register("amazon/aws-cli", aws)
        self.register("*/aws-cli", aws)
        python = host_tools_image(cmd=("python3",))
        self.register("python", python)
        self.register("*/python", python)

    def register(self, pattern: str, image: Image) -> None:
        """Add (in front of the earlier entries) an image for names matching ``pattern``."""
        self._entries.insert(0, (pattern, image))

    def resolve(self, ref: str) -> Image | None:
        """The image for a reference, or None when unknown and the registry is strict."""
        name = _normalize(ref)
        for pattern, image in self._entries:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(ref, pattern):
                return image
        return None if self.strict else BUSYBOX


# -- host requirements -------------------------------------------------------------------
def _is_static_elf(path: str) -> bool:
    """Whether an ELF file has no program interpreter (so it runs in an empty root)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


@dataclass(frozen=True)
class HostTools:
    """The host binaries the sandbox needs."""

    busybox: str
    unshare: str
    nsenter: str
    setpriv: str
    applets: tuple[str, ...]


BUSYBOX_ENV = "MODELREPO_BUSYBOX"


def busybox_path() -> str:
    """The static busybox that plays the ``busybox`` image: ``$MODELREPO_BUSYBOX``, else the
    one ``scripts/setup.sh`` put in this Python environment, else the system's.

    The environment's copy exists because the system's may be older than the image users
    run: Debian 12's busybox 1.35 has no SHA-NI path and hashes sha256 six times slower than
    the 1.37 of ``busybox:latest``, which would make the emulator's pods unlike real ones.
    """
    candidates = (os.environ.get(BUSYBOX_ENV, ""), os.path.join(sys.prefix, "bin", "busybox"))
    candidates += ("/bin/busybox", "/usr/bin/busybox")
    return next((path for path in candidates if path and os.path.exists(path)), "")


@functools.lru_cache(maxsize=1)
def host_tools() -> HostTools:
    """Find (once) and check what sandboxes need; raise LocalStackError saying what to do."""
    if os.geteuid() != 0:
        raise LocalStackError(
            "LocalCluster's pod sandboxes need root (they create mount and PID namespaces "
            "and bind-mount volumes).",
            hint="run as root (CI containers do), or start LocalCluster(sandbox=False) for an "
            "API-only cluster whose pods run no processes",
        )
    found = {
        name: shutil.which(name) or f"/usr/bin/{name}" for name in ("unshare", "nsenter", "setpriv")
    }
    for name, path in found.items():
        if not os.access(path, os.X_OK):
            raise LocalStackError(
                f"`{name}` is not installed; LocalCluster needs it for pod sandboxes.",
                hint="apt-get install util-linux",
            )
    busybox = busybox_path()
    if not busybox or not _is_static_elf(busybox):
        raise LocalStackError(
            "A static busybox is needed for pod sandboxes (the busybox image's root "
            f"filesystem); {'found a dynamically linked ' + busybox if busybox else 'none found'}.",
            hint="run scripts/setup.sh (it installs the `busybox` image's version into the "
            f"environment), apt-get install busybox-static, or set {BUSYBOX_ENV}",
        )
    listing = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    applets = tuple(a for a in listing.split() if a and a != "busybox" and "/" not in a)
    probe = subprocess.run(
        [found["unshare"], "--mount", "--pid", "--fork", "true"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        raise LocalStackError(
            f"This machine refuses new mount/PID namespaces: {probe.stderr.strip()}",
            hint="run as root in a container started with CAP_SYS_ADMIN (e.g. docker "
            "--privileged), or use LocalCluster(sandbox=False)",
        )
    return HostTools(busybox, found["unshare"], found["nsenter"], found["setpriv"], applets)


# -- root filesystem ---------------------------------------------------------------------
def shared_bin(images_dir: Path) -> Path:
    """The busybox ``/bin`` (binary + applet links), built once per cluster, mounted read-only.

    Making ~270 links per container costs a quarter of a second on a slow disk; a shared,
    read-only ``/bin`` costs one bind mount.
    """
    tools = host_tools()
    bin_dir = images_dir / "busybox-bin"
    marker = bin_dir / ".complete"
    if marker.exists():
        return bin_dir
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "busybox").touch()
    for applet in tools.applets:
        link = bin_dir / applet
        if not os.path.lexists(link):
            link.symlink_to("busybox")
    marker.touch()
    return bin_dir


def build_rootfs(
    root: Path, *, hostname: str, pod_ip: str, image: Image, bin_dir: Path
) -> list[dict[str, Any]]:
    """Lay out a busybox-like root folder; return the bind mounts the launcher must make."""
    tools = host_tools()
    for sub in (
        "bin",
        "dev",
        "etc",
        "home",
        "proc",
        "root",
        "sys",
        "tmp",
        "usr/sbin",
        "var/spool/mail",
        "var/www",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    etc = root / "etc"
    (etc / "passwd").write_text(_PASSWD)
    (etc / "group").write_text(_GROUP)
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost "
        f"ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n"
    )
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:5\n")
    mounts: list[dict[str, Any]] = [
        {"source": str(bin_dir), "target": "/bin", "readonly": True},
        {"source": tools.busybox, "target": "/bin/busybox", "readonly": True},
    ]
    for host_path in image.host_paths:
        inside = root / host_path.lstrip("/")
        if os.path.islink(host_path):
            inside.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(inside):
                inside.symlink_to(os.readlink(host_path))
        else:
            mounts.append({"source": host_path, "target": host_path, "readonly": True})
    return mounts


# -- processes ---------------------------------------------------------------------------
def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


class PipeReader(asyncio.Protocol):
    """Reads a pipe in large chunks with back-pressure (pauses the pipe when far ahead)."""

    def __init__(self, limit: int = 4 * READ_CHUNK) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, max_bytes: int = READ_CHUNK) -> list[bytes]:
        """The next chunks (up to about ``max_bytes``); an empty list at EOF."""
        while not self._chunks and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        out: list[bytes] = []
        taken = 0
        while self._chunks and taken < max_bytes:
            chunk = self._chunks.pop(0)
            out.append(chunk)
            taken += len(chunk)
        self._size -= taken
        if self._paused and self._size < self._limit // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return out

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_pipe_reader(fd: int) -> PipeReader:
    """Wrap the read end of a pipe in a :class:`PipeReader` on the running loop."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.connect_read_pipe(PipeReader, os.fdopen(fd, "rb", 0))
    return protocol


@dataclass
class Spawned:
    """A started process with its stdout/stderr readers."""

    process: asyncio.subprocess.Process
    stdout: PipeReader
    stderr: PipeReader


async def spawn(
    argv: Sequence[str],
    *,
    stdin: bool,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    **kwargs: Any,
) -> Spawned:
    """Start a process in its own session with big stdout/stderr pipes read asynchronously."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    _grow_pipe(out_w)
    _grow_pipe(err_w)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            env=dict(env) if env is not None else None,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            **kwargs,
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    if process.stdin is not None:
        pipe = process.stdin.transport.get_extra_info("pipe")
        if pipe is not None:
            _grow_pipe(pipe.fileno())
    return Spawned(process, await open_pipe_reader(out_r), await open_pipe_reader(err_r))


def exit_code(returncode: int | None) -> int:
    """A shell-style exit code (128 + signal for a killed process)."""
    if returncode is None:
        return -1
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class LaunchSpec:
    """Everything the launcher needs to start one container."""

    root: Path
    hostname: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[dict[str, Any]]
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    cwd: str = "/"


class ContainerProcess:
    """One running container: the ``unshare`` process and the host PID of its PID 1."""

    def __init__(self, spawned: Spawned, pid1: int, spec: LaunchSpec, status: LineReader) -> None:
        self.spawned = spawned
        self.pid1 = pid1
        self.spec = spec
        self._status = status

    async def start_error(self) -> str:
        """After the exit: the launcher's message if ``execve`` itself failed, else ''."""
        try:
            rest = (await asyncio.wait_for(self._status.rest(), 1)).decode(errors="replace")
        except (asyncio.TimeoutError, OSError):
            rest = ""
        finally:
            self._status.close()
        return next((line[6:] for line in rest.splitlines() if line.startswith("error ")), "")

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.spawned.process

    def signal(self, sig: int) -> None:
        """Signal PID 1 of the container (SIGKILL ends the whole PID namespace)."""
        for pid in (self.pid1, self.process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
            if sig != signal.SIGKILL:
                break

    async def wait(self) -> int:
        return exit_code(await self.process.wait())

    def exec_argv(self, command: Sequence[str], uid: int | None = None) -> list[str]:
        """``nsenter`` into this container's namespaces and root, then run ``command``."""
        tools = host_tools()
        uid = self.spec.uid if uid is None else uid
        argv = [
            tools.setpriv,
            "--pdeathsig",
            "KILL",
            "--",
            tools.nsenter,
            "-t",
            str(self.pid1),
            "-m",
            "-p",
            "-u",
            "-i",
            "-r",
            "-w",
        ]
        if uid:
            argv += ["-S", str(uid)]
        return [*argv, "--", *command]


class StartError(Exception):
    """The container could not start (sandbox setup or exec of the command failed)."""


async def launch(spec: LaunchSpec, spec_file: Path, timeout: float = 30.0) -> ContainerProcess:
    """Start a container: unshare + launcher; wait until its command is exec'd."""
    tools = host_tools()
    spec_file.write_text(
        json.dumps(
            {
                "root": str(spec.root),
                "hostname": spec.hostname,
                "argv": spec.argv,
                "env": spec.env,
                "mounts": spec.mounts,
                "uid": spec.uid,
                "gid": spec.gid,
                "groups": spec.groups,
                "cwd": spec.cwd,
            }
        )
    )
    status_r, status_w = os.pipe()
    argv = [
        tools.setpriv,
        "--pdeathsig",
        "KILL",
        "--",
        tools.unshare,
        "--mount",
        "--pid",
        "--uts",
        "--ipc",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-I",
        "-S",
        str(_LAUNCHER),
        str(spec_file),
        str(status_w),
    ]
    try:
        spawned = await spawn(argv, stdin=False, env={"PATH": DEFAULT_PATH}, pass_fds=(status_w,))
    finally:
        os.close(status_w)
    status = await open_line_reader(status_r)
    found: dict[str, Any] = {"pid": 0, "error": ""}

    async def follow() -> None:
        while True:
            line = (await status.readline()).decode(errors="replace").strip()
            if line.startswith("pid "):
                found["pid"] = int(line[4:])
            elif line.startswith("error "):
                found["error"] = line[6:]
                return
            elif line == "exec" or not line:
                return

    try:
        await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError:
        spawned.process.kill()
        found["error"] = f"the container sandbox did not start within {timeout:.0f}s"
    pid1, error = found["pid"], found["error"]
    if error or not pid1:
        status.close()
        await spawned.process.wait()
        if not error:
            tail = b"".join(await spawned.stderr.read()).decode(errors="replace").strip()
            error = f"the sandbox launcher failed: {tail or 'no output'}"
        raise StartError(error)
    return ContainerProcess(spawned, pid1, spec, status)


class LineReader:
    """The launcher's status pipe, read line by line on the loop."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self._reader = reader
        self._transport = transport

    async def readline(self) -> bytes:
        return await self._reader.readline()

    async def rest(self) -> bytes:
        return await self._reader.read()

    def close(self) -> None:
        self._transport.close()


async def open_line_reader(fd: int) -> LineReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return LineReader(reader, transport)
