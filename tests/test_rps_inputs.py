"""Input generation and request encoding for measure_rps: exact bytes, no server needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct

import numpy as np
import pytest

from modelrepo.errors import ModelRepoError, TritonError
from modelrepo.triton.rps import (
    TRITON_DTYPES,
    InputError,
    ModelSignature,
    TensorSpec,
    check_inputs,
    encode_tensor,
    generate_inputs,
    measure_rps,
)
from modelrepo.triton.rps._http import parse_url
from modelrepo.triton.rps.inputs import (
    build_http_request,
    build_infer_body,
    decode_response,
    decode_tensor,
    infer_path,
    resolve_shapes,
)
from modelrepo.triton.rps.loadgen import JsonClient


def signature(*inputs: tuple[str, str, list[int]], max_batch_size: int = 8) -> ModelSignature:
    """A signature as Triton's metadata/config answers describe it (batch dim first)."""
    batch = [-1] if max_batch_size > 0 else []
    metadata = {
        "name": "m",
        "inputs": [{"name": n, "datatype": t, "shape": batch + list(s)} for n, t, s in inputs],
        "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [*batch, 1]}],
    }
    return ModelSignature.from_metadata(metadata, {"max_batch_size": max_batch_size})


# --- exact byte layouts, one per Triton dtype ---------------------------------------------------

EXPECTED_BYTES = {
    "BOOL": ([True, False, True], b"\x01\x00\x01"),
    "UINT8": ([1, 255], b"\x01\xff"),
    "UINT16": ([1, 0x0203], b"\x01\x00\x03\x02"),
    "UINT32": ([0x01020304], b"\x04\x03\x02\x01"),
    "UINT64": ([1], b"\x01" + b"\x00" * 7),
    "INT8": ([-1, 2], b"\xff\x02"),
    "INT16": ([-2], b"\xfe\xff"),
    "INT32": ([-1, 1], b"\xff\xff\xff\xff\x01\x00\x00\x00"),
    "INT64": ([-1], b"\xff" * 8),
    "FP16": ([1.0, -2.0], b"\x00\x3c\x00\xc0"),
    "FP32": ([1.0], struct.pack("<f", 1.0)),
    "FP64": ([0.5], struct.pack("<d", 0.5)),
    # bfloat16 = upper 16 bits of the float32 (truncation): 1.0 -> 0x3F80, pi -> 0x4049
    "BF16": ([1.0, 3.14159274], b"\x80\x3f\x49\x40"),
    "BYTES": (
        [b"ab", b"", "\u00e9"],
        b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00\xc3\xa9",
    ),
}


def test_every_triton_dtype_has_an_expected_layout() -> None:
    assert set(EXPECTED_BYTES) == set(TRITON_DTYPES)


@pytest.mark.parametrize("datatype", sorted(EXPECTED_BYTES))
def test_encode_tensor_exact_bytes(datatype: str) -> None:
    values, expected = EXPECTED_BYTES[datatype]
    sig = signature(("X", datatype, [len(values)]), max_batch_size=0)
    arr = check_inputs(sig, {"X": values})["X"]
    assert encode_tensor(datatype, arr) == expected


@pytest.mark.parametrize("datatype", sorted(EXPECTED_BYTES))
def test_generated_inputs_have_batch_dim_shape_and_size(datatype: str) -> None:
    sig = signature(("X", datatype, [2, 3]))
    arr = generate_inputs(sig, batch_size=4, seed=1)["X"]
    assert arr.shape == (4, 2, 3)
    raw = encode_tensor(datatype, arr)
    if datatype == "BYTES":
        assert len(raw) == 4 * 6 * (4 + 16)  # length prefix + 16 random letters each
    else:
        width = {"BOOL": 1, "BF16": 2}.get(datatype) or np.dtype(arr.dtype).itemsize
        assert len(raw) == 4 * 6 * width
    back = decode_tensor(datatype, arr.shape, raw)
    assert np.array_equal(back, arr)  # BF16 too: generated values are bfloat16-exact


