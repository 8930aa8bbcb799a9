"""modelrepo: publish models into a Triton model repository on a Kubernetes PVC.

Nothing heavy happens at import time; the public names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ModelRepo": "modelrepo.repo",
    "PushResult": "modelrepo.repo",
    "VersionInfo": "modelrepo.repo",
    "PVCFileSystem": "modelrepo.fs",
    "measure_rps": "modelrepo.triton.rps",
    "RPSReport": "modelrepo.triton.rps",
}

__all__ = [
    "ModelRepo",
    "PVCFileSystem",
    "PushResult",
    "RPSReport",
    "VersionInfo",
    "measure_rps",
]

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.fs import PVCFileSystem
    from modelrepo.repo import ModelRepo, PushResult, VersionInfo
    from modelrepo.triton.rps import RPSReport, measure_rps


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelrepo' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
