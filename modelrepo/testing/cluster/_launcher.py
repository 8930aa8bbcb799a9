"""Container init: runs as PID 1 of fresh mount/PID/UTS/IPC namespaces (under ``unshare``).

Run as ``python -I -S _launcher.py SPEC_JSON STATUS_FD`` (standard library only: it must not
depend on the venv). It bind-mounts the volumes into the container's root folder, mounts a
minimal /dev and a /proc of its own PID namespace, makes that folder the root with
``pivot_root`` (so nothing of the host stays reachable, unlike a bare chroot), drops to the
pod's user and ``execve``s the container's command, which so becomes PID 1.

Protocol on STATUS_FD (a pipe, close-on-exec): first ``pid <host pid>\\n``; then either
``exec\\n`` right before the command is exec'd, or ``error <message>\\n`` and exit 128 (an
``error`` line may still follow ``exec`` if ``execve`` itself fails).
"""

import ctypes
import json
import os
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _inside(root, path):
    """``path`` (absolute, in the container) resolved under ``root`` without leaving it."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = root
    for part in parts:
        if part == "..":
            raise OSError(f"mount path {path!r} must not contain '..'")
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise OSError(f"mount path {path!r} goes through a symlink")
    return current


def _bind(root, mount):
    source = mount["source"]
    target = _inside(root, mount["target"])
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "a"):
                pass
    _mount(source, target, None, MS_BIND | MS_REC)
    if mount.get("readonly"):
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _make_dev(root):
    dev = os.path.join(root, "dev")
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name, major, minor in (
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ):
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        os.symlink(target, os.path.join(dev, name))
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    _mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")
    os.mkdir(os.path.join(dev, "pts"))
    os.mkdir(os.path.join(dev, "mqueue"))


def _setup(spec, status):
    root = spec["root"]
    host_pid = os.readlink("/proc/self")
    os.write(status, f"pid {host_pid}\n".encode())
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount(root, root, None, MS_BIND | MS_REC)
    for mount in spec.get("mounts", []):
        _bind(root, mount)
    _make_dev(root)
    proc = os.path.join(root, "proc")
    os.makedirs(proc, exist_ok=True)
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    hostname = spec.get("hostname", "").encode()
    if hostname:
        _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    os.umask(0o022)
    gid = spec.get("gid", 0)
    uid = spec.get("uid", 0)
    os.setgroups(spec.get("groups", []))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.chdir(spec.get("cwd") or "/")
    except OSError as exc:
        raise OSError(f"chdir to workingDir {spec.get('cwd')!r}: {exc.strerror}") from exc


def _which(command, path):
    """The program to exec, searched on PATH as execvp would (no imports: the host is gone)."""
    if "/" in command:
        return command
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(command)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    status = int(sys.argv[2])
    os.set_inheritable(status, False)
    try:
        _setup(spec, status)
    except OSError as exc:
        os.write(status, f"error failed to create the container sandbox: {exc}\n".encode())
        os._exit(128)
    argv = spec["argv"]
    env = spec.get("env", {})
    try:
        program = _which(argv[0], env.get("PATH", "/bin"))
        os.write(status, b"exec\n")
        os.execve(program, argv, env)
    except OSError as exc:
        message = (
            f'exec: "{argv[0]}": executable file not found in $PATH'
            if isinstance(exc, FileNotFoundError)
            else f'exec: "{argv[0]}": {exc}'
        )
        os.write(status, f"error {message}\n".encode())
        os._exit(128)


if __name__ == "__main__":
    main()
