"""Small python-backend models to put in a model repository: for tests, demos and benchmarks.

They run on the python backend bundled with the local Triton (no GPU, no other backend), so
each is a ``config.pbtxt`` plus a ``<version>/model.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BROKEN_MODEL_MESSAGE",
    "TensorSpec",
    "write_add_one_model",
    "write_broken_model",
    "write_identity_model",
]

#: Text the broken model raises in ``initialize``: tests look for it in Triton's load error.
BROKEN_MODEL_MESSAGE = "modelrepo test model refuses to load on purpose"

_TRITON_DTYPES = frozenset(
    {
        *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
        *("FP16", "FP32", "FP64", "BF16", "STRING"),
    }
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input (or output): name, Triton data type (``TYPE_FP32`` or ``FP32``), dims."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def type_name(self) -> str:
        """The config.pbtxt spelling, ``TYPE_...``; ``BYTES`` is Triton's ``TYPE_STRING``."""
        short = self.dtype.upper().removeprefix("TYPE_")
        short = "STRING" if short == "BYTES" else short
        if short not in _TRITON_DTYPES:
            raise ValueError(
                f"Unknown Triton data type {self.dtype!r} for tensor {self.name!r}; "
                f"use one of {', '.join(sorted('TYPE_' + t for t in _TRITON_DTYPES))}."
            )
        return "TYPE_" + short


_ADD_ONE_PY = '''\
"""OUTPUT0 = INPUT0 + 1 for the whole (dynamically batched) request list at once."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

DEVICE_SECONDS = {device_seconds!r}  # time an accelerator would take per batch


class TritonPythonModel:
    def execute(self, requests):
        if DEVICE_SECONDS:
            time.sleep(DEVICE_SECONDS)
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        if len(arrays) == 1:
            outputs = [arrays[0] + arrays[0].dtype.type(1)]
        else:
            # one vectorised add over the batch, then split back per request
            joined = np.concatenate(arrays)
            joined += joined.dtype.type(1)
            outputs = np.split(joined, np.cumsum([a.shape[0] for a in arrays])[:-1])
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out)])
            for out in outputs
        ]
'''

_IDENTITY_PY = '''\
"""Each OUTPUT<i> is INPUT<i>, for any data type (BF16 goes through DLPack)."""

import triton_python_backend_utils as pb_utils

INPUTS = {inputs!r}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for i, (name, dtype) in enumerate(INPUTS):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                out = "OUTPUT%d" % i
                if dtype == "TYPE_BF16":  # numpy has no bfloat16
                    outputs.append(pb_utils.Tensor.from_dlpack(out, tensor.to_dlpack()))
                else:
                    outputs.append(pb_utils.Tensor(out, tensor.as_numpy()))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''

_BROKEN_PY = f'''\
"""A model whose load Triton refuses: initialize raises."""


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError({BROKEN_MODEL_MESSAGE!r})

    def execute(self, requests):
        return []
'''


def _tensor_block(kind: str, specs: Iterable[TensorSpec]) -> str:
    items = [
        f'  {{\n    name: "{s.name}"\n    data_type: {s.type_name}\n'
        f"    dims: [ {', '.join(str(d) for d in s.dims)} ]\n  }}"
        for s in specs
    ]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _write_model(
    repo_dir: str | Path,
    name: str,
    *,
    version: int,
    model_py: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    dynamic_batching: bool,
) -> Path:
    """Write ``<repo_dir>/<name>/config.pbtxt`` and ``<version>/model.py``; return the folder."""
    folder = Path(repo_dir) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    config = (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + "instance_group [ { kind: KIND_CPU } ]\n"
        + ("dynamic_batching { }\n" if dynamic_batching and max_batch_size > 0 else "")
    )
    (folder / "config.pbtxt").write_text(config)
    (folder / str(version) / "model.py").write_text(model_py)
    return folder


def write_add_one_model(
    repo_dir: str | Path,
    name: str = "add_one",
    *,
    version: int = 1,
    dims: Sequence[int] = (4,),
    dtype: str = "TYPE_FP32",
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    device_ms: float = 0.0,
) -> Path:
    """A model answering ``OUTPUT0 = INPUT0 + 1``; cheap per request, made for RPS runs.

    ``device_ms``: each batch also waits this long, without using the CPU, as a model whose
    work runs on a GPU does; dynamic batching then shows in the throughput.
    """
    dims = tuple(dims)
    return _write_model(
        repo_dir,
        name,
        version=version,
        model_py=_ADD_ONE_PY.format(device_seconds=device_ms / 1000),
        inputs=[TensorSpec("INPUT0", dtype, dims)],
        outputs=[TensorSpec("OUTPUT0", dtype, dims)],
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
    )


def write_identity_model(
    repo_dir: str | Path,
    name: str = "identity",
    *,
    inputs: Sequence[TensorSpec | tuple[str, str, Sequence[int]]] = (
        TensorSpec("INPUT0", "TYPE_FP32", (4,)),
    ),
    version: int = 1,
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
) -> Path:
    """A model returning each input unchanged as ``OUTPUT<i>`` (same type and dims).

    Any Triton data type works, ``TYPE_STRING`` (BYTES), ``TYPE_FP16`` and ``TYPE_BF16``
    included: it is how input generators prove the bytes they send are the bytes Triton sees.
    """
    specs = [
        s if isinstance(s, TensorSpec) else TensorSpec(s[0], s[1], tuple(s[2])) for s in inputs
    ]
    if not specs:
        raise ValueError("write_identity_model needs at least one input; pass inputs=[...].")
    outputs = [TensorSpec(f"OUTPUT{i}", s.dtype, s.dims) for i, s in enumerate(specs)]
    model_py = _IDENTITY_PY.format(inputs=[(s.name, s.type_name) for s in specs])
    return _write_model(
        repo_dir,
        name,
        version=version,
        model_py=model_py,
        inputs=specs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic_batching,
    )


def write_broken_model(repo_dir: str | Path, name: str = "broken", *, version: int = 1) -> Path:
    """A model Triton refuses to load: ``initialize`` raises :data:`BROKEN_MODEL_MESSAGE`."""
    return _write_model(
        repo_dir,
        name,
        version=version,
        model_py=_BROKEN_PY,
        inputs=[TensorSpec("INPUT0", "TYPE_FP32", (1,))],
        outputs=[TensorSpec("OUTPUT0", "TYPE_FP32", (1,))],
        max_batch_size=0,
        dynamic_batching=False,
    )
