"""Request inputs for a Triton model: from its metadata to the exact bytes of one HTTP request.

Why: the load generator must not spend CPU per request on serialisation, so an input set is
encoded once, in Triton's binary tensor extension (a JSON header followed by the raw tensor
bytes, ``Inference-Header-Content-Length`` telling where the JSON ends), and the same bytes are
written for every request. Everything here is checked against the model's metadata first, so a
wrong shape or dtype fails before the run with a message that says what to pass instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrepo import errors

# Triton datatype -> numpy dtype of the values as a user holds them. BF16 is held as float32
# (numpy has no bfloat16) and sent truncated to its upper 16 bits; BYTES as an object array of
# bytes, sent as 4-byte little-endian length + bytes per element.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<f4"),
    "BYTES": np.dtype(object),
}
TRITON_DTYPES: tuple[str, ...] = tuple(NUMPY_DTYPES)

#: Random integers are drawn from [0, RANDOM_INT_HIGH): small non-negative values keep
#: index-like inputs (token ids, class ids) valid for most models.
RANDOM_INT_HIGH = 100
#: Length of the random strings generated for BYTES inputs.
RANDOM_BYTES_LENGTH = 16


class InputError(errors.InputError):
    """Inputs that do not match the model's metadata (shape, dtype, missing dims or names)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model declares it (shape without the batch dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelSignature:
    """What a request to the model must look like, from its metadata and config."""

    name: str
    version: str | None
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], config: Mapping[str, Any], version: str | None = None
    ) -> ModelSignature:
        """Build from ``GET /v2/models/<m>`` and ``GET /v2/models/<m>/config`` answers."""
        max_batch = int(config.get("max_batch_size", 0) or 0)
        optional = {
            str(i.get("name")): bool(i.get("optional", False)) for i in config.get("input", [])
        }

        def specs(items: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
            out = []
            for item in items:
                shape = [int(d) for d in item.get("shape", [])]
                if max_batch > 0 and shape:
                    shape = shape[1:]  # metadata puts the batch dimension (-1) first
                name = str(item["name"])
                out.append(
                    TensorSpec(name, str(item["datatype"]), tuple(shape), optional.get(name, False))
                )
            return tuple(out)

        return cls(
            name=str(metadata.get("name", "")),
            version=version,
            max_batch_size=max_batch,
            inputs=specs(metadata.get("inputs", [])),
            outputs=specs(metadata.get("outputs", [])),
        )

    @property
    def batched(self) -> bool:
        """Whether requests carry a leading batch dimension (``max_batch_size > 0``)."""
        return self.max_batch_size > 0


def _check_batch(sig: ModelSignature, batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} is not positive", hint="use batch_size >= 1")
    if not sig.batched and batch_size != 1:
        raise InputError(
            f"model {sig.name!r} has max_batch_size 0 (no batch dimension), "
            f"so batch_size={batch_size} cannot be sent",
            hint="use batch_size=1, or give the model a max_batch_size > 0 in its config",
        )
    if sig.batched and batch_size > sig.max_batch_size:
        raise InputError(
            f"batch_size={batch_size} exceeds model {sig.name!r}'s max_batch_size "
            f"{sig.max_batch_size}",
            hint=f"use batch_size <= {sig.max_batch_size}",
        )


def resolve_shapes(
    sig: ModelSignature, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete shape (without batch dimension) of every required input; -1 dims from ``shapes``."""
    shapes = dict(shapes or {})
    known = {s.name for s in sig.inputs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise InputError(
            f"shapes= names {unknown} that model {sig.name!r} does not have",
            hint=f"its inputs are {sorted(known)}",
        )
    out: dict[str, tuple[int, ...]] = {}
    for spec in sig.inputs:
        if spec.optional and spec.name not in shapes:
            continue
        given = shapes.get(spec.name)
        if given is None:
            if any(d < 0 for d in spec.shape):
                raise InputError(
                    f"input {spec.name!r} of model {sig.name!r} has a variable shape "
                    f"{list(spec.shape)}",
                    hint=f"pass shapes={{{spec.name!r}: [...]}} with {len(spec.shape)} "
                    "positive dims (without the batch dimension), or give inputs= "
                    f"(`modelrepo rps`: --shape {spec.name}:D1,D2,...)",
                )
            out[spec.name] = spec.shape
            continue
        given_t = tuple(int(d) for d in given)
        if len(given_t) != len(spec.shape) or any(
            g < 0 or (d >= 0 and g != d) for g, d in zip(given_t, spec.shape, strict=True)
        ):
            raise InputError(
                f"shapes[{spec.name!r}]={list(given_t)} does not fit model {sig.name!r}'s "
                f"shape {list(spec.shape)}",
                hint="give the same number of dims (without the batch dimension), "
                "equal where the model's dim is fixed and >= 0 where it is -1",
            )
        out[spec.name] = given_t
    return out


def generate_inputs(
    sig: ModelSignature,
    *,
    batch_size: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str = "random",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One input set of ``data`` ("random" or "zeros") with the batch dimension when batched."""
    if data not in ("random", "zeros"):
        raise InputError(f"data={data!r} is not supported", hint='use data="random" or "zeros"')
    _check_batch(sig, batch_size)
    dims = resolve_shapes(sig, shapes)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in sig.inputs:
        if spec.name not in dims:
            continue
        shape = ((batch_size,) if sig.batched else ()) + dims[spec.name]
        out[spec.name] = _make_array(spec.datatype, shape, data, rng)
    return out


def _make_array(datatype: str, shape: tuple[int, ...], data: str, rng: Any) -> np.ndarray:
    if datatype not in NUMPY_DTYPES:
        raise InputError(
            f"Triton datatype {datatype!r} is not supported",
            hint=f"supported: {', '.join(TRITON_DTYPES)}",
        )
    size = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        if data == "zeros":
            flat = [b""] * size
        else:
            letters = rng.integers(97, 123, size=(size, RANDOM_BYTES_LENGTH), dtype=np.uint8)
            flat = [row.tobytes() for row in letters]
        arr = np.empty(size, dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if data == "zeros":
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
    values = rng.random(size=shape, dtype=np.float64).astype(dtype)
    # BF16: hold exactly the values that will be sent, so outputs can be compared to inputs
    return bf16_round_trip(values) if datatype == "BF16" else values


def bf16_round_trip(values: np.ndarray) -> np.ndarray:
    """float32 values truncated to bfloat16 precision, as :func:`encode_tensor` sends them."""
    as32 = np.ascontiguousarray(values, dtype="<f4")
    return (as32.view("<u4") & np.uint32(0xFFFF0000)).view("<f4")


def check_inputs(
    sig: ModelSignature, inputs: Mapping[str, Any], *, batch_size: int = 1
) -> dict[str, np.ndarray]:
    """Validate user-given arrays against the model's metadata and return them ready to encode.

    Arrays may include the batch dimension or not (then they are repeated to the batch of the
    others, or ``batch_size`` times). Lists and scalars are converted to the model's dtype
    where no value changes (a fraction for an integer input, a number out of range or a string
    for a number is an error); a numpy array of another dtype is an error, not a silent cast.
    """
    _check_batch(sig, batch_size)
    specs = {s.name: s for s in sig.inputs}
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise InputError(
            f"inputs= names {unknown} that model {sig.name!r} does not have",
            hint=f"its inputs are {sorted(specs)}",
        )
    missing = sorted(n for n, s in specs.items() if not s.optional and n not in inputs)
    if missing:
        raise InputError(
            f"inputs= lacks required input(s) {missing} of model {sig.name!r}",
            hint="give every required input, or leave inputs=None to generate them",
        )
    arrays = {name: _as_array(specs[name], value) for name, value in inputs.items()}
    # arrays given with their batch dimension set the batch; the others are repeated to it
    given_batches = {
        arr.shape[0] for name, arr in arrays.items() if arr.ndim == len(specs[name].shape) + 1
    }
    if sig.batched and len(given_batches) > 1:
        raise InputError(
            f"inputs disagree on the batch size ({sorted(given_batches)})",
            hint="give every input the same first dimension",
        )
    batch = next(iter(given_batches)) if given_batches else batch_size
    if sig.batched and not 1 <= batch <= sig.max_batch_size:
        raise InputError(
            f"inputs have batch {batch}, outside 1..{sig.max_batch_size} "
            f"(model {sig.name!r}'s max_batch_size)",
            hint="send a smaller batch",
        )
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        spec = specs[name]
        rank = len(spec.shape)
        given_shape = list(arr.shape)
        if sig.batched and arr.ndim == rank:
            arr = np.repeat(arr[np.newaxis, ...], batch, axis=0)
        expected_rank = rank + (1 if sig.batched else 0)
        inner = arr.shape[1:] if sig.batched else arr.shape
        if arr.ndim != expected_rank or any(
            d >= 0 and g != d for g, d in zip(inner, spec.shape, strict=True)
        ):
            want = (["batch"] if sig.batched else []) + ["any" if d < 0 else d for d in spec.shape]
            raise InputError(
                f"input {name!r} has shape {given_shape} but model {sig.name!r} expects {want}",
                hint="reshape the array to the model's shape"
                + (" (the batch dimension may be left out)" if sig.batched else ""),
            )
        out[name] = arr
    return out


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    want = NUMPY_DTYPES.get(spec.datatype)
    if want is None:
        raise InputError(
            f"input {spec.name!r} has Triton datatype {spec.datatype!r}, which is not supported",
            hint=f"supported: {', '.join(TRITON_DTYPES)}",
        )
    if spec.datatype == "BYTES":
        return _as_bytes_array(spec, value)
    if isinstance(value, np.ndarray):
        ok = value.dtype == want or (spec.datatype == "BF16" and value.dtype.kind == "f")
        if not ok:
            raise InputError(
                f"input {spec.name!r} is a {value.dtype} array but model expects {spec.datatype}",
                hint=f"pass arr.astype(np.{want.name})"
                + (" (float values, sent as bfloat16)" if spec.datatype == "BF16" else ""),
            )
        return value
    # Lists and scalars are converted, but only where no value changes on the way: a string,
    # a fraction sent to an integer input or a number out of its range would measure the
    # model on data the caller did not give.
    given = np.asarray(value)
    fix = f"give {spec.datatype} values, or a numpy array of dtype {want.name}"
    if given.dtype.kind not in "biuf":
        what = {"U": "strings", "S": "bytes", "O": "mixed objects"}.get(given.dtype.kind)
        raise InputError(
            f"input {spec.name!r} is {spec.datatype} but the values given are "
            f"{what or given.dtype.name}",
            hint=fix,
        )
    with np.errstate(all="ignore"):
        arr = given.astype(want)
    # floats may round to the input's precision; integers must stay, and no float overflows
    changed = (
        given[arr != given] if want.kind in "biu" else given[np.isfinite(given) & np.isinf(arr)]
    )
    if changed.size:
        raise InputError(
            f"input {spec.name!r} is {spec.datatype}: the values {changed[:3].tolist()} "
            "would change when converted (fraction or out of range)",
            hint=fix,
        )
    return arr


def _as_bytes_array(spec: TensorSpec, value: Any) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
    if arr.dtype.kind not in "OSU":
        raise InputError(
            f"input {spec.name!r} is BYTES but got a {arr.dtype} array",
            hint="pass bytes or str values (an object, bytes_ or str_ array)",
        )
    if arr.dtype.kind == "O":
        for item in arr.reshape(-1):
            if not isinstance(item, (str, bytes, bytearray, memoryview)):
                raise InputError(
                    f"input {spec.name!r} is BYTES but holds a {type(item).__name__} ({item!r})",
                    hint="pass bytes or str values, e.g. [str(v) for v in values]",
                )
    return arr


def encode_tensor(datatype: str, array: np.ndarray) -> bytes:
    """Raw bytes of one tensor in Triton's binary tensor format (row-major, little-endian)."""
    if datatype == "BYTES":
        parts = []
        for item in np.asarray(array, dtype=object).reshape(-1):
            if isinstance(item, str):
                raw = item.encode("utf-8")
            elif isinstance(item, (bytes, bytearray, memoryview)):
                raw = bytes(item)
            else:  # bytes(3) would be three zero bytes, not the value
                raise TypeError(f"BYTES elements are str or bytes, not {type(item).__name__}")
            parts.append(len(raw).to_bytes(4, "little"))
            parts.append(raw)
        return b"".join(parts)
    if datatype == "BF16":
        as32 = np.ascontiguousarray(array, dtype="<f4")
        return (as32.view("<u4") >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def decode_tensor(datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Inverse of :func:`encode_tensor` (BF16 comes back as float32, BYTES as bytes objects)."""
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            n = int.from_bytes(raw[pos : pos + 4], "little")
            items.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(tuple(shape))
    if datatype == "BF16":
        halves = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
        return halves.view("<f4").reshape(tuple(shape))
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(tuple(shape))


def build_infer_body(sig: ModelSignature, arrays: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """Body of one binary infer request and the length of its JSON header."""
    specs = {s.name: s for s in sig.inputs}
    header_inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in arrays.items():
        datatype = specs[name].datatype
        raw = encode_tensor(datatype, arr)
        header_inputs.append(
            {
                "name": name,
                "shape": [int(d) for d in arr.shape],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    header = json.dumps(
        {"inputs": header_inputs, "parameters": {"binary_data_output": True}},
        separators=(",", ":"),
    ).encode()
    return header + b"".join(blobs), len(header)


def infer_path(model: str, version: str | None = None) -> str:
    """URL path of the infer endpoint for a model (and version)."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def build_http_request(host: str, path: str, body: bytes, header_length: int) -> bytes:
    """The full HTTP/1.1 keep-alive POST, built once and written as-is for every request."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {header_length}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    return head + body


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Outputs of an infer response body (binary or JSON) as numpy arrays, by name."""
    if header_length is None:
        header_length = len(body)
    header = json.loads(body[:header_length])
    pos = header_length
    outputs: dict[str, np.ndarray] = {}
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        shape = out.get("shape", [])
        if size is not None:
            outputs[out["name"]] = decode_tensor(out["datatype"], shape, body[pos : pos + size])
            pos += size
        else:
            values = out.get("data", [])
            if out["datatype"] == "BYTES":
                arr = np.empty(len(values), dtype=object)
                arr[:] = [v.encode() if isinstance(v, str) else v for v in values]
                outputs[out["name"]] = arr.reshape(shape)
            else:
                dtype = NUMPY_DTYPES.get(out["datatype"], np.dtype("<f8"))
                outputs[out["name"]] = np.asarray(values, dtype=dtype).reshape(shape)
    return outputs


Validator = Callable[[dict[str, np.ndarray]], bool]


def nonempty(outputs: dict[str, np.ndarray]) -> bool:
    """The ``validate="nonempty"`` check: at least one output, and none of them empty."""
    return bool(outputs) and all(a.size > 0 for a in outputs.values())
