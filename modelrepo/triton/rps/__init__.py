"""Measure the requests per second and latency a Triton model sustains (``measure_rps``).

The engine needs only Triton URLs (``host:port``), so it works with or without a ModelRepo:
``measure_rps("127.0.0.1:8000", "add_one", concurrency=(1, 4, 16), duration=5)``.
"""

from __future__ import annotations

from modelrepo.triton.rps.engine import DEFAULT_CONCURRENCY, RPSProgress, measure_rps
from modelrepo.triton.rps.inputs import (
    TRITON_DTYPES,
    InputError,
    ModelSignature,
    TensorSpec,
    check_inputs,
    encode_tensor,
    generate_inputs,
)
from modelrepo.triton.rps.report import RPSReport, RPSStep

__all__ = [
    "DEFAULT_CONCURRENCY",
    "TRITON_DTYPES",
    "InputError",
    "ModelSignature",
    "RPSProgress",
    "RPSReport",
    "RPSStep",
    "TensorSpec",
    "check_inputs",
    "encode_tensor",
    "generate_inputs",
    "measure_rps",
]
