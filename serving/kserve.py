"""KServe v2 ``inference.GRPCInferenceService`` over a :class:`~serving.manager.ModelManager`.

The servicer's methods raise :class:`~serving.errors.ServingError` subclasses for anything the
client did wrong or the model cannot do; turning those into gRPC statuses (and counting them)
is the server's job (``serving.server``), so the servicer can also be called in-process.

Only the six RPCs of the Open Inference Protocol are served here. Triton-only RPCs that
tritonclient also knows (ModelConfig, RepositoryIndex, ModelStatistics, shared memory, ...)
get UNIMPLEMENTED with a message that lists what is served: see :func:`unimplemented_handler`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import metadata as _metadata
from typing import Any, Callable, Protocol, Sequence

import grpc
import numpy as np

from proto.inference import open_inference_grpc_pb2 as pb
from serving.codec import bytes_to_text, decode_inputs, encode_outputs
from serving.errors import InvalidInput
from serving.tensors import TensorSpec

SERVICE_NAME = "inference.GRPCInferenceService"
SERVED_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
# Server-streaming / bidi RPCs of Triton's service (the rest are unary).
_STREAMING_METHODS = frozenset({"ModelStreamInfer"})

# grpc reports "no deadline" as a very large remaining time on some versions, None on others.
_NO_DEADLINE_S = 1e6


def _server_version() -> str:
    try:
        return _metadata.version("rtml")
    except _metadata.PackageNotFoundError:
        return "0.0.0"


class ServedModelLike(Protocol):
    """What the servicer needs from ``serving.manager.ServedModel``."""

    name: str
    version: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    async def infer(
        self, inputs: dict[str, np.ndarray], *, deadline: float | None = None
    ) -> dict[str, np.ndarray]: ...


class ManagerLike(Protocol):
    """What the servicer needs from ``serving.manager.ModelManager``."""

    def get(self, name: str, version: str | None = None) -> ServedModelLike: ...

    def models(self) -> list[Any]: ...

    def is_ready(self, name: str, version: str | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class _ModelView:
    """Per model version, what every ModelInfer needs, computed once (not per request)."""

    model: ServedModelLike
    input_specs: dict[str, TensorSpec]
    output_names: tuple[str, ...]
    output_datatypes: dict[str, str]
    text_inputs: tuple[str, ...]  # BYTES inputs: ONNX string tensors take str, not bytes


def deadline_from(context: Any) -> float | None:
    """The RPC's deadline as a ``time.monotonic()`` instant, or None when it has none."""
    if context is None:
        return None
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


def _apply_parameters(parameters: Any, deadline: float | None) -> float | None:
    """Honour the Triton request parameters tritonclient sends; return the effective deadline.

    ``timeout`` (microseconds, set by ``infer(timeout=...)``) tightens the deadline.
    ``sequence_id`` asks for stateful sequence batching, which rtml does not do: refusing is
    better than silently running each step as an independent request. Other parameters
    (``priority``, custom ones) are accepted and ignored.
    """
    if "sequence_id" in parameters:
        seq = parameters["sequence_id"]
        if seq.int64_param or seq.string_param or seq.uint64_param:
            raise InvalidInput("sequence requests (parameter 'sequence_id') are not supported by rtml")
    if "timeout" in parameters:
        param = parameters["timeout"]
        micros = param.int64_param or param.uint64_param
        if micros < 0:
            raise InvalidInput(f"parameter 'timeout' must be a positive number of microseconds, got {micros}")
        if micros:
            own = time.monotonic() + micros / 1e6
            deadline = own if deadline is None else min(deadline, own)
    return deadline


def model_versions(manager: ManagerLike, name: str) -> list[str]:
    """Versions of ``name`` the manager knows and can serve, in its order."""
    out: list[str] = []
    for status in manager.models():
        if getattr(status, "name", None) == name:
            version = str(getattr(status, "version", ""))
            if version and version not in out and manager.is_ready(name, version):
                out.append(version)
    return out


def server_ready(manager: ManagerLike) -> bool:
    """Ready when the repository has a model and every model has a version that can serve.

    Deliberately per model, not per version: a broken new version that the manager refused
    (FAILED) while the previous one keeps serving must not take the whole server out of a
    load balancer, and neither must a version that is still LOADING next to a READY one. A
    model with no servable version at all does make the server unready.
    """
    names = {s.name for s in manager.models()}
    return bool(names) and all(manager.is_ready(name) for name in names)


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=[d if d >= 0 else -1 for d in spec.shape]
    )


