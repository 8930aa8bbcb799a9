"""The local stack: a real Triton server and a Kubernetes emulator, for tests and demos.

Library code never imports this package; ``LocalCluster`` is loaded on first use so that
importing ``LocalTriton`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelrepo.testing.triton import LocalTriton

__all__ = ["LocalCluster", "LocalTriton"]

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.testing.cluster import LocalCluster


def __getattr__(name: str) -> Any:
    if name == "LocalCluster":
        from modelrepo.testing.cluster import LocalCluster

        return LocalCluster
    raise AttributeError(f"module 'modelrepo.testing' has no attribute {name!r}")