def test_generated_inputs_zeros_and_seed() -> None:
    sig = signature(("F", "FP32", [3]), ("S", "BYTES", [2]), ("I", "INT32", [2]))
    zeros = generate_inputs(sig, batch_size=2, data="zeros")
    assert not zeros["F"].any() and not zeros["I"].any()
    assert list(zeros["S"].reshape(-1)) == [b""] * 4
    a = generate_inputs(sig, seed=3)
    b = generate_inputs(sig, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["I"].dtype == np.int32 and a["I"].min() >= 0
    with pytest.raises(InputError, match="data="):
        generate_inputs(sig, data="ones")


def test_no_batch_dimension_when_max_batch_size_is_zero() -> None:
    sig = signature(("X", "FP32", [4]), max_batch_size=0)
    assert generate_inputs(sig)["X"].shape == (4,)
    with pytest.raises(InputError, match="max_batch_size 0"):
        generate_inputs(sig, batch_size=2)


def test_batch_size_above_max_batch_size_is_refused() -> None:
    sig = signature(("X", "FP32", [4]), max_batch_size=8)
    with pytest.raises(InputError, match="max_batch_size 8"):
        generate_inputs(sig, batch_size=9)


def test_dynamic_dims_need_shapes_and_the_error_names_the_input() -> None:
    sig = signature(("TOKENS", "INT64", [-1]), ("MASK", "BOOL", [2, -1]))
    with pytest.raises(InputError, match="'TOKENS'") as info:
        generate_inputs(sig)
    assert "shapes=" in str(info.value) and "--shape" in str(info.value)  # API and CLI forms
    arrays = generate_inputs(sig, batch_size=2, shapes={"TOKENS": [7], "MASK": [2, 5]})
    assert arrays["TOKENS"].shape == (2, 7) and arrays["MASK"].shape == (2, 2, 5)
    with pytest.raises(InputError, match="does not fit"):
        resolve_shapes(sig, {"TOKENS": [7], "MASK": [3, 5]})  # fixed dim 2 given as 3
    with pytest.raises(InputError, match="does not have"):
        resolve_shapes(sig, {"NOPE": [1]})


def test_optional_inputs_are_left_out_unless_shaped() -> None:
    metadata = {
        "name": "m",
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [2]},
            {"name": "B", "datatype": "FP32", "shape": [-1]},
        ],
        "outputs": [],
    }
    config = {"max_batch_size": 0, "input": [{"name": "B", "optional": True}]}
    sig = ModelSignature.from_metadata(metadata, config)
    assert set(generate_inputs(sig)) == {"A"}
    assert generate_inputs(sig, shapes={"B": [3]})["B"].shape == (3,)


def test_check_inputs_shape_dtype_and_names() -> None:
    sig = signature(("X", "FP32", [4]), ("Y", "INT32", [-1]))
    good = check_inputs(sig, {"X": np.ones(4, np.float32), "Y": [1, 2, 3]}, batch_size=3)
    assert good["X"].shape == (3, 4)  # repeated to the batch size
    assert good["Y"].shape == (3, 3) and good["Y"].dtype == np.int32  # list converted
    mixed = check_inputs(sig, {"X": np.ones(4, np.float32), "Y": [[1], [2]]}, batch_size=5)
    assert mixed["X"].shape == (2, 4)  # the batch given with Y wins over batch_size
    with pytest.raises(InputError, match="float64") as info:
        check_inputs(sig, {"X": np.ones(4), "Y": [1]})
    assert "astype(np.float32)" in str(info.value)
    with pytest.raises(InputError, match=r"expects \['batch', 4\]"):
        check_inputs(sig, {"X": np.ones(5, np.float32), "Y": [1]})
    with pytest.raises(InputError, match="lacks required"):
        check_inputs(sig, {"X": np.ones(4, np.float32)})
    with pytest.raises(InputError, match="does not have"):
        check_inputs(sig, {"X": np.ones(4, np.float32), "Y": [1], "Z": [1]})
    with pytest.raises(InputError, match="disagree"):
        check_inputs(sig, {"X": np.ones((2, 4), np.float32), "Y": [[1], [2], [3]]})
    with pytest.raises(InputError, match="BYTES"):
        check_inputs(signature(("S", "BYTES", [1])), {"S": np.ones(1, np.float32)})
    # errors are ModelRepoErrors and ValueErrors, as callers may catch either
    assert issubclass(InputError, ModelRepoError) and issubclass(InputError, ValueError)


@pytest.mark.parametrize(
    ("datatype", "values", "match"),
    [
        ("FP32", ["a", "b"], "values given are strings"),
        ("FP32", [1.0, None], "mixed objects"),
        ("INT32", [1.5, 2], r"\[1\.5\] would change"),
        ("UINT8", [255, 300], r"\[300\] would change"),
        ("UINT8", [-1], r"\[-1\] would change"),
        ("BOOL", [0, 2], r"\[2\] would change"),
        ("FP16", [1.0, 1e6], "would change"),
        ("BYTES", [b"ok", 7], "BYTES but holds a int"),
    ],
)
def test_list_values_that_would_change_are_refused(datatype: str, values: list, match: str) -> None:
    sig = signature(("V", datatype, [2]), max_batch_size=0)
    with pytest.raises(InputError, match=match) as info:
        check_inputs(sig, {"V": values})
    assert "'V'" in str(info.value) and info.value.hint


