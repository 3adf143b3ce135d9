"""KServe v2 conformance: tritonclient[grpc] against a real rtml server on a loopback port.

The server is the real thing -- ModelManager loading ONNX models that the tests write into a
Triton-layout repository, the grpc.aio server, real sockets -- and every expected result is
computed by an in-process ONNX Runtime session on the same model.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as tpb  # noqa: E402  (Triton's own messages)
from tritonclient.grpc import service_pb2_grpc as tpb_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from proto.inference import open_inference_grpc_pb2 as pb  # noqa: E402
from proto.inference import open_inference_grpc_pb2_grpc as pb_grpc  # noqa: E402
from serving.manager import ModelManager  # noqa: E402
from serving.onnx_session import CPU, OnnxModel, load_onnx  # noqa: E402
from serving.server import BackgroundServer, ServerOptions  # noqa: E402
from tests.serving.models import IR_VERSION, OPSET, fixed_shape_model, mlp_model, two_input_model, write_model  # noqa: E402

MAX_MESSAGE = 2 * 1024 * 1024


def text_flag_model() -> onnx.ModelProto:
    """BYTES and BOOL: ``text [N, 2] -> text_out`` (Identity) and ``flag [N, 1] -> not_flag`` (Not)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"]), helper.make_node("Not", ["flag"], ["not_flag"])],
        "text_flag",
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 2]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("text_out", TensorProto.STRING, ["N", 2]),
            helper.make_tensor_value_info("not_flag", TensorProto.BOOL, ["N", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kserve-models")
    write_model(root, "mlp", 1, mlp_model(seed=0))
    write_model(root, "mlp", 2, mlp_model(seed=1))
    write_model(root, "two", 1, two_input_model(), config={"max_batch_size": 8})
    write_model(root, "fixed", 1, fixed_shape_model())
    write_model(root, "text", 1, text_flag_model())
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[BackgroundServer]:
    options = ServerOptions(grpc_port=0, metrics_port=0, max_message_bytes=MAX_MESSAGE, grace_s=1.0)
    with BackgroundServer(lambda: ModelManager(repository, poll_interval_s=0, providers=[CPU]), options) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator["tc.InferenceServerClient"]:
    c = tc.InferenceServerClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference() -> dict[str, OnnxModel]:
    """In-process sessions on the same models, with the server's session options."""
    return {
        "mlp/1": load_onnx(mlp_model(seed=0).SerializeToString(), providers=[CPU]),
        "mlp/2": load_onnx(mlp_model(seed=1).SerializeToString(), providers=[CPU]),
        "two/1": load_onnx(two_input_model().SerializeToString(), providers=[CPU]),
        "fixed/1": load_onnx(fixed_shape_model().SerializeToString(), providers=[CPU]),
    }


def _input(name: str, array: np.ndarray, datatype: str) -> "tc.InferInput":
    inp = tc.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return exc.value.status()


# -- health and metadata -----------------------------------------------------------------------


def test_server_live_and_ready(client: "tc.InferenceServerClient") -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_model_ready(client: "tc.InferenceServerClient") -> None:
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("mlp", "3")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client: "tc.InferenceServerClient") -> None:
    meta = client.get_server_metadata()
    assert meta.name == "rtml"
    assert meta.version  # the package version
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "rtml"


def test_model_metadata_datatypes_and_shapes(client: "tc.InferenceServerClient") -> None:
    meta = client.get_model_metadata("two")
    assert meta.name == "two" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("dense", "FP32", [-1, 8]),
        ("ids", "INT64", [-1, 2]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("score", "FP32", [-1, 1]),
        ("embedding", "FP32", [-1, 8]),
    ]
    mlp = client.get_model_metadata("mlp", as_json=True)
    assert mlp["versions"] == ["1", "2"]
    assert mlp["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    fixed = client.get_model_metadata("fixed")
    assert list(fixed.inputs[0].shape) == [3, 4]  # no batch axis: the full fixed shape
    text = client.get_model_metadata("text")
    assert [(t.name, t.datatype) for t in text.inputs] == [("text", "BYTES"), ("flag", "BOOL")]


def test_model_metadata_of_one_version_and_unknown(client: "tc.InferenceServerClient") -> None:
    assert client.get_model_metadata("mlp", "1").name == "mlp"
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("nope")
    assert _status(exc) == "StatusCode.NOT_FOUND" and "nope" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("mlp", "9")
    assert _status(exc) == "StatusCode.NOT_FOUND" and "9" in exc.value.message()


def test_triton_only_methods_are_unimplemented(client: "tc.InferenceServerClient") -> None:
    for call in (
        lambda: client.get_model_config("mlp"),
        lambda: client.get_model_repository_index(),
        lambda: client.get_inference_statistics("mlp"),
    ):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert _status(exc) == "StatusCode.UNIMPLEMENTED"
        assert "not implemented by rtml" in exc.value.message() and "ModelInfer" in exc.value.message()
    assert client.is_server_live()  # and the server carries on


# -- inference ---------------------------------------------------------------------------------


def test_infer_raw_matches_onnxruntime(client: "tc.InferenceServerClient", reference: dict[str, OnnxModel]) -> None:
    rng = np.random.default_rng(7)
    for rows in (1, 5, 64):
        x = rng.standard_normal((rows, 64)).astype(np.float32)
        result = client.infer("mlp", [_input("input", x, "FP32")], request_id=f"req-{rows}")
        got = result.as_numpy("output")
        assert got.dtype == np.float32 and got.shape == (rows, 1)
        np.testing.assert_array_equal(got, reference["mlp/2"].run({"input": x})["output"])  # latest version
        response = result.get_response()
        assert response.id == f"req-{rows}" and response.model_name == "mlp" and response.model_version == "2"
        # Raw bytes only: no typed contents in the answer.
        assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_infer_pinned_version(client: "tc.InferenceServerClient", reference: dict[str, OnnxModel]) -> None:
    x = np.ones((2, 64), np.float32)
    got = client.infer("mlp", [_input("input", x, "FP32")], model_version="1").as_numpy("output")
    np.testing.assert_array_equal(got, reference["mlp/1"].run({"input": x})["output"])


def test_infer_int64_input_and_requested_outputs(
    client: "tc.InferenceServerClient", reference: dict[str, OnnxModel]
) -> None:
    dense = np.arange(24, dtype=np.float32).reshape(3, 8) / 10
    ids = np.array([[0, 1], [9, 2], [5, 5]], dtype=np.int64)
    inputs = [_input("dense", dense, "FP32"), _input("ids", ids, "INT64")]
    expected = reference["two/1"].run({"dense": dense, "ids": ids})
    full = client.infer("two", inputs)
    np.testing.assert_array_equal(full.as_numpy("score"), expected["score"])
    np.testing.assert_array_equal(full.as_numpy("embedding"), expected["embedding"])
    only = client.infer("two", inputs, outputs=[tc.InferRequestedOutput("embedding")])
    assert [o.name for o in only.get_response().outputs] == ["embedding"]
    assert only.as_numpy("score") is None
    np.testing.assert_array_equal(only.as_numpy("embedding"), expected["embedding"])


def test_infer_model_without_batch_axis(client: "tc.InferenceServerClient") -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(client.infer("fixed", [_input("x", x, "FP32")]).as_numpy("y"), x * 2)


def test_infer_bytes_and_bool(client: "tc.InferenceServerClient") -> None:
    text = np.array([[b"hello", "caf\u00e9".encode()], [b"", b"x y"]], dtype=object)
    flag = np.array([[True], [False]])
    result = client.infer("text", [_input("text", text, "BYTES"), _input("flag", flag, "BOOL")])
    out = result.as_numpy("text_out")
    assert out.shape == (2, 2) and out.tolist() == text.tolist()
    np.testing.assert_array_equal(result.as_numpy("not_flag"), ~flag)


def _grpc_stub(server: BackgroundServer) -> tuple[grpc.Channel, "tpb_grpc.GRPCInferenceServiceStub"]:
    channel = grpc.insecure_channel(server.grpc_address)
    return channel, tpb_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_give_the_same_results(server: BackgroundServer, reference: dict[str, OnnxModel]) -> None:
    """A hand-built request with fp32_contents/int64_contents (Triton's messages, not ours)."""
    dense = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    ids = np.array([[3, 4], [0, 9]], dtype=np.int64)
    request = tpb.ModelInferRequest(model_name="two", id="typed")
    t = request.inputs.add(name="dense", datatype="FP32", shape=[2, 8])
    t.contents.fp32_contents.extend(dense.ravel().tolist())
    t = request.inputs.add(name="ids", datatype="INT64", shape=[2, 2])
    t.contents.int64_contents.extend(ids.ravel().tolist())
    channel, stub = _grpc_stub(server)
    with channel:
        response = stub.ModelInfer(request)
    result = tc.InferResult(response)
    expected = reference["two/1"].run({"dense": dense, "ids": ids})
    np.testing.assert_array_equal(result.as_numpy("score"), expected["score"])
    np.testing.assert_array_equal(result.as_numpy("embedding"), expected["embedding"])
    assert response.id == "typed"


def test_rtml_generated_stub_speaks_the_same_protocol(
    server: BackgroundServer, reference: dict[str, OnnxModel]
) -> None:
    x = np.full((1, 64), 0.5, np.float32)
    request = pb.ModelInferRequest(model_name="mlp", model_version="1")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(server.grpc_address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))
    np.testing.assert_array_equal(got, reference["mlp/1"].run({"input": x})["output"])


def test_field_numbers_match_triton() -> None:
    """Every message tritonclient uses has the same field names, numbers and types as Triton's."""

    def same(ours, theirs, path: str) -> None:
        for field in ours.fields:
            other = theirs.fields_by_name.get(field.name)
            assert other is not None, f"{path}.{field.name} missing in Triton's proto"
            assert (other.number, other.type, other.is_repeated) == (field.number, field.type, field.is_repeated), (
                f"{path}.{field.name}"
            )
        for nested in ours.nested_types:
            same(nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}")

    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        same(message, tpb.DESCRIPTOR.message_types_by_name[name], name)
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = tpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        assert theirs.methods_by_name[method.name].input_type.full_name == method.input_type.full_name


# -- bad input ---------------------------------------------------------------------------------


def _infer_error(stub: "tpb_grpc.GRPCInferenceServiceStub", request: "tpb.ModelInferRequest") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request)
    return exc.value


