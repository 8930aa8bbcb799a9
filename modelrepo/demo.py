"""``modelrepo demo``: the whole flow on the embedded local stack, no cluster needed.

A Kubernetes API emulator with a PVC, real Triton replicas serving that claim, a sample
python-backend model pushed through the helper pod, loaded on every replica and measured.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

CLAIM = "triton-model-repo"
MODEL = "add_one"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(*, keep: bool = False, replicas: int = 2, duration: float = 2.0) -> int:
    """Run the demo; 0 when every step worked, 1 otherwise (the error is printed)."""
    from modelrepo.repo import ModelRepo
    from modelrepo.testing import LocalCluster
    from modelrepo.testing.models import write_add_one_model

    started = time.perf_counter()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="modelrepo-demo-") as work,
            LocalCluster() as cluster,
        ):
            _say(
                f"1. Local Kubernetes API emulator at {cluster.url},"
                f" kubeconfig {cluster.kubeconfig}"
            )
            claim_dir = cluster.create_pvc(CLAIM)
            _say(f"2. PVC {CLAIM} (host folder {claim_dir})")
            triton = cluster.deploy_triton(name="triton", claim=CLAIM, replicas=replicas)
            _say(f"3. {replicas} Triton replicas serving the claim: {', '.join(triton.urls)}")
            source = write_add_one_model(Path(work) / "model_repository", MODEL)
            repo = ModelRepo(
                pvc=CLAIM, namespace="default", kubeconfig=cluster.kubeconfig, triton="triton"
            )
            with repo:
                pushed = repo.push(MODEL, source=source, progress=False)
                _say(f"4. Pushed through the helper pod: {pushed!r}")
                loaded = repo.load(MODEL, strict=True)
                _say(f"5. Loaded on every replica:\n{loaded}")
                _say(f"   versions on the claim: {repo.list_versions(MODEL)}")
                report = repo.measure_rps(
                    MODEL, concurrency=[1, 4, 16], duration=duration, warmup=0.5
                )
                _say(f"6. Throughput and latency:\n{report}")
                best = report.best()
                if best is not None:
                    _say(f"   best: {best.rps:.0f} requests/s at concurrency {best.concurrency}")
                _say(f"Demo finished in {time.perf_counter() - started:.1f} s.")
                if keep:
                    _say(
                        "\nStill running. Try:\n"
                        f"  export KUBECONFIG={cluster.kubeconfig}\n"
                        "  kubectl get pods,pvc,svc\n"
                        f"  curl -s {triton.urls[0]}/v2/models/{MODEL}/ready"
                        " -w '%{http_code}\\n'\n"
                        f"  modelrepo status --kubeconfig {cluster.kubeconfig} --triton triton\n"
                        "Press Ctrl-C to stop."
                    )
                    try:
                        while True:
                            time.sleep(3600)
                    except KeyboardInterrupt:
                        _say("stopping")
    except Exception as exc:  # the demo's contract: a clear message and a non-zero exit
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
