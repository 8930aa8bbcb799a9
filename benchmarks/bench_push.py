"""``ModelRepo.push`` side by side with ``kubectl cp`` of the same model folder (issue 4).

In one run against LocalCluster (in a child process, as in ``bench_transfer.py``), each
round does, with the two tools' order alternating:

- a first push of a 1 GiB, 20-file model (``config.pbtxt``, ``1/model.py`` and 18 weight
  shards) with a cold local hash cache: layout check, local sha256 (the digests the
  transfer is verified against), version reservation, staging, verified transfer (the
  transfer checksum on both sides), manifest, publish by rename;
- ``kubectl cp`` of the same folder into the helper pod, onto the same claim (no
  verification); target ratio ours/kubectl >= 1.0;
- an unchanged re-push of the same folder: target <= 5% of the first push's time and
  < 1 MiB sent. Bytes sent are read two ways: ``PushResult.bytes_sent`` and the exec
  client's own count of stdin bytes handed to the socket (scripts and manifests included).

Each push's exec sessions are counted and attributed to the script that ran (the
``_shell`` constant's name), so the table shows where a re-push's round trips go. Every
result is checked outside the timed window (sha256 of each published file on the claim).

Run: ``python benchmarks/bench_push.py [--rounds 3] [--size-mib 1024] [--write-docs]``.
Needs root (the emulator's pod sandboxes), ``kubectl`` on PATH, ~3x the model size free.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from bench_transfer import (
    CLAIM,
    BenchBase,
    MiB,
    _busybox_version,
    _cpu_name,
    _kubectl_version,
    fs_default,
    make_file,
    own_cpu,
    run_and_report,
    tree_digest,
    write_docs,
)

from modelrepo import ModelRepo
from modelrepo.fs import PVCFileSystem
from modelrepo.fs import _shell as sh
from modelrepo.testing.models import write_add_one_model

BEGIN, END = "<!-- push:begin -->", "<!-- push:end -->"
SHARDS = 18


class ExecLog:
    """Counts a filesystem's exec round trips by script, and their time."""

    def __init__(self, fs: PVCFileSystem) -> None:
        names = {id(v): k for k, v in vars(sh).items() if isinstance(v, str) and k.isupper()}
        self.calls: list[tuple[str, float]] = []
        inner = fs._sh

        def recorded(script: str, *args: str, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(script, *args, **kwargs)
            finally:
                name = names.get(id(script), "merge_script" if "mv -f" in script else "other")
                self.calls.append((name, time.perf_counter() - started))

        fs._sh = recorded  # type: ignore[method-assign]

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[tuple[str, float]]:
        return self.calls[mark:]


def make_shards(folder: Path, size: int) -> None:
    """SHARDS weight files summing to ``size`` bytes minus the two small files (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    each = size // SHARDS
    for i in range(SHARDS):
        make_file(folder / f"weights-{i:02d}.bin", each if i < SHARDS - 1 else size - each * i)


def make_model(base: Path, name: str, shards: Path) -> Path:
    """A python-backend model whose version folder links the shared shards (no copy)."""
    folder = write_add_one_model(base, name)
    for shard in sorted(shards.iterdir()):
        os.link(shard, folder / "1" / shard.name)
    return folder


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "bench-push-", small_file_limit=args.small_mib * MiB)
        os.environ["MODELREPO_CACHE_DIR"] = str(self.work / "cache")
        self.log = ExecLog(self.fs)

    def timed(self, key: str, fn: Any) -> Any:
        client = self.fs.helper.exec_client
        c0, (a0, p0), t0 = own_cpu(), self.cluster.cpu_split(), time.perf_counter()
        s0, b0, m0 = client.sessions, client.stdin_bytes, self.log.mark()
        out = fn()
        wall = time.perf_counter() - t0
        a1, p1 = self.cluster.cpu_split()
        row = {
            "wall": wall,
            "cpu_client": own_cpu() - c0,
            "cpu_api": a1 - a0,
            "cpu_pod": p1 - p0,
            "sessions": client.sessions - s0,
            "stdin_bytes": client.stdin_bytes - b0,
            "calls": self.log.since(m0),
            "result": out,
        }
        self.rows.setdefault(key, []).append(row)
        extra = f", sent {out.bytes_sent:,} B" if hasattr(out, "bytes_sent") else ""
        print(
            f"  {key:14s} {wall:6.2f} s  {row['sessions']:3d} execs  "
            f"{row['stdin_bytes']:>13,} B on stdin{extra}",
            flush=True,
        )
        return out

    def run(self) -> None:
        args = self.args
        size = args.size_mib * MiB
        shards = self.work / "shards"
        make_shards(shards, size)
        self.model_bytes = sum(p.stat().st_size for p in shards.iterdir())
        sources = self.work / "model_repository"
        repo = ModelRepo(pvc=CLAIM, kubeconfig=self.cluster.kubeconfig, fs=self.fs, progress=False)
        self.load_before = os.getloadavg()[0]
        loads = []
        for rnd in range(args.rounds):
            name = f"bench_r{rnd}"
            folder = make_model(sources, name, shards)
            self.files = sum(1 for p in folder.rglob("*") if p.is_file())
            self.total_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            expected = tree_digest(folder)
            order = ["pvc", "kubectl"] if rnd % 2 == 0 else ["kubectl", "pvc"]
            print(f"round {rnd + 1}/{args.rounds} ({' then '.join(order)})", flush=True)
            for tool in order:
                loads.append(os.getloadavg()[0])
                if tool == "pvc":
                    first = self.timed("push", lambda n=name, f=folder: repo.push(n, source=f))
                    assert first.version == 1
                    self.check(self.cluster.host / name, expected)
                    again = self.timed("re-push", lambda n=name, f=folder: repo.push(n, source=f))
                    assert again.version == 2
                    self.check(self.cluster.host / name, expected, version=2)
                else:
                    dest = f"default/{self.pod}:/pvc/kubectl-cp/{name}"
                    self.fs.makedirs("/kubectl-cp", exist_ok=True)
                    self.timed("kubectl cp", lambda f=folder, d=dest: self.kubectl("cp", str(f), d))
                    assert tree_digest(self.cluster.host / "kubectl-cp" / name) == expected
        self.load_during = statistics.median(loads)

    @staticmethod
    def check(model_dir: Path, expected: dict[str, str], version: int = 1) -> None:
        got = tree_digest(model_dir / str(version))
        want = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith("1/")}
        assert got == want, f"version {version} on the claim differs from the source"

    # -- report ---------------------------------------------------------------------------------

    def table(self) -> str:
        a = self.args
        total = self.total_bytes
        push, kube = self.med("push", "wall"), self.med("kubectl cp", "wall")
        again = self.med("re-push", "wall")
        sent = statistics.median(r["result"].bytes_sent for r in self.rows["re-push"])
        wire = self.med("re-push", "stdin_bytes")
        lines = [
            "| measure | ModelRepo.push (verified) | kubectl cp "
            "| result: median of rounds [lowest-highest] | target |",
            "|---|---:|---:|---:|---|",
            f"| first push, {self.files} files, {total / MiB:,.0f} MiB: MiB/s | "
            f"{total / MiB / push:,.0f} | {total / MiB / kube:,.0f} | "
            f"{self.paired('kubectl cp', 'push')} | >= 1.0 |",
            f"| first push: seconds | {push:.2f} | {kube:.2f} | | |",
            f"| first push: CPU s client / API server / pod | {self.cpu('push')} | "
            f"{self.cpu('kubectl cp')} | | |",
            f"| first push: exec round trips | {self.med('push', 'sessions'):.0f} | | | |",
            f"| unchanged re-push: seconds (share of first push) | {again:.2f} | | "
            f"{self.paired('re-push', 'push', percent=True)} | <= 5% |",
            f"| unchanged re-push: bytes sent, PushResult.bytes_sent | {sent:,.0f} B | | "
            f"**{sent / MiB:.3f} MiB** | < 1 MiB |",
            f"| unchanged re-push: bytes on the exec streams' stdin | {wire:,.0f} B | | "
            f"**{wire / MiB:.3f} MiB** | < 1 MiB |",
            f"| unchanged re-push: exec round trips | {self.med('re-push', 'sessions'):.0f} "
            "| | | |",
            "",
            "Exec round trips of one unchanged re-push (median run), by script: "
            + self.breakdown("re-push")
            + ".",
            "",
            f"Conditions: date: {dt.date.today()}; machine: {os.cpu_count()} cores "
            f"({_cpu_name()}), shared by the API emulator, the pod's processes, the client and "
            f"other developers' jobs; load average (1 min) before: {self.load_before:.2f}, "
            f"during (median): {self.load_during:.2f}; rounds: {a.rounds} (order alternating, "
            f"a new model name per round, cold local hash cache for each first push); "
            f"streams: {a.streams}, chunk: {self.fs.chunk_size // MiB} MiB; kubectl: "
            f"{_kubectl_version()}; pod image: Debian busybox-static {_busybox_version()}; "
            f"Python {platform.python_version()}.",
        ]
        return "\n".join(lines)

    def paired(self, top: str, bottom: str, percent: bool = False) -> str:
        """``top`` / ``bottom`` time within each round: median [range] (in bold)."""
        ratios = sorted(
            t["wall"] / b["wall"] for t, b in zip(self.rows[top], self.rows[bottom], strict=True)
        )
        fmt = "{:.1%}" if percent else "{:.2f}"
        med, lo, hi = (fmt.format(x) for x in (statistics.median(ratios), ratios[0], ratios[-1]))
        return f"**{med}** [{lo}-{hi}]"

    def cpu(self, key: str) -> str:
        return " / ".join(f"{self.med(key, k):.1f}" for k in ("cpu_client", "cpu_api", "cpu_pod"))

    def breakdown(self, key: str) -> str:
        rows = sorted(self.rows[key], key=lambda r: r["wall"])
        calls = rows[len(rows) // 2]["calls"]
        count = collections.Counter(name for name, _ in calls)
        spent = collections.defaultdict(float)
        for name, seconds in calls:
            spent[name] += seconds
        parts = [f"{n} x{c} ({spent[n] * 1000:.0f} ms)" for n, c in count.most_common()]
        return f"{len(calls)} in all: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=fs_default("streams"))
    parser.add_argument(
        "--small-mib",
        type=int,
        default=fs_default("small_file_limit") // MiB,
        help="PVCFileSystem small_file_limit in MiB",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    write = (lambda table: write_docs(table, BEGIN, END, "Push")) if args.write_docs else None
    run_and_report(Bench(args), write)


if __name__ == "__main__":
    main()
