"""KServe v2 tensor codec: raw and typed decoding, validation messages, raw encoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from proto.inference import open_inference_grpc_pb2 as pb
from serving.codec import decode_inputs, encode_outputs, encode_raw, join_bytes, split_bytes
from serving.errors import InvalidInput
from serving.tensors import TensorSpec


def _request(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    return req


def test_raw_fp32_is_zero_copy_view_of_the_request_bytes() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = _request(("x", "FP32", [2, 3]), raw=[x.tobytes()])
    out = decode_inputs(req)["x"]
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, x)
    assert out.base is not None  # a view over the bytes, not a copy


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("INT64", np.array([[-(2**62), 0, 2**62 + 7]], dtype=np.int64)),
        ("INT32", np.array([[-5, 0, 2**31 - 1]], dtype=np.int32)),
        ("FP16", np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)),
        ("FP64", np.array([[1e300, -1e-300, 0.0]], dtype=np.float64)),
        ("BOOL", np.array([[True, False, True]])),
        ("UINT8", np.array([[0, 128, 255]], dtype=np.uint8)),
    ],
)
def test_raw_decoding_per_datatype(datatype: str, values: np.ndarray) -> None:
    req = _request(("t", datatype, [1, 3]), raw=[values.astype(values.dtype.newbyteorder("<")).tobytes()])
    out = decode_inputs(req)["t"]
    assert out.dtype == values.dtype
    np.testing.assert_array_equal(out, values)


def test_raw_bool_non_canonical_bytes_become_true() -> None:
    out = decode_inputs(_request(("b", "BOOL", [3]), raw=[bytes([0, 1, 7])]))["b"]
    assert out.tolist() == [False, True, True]


def test_raw_bytes_length_prefixed() -> None:
    elems = [b"", b"abc", "h\u00e9".encode(), b"\x00\xff"]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elems)
    out = decode_inputs(_request(("s", "BYTES", [2, 2]), raw=[raw]))["s"]
    assert out.dtype == object and out.shape == (2, 2)
    assert out.reshape(-1).tolist() == elems
    assert join_bytes(elems) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack("<I", 3) + b"ab", "declares 3 bytes but only 2 remain"),
        (struct.pack("<I", 1) + b"a" + b"\x01", "end after 1 of 2 elements"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"zz", "2 trailing bytes"),
    ],
)
def test_raw_bytes_malformed(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput, match="input 's'") as exc:
        split_bytes("s", raw, 2)
    assert fragment in str(exc.value)


def test_typed_contents_fp32_int64_bool_bytes() -> None:
    req = _request(("f", "FP32", [2]), ("i", "INT64", [3]), ("b", "BOOL", [2]), ("s", "BYTES", [2]))
    req.inputs[0].contents.fp32_contents.extend([1.5, -2.0])
    req.inputs[1].contents.int64_contents.extend([-(2**40), 0, 2**40])
    req.inputs[2].contents.bool_contents.extend([True, False])
    req.inputs[3].contents.bytes_contents.extend([b"x", b""])
    out = decode_inputs(req)
    assert out["f"].dtype == np.float32 and out["f"].tolist() == [1.5, -2.0]
    assert out["i"].dtype == np.int64 and out["i"].tolist() == [-(2**40), 0, 2**40]
    assert out["b"].dtype == np.bool_ and out["b"].tolist() == [True, False]
    assert out["s"].dtype == object and out["s"].tolist() == [b"x", b""]


def test_typed_int8_range_checked() -> None:
    req = _request(("i", "INT8", [2]))
    req.inputs[0].contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidInput, match="input 'i'.*outside the INT8 range"):
        decode_inputs(req)
    req.inputs[0].contents.int_contents[1] = -128
    out = decode_inputs(req)["i"]
    assert out.dtype == np.int8 and out.tolist() == [1, -128]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: _request(("x", "FP32", [2, 3]), raw=[b"\0" * 20]), "holds 20 bytes but shape [2, 3] of FP32 needs 24"),
        (lambda: _request(("x", "FP33", [1]), raw=[b"\0" * 4]), "unknown datatype 'FP33'"),
        (lambda: _request(("x", "FP32", [-1, 2]), raw=[b""]), "negative dimension"),
        (lambda: _request(("x", "FP16", [1])), "FP16 has no typed contents field"),
    ],
)
def test_bad_tensor_messages_name_the_input(build, fragment: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        decode_inputs(build())
    assert "input 'x'" in str(exc.value) and fragment in str(exc.value)


def test_typed_count_and_field_mismatch() -> None:
    req = _request(("x", "FP32", [3]))
    req.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidInput, match=r"input 'x': fp32_contents holds 2 elements but shape \[3\] needs 3"):
        decode_inputs(req)
    req = _request(("x", "FP32", [1]))
    req.inputs[0].contents.int_contents.append(1)
    with pytest.raises(InvalidInput, match="input 'x': FP32 contents belong in fp32_contents, got int_contents"):
        decode_inputs(req)


def test_raw_and_typed_cannot_mix_and_counts_must_match() -> None:
    req = _request(("x", "FP32", [1]), ("y", "FP32", [1]), raw=[b"\0" * 4])
    with pytest.raises(InvalidInput, match="1 entries for 2 inputs"):
        decode_inputs(req)
    req = _request(("x", "FP32", [1]), raw=[b"\0" * 4])
    req.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="input 'x': typed contents given together with raw_input_contents"):
        decode_inputs(req)


def test_specs_check_names_datatypes_and_missing() -> None:
    specs = {"x": TensorSpec("x", "FP32", (-1, 2)), "y": TensorSpec("y", "INT64", (-1,))}
    ok = _request(("x", "FP32", [1, 2]), ("y", "INT64", [1]), raw=[b"\0" * 8, b"\0" * 8])
    assert set(decode_inputs(ok, specs)) == {"x", "y"}
    with pytest.raises(InvalidInput, match="unknown input 'z' of model 'm'"):
        decode_inputs(_request(("z", "FP32", [1]), raw=[b"\0" * 4]), specs, "m")
    with pytest.raises(InvalidInput, match="input 'y' of model 'm': datatype INT32 but the model expects INT64"):
        decode_inputs(_request(("y", "INT32", [1]), raw=[b"\0" * 4]), specs, "m")
    with pytest.raises(InvalidInput, match="missing input 'y' of model 'm'"):
        decode_inputs(_request(("x", "FP32", [1, 2]), raw=[b"\0" * 8]), specs, "m")
    dup = _request(("x", "FP32", [1, 2]), ("x", "FP32", [1, 2]), raw=[b"\0" * 8] * 2)
    with pytest.raises(InvalidInput, match="input 'x' appears more than once"):
        decode_inputs(dup, specs)


def test_encode_outputs_raw_only() -> None:
    resp = pb.ModelInferResponse()
    outs = {
        "p": np.array([[0.25], [0.5]], dtype=np.float32),
        "k": np.array([3, -4], dtype=np.int64),
        "s": np.array(["a", "bc"], dtype=object),
    }
    encode_outputs(resp, outs, ["p", "k", "s"])
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == [
        ("p", "FP32", [2, 1]), ("k", "INT64", [2]), ("s", "BYTES", [2]),
    ]
    assert not any(o.HasField("contents") for o in resp.outputs)
    assert resp.raw_output_contents[0] == outs["p"].tobytes()
    assert np.frombuffer(resp.raw_output_contents[1], "<i8").tolist() == [3, -4]
    assert split_bytes("s", resp.raw_output_contents[2], 2).tolist() == [b"a", b"bc"]


def test_encode_raw_casts_to_declared_datatype() -> None:
    assert encode_raw(np.array([1.0, 2.0]), "FP32") == np.array([1, 2], np.float32).tobytes()
    assert encode_raw(np.asfortranarray(np.arange(4, dtype=np.int32).reshape(2, 2)), "INT32") == np.arange(
        4, dtype=np.int32
    ).reshape(2, 2).tobytes()