def test_list_values_that_convert_exactly_are_accepted() -> None:
    sig = signature(("I", "INT32", [2]), ("H", "FP16", [2]), ("S", "BYTES", [2]))
    arrays = check_inputs(sig, {"I": [1.0, -2], "H": [0.5, 1e-3], "S": ["a", b"b"]})
    assert arrays["I"].dtype == np.int32 and arrays["I"].tolist() == [[1, -2]]
    assert arrays["H"].dtype == np.float16  # rounding to the dtype's precision is expected
    assert encode_tensor("BYTES", arrays["S"]) == b"\x01\x00\x00\x00a\x01\x00\x00\x00b"
    # an int is not a one-element string: bytes(7) would be seven zero bytes
    with pytest.raises(TypeError, match="str or bytes"):
        encode_tensor("BYTES", np.array([7], dtype=object))


def test_bf16_accepts_float_arrays() -> None:
    sig = signature(("H", "BF16", [2]), max_batch_size=0)
    arr = check_inputs(sig, {"H": np.array([1.0, -2.0], np.float64)})["H"]
    assert encode_tensor("BF16", arr) == b"\x80\x3f\x00\xc0"


def test_infer_body_and_http_request_layout() -> None:
    sig = signature(("X", "FP32", [2]), ("S", "BYTES", [1]))
    arrays = check_inputs(sig, {"X": np.array([[1, 2]], np.float32), "S": [[b"hi"]]})
    body, header_length = build_infer_body(sig, arrays)
    header = json.loads(body[:header_length])
    assert header["inputs"] == [
        {"name": "X", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "S", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
    ]
    assert header["parameters"] == {"binary_data_output": True}
    assert body[header_length:] == struct.pack("<2f", 1, 2) + b"\x02\x00\x00\x00hi"
    request = build_http_request("h:1", infer_path("m", "3"), body, header_length)
    head, _, rest = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/m/versions/3/infer HTTP/1.1"
    assert f"Inference-Header-Content-Length: {header_length}" in lines
    assert f"Content-Length: {len(body)}" in lines and "Host: h:1" in lines
    assert rest == body


def test_decode_response_binary_and_json_outputs() -> None:
    header = {
        "outputs": [
            {"name": "A", "datatype": "INT16", "shape": [2], "parameters": {"binary_data_size": 4}},
            {"name": "B", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]},
        ]
    }
    head = json.dumps(header).encode()
    out = decode_response(head + b"\x01\x00\xff\xff", len(head))
    assert out["A"].tolist() == [1, -1]
    assert out["B"].tolist() == [[1.5, 2.5]]


def test_parse_url() -> None:
    assert parse_url("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert parse_url("http://triton.ns.svc:9000/") == ("triton.ns.svc", 9000)
    assert parse_url("localhost") == ("localhost", 8000)
    with pytest.raises(TritonError, match="plain HTTP"):
        parse_url("https://x:1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concurrency": [0]}, "concurrency=0"),
        ({"concurrency": []}, "empty"),
        ({"request_rate": [-5.0]}, "request_rate"),
        ({"duration": 0}, "duration"),
        ({"distribution": "uniform"}, "distribution"),
        ({"validate": "strict"}, "validate"),
        ({"concurrency": [2], "request_rate": [100.0]}, "both given"),
    ],
)
def test_bad_arguments_fail_before_contacting_triton(kwargs: dict, match: str) -> None:
    # port 9 (discard) is closed here: reaching the network would raise TritonError instead
    with pytest.raises(InputError, match=match):
        measure_rps("127.0.0.1:9", "m", **kwargs)


def test_unreachable_server_is_a_triton_error() -> None:
    with pytest.raises(TritonError, match=r"cannot reach Triton at 127\.0\.0\.1:9"):
        measure_rps("127.0.0.1:9", "m", duration=1)


def test_tensor_spec_is_public() -> None:
    assert TensorSpec("X", "FP32", (4,)).shape == (4,)


def test_a_stats_answer_cut_by_a_timeout_is_not_read_as_the_next_one() -> None:
    """The statistics client's connection is dropped when a request times out mid-answer."""

    async def scenario() -> list[object]:
        served = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                served += 1
                number = served
                if number == 1:
                    await asyncio.sleep(0.5)  # answers after the client gave up
                body = json.dumps({"answer_to": number}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = JsonClient(server.sockets[0].getsockname()[:2], timeout_s=0.2)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await client.get("/v2/models/m/stats")
            await asyncio.sleep(0.5)  # the late answer has arrived by now
            return [await client.get("/v2/models/m/stats") for _ in range(2)]
        finally:
            client.close()
            server.close()

    assert asyncio.run(scenario()) == [{"answer_to": 2}, {"answer_to": 3}]
