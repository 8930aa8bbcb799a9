"""Fetch perf_analyzer, Triton's reference load generator, for the RPS benchmark.

Why this way: the current ``perf-analyzer`` wheel needs glibc 2.38, so we take the binary that
the ``tritonclient==2.41.0`` wheel still carries (``tritonclient-2.41.0.data/data/bin/``) out
of the downloaded wheel instead of installing that old client over the new one. It needs
``libb64.so.0d`` (Debian package ``libb64-0d``) and ``libcudart.so.12``, which we link from the
CUDA runtime bundled with ``nvidia-pytriton`` into a private lib folder.

Usage: ``python benchmarks/get_perf_analyzer.py`` prints the binary path and the
``LD_LIBRARY_PATH`` it needs; ``bench_rps.py`` imports :func:`get_perf_analyzer`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "2.41.0"
WHEEL_MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"


def default_cache_dir() -> Path:
    """Where the binary is kept between runs (``$MODELREPO_CACHE`` or ``~/.cache/modelrepo``)."""
    base = os.environ.get("MODELREPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelrepo"
    )
    return Path(base) / f"perf_analyzer-{VERSION}"


def _pytriton_libs() -> Path:
    import pytriton  # the `local` extra; ships Triton and its CUDA runtime

    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise SystemExit(f"{libs} not found: install the local extra (pip install -e '.[local]')")
    return libs


def get_perf_analyzer(cache_dir: Path | None = None) -> tuple[Path, dict[str, str]]:
    """Return (perf_analyzer binary, environment to run it with), downloading it once."""
    cache = cache_dir or default_cache_dir()
    binary = cache / "bin" / "perf_analyzer"
    libdir = cache / "lib"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        wheel_dir = cache / "wheel"
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", f"tritonclient=={VERSION}"),
                *("--no-deps", "--only-binary=:all:", "--platform", "manylinux1_x86_64"),
                *("-d", str(wheel_dir)),
            ],
            check=True,
        )
        wheel = next(wheel_dir.glob(f"tritonclient-{VERSION}-*.whl"))
        binary.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src:
            tmp = binary.with_suffix(".tmp")
            tmp.write_bytes(src.read())
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            tmp.rename(binary)
    libdir.mkdir(parents=True, exist_ok=True)
    link = libdir / "libcudart.so.12"
    if not link.exists():
        cudart = sorted(_pytriton_libs().glob("libcudart-*.so.12*"))
        if not cudart:
            raise SystemExit(
                "no libcudart-*.so.12* in nvidia_pytriton.libs: reinstall nvidia-pytriton"
            )
        link.symlink_to(cudart[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p
    )
    check = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    if check.returncode != 0 and "libb64" in (check.stderr or ""):
        raise SystemExit("perf_analyzer needs libb64.so.0d: apt-get install libb64-0d")
    return binary, env


if __name__ == "__main__":
    path, environment = get_perf_analyzer()
    print(f"perf_analyzer: {path}")
    print(f"LD_LIBRARY_PATH={environment['LD_LIBRARY_PATH']}")
