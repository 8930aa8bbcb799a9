"""PVCFileSystem transfers side by side with ``kubectl cp``, against LocalCluster.

What it measures (issue 3's targets), alternating the two tools within each round and taking
medians over rounds:

- put and get of one large file (default 1 GiB) and of a 2,000-file tree: throughput of
  PVCFileSystem (every byte verified on both sides by the transfer checksum,
  ``modelrepo.fs.CHECKSUM``: hashlib here, busybox ``<checksum>sum`` in the helper pod)
  against ``kubectl cp`` (no verification) into the same pod; target ratio >= 1.0;
- a put whose stream is dropped half way: it must complete, verified, with <= 1.2x the
  file's bytes sent (counted by the exec client: every stdin byte handed to the socket);
- context: the pod's checksum applet reading a file and reading a pipe, the other candidate
  (``md5sum`` for sha256, ``sha256sum`` for md5) reading a file, and the exec transport
  alone (one unverified stream), so the table shows where the time goes.

The cluster runs in a child process (as a real API server would be another process), so
neither tool shares an interpreter with it. Both tools go through the same helper pod and
mount. Every result is checked outside the timed window (content sha256 against the source).
CPU, per GiB moved: user+sys of this process (plus kubectl, a child), of the API emulator's
process, and of the pods' processes (the emulator's reaped children), over each transfer.

Run: ``python benchmarks/bench_transfer.py [--rounds 3] [--size-mib 1024] [--files 2000]
[--write-docs]``. Needs root (the emulator's pod sandboxes), ``kubectl`` on PATH and about
4x the file size free in the temp folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import inspect
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrepo.fs import PVCFileSystem
from modelrepo.fs import _shell as sh
from modelrepo.testing.cluster.sandbox import busybox_path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- transfers:begin -->", "<!-- transfers:end -->"
MiB = 1 << 20
CLAIM = "bench"

_CHILD = r"""
import json, sys
from modelrepo.testing import LocalCluster
cluster = LocalCluster().start()
host = cluster.create_pvc(sys.argv[1])
print(json.dumps({"kubeconfig": str(cluster.kubeconfig), "host": str(host)}), flush=True)
for line in sys.stdin:
    cmd = line.split(" ", 3)
    if cmd[0].strip() == "drop":
        cluster.faults.drop_exec_after(int(cmd[1]), direction=cmd[2], command=cmd[3].strip())
        print("ok", flush=True)
    elif cmd[0].strip() == "fired":
        print(json.dumps([f.__dict__ for f in cluster.faults.fired]), flush=True)
    elif cmd[0].strip() == "quit":
        break