class KServeServicer:
    """The Open Inference Protocol servicer (method names are the RPC names)."""

    def __init__(
        self,
        manager: ManagerLike,
        *,
        server_name: str = "rtml",
        server_version: str | None = None,
        extensions: Sequence[str] = (),
        default_model: Callable[[str], Any] | None = None,
    ) -> None:
        self._manager = manager
        # Which version an unpinned ModelInfer gets: the routing primary (so a canary or
        # shadow version is never hit by plain KServe clients), else the latest ready one.
        self._default_model = default_model or (lambda name: manager.get(name, None))
        # Replies that never change are built once and returned as they are: grpc only
        # serialises them, it never mutates them.
        self._live = pb.ServerLiveResponse(live=True)
        self._ready = pb.ServerReadyResponse(ready=True)
        self._not_ready = pb.ServerReadyResponse(ready=False)
        self._model_ready = pb.ModelReadyResponse(ready=True)
        self._model_not_ready = pb.ModelReadyResponse(ready=False)
        self._server_metadata = pb.ServerMetadataResponse(
            name=server_name, version=server_version or _server_version(), extensions=list(extensions)
        )
        # Keyed by (name, version): bounded by the repository's size. An entry is rebuilt
        # when the manager hands out a different ServedModel object (a reload).
        self._views: dict[tuple[str, str], _ModelView] = {}

    # -- health and metadata -------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return self._live

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return self._ready if server_ready(self._manager) else self._not_ready

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        if not request.name:
            raise InvalidInput("ModelReady needs a model name")
        ready = self._manager.is_ready(request.name, request.version or None)
        return self._model_ready if ready else self._model_not_ready

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return self._server_metadata

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        if not request.name:
            raise InvalidInput("ModelMetadata needs a model name")
        model = self._manager.get(request.name, request.version or None)
        versions = model_versions(self._manager, model.name)
        if model.version not in versions:
            versions.append(model.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform=model.platform,
            inputs=[_tensor_metadata(s) for s in model.inputs],
            outputs=[_tensor_metadata(s) for s in model.outputs],
        )

    # -- inference -----------------------------------------------------------------------

    def _view(self, name: str, version: str) -> _ModelView:
        if not name:
            raise InvalidInput("ModelInfer needs a model_name")
        model = self._manager.get(name, version) if version else self._default_model(name)
        key = (name, version)
        view = self._views.get(key)
        if view is None or view.model is not model:
            view = _ModelView(
                model=model,
                input_specs={s.name: s for s in model.inputs},
                output_names=tuple(s.name for s in model.outputs),
                output_datatypes={s.name: s.datatype for s in model.outputs},
                text_inputs=tuple(s.name for s in model.inputs if s.datatype == "BYTES"),
            )
            self._views[key] = view
        return view

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        view = self._view(request.model_name, request.model_version)
        model = view.model
        inputs = decode_inputs(request, view.input_specs, model.name)
        for name in view.text_inputs:
            inputs[name] = bytes_to_text(name, inputs[name])
        if request.outputs:
            names: Sequence[str] = [o.name for o in request.outputs]
            for n in names:
                if n not in view.output_datatypes:
                    raise InvalidInput(
                        f"unknown output '{n}' requested from model '{model.name}' "
                        f"(it has {', '.join(view.output_names)})"
                    )
        else:
            names = view.output_names
        deadline = deadline_from(context)
        if request.parameters:
            deadline = _apply_parameters(request.parameters, deadline)
        outputs = await model.infer(inputs, deadline=deadline)
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        encode_outputs(response, outputs, names, view.output_datatypes)
        return response


def unimplemented_handler(method: str, *, streaming: bool = False) -> grpc.RpcMethodHandler:
    """A handler that answers UNIMPLEMENTED for a Triton-only RPC, naming what is served.

    Requests are not deserialised (the bytes are ignored), so any message type works.
    """
    message = (
        f"{SERVICE_NAME}/{method} is not implemented by rtml; served: "
        + ", ".join(SERVED_METHODS)
    )

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        return b""  # not reached: abort raises

    async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield b""  # not reached: abort raises; the yield makes this an async generator

    if streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class UnimplementedKServeHandler(grpc.GenericRpcHandler):
    """Catches every other ``/inference.GRPCInferenceService/*`` method: UNIMPLEMENTED, clearly."""

    _prefix = f"/{SERVICE_NAME}/"

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(self._prefix):
            return None
        name = method[len(self._prefix):]
        return unimplemented_handler(name, streaming=name in _STREAMING_METHODS)


__all__ = [
    "KServeServicer",
    "SERVICE_NAME",
    "SERVED_METHODS",
    "UnimplementedKServeHandler",
    "deadline_from",
    "model_versions",
    "server_ready",
    "unimplemented_handler",
]
