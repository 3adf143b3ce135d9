"""The cheapest possible KServe ModelInfer server: the serving benchmark's ceiling.

``python -m benchmarks.echo_server --grpc-port P`` answers every ``ModelInfer`` with one
constant, pre-serialised reply: no parsing, no validation, no model, no metrics. It is what
grpc.aio itself costs per request, so with the same load client on the same machine no real
server (rtml's or any other Python grpc.aio server) can be faster. The serving benchmark runs
it to tell "the server is slow" from "this machine and client cannot go faster".

``ServerReady`` answers ready, so :func:`benchmarks.load.wait_server_ready` works against it.

>>> from proto.inference import open_inference_grpc_pb2 as pb
>>> reply = pb.ModelInferResponse.FromString(constant_reply("ranker"))
>>> reply.model_name, [o.shape for o in reply.outputs], len(reply.raw_output_contents[0])
('ranker', [[1, 1]], 4)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Sequence

import grpc
import numpy as np

from proto.inference import open_inference_grpc_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def constant_reply(model: str) -> bytes:
    """A serialised one-row FP32 ModelInferResponse (what a batch-1 scoring model answers)."""
    return pb.ModelInferResponse(
        model_name=model,
        model_version="1",
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="output", datatype="FP32", shape=[1, 1])],
        raw_output_contents=[np.zeros(1, np.float32).tobytes()],
    ).SerializeToString()


async def serve(host: str, port: int, model: str) -> None:
    """Serve until cancelled (SIGTERM ends the process)."""
    reply = constant_reply(model)
    ready = pb.ServerReadyResponse(ready=True).SerializeToString()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    async def server_ready(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ready

    # Requests and replies stay bytes (no (de)serialiser): the least work grpc.aio allows.
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ServerReady": grpc.unary_unary_rpc_method_handler(server_ready),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.echo_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="mlp", help="model name put in the reply")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.grpc_port, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
