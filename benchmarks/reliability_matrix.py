"""Run the reliability matrix on a LocalCluster and (optionally) write docs/reliability.md.

    python benchmarks/reliability_matrix.py                 # run, print the tables
    python benchmarks/reliability_matrix.py --write-docs    # run, write docs/reliability.md
    python benchmarks/reliability_matrix.py --sections hostile,concurrency   # a subset

The implementation is ``modelrepo.testing.faults_matrix``, the same one CI runs in
``tests/test_reliability.py``; the doc is only ever written from a full run in which every
row held. Needs root (LocalCluster sandboxes) and the Triton wheel (``nvidia-pytriton``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from modelrepo.testing.faults_matrix import SECTIONS, SEED, render_markdown, run_matrix

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOC}")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of: %(default)s"
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.write_docs and sections != list(SECTIONS):
        parser.error("--write-docs needs the full matrix (leave --sections out)")
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        os.environ["MODELREPO_CACHE_DIR"] = str(Path(tmp) / "hash-cache")
        report = run_matrix(
            Path(tmp),
            seed=args.seed,
            sections=sections,
            progress=lambda name, s: print(f"# {name}: {s:.1f} s", file=sys.stderr),
        )
    text = render_markdown(report)
    print(text)
    for row in report.faults:
        for problem in row.problems:
            print(f"FAILED {row.kind}: {problem}", file=sys.stderr)
    for check in report.checks:
        for problem in check.problems:
            print(f"FAILED {check.section} / {check.name}: {problem}", file=sys.stderr)
    if not report.holds:
        print("Some rows do not hold; docs/reliability.md was not written.", file=sys.stderr)
        return 1
    if args.write_docs:
        DOC.write_text(text)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