def _raw_request(model: str, *tensors: tuple[str, str, list[int], bytes]) -> "tpb.ModelInferRequest":
    request = tpb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


F32_ROW = np.zeros(64, np.float32).tobytes()
DENSE = np.zeros((1, 8), np.float32).tobytes()
IDS = np.zeros((1, 2), np.int64).tobytes()


@pytest.mark.parametrize(
    ("request_factory", "fragments"),
    [
        pytest.param(lambda: _raw_request("mlp", ("input", "FP32", [1, 63], F32_ROW[:-4])), ["'input'", "[1, 63]", "64"], id="wrong-shape"),
        pytest.param(lambda: _raw_request("mlp", ("input", "FP32", [64], F32_ROW)), ["'input'", "rank"], id="wrong-rank"),
        pytest.param(lambda: _raw_request("mlp", ("input", "FP32", [2, 64], F32_ROW)), ["'input'", "256 bytes", "512"], id="raw-size-mismatch"),
        pytest.param(lambda: _raw_request("mlp", ("input", "FP64", [1, 64], F32_ROW * 2)), ["'input'", "FP64", "FP32"], id="wrong-datatype"),
        pytest.param(lambda: _raw_request("mlp", ("input", "FLOAT", [1, 64], F32_ROW)), ["'input'", "unknown datatype 'FLOAT'"], id="unknown-datatype"),
        pytest.param(lambda: _raw_request("mlp", ("input", "FP32", [-1, 64], F32_ROW)), ["'input'", "negative"], id="negative-dim"),
        pytest.param(lambda: _raw_request("two", ("dense", "FP32", [1, 8], DENSE)), ["'ids'", "missing"], id="missing-input"),
        pytest.param(
            lambda: _raw_request("two", ("dense", "FP32", [1, 8], DENSE), ("ids", "INT64", [1, 2], IDS), ("extra", "FP32", [1], b"\0" * 4)),
            ["'extra'", "unknown input"],
            id="unknown-input",
        ),
        pytest.param(
            lambda: _raw_request("two", ("dense", "FP32", [1, 8], DENSE), ("ids", "INT64", [2, 2], IDS * 2)),
            ["'ids'", "rows"],
            id="batch-mismatch-between-inputs",
        ),
        pytest.param(
            lambda: _raw_request("two", ("dense", "FP32", [9, 8], DENSE * 9), ("ids", "INT64", [9, 2], IDS * 9)),
            ["max_batch_size 8"],
            id="batch-too-large",
        ),
        pytest.param(lambda: _raw_request("text", ("text", "BYTES", [1, 2], struct.pack("<I", 9) + b"abc"), ("flag", "BOOL", [1, 1], b"\1")), ["'text'", "declares 9 bytes"], id="bytes-length-prefix"),
        pytest.param(
            lambda: _raw_request("text", ("text", "BYTES", [1, 2], (struct.pack("<I", 1) + b"\xff") * 2), ("flag", "BOOL", [1, 1], b"\1")),
            ["'text'", "UTF-8"],
            id="bytes-not-utf8",
        ),
    ],
)
def test_bad_raw_input_is_invalid_argument_naming_the_input(
    server: BackgroundServer, request_factory, fragments: list[str]
) -> None:
    channel, stub = _grpc_stub(server)
    with channel:
        err = _infer_error(stub, request_factory())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for fragment in fragments:
        assert fragment in err.details(), err.details()


