"""``modelrepo rps``: the RPS engine from a terminal.

The lead's ``modelrepo/cli.py`` mounts it: ``add_rps_arguments(subparser)`` then
``run_rps_command(args)``. Progress goes to stderr, the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from modelrepo.errors import InputError, ModelRepoError
from modelrepo.triton.rps.engine import RPSProgress, measure_rps


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {kind.__name__} values"
            ) from exc

    return parse


def _shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition(":")
    try:
        if not sep or not name:
            raise ValueError
        return name, [int(d) for d in dims.split(",") if d.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: use NAME:D1,D2,... (dims without the batch dimension)"
        ) from exc


def add_rps_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rps`` command's arguments to ``parser``."""
    parser.add_argument("model", help="model name as Triton knows it")
    parser.add_argument(
        "--triton",
        "--url",
        dest="url",
        action="append",
        required=True,
        help="Triton HTTP endpoint host:port, repeatable (requests go round-robin); "
        "in `modelrepo rps`, also the name of the Triton Service (every pod is addressed)",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=_numbers(int),
        default=[1, 2, 4, 8, 16],
        help="closed loop: requests in flight, e.g. 1,4,16 (default 1,2,4,8,16)",
    )
    load.add_argument(
        "--request-rate",
        type=_numbers(float),
        default=None,
        help="open loop: requests per second, e.g. 100,500 (instead of --concurrency)",
    )
    parser.add_argument(
        "--distribution",
        choices=("constant", "poisson"),
        default="constant",
        help="open loop: request arrival times (default: constant)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded s per step")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="inferences per request (default: 1)"
    )
    parser.add_argument("--version", default=None, help="model version (default: Triton's)")
    parser.add_argument(
        "--shape",
        type=_shape,
        action="append",
        default=[],
        help="NAME:D1,D2 for an input with -1 dims (repeatable)",
    )
    parser.add_argument(
        "--data",
        choices=("random", "zeros"),
        default="random",
        help="input tensor contents (default: random)",
    )
    parser.add_argument(
        "--stability",
        type=float,
        default=0.1,
        help="windows must agree within this fraction (default 0.1)",
    )
    parser.add_argument(
        "--max-windows",
        type=int,
        default=10,
        help="give up waiting for stability after this many windows (default: 10)",
    )
    parser.add_argument(
        "--validate", action="store_true", help="check every response has non-empty outputs"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _print_progress(event: RPSProgress) -> None:
    if event.phase == "window":
        rps = "-" if math.isnan(event.window_rps) else f"{event.window_rps:,.0f}"
        print(
            f"[{event.step_index + 1}/{event.steps_total}] {event.load} window {event.window}: "
            f"{rps} req/s{'  stable' if event.stable else ''}",
            file=sys.stderr,
        )


def run_rps_command(args: argparse.Namespace) -> int:
    """Run the sweep ``args`` describe: 0 on success, 2 on bad input, 1 on a refused run,
    130 if interrupted."""
    try:
        report = measure_rps(
            args.url,
            args.model,
            concurrency=args.concurrency,
            request_rate=args.request_rate,
            duration=args.duration,
            warmup=args.warmup,
            batch_size=args.batch_size,
            shapes=dict(args.shape) or None,
            version=args.version,
            data=args.data,
            validate="nonempty" if args.validate else None,
            stability=args.stability,
            max_windows=args.max_windows,
            distribution=args.distribution,
            progress=None if args.quiet else _print_progress,
        )
    except ModelRepoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    if args.output:
        report.to_json(args.output)
    print(report.to_json() if args.json else repr(report))
    return 130 if report.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m modelrepo.triton.rps.cli``)."""
    parser = argparse.ArgumentParser(prog="modelrepo rps", description=__doc__)
    add_rps_arguments(parser)
    return run_rps_command(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
