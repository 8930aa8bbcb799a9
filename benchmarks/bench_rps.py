"""measure_rps side by side with perf_analyzer, against a real local Triton.

What it checks (issue 5's performance targets), at concurrency 1, 4 and 16, alternating the
two tools within each round and taking medians over rounds:

- throughput: measure_rps infer/s / perf_analyzer infer/s (target >= 1.0);
- client CPU per request: user+sys CPU of each tool's process over its whole run, divided by
  the requests Triton counted over that run (measure_rps runs in this process, so
  ``RUSAGE_SELF`` around the call; perf_analyzer is a child, its rusage comes from ``wait4``);
  target ratio <= 0.6 at c=4 and c=16, <= 1.0 at c=1;
- p50 latency ratio (target within 10%);
- measure_rps's reported rps against Triton's success count over the same windows (within 2%).

Run: ``python benchmarks/bench_rps.py [--rounds 5] [--duration 3] [--write-docs]``.
The server is LocalTriton serving the python-backend add-one model with dynamic batching; each
batch waits 2 ms off the CPU (``--device-ms``), as a GPU model holds a batch, so the server and
not the load generator sets the pace. Two more configurations have their own tables in
docs/benchmarks.md: ``--pin`` (Triton on core 0, the tools on the others, as when the load
generator runs on another host) and ``--device-ms 0`` (a model that does no work: what is left
to measure is mostly the clients themselves).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from get_perf_analyzer import VERSION as PA_VERSION
from get_perf_analyzer import get_perf_analyzer

from modelrepo.testing import LocalTriton
from modelrepo.testing.models import write_add_one_model
from modelrepo.triton.rps import measure_rps

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MODEL = "add_one"


def markers(device_ms: float, pin: bool) -> tuple[str, str]:
    """Where a run's table goes in docs/benchmarks.md: one block per configuration."""
    name = "rps" + ("" if device_ms else "-zero-work") + ("-pinned" if pin else "")
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def server_success(url: str) -> int:
    """Triton's own count of successful requests for the model."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/v2/models/{MODEL}/stats")
        stats = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ours(url: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    before_n, before_cpu = server_success(url), self_cpu()
    report = measure_rps(url, MODEL, concurrency=(concurrency,), duration=duration, warmup=warmup)
    cpu, served = self_cpu() - before_cpu, server_success(url) - before_n
    (step,) = report.steps
    return {
        "infer_per_sec": step.infer_per_sec,
        "p50_ms": step.p50_ms,
        "p99_ms": step.p99_ms,
        "avg_ms": step.avg_ms,
        "server_ms": step.server["avg_queue_ms"] + step.server["avg_compute_ms"],
        "cpu_us_per_req": cpu / served * 1e6,
        "served": served,
        "agreement": step.rps / step.server["rps"] - 1.0,
        "stable": step.stable,
        "errors": step.errors,
    }


def run_perf_analyzer(
    binary: Path, env: dict[str, str], url: str, concurrency: int, duration: float, out: Path
) -> dict[str, Any] | None:
    """One perf_analyzer run, retried when it cannot stabilise; None after 3 failures."""
    for _ in range(3):
        try:
            return _perf_analyzer_once(binary, env, url, concurrency, duration, out)
        except RuntimeError as exc:
            if "stable measurement" not in str(exc):
                raise
            print(f"perf_analyzer did not stabilise at c={concurrency}", flush=True)
    return None


def _perf_analyzer_once(
    binary: Path, env: dict[str, str], url: str, concurrency: int, duration: float, out: Path
) -> dict[str, Any]:
    window_ms = max(100, int(duration / 3 * 1000))  # same window length as measure_rps
    args = [
        str(binary),
        "-m",
        MODEL,
        "-u",
        url,
        "-i",
        "http",
        "--concurrency-range",
        str(concurrency),
        "-p",
        str(window_ms),
        "-f",
        str(out),
    ]
    before_n = server_success(url)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}):\n{output[-2000:]}")
    served = server_success(url) - before_n
    with open(out, newline="") as f:
        row = next(csv.DictReader(f))
    server_cols = (
        "Server Queue",
        "Server Compute Input",
        "Server Compute Infer",
        "Server Compute Output",
    )
    client_cols = ("Client Send", "Network+Server Send/Recv", "Client Recv")
    server_us = sum(float(row[k]) for k in server_cols)
    return {
        "infer_per_sec": float(row["Inferences/Second"]),
        "avg_ms": (server_us + sum(float(row[k]) for k in client_cols)) / 1000,
        "server_ms": server_us / 1000,
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "cpu_us_per_req": (usage.ru_utime + usage.ru_stime) / served * 1e6,
        "served": served,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(results: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        pairs = [r for r in results if r["concurrency"] == c]
        ours = [p["ours"] for p in pairs]
        pa = [p["perf_analyzer"] for p in pairs]
        rows.append(
            {
                "concurrency": c,
                "ours_infer_per_sec": median([o["infer_per_sec"] for o in ours]),
                "pa_infer_per_sec": median([o["infer_per_sec"] for o in pa]),
                "throughput_ratio": median(
                    [o["infer_per_sec"] / q["infer_per_sec"] for o, q in zip(ours, pa, strict=True)]
                ),
                "ours_cpu_us": median([o["cpu_us_per_req"] for o in ours]),
                "pa_cpu_us": median([o["cpu_us_per_req"] for o in pa]),
                "cpu_ratio": median(
                    [
                        o["cpu_us_per_req"] / q["cpu_us_per_req"]
                        for o, q in zip(ours, pa, strict=True)
                    ]
                ),
                "ours_p50_ms": median([o["p50_ms"] for o in ours]),
                "pa_p50_ms": median([o["p50_ms"] for o in pa]),
                "p50_ratio": median(
                    [o["p50_ms"] / q["p50_ms"] for o, q in zip(ours, pa, strict=True)]
                ),
                "ours_avg_ms": median([o["avg_ms"] for o in ours]),
                "pa_avg_ms": median([o["avg_ms"] for o in pa]),
                "ours_little_ms": median([c / o["infer_per_sec"] * 1000 for o in ours]),
                "pa_little_ms": median([c / o["infer_per_sec"] * 1000 for o in pa]),
                "ours_server_ms": median([o["server_ms"] for o in ours]),
                "pa_server_ms": median([o["server_ms"] for o in pa]),
                "ours_added_ms": median([o["avg_ms"] - o["server_ms"] for o in ours]),
                "pa_added_ms": median([o["avg_ms"] - o["server_ms"] for o in pa]),
                "agreement_max_pct": max((abs(o["agreement"]) for o in ours), default=float("nan"))
                * 100,
                "rounds": len(pairs),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], conditions: dict[str, Any]) -> str:
    cpu_target = {1: 1.0}
    lines = [
        "| concurrency | measure_rps infer/s | perf_analyzer infer/s | throughput ratio "
        "(>= 1.0) | CPU us/req ours / PA | CPU ratio (target) | p50 ms ours / PA | "
        "p50 ratio (0.9-1.1) | avg latency outside Triton, ms ours / PA | "
        "rps vs server, max dev. (<= 2%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = cpu_target.get(r["concurrency"], 0.6)
        lines.append(
            f"| {r['concurrency']} | {r['ours_infer_per_sec']:,.0f} | "
            f"{r['pa_infer_per_sec']:,.0f} | **{r['throughput_ratio']:.2f}** | "
            f"{r['ours_cpu_us']:.1f} / {r['pa_cpu_us']:.1f} | "
            f"**{r['cpu_ratio']:.2f}** (<= {target}) | "
            f"{r['ours_p50_ms']:.3f} / {r['pa_p50_ms']:.3f} | **{r['p50_ratio']:.2f}** | "
            f"{r['ours_added_ms']:.3f} / {r['pa_added_ms']:.3f} | "
            f"{r['agreement_max_pct']:.2f}% |"
        )
    lines += [
        "",
        "Latency cross-check (medians, ms): average latency against concurrency / throughput "
        "(Little's law; equal when a tool's latencies are consistent with its own throughput), "
        "and Triton's own queue + compute time during each tool's run.",
        "",
        "| concurrency | avg ours / PA | c / throughput ours / PA | Triton queue+compute "
        "ours / PA |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['ours_avg_ms']:.3f} / {r['pa_avg_ms']:.3f} | "
            f"{r['ours_little_ms']:.3f} / {r['pa_little_ms']:.3f} | "
            f"{r['ours_server_ms']:.3f} / {r['pa_server_ms']:.3f} |"
        )
    cond = "; ".join(f"{k}: {v}" for k, v in conditions.items())
    return "\n".join(lines) + f"\n\nConditions: {cond}.\n"


INTRO = (
    "`measure_rps` against perf_analyzer, from `python benchmarks/bench_rps.py --write-docs` "
    f"(`benchmarks/get_perf_analyzer.py` fetches perf_analyzer {PA_VERSION})."
)


def write_docs(table: str, device_ms: float, pin: bool) -> None:
    """Replace the table between the run's markers (the prose around it is kept)."""
    begin, end = markers(device_ms, pin)
    block = f"{begin}\n{table}{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    elif "## RPS\n" in text:  # a configuration without a table yet: its own subsection
        command = " ".join(["python benchmarks/bench_rps.py", *sys.argv[1:]])
        text = text.rstrip("\n") + f"\n\n### `{command}`\n\n{block}\n"
    else:
        text = text.rstrip("\n") + f"\n\n## RPS\n\n{INTRO}\n\n{block}\n"
    DOCS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--device-ms",
        type=float,
        default=2.0,
        help="each batch also waits this long off the CPU, as on a GPU (0: a zero-work model)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="Triton on core 0, the load generators on the others (as on separate hosts)",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json-out", default=None, help="write raw results here")
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so LocalTriton is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = [int(c) for c in args.concurrency.split(",")]
    binary, env = get_perf_analyzer()
    results: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        write_add_one_model(repo, MODEL, device_ms=args.device_ms)
        if args.pin:  # Triton (and its backend stubs) inherit core 0, the tools get the rest
            os.sched_setaffinity(0, {0})
        with LocalTriton(repository=repo, load_models=[MODEL]) as triton:
            if args.pin:
                os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
            url = triton.url
            measure_rps(url, MODEL, concurrency=(4,), duration=0.6, warmup=0.5)  # warm both
            for rnd in range(args.rounds):
                for c in levels:
                    pa_first = (rnd + levels.index(c)) % 2 == 1
                    out = Path(tmp) / f"pa-{rnd}-{c}.csv"
                    order = ["pa", "ours"] if pa_first else ["ours", "pa"]
                    pair: dict[str, Any] = {"round": rnd, "concurrency": c}
                    for tool in order:
                        if tool == "ours":
                            pair["ours"] = run_ours(url, c, args.duration, args.warmup)
                        else:
                            pair["perf_analyzer"] = run_perf_analyzer(
                                binary, env, url, c, args.duration, out
                            )
                    pair["load_average"] = os.getloadavg()[0]
                    o, p = pair["ours"], pair["perf_analyzer"]
                    if p is None:
                        print(f"round {rnd + 1} c={c}: skipped (perf_analyzer unstable)")
                        continue
                    results.append(pair)
                    print(
                        f"round {rnd + 1} c={c} (load {pair['load_average']:.1f}): "
                        f"ours {o['infer_per_sec']:,.0f}/s{'' if o['stable'] else ' unstable'} "
                        f"{o['cpu_us_per_req']:.1f}us/req p50 {o['p50_ms']:.3f}ms "
                        f"(vs server {o['agreement'] * 100:+.2f}%) | perf_analyzer "
                        f"{p['infer_per_sec']:,.0f}/s {p['cpu_us_per_req']:.1f}us/req "
                        f"p50 {p['p50_ms']:.3f}ms",
                        flush=True,
                    )
    rows = summarize(results, levels)
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        match = re.search(r"model name\s*:\s*(.*)", f.read())
        cpu_model = match.group(1) if match else platform.processor()
    conditions = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores ({cpu_model}), "
        + (
            "Triton on core 0, the tools on core 1"
            if args.pin
            else "shared by Triton and the tools"
        ),
        "load average (1 min) before": f"{load_before[0]:.2f}",
        "during (median of pairs)": f"{median([r['load_average'] for r in results]):.2f}",
        "rounds": args.rounds,
        "per step": f"{args.warmup:g} s warm-up + windows of {args.duration / 3:g} s until 3 "
        "agree within 10%",
        "model": "add-one, FP32[4], dynamic batching"
        + (f", {args.device_ms:g} ms off-CPU wait per batch" if args.device_ms else ""),
        "Triton": "2.51.0 (nvidia-pytriton 0.7.0), python backend, HTTP",
        "Python": platform.python_version(),
    }
    table = markdown(rows, conditions)
    print(table)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"rows": rows, "results": results, "conditions": conditions}, indent=2)
        )
    if args.write_docs:
        write_docs(table, args.device_ms, args.pin)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