def test_bad_typed_input(server: BackgroundServer) -> None:
    channel, stub = _grpc_stub(server)
    with channel:
        short = tpb.ModelInferRequest(model_name="mlp")
        short.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([0.0] * 63)
        err = _infer_error(stub, short)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'input'" in err.details() and "63 elements" in err.details() and "64" in err.details()
        wrong_field = tpb.ModelInferRequest(model_name="mlp")
        wrong_field.inputs.add(name="input", datatype="FP32", shape=[1, 2]).contents.int_contents.extend([1, 2])
        err = _infer_error(stub, wrong_field)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "fp32_contents" in err.details()
        mixed = tpb.ModelInferRequest(model_name="mlp")
        mixed.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([0.0] * 64)
        mixed.raw_input_contents.append(F32_ROW)
        err = _infer_error(stub, mixed)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'input'" in err.details()
        assert "raw_input_contents" in err.details()


def test_unknown_model_version_and_output(client: "tc.InferenceServerClient") -> None:
    x = _input("input", np.zeros((1, 64), np.float32), "FP32")
    with pytest.raises(InferenceServerException) as exc:
        client.infer("no-such-model", [x])
    assert _status(exc) == "StatusCode.NOT_FOUND" and "no-such-model" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [x], model_version="7")
    assert _status(exc) == "StatusCode.NOT_FOUND" and "'7'" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [x], outputs=[tc.InferRequestedOutput("logits")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "'logits'" in exc.value.message()


def test_oversize_message_is_refused_and_server_survives(client: "tc.InferenceServerClient") -> None:
    rows = MAX_MESSAGE // (64 * 4) + 16
    big = _input("input", np.zeros((rows, 64), np.float32), "FP32")
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [big])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "limit is 2,097,152 bytes" in exc.value.message()
    # Far beyond the limit grpc itself refuses the message before it reaches Python.
    huge = _input("input", np.zeros((3 * rows, 64), np.float32), "FP32")
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [huge])
    assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()
    small = client.infer("mlp", [_input("input", np.zeros((1, 64), np.float32), "FP32")])
    assert small.as_numpy("output").shape == (1, 1)


