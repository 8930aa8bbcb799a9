"""The local stack: a real Triton server, a Kubernetes emulator and an S3 endpoint.

For tests, demos and notebooks. Library code never imports this package; ``LocalCluster``
and ``LocalS3`` are loaded on first use so that importing ``LocalTriton`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelrepo.testing.triton import LocalTriton

__all__ = ["LocalCluster", "LocalS3", "LocalTriton"]

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.testing.cluster import LocalCluster
    from modelrepo.testing.s3 import LocalS3


def __getattr__(name: str) -> Any:
    if name == "LocalCluster":
        from modelrepo.testing.cluster import LocalCluster

        return LocalCluster
    if name == "LocalS3":
        from modelrepo.testing.s3 import LocalS3

        return LocalS3
    raise AttributeError(f"module 'modelrepo.testing' has no attribute {name!r}")
