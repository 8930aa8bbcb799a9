"""Exec over WebSocket (v5 and v4) with the real ``kubernetes`` client, and the sandbox a pod's
processes see."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from kubernetes import client, config
from kubernetes.stream import stream

from modelrepo.testing.cluster import V4, V5, LocalCluster, sandbox
from modelrepo.testing.cluster.kube_exec import open_exec, run_exec
from modelrepo.testing.cluster.manifests import busybox_pod

HELPER_POD = "helper"  # the cluster and core fixtures: tests/conftest.py


@pytest.fixture(scope="module", autouse=True)
def _hello(claim_dir: Path) -> None:
    (claim_dir / "hello.txt").write_text("from the claim\n")


def test_v5_exec_exit_code_and_streams(core: client.CoreV1Api) -> None:
    result = run_exec(core, "helper", ["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert result.protocol == V5
    assert (result.stdout, result.stderr, result.returncode) == (b"out\n", b"err\n", 5)
    assert result.status["reason"] == "NonZeroExitCode"  # type: ignore[index]
    assert run_exec(core, "helper", ["true"]).status == {"metadata": {}, "status": "Success"}


def test_v5_stdin_close_gives_eof(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    payload = os.urandom(5 << 20)
    chunks = [payload[i : i + (1 << 20)] for i in range(0, len(payload), 1 << 20)]
    result = run_exec(core, "helper", ["sh", "-c", "cat > /models/upload.bin"], stdin=chunks)
    assert result.returncode == 0
    claim = cluster.pvc_path("models")
    assert claim is not None and (claim / "upload.bin").read_bytes() == payload
    digest = run_exec(core, "helper", ["sha256sum", "/models/upload.bin"]).stdout.split()[0]
    assert digest.decode() == hashlib.sha256(payload).hexdigest()


def test_client_library_stream_helpers(core: client.CoreV1Api) -> None:
    output = stream(
        core.connect_get_namespaced_pod_exec,
        "helper",
        "default",
        command=["cat", "/models/hello.txt"],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
    )
    assert output == "from the claim\n"
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        "helper",
        "default",
        command=["wc", "-c"],
        stdout=True,
        stderr=True,
        stdin=True,
        tty=False,
        _preload_content=False,
        binary=True,
    )
    ws.write_stdin(b"12345")
    ws.close_channel(0)
    ws.run_forever(timeout=10)
    assert ws.read_stdout().strip() == b"5" and ws.returncode == 0


def test_output_is_streamed_not_buffered(core: client.CoreV1Api) -> None:
    ws = open_exec(core, "helper", ["sh", "-c", "echo first; sleep 3; echo second"])
    started = time.monotonic()
    _, frame = ws.sock.recv_data_frame(True)
    elapsed = time.monotonic() - started
    ws.close()
    assert frame.data == b"\x01first\n"
    assert elapsed < 2.5


def test_a_slow_reader_does_not_fill_server_memory(core: client.CoreV1Api) -> None:
    process = psutil.Process()
    ws = open_exec(core, "helper", ["cat", "/dev/zero"])
    ws.sock.recv_data_frame(True)
    before = process.memory_info().rss
    time.sleep(1.5)  # read nothing: the pipe and the socket fill, cat must block
    after = process.memory_info().rss
    ws.close()
    assert after - before < 64 << 20
    # the process is killed when the client goes away
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        listing = run_exec(core, "helper", ["ps", "-o", "args"]).stdout.decode()
        if "cat /dev/zero" not in listing:
            break
        time.sleep(0.1)
    assert "cat /dev/zero" not in listing


def test_sandbox_looks_like_a_busybox_pod(core: client.CoreV1Api) -> None:
    root = run_exec(core, "helper", ["ls", "/"]).stdout.decode().split()
    assert root == [
        "bin",
        "dev",
        "etc",
        "home",
        "models",
        "proc",
        "root",
        "sys",
        "tmp",
        "usr",
        "var",
    ]
    assert run_exec(core, "helper", ["cat", "/etc/hostname"]).stdout == b"helper\n"
    assert run_exec(core, "helper", ["cat", "/models/hello.txt"]).stdout == b"from the claim\n"
    host_file = os.path.abspath(__file__)
    missing = run_exec(core, "helper", ["cat", host_file])
    assert missing.returncode == 1 and b"No such file" in missing.stderr
    pid1 = run_exec(core, "helper", ["cat", "/proc/1/cmdline"]).stdout
    assert pid1 == b"sleep\x003600\x00"
    processes = run_exec(core, "helper", ["ps", "-o", "pid,args"]).stdout.decode()
    # Earlier execs may linger as zombies ("[cat]"): PID 1 (sleep) never reaps its
    # adopted orphans, as in a real pod. Only live processes count; no host process shows.
    live = [
        line
        for line in processes.strip().splitlines()
        if not line.split(None, 1)[1].startswith("[")
    ]
    assert len(live) <= 4, processes  # header, sleep, ps (+ nsenter's child)
    mounts = run_exec(core, "helper", ["cat", "/proc/mounts"]).stdout.decode()
    assert " /models " in mounts and "/work" not in mounts
    escape = run_exec(core, "helper", ["sh", "-c", "cd /..; ls"]).stdout.decode().split()
    assert escape == root
    # the pod runs the busybox LocalCluster chose (setup.sh's 1.37 when present), no other
    banner = run_exec(core, "helper", ["busybox"]).stdout.decode().splitlines()[0]
    chosen = subprocess.run([sandbox.busybox_path()], capture_output=True, text=True).stdout
    assert banner == chosen.splitlines()[0], banner


def test_exec_runs_as_the_pods_user_with_fs_group(
    core: client.CoreV1Api, cluster: LocalCluster
) -> None:
    cluster.create_pvc("shared")
    pod = busybox_pod(
        "nonroot",
        claim="shared",
        security_context={"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
    )
    cluster.create(pod)
    cluster.wait_for_pod("nonroot")
    ids = run_exec(core, "nonroot", ["id"]).stdout.decode()
    assert "uid=1000" in ids and "gid=1000" in ids and "2000" in ids
    wrote = run_exec(core, "nonroot", ["sh", "-c", "echo hi > /models/x && ls -ln /models/x"])
    assert wrote.returncode == 0 and " 1000 " in wrote.stdout.decode()
    denied = run_exec(core, "nonroot", ["sh", "-c", "echo no > /etc/passwd"])
    assert denied.returncode != 0


def test_exec_errors(core: client.CoreV1Api, cluster: LocalCluster) -> None:
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException):
        run_exec(core, "absent", ["true"])
    cluster.create(busybox_pod("finished", restart_policy="Never", command=["true"]))
    cluster.wait_for_pod("finished", phase="Succeeded")
    with pytest.raises(ApiException) as err:
        run_exec(core, "finished", ["true"])
    assert "completed pod" in str(err.value)
    missing = run_exec(core, "helper", ["no-such-command"])
    assert missing.returncode == 127


def test_concurrent_execs(core: client.CoreV1Api) -> None:
    results: list[bytes] = []

    def one(n: int) -> None:
        results.append(run_exec(core, "helper", ["sh", "-c", f"echo {n}"]).stdout)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted(f"{n}\n".encode() for n in range(8))


def test_v4_only_server_needs_framed_stdin() -> None:
    with LocalCluster(exec_protocols=(V4,)) as c:
        c.create(busybox_pod("helper"))
        c.wait_for_pod("helper")
        core = client.CoreV1Api(config.new_client_from_config(str(c.kubeconfig)))
        data = os.urandom(300_000)
        framed = run_exec(core, "helper", ["sh", "-c", f"head -c {len(data)} | md5sum"], stdin=data)
        assert framed.protocol == V4
        assert framed.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
        # v4 has no stdin close: the close message is not even sent; cat would wait forever,
        # so the server must still end the exec when the client closes the connection
        ws = open_exec(core, "helper", ["cat"], stdin=True)
        ws.close_channel(0)  # a no-op on v4
        ws.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if "cat" not in run_exec(core, "helper", ["ps", "-o", "args"]).stdout.decode().split():
                break
            time.sleep(0.1)
        assert "cat" not in run_exec(core, "helper", ["ps", "-o", "args"]).stdout.decode().split()