def test_one_bad_request_among_concurrent_good_ones_fails_alone(
    server: BackgroundServer, reference: dict[str, OnnxModel]
) -> None:
    """32 good requests and bad ones (an id out of the embedding table's range fails inside
    ONNX Runtime; a wrong shape fails validation) in flight together: only the bad ones fail."""
    from tritonclient.grpc import aio as tca

    rng = np.random.default_rng(3)
    goods = [
        (rng.standard_normal((1, 8)).astype(np.float32), rng.integers(0, 10, (1, 2)).astype(np.int64)) for _ in range(32)
    ]

    async def run() -> list[object]:
        client = tca.InferenceServerClient(server.grpc_address)
        try:

            async def one(dense: np.ndarray, ids: np.ndarray) -> object:
                inputs = [_input("dense", dense, "FP32"), _input("ids", ids, "INT64")]
                try:
                    return (await client.infer("two", inputs)).as_numpy("score")
                except InferenceServerException as exc:
                    return exc

            bad_index = (np.zeros((1, 8), np.float32), np.array([[0, 99]], np.int64))
            bad_shape = (np.zeros((1, 7), np.float32), np.zeros((1, 2), np.int64))
            calls = [one(*g) for g in goods[:16]] + [one(*bad_index), one(*bad_shape)] + [one(*g) for g in goods[16:]]
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(run())
    bad = results[16:18]
    good = results[:16] + results[18:]
    for (dense, ids), got in zip(goods, good):
        assert isinstance(got, np.ndarray), got
        np.testing.assert_array_equal(got, reference["two/1"].run({"dense": dense, "ids": ids})["score"])
    for exc in bad:
        assert isinstance(exc, InferenceServerException)
        assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc.message()


def test_triton_request_parameters(client: "tc.InferenceServerClient") -> None:
    """``timeout`` (µs) tightens the deadline; ``sequence_id`` is refused, not silently ignored."""
    x = _input("input", np.zeros((1, 64), np.float32), "FP32")
    assert client.infer("mlp", [x], timeout=10_000_000, priority=3).as_numpy("output").shape == (1, 1)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [x], timeout=1)
    assert _status(exc) == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(InferenceServerException) as exc:
        client.infer("mlp", [x], sequence_id=42, sequence_start=True)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "sequence" in exc.value.message()


def test_undecodable_request_bytes_are_invalid_argument(server: BackgroundServer) -> None:
    import grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as exc:
            call(b"\xff\xff\xff\xff", timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inference.ModelInferRequest" in exc.value.details()
