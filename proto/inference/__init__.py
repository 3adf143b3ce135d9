"""KServe v2 / Open Inference Protocol gRPC messages and service (package ``inference``).

Why the generated module uses a private descriptor pool
-------------------------------------------------------
``tritonclient.grpc`` registers Triton's own ``grpc_service.proto`` -- also package
``inference``, with the same message names -- in protobuf's *default* descriptor pool. Two
different files defining ``inference.ModelInferRequest`` cannot share one pool: whichever is
imported second fails with "duplicate symbol". A process that serves KServe v2 and also uses
tritonclient (the test suite, a load generator, an app calling a remote Triton) would break.
So ``open_inference_grpc_pb2`` adds its file to its own pool, :data:`POOL` (exported by the
generated module), instead of the default one. Wire format and method paths are unaffected;
server reflection is given a pool holding this file (see ``serving.server``).

Regenerating
------------
Run :func:`regenerate` from the repository root (it runs the standard ``grpc_tools.protoc``
command, then rewrites the one line that picks the pool)::

    .venv/bin/python -c "import proto.inference as p; p.regenerate()"
"""

from __future__ import annotations

from pathlib import Path

_PROTO = "proto/inference/open_inference_grpc.proto"
_DEFAULT_POOL_LINE = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_LINES = (
    "# rtml: a private pool, so this file can live beside tritonclient's own `inference`\n"
    "# package in one process (see proto/inference/__init__.py).\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def regenerate(repo_root: str | Path = ".") -> None:
    """Regenerate the ``*_pb2*.py``/``.pyi`` files and switch the module to a private pool."""
    from grpc_tools import protoc  # dev-only dependency: imported only when regenerating

    root = Path(repo_root)
    args = ["protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}",
            f"--grpc_python_out={root}", str(root / _PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {_PROTO}")
    pb2 = root / "proto/inference/open_inference_grpc_pb2.py"
    text = pb2.read_text()
    if text.count(_DEFAULT_POOL_LINE) != 1:
        raise RuntimeError(f"{pb2}: generated code changed shape; update regenerate()")
    pb2.write_text(text.replace(_DEFAULT_POOL_LINE, _PRIVATE_POOL_LINES))
