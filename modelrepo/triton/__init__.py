"""Talk to Triton replicas over HTTP: repository index, load / unload, status, RPS.

``measure_rps`` and ``RPSReport`` are loaded on first use (their module pulls in more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelrepo.triton.control import (
    LoadResult,
    ReplicaOutcome,
    ReplicaState,
    StatusRow,
    StatusTable,
    TritonReplicas,
)

__all__ = [
    "LoadResult",
    "RPSReport",
    "ReplicaOutcome",
    "ReplicaState",
    "StatusRow",
    "StatusTable",
    "TritonReplicas",
    "measure_rps",
]

_LAZY = {"measure_rps": "modelrepo.triton.rps", "RPSReport": "modelrepo.triton.rps"}

if TYPE_CHECKING:  # pragma: no cover
    from modelrepo.triton.rps import RPSReport, measure_rps


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelrepo.triton' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