cluster.stop()
"""


#: The checksum applet measured beside the one transfers use (md5 and sha256 were the candidates).
_OTHER_SUM = "md5sum" if sh.SUM != "md5sum" else "sha256sum"


class Cluster:
    """LocalCluster in a child process, driven over its stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, CLAIM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.kubeconfig = info["kubeconfig"]
        self.host = Path(info["host"])

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def cpu(self) -> float:
        """CPU seconds of the API emulator and its pods' processes."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(API emulator process, pods' processes: its reaped children) CPU seconds."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system, t.children_user + t.children_system

    def stop(self) -> None:
        try:
            self.command("quit")
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def make_file(path: Path, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(4 * MiB, left)
            f.write(rng.randbytes(n))
            left -= n


def make_tree(root: Path, files: int) -> int:
    """``files`` files, log-uniform sizes 512 B .. 512 KiB, in 20 folders (seeded)."""
    rng = random.Random(2)
    total = 0
    for i in range(files):
        size = int(2 ** rng.uniform(9, 19))
        path = root / f"layer{i % 20:02d}" / f"part-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        total += size
    return total


class BenchBase:
    """A LocalCluster with the claim, a PVCFileSystem on it (helper pod up), a scratch folder."""

    def __init__(self, args: argparse.Namespace, prefix: str, **fs_options: Any) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.cluster = Cluster()
        self.fs = PVCFileSystem(
            CLAIM,
            kubeconfig=self.cluster.kubeconfig,
            streams=args.streams,
            skip_instance_cache=True,
            **fs_options,
        )
        self.pod = self.fs.helper.ensure()
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def run(self) -> None:
        """All rounds of the benchmark (each subclass's own)."""
        raise NotImplementedError

    def table(self) -> str:
        """The Markdown table of the run (each subclass's own)."""
        raise NotImplementedError

    def kubectl(self, *argv: str) -> None:
        """The reference tool, against the same cluster."""
        subprocess.run(
            ["kubectl", "--kubeconfig", self.cluster.kubeconfig, *argv],
            check=True,
            capture_output=True,
            timeout=900,
        )

    def med(self, key: str, field: str) -> float:
        return statistics.median(r[field] for r in self.rows[key])

    def close(self) -> None:
        try:
            self.fs.close()
        finally:
            self.cluster.stop()
            shutil.rmtree(self.work, ignore_errors=True)


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "bench-transfer-")

    def timed(self, key: str, nbytes: int, fn: Callable[[], Any]) -> Any:
        c0, (a0, p0), t0 = own_cpu(), self.cluster.cpu_split(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        a1, p1 = self.cluster.cpu_split()
        gib = nbytes / (1 << 30)
        row = {
            "wall": wall,
            "mibs": nbytes / MiB / wall,
            "cpu_client": own_cpu() - c0,
            "cpu_cluster": a1 - a0 + p1 - p0,
            # CPU seconds per GiB moved: this process (+ kubectl), API emulator, pod
            "gib_client": (own_cpu() - c0) / gib,
            "gib_api": (a1 - a0) / gib,
            "gib_pod": (p1 - p0) / gib,
        }
        self.rows.setdefault(key, []).append(row)
        print(f"  {key:18s} {row['mibs']:7.1f} MiB/s  {wall:6.2f} s", flush=True)
        return out

    def clean_remote(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def run(self) -> None:
        args = self.args
        big = self.work / "big.bin"
        size = args.size_mib * MiB
        make_file(big, size)
        big_sha = sha256_file(big)
        tree = self.work / "tree"
        tree_bytes = make_tree(tree, args.files)
        tree_sha = tree_digest(tree)
        self.tree_bytes = tree_bytes
        load_before = os.getloadavg()[0]
        loads = []
        pod_path = f"default/{self.pod}"
        for rnd in range(args.rounds):
            order = ["pvc", "kubectl"] if rnd % 2 == 0 else ["kubectl", "pvc"]
            print(f"round {rnd + 1}/{args.rounds} ({' then '.join(order)})", flush=True)
            for tool in order:
                loads.append(os.getloadavg()[0])
                out = self.work / f"out-{tool}.bin"
                if tool == "pvc":
                    self.timed("pvc put file", size, lambda: self.fs.put_file(str(big), "/p.bin"))
                    assert sha256_file(self.cluster.host / "p.bin") == big_sha
                    self.timed(
                        "pvc get file", size, lambda o=out: self.fs.get_file("/p.bin", str(o))
                    )
                else:
                    self.timed(
                        "kubectl put file",
                        size,
                        lambda: self.kubectl(
                            "cp", str(big), f"{pod_path}:/pvc/k.bin", "-c", "helper"
                        ),
                    )
                    assert sha256_file(self.cluster.host / "k.bin") == big_sha
                    self.timed(
                        "kubectl get file",
                        size,
                        lambda o=out: self.kubectl(
                            "cp", f"{pod_path}:/pvc/k.bin", str(o), "-c", "helper"
                        ),
                    )
                assert sha256_file(out) == big_sha, f"{tool} get returned a different file"
                out.unlink()
            for tool in order:
                back = self.work / f"back-{tool}"
                if tool == "pvc":
                    self.clean_remote("/ptree")
                    self.timed(
                        "pvc put tree",
                        tree_bytes,
                        lambda: self.fs.put(str(tree), "/ptree", recursive=True),
                    )
                    assert tree_digest(self.cluster.host / "ptree") == tree_sha
                    self.timed(
                        "pvc get tree",
                        tree_bytes,
                        lambda b=back: self.fs.get("/ptree", str(b), recursive=True),
                    )
                else:
                    self.clean_remote("/ktree")
                    self.timed(
                        "kubectl put tree",
                        tree_bytes,
                        lambda: self.kubectl(
                            "cp", str(tree), f"{pod_path}:/pvc/ktree", "-c", "helper"
                        ),
                    )
                    assert tree_digest(self.cluster.host / "ktree") == tree_sha
                    self.timed(
                        "kubectl get tree",
                        tree_bytes,
                        lambda b=back: self.kubectl(
                            "cp", f"{pod_path}:/pvc/ktree", str(b), "-c", "helper"
                        ),
                    )
                assert tree_digest(back) == tree_sha, f"{tool} tree get differs"
                shutil.rmtree(back)
        self.load_during = statistics.median(loads)
        self.load_before = load_before
        self.context(big, size)
        self.drop_test(big, size, big_sha)

    def context(self, big: Path, size: int) -> None:
        helper = self.fs.helper
        self.timed("pod checksum", size, lambda: helper.exec([sh.SUM, "/pvc/p.bin"]))
        piped = ["sh", "-c", f"dd if=/pvc/p.bin bs=1048576 2>/dev/null | {sh.SUM}"]
        self.timed("pod checksum, piped", size, lambda: helper.exec(piped))
        self.timed("pod other sum", size, lambda: helper.exec([_OTHER_SUM, "/pvc/p.bin"]))

        def raw() -> None:
            with open(big, "rb") as f:
                res = helper.exec(
                    [
                        "sh",
                        "-c",
                        f"dd of=/pvc/raw.bin bs={sh.WBS} count={size} iflag=count_bytes,fullblock "
                        "2>/dev/null",
                    ],
                    stdin=f,
                )
            assert res.exit_code == 0

        self.timed("exec stream, unverified", size, raw)
        self.fs.rm("/raw.bin")

    def drop_test(self, big: Path, size: int, big_sha: str) -> None:
        chunk = self.fs.chunk_size
        middle = (size // 2) // chunk * chunk
        self.clean_remote("/drop.bin")
        self.cluster.command(f"drop {chunk // 2} stdin  {middle} {min(chunk, size - middle)}$")
        before = self.fs.helper.exec_client.stdin_bytes
        stats = self.timed(
            "pvc put, dropped", size, lambda: self.fs.put_files([(str(big), "/drop.bin")])
        )
        sent = self.fs.helper.exec_client.stdin_bytes - before
        fired = json.loads(self.cluster.command("fired"))
        assert any(f["kind"] == "exec-drop" for f in fired), "the drop did not fire"
        assert sha256_file(self.cluster.host / "drop.bin") == big_sha
        self.drop = {
            "ratio": sent / size,
            "resent": stats.chunks_resent,
            "at": (middle + chunk // 2) / size,
        }

    # -- report ---------------------------------------------------------------------------------

    def table(self) -> str:
        a = self.args
        lines = [
            "| transfer | PVCFileSystem MiB/s (verified) | kubectl cp MiB/s "
            "| ratio (>= 1.0): median of rounds [lowest-highest] "
            "| CPU s/GiB ours: client / API server / pod "
            "| CPU s/GiB kubectl cp: client / API server / pod |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        what = {
            "put file": f"put {a.size_mib} MiB file",
            "get file": f"get {a.size_mib} MiB file",
            "put tree": f"put {a.files:,}-file tree ({self.tree_bytes / MiB:.0f} MiB)",
            "get tree": f"get {a.files:,}-file tree ({self.tree_bytes / MiB:.0f} MiB)",
        }
        for op, label in what.items():
            ours, theirs = self.med(f"pvc {op}", "mibs"), self.med(f"kubectl {op}", "mibs")
            lines.append(
                f"| {label} | {ours:,.0f} | {theirs:,.0f} | {paired(self.rows, op)} | "
                f"{self.cpu(f'pvc {op}')} | {self.cpu(f'kubectl {op}')} |"
            )
        d = self.drop
        direct, piped = (
            self.med("pod checksum", "gib_pod"),
            self.med("pod checksum, piped", "gib_pod"),
        )
        ours = sum(self.med("pvc put file", k) for k in ("gib_client", "gib_api", "gib_pod"))
        theirs = sum(self.med("kubectl put file", k) for k in ("gib_client", "gib_api", "gib_pod"))
        lines += [
            "",
            f"Dropped stream: a {a.size_mib} MiB put whose stream was cut at "
            f"{d['at']:.0%} of the file completed, verified, with "
            f"**{d['ratio']:.3f}x** the file's bytes sent (target <= 1.2; "
            f"{d['resent']} chunk resent), at {self.med('pvc put, dropped', 'mibs'):,.0f} MiB/s.",
            "",
            f"Where the time goes (same run): busybox `{sh.SUM}` in the helper pod reading a "
            f"file: {self.med('pod checksum', 'mibs'):,.0f} MiB/s, {direct:.1f} CPU s/GiB; "
            f"reading a pipe (`dd | {sh.SUM}`): {self.med('pod checksum, piped', 'mibs'):,.0f}"
            f" MiB/s, {piped:.1f} CPU s/GiB (busybox `{_OTHER_SUM}`, the other candidate, "
            f"reading a file: {self.med('pod other sum', 'mibs'):,.0f} MiB/s, "
            f"{self.med('pod other sum', 'gib_pod'):.1f} CPU s/GiB). "
            "One unverified exec stream (`dd` into the claim): "
            f"{self.med('exec stream, unverified', 'mibs'):,.0f} MiB/s, CPU s/GiB "
            f"{self.cpu('exec stream, unverified')}. A verified put of the file costs "
            f"{ours:.1f} CPU s per GiB in all against {theirs:.1f} for `kubectl cp`.",
            "",
            f"Conditions: date: {dt.date.today()}; machine: {os.cpu_count()} cores "
            f"({_cpu_name()}), shared by the API emulator, the pod's processes, the client and "
            f"other developers' jobs; load average (1 min) before: {self.load_before:.2f}, "
            f"during (median): {self.load_during:.2f}; rounds: {a.rounds} (order alternating); "
            f"streams: {a.streams}, chunk: {self.fs.chunk_size // MiB} MiB; kubectl: "
            f"{_kubectl_version()}; pod image: Debian busybox-static {_busybox_version()}; "
            f"Python {platform.python_version()}.",
        ]
        return "\n".join(lines)

    def cpu(self, key: str) -> str:
        """Median CPU s/GiB of a row: client / API server / pod."""
        return " / ".join(f"{self.med(key, k):.1f}" for k in ("gib_client", "gib_api", "gib_pod"))


def paired(rows: dict[str, list[dict[str, float]]], op: str, field: str = "mibs") -> str:
    """Ours / kubectl's throughput within each round (the same conditions): median [range]."""
    ratios = sorted(
        o[field] / k[field] for o, k in zip(rows[f"pvc {op}"], rows[f"kubectl {op}"], strict=True)
    )
    return f"**{statistics.median(ratios):.2f}** [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _kubectl_version() -> str:
    try:
        out = subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return json.loads(out)["clientVersion"]["gitVersion"]
    except Exception:
        return "unknown"


def _busybox_version() -> str:
    try:
        out = subprocess.run([busybox_path()], capture_output=True, text=True, timeout=10).stdout
        match = re.search(r"BusyBox (v[\d.]+)", out)
        return match.group(1) if match else "unknown"
    except OSError:
        return "unknown"


def fs_default(option: str) -> Any:
    """PVCFileSystem's own default for ``option``, so the benchmark measures what users get."""
    return inspect.signature(PVCFileSystem.__init__).parameters[option].default


def write_docs(table: str, begin: str = BEGIN, end: str = END, heading: str = "Transfers") -> None:
    """Replace the block between ``begin`` and ``end`` (or append a ``heading`` section)."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    DOCS.write_text(text)


def run_and_report(bench: BenchBase, write: Callable[[str], None] | None) -> None:
    """Run a benchmark, always tear its cluster down, print its table (and write the doc)."""
    try:
        bench.run()
        table = bench.table()
    finally:
        bench.close()
    print(table)
    if write is not None:
        write(table)
        print(f"written to {DOCS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=fs_default("streams"))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    run_and_report(Bench(args), write_docs if args.write_docs else None)


if __name__ == "__main__":
    main()
