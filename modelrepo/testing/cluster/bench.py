"""Measure LocalCluster's exec path: round-trip latency and throughput, python client and kubectl.

    python -m modelrepo.testing.cluster.bench [--mib 1024] [--execs 50]

Prints one line per measurement. The python client reads WebSocket frames directly (see
``kube_exec``); kubectl's output goes to /dev/null, its input comes from a file, so neither
side's buffering in this process is measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from modelrepo.testing.cluster.cluster import LocalCluster
from modelrepo.testing.cluster.kube_exec import run_exec
from modelrepo.testing.cluster.manifests import busybox_pod

_CHUNK = 1 << 20


def _rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 2**20:8.0f} MiB/s  ({seconds:.2f} s)"


def _kubectl(cluster: LocalCluster, *args: str, stdin: Path | None = None) -> float:
    started = time.monotonic()
    with open(stdin or os.devnull, "rb") as source, open(os.devnull, "wb") as sink:
        subprocess.run(
            [
                "kubectl",
                f"--kubeconfig={cluster.kubeconfig}",
                f"--cache-dir={cluster.base_dir / 'kube-cache'}",
                *args,
            ],
            stdin=source,
            stdout=sink,
            check=True,
            timeout=600,
        )
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size (MiB)")
    parser.add_argument("--execs", type=int, default=50, help="execs timed for latency")
    parser.add_argument("--version", default="1.33", help="Kubernetes version to report")
    args = parser.parse_args(argv)
    from kubernetes import client, config

    size = args.mib << 20
    with LocalCluster(version=args.version) as cluster, tempfile.TemporaryDirectory() as tmp:
        claim = cluster.create_pvc("bench")
        block = os.urandom(_CHUNK)
        with open(claim / "big", "wb") as f:
            for _ in range(args.mib):
                f.write(block)
        cluster.create(busybox_pod("bench", claim="bench"))
        cluster.wait_for_pod("bench")
        core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))

        run_exec(core, "bench", ["true"])
        started = time.monotonic()
        for _ in range(args.execs):
            run_exec(core, "bench", ["true"])
        latency = (time.monotonic() - started) / args.execs
        print(f"exec round-trip (python client, `true`): {latency * 1000:.1f} ms")
        started = time.monotonic()
        for _ in range(min(args.execs, 20)):
            _kubectl(cluster, "exec", "bench", "--", "true")
        print(
            f"kubectl exec `true` (incl. kubectl start): "
            f"{(time.monotonic() - started) / min(args.execs, 20) * 1000:.0f} ms"
        )

        received = 0

        def count(data: bytes) -> None:
            nonlocal received
            received += len(data)

        started = time.monotonic()
        result = run_exec(core, "bench", ["cat", "/models/big"], on_stdout=count)
        assert result.returncode == 0 and received == size, (result.status, received)
        print(f"python client  exec cat  (download): {_rate(size, time.monotonic() - started)}")

        started = time.monotonic()
        result = run_exec(
            core, "bench", ["sh", "-c", "cat > /models/up"], stdin=(block for _ in range(args.mib))
        )
        assert result.returncode == 0 and (claim / "up").stat().st_size == size
        print(f"python client  exec cat> (upload):   {_rate(size, time.monotonic() - started)}")

        print(
            f"kubectl exec   cat       (download): "
            f"{_rate(size, _kubectl(cluster, 'exec', 'bench', '--', 'cat', '/models/big'))}"
        )
        seconds = _kubectl(
            cluster,
            "exec",
            "-i",
            "bench",
            "--",
            "sh",
            "-c",
            "cat > /models/up2",
            stdin=claim / "big",
        )
        print(f"kubectl exec   cat>      (upload):   {_rate(size, seconds)}")
        local = Path(tmp) / "big"
        seconds = _kubectl(cluster, "cp", "bench:/models/big", str(local))
        assert local.stat().st_size == size
        print(f"kubectl cp     pod->local:           {_rate(size, seconds)}")
        seconds = _kubectl(cluster, "cp", str(local), "bench:/models/big3")
        assert (claim / "big3").stat().st_size == size
        print(f"kubectl cp     local->pod:           {_rate(size, seconds)}")


if __name__ == "__main__":
    main()
