"""ONNX Runtime sessions for serving: options, provider choice, tensor specs, warm-up.

Provider choice. ``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even on a
machine without CUDA libraries; asking for it there logs an error and silently falls back to
the CPU. So the CUDA provider is *probed* once per process: first its shared library is
loaded with ``dlopen`` (a missing ``libcublasLt``/``libcudart`` shows there, silently), then a
tiny session is created with it and CUDA is kept only if that session really runs on CUDA.
:func:`default_providers` is then ``[CUDA, CPU]`` or ``[CPU]``; :attr:`OnnxModel.providers`
says what a session actually got. Where the CUDA libraries come from pip wheels
(``nvidia-*-cu13``), they must be on the loader path, or preloaded with
``onnxruntime.preload_dlls()`` before the first probe.

Batch invariance (why the dynamic batcher's results equal unbatched inference bitwise). On
the CPU provider, MLAS's SGEMM computes each output row with the same kernel and the same
reduction order over K whatever the number of rows M; its thread pool splits the work over
rows/columns, never over K; element-wise ops (Add, Relu, ...) work per element. So row *i*
of a batched run depends only on row *i* of the input. ``tests/serving/test_onnx_session.py``
checks it bitwise for batch sizes 1..256, Gemm and MatMul+Add graphs, ``ORT_ENABLE_ALL``,
1 and 2 intra-op threads (on an AVX-512 AMD EPYC here; MLAS picks its kernels by CPU, which
is why the test exists rather than a promise). It is a property of the kernels, not of
ONNX Runtime: ops that mix rows (BatchNormalization in training mode, reductions over axis
0) are not batch-invariant at all, and on CUDA cuBLAS may choose a different GEMM algorithm
(e.g. split-K) for a different M, so GPU results can differ from unbatched ones in the last
bits. TF32 is turned off on CUDA (ORT's default is on): with it, an H200 gave results 1.65e-3
away from the CPU's, far beyond float32 rounding.

>>> model = load_onnx(identity_model_bytes(), intra_op_threads=1, providers=["CPUExecutionProvider"])
>>> [(s.name, s.datatype, s.shape) for s in model.inputs], model.has_batch_axis
([('x', 'FP32', (-1, 1))], True)
>>> model.run({"x": np.ones((2, 1), np.float32)})["y"].tolist()
[[1.0], [1.0]]
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from serving.backend import warm_up, zero_feeds
from serving.tensors import ONNX_TO_DATATYPE, TensorSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# ONNX Runtime log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_QUIET = 4


def identity_model_bytes() -> bytes:
    """A one-node ONNX model ``y = Identity(x)``, x float32 ``[N, 1]``: the probe and doctests use it."""
    from onnx import TensorProto, helper  # onnx is only needed to build this tiny graph

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "rtml-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this code supports
    return model.SerializeToString()


def _cuda_libraries_missing() -> str | None:
    """Why the CUDA provider library cannot load (a missing shared object), else None.

    ONNX Runtime logs a red error through its process-wide default logger when a session
    asks for CUDA and ``libcublasLt``/``libcudart``/... are absent, whatever the session's own
    log level. Loading the provider library with ``dlopen`` first finds the same missing
    dependency without any output. Other load errors are inconclusive (e.g. symbols that
    ONNX Runtime provides once it loads the library itself): the caller then probes a session.
    """
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.is_file():
        return None  # another layout (Windows, a source build): let the session probe decide
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        if "cannot open shared object file" in str(exc):
            return str(exc)
    return None


@functools.cache
def cuda_provider_works() -> bool:
    """Whether a session created with the CUDA provider really runs on CUDA (probed once).

    Quiet on machines without a GPU or CUDA libraries: a missing library is detected before
    ONNX Runtime is asked for CUDA (see :func:`_cuda_libraries_missing`), the probe session
    logs at fatal level only, and every exception is caught.
    """
    if CUDA not in ort.get_available_providers():
        return False
    missing = _cuda_libraries_missing()
    if missing is not None:
        log.debug("CUDA execution provider unusable: %s", missing)
        return False
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    try:
        session = ort.InferenceSession(identity_model_bytes(), options, providers=[CUDA, CPU])
        if CUDA not in session.get_providers():
            return False
        run_options = ort.RunOptions()
        run_options.log_severity_level = _QUIET
        session.run(None, {"x": np.zeros((1, 1), np.float32)}, run_options)
    except Exception as exc:  # any failure means: do not use CUDA
        log.debug("CUDA execution provider probe failed: %s", exc)
        return False
    return True


def default_providers() -> list[str]:
    """``[CUDA, CPU]`` when the CUDA provider works in this process, else ``[CPU]``."""
    return [CUDA, CPU] if cuda_provider_works() else [CPU]


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Serving session options: N intra-op threads, 1 inter-op thread, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Ops run sequentially within a graph: parallelism comes from batching and intra-op
    # threads, and a second pool would only compete with the event loop for cores.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Intra-op worker threads spin after each op by default; on a server whose event loop
    # shares the cores, spinning steals the time the loop needs to decode the next batch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Load-time problems are raised as exceptions (and logged by the manager with the path);
    # ONNX Runtime's own stderr lines would duplicate them.
    options.log_severity_level = 3
    return options


def _spec(arg: Any, kind: str) -> tuple[TensorSpec, bool]:
    """TensorSpec of an onnxruntime NodeArg and whether its first dim is dynamic (a batch axis)."""
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ValueError(f"{kind} {arg.name!r} has type {arg.type}, which this server cannot serve")
    if arg.shape is None:
        raise ValueError(f"{kind} {arg.name!r} has no shape in the graph (unknown rank)")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, dims), bool(dims) and dims[0] == -1


@dataclass(eq=False)
class OnnxModel:
    """A loaded ONNX Runtime session with the model's tensor specs.

    ``inputs``/``outputs`` keep the graph's full shapes with -1 for every dynamic dim;
    ``has_batch_axis`` is True when every input and output has a dynamic first dim.
    ``run`` is thread-safe in ONNX Runtime but blocks: call it off the event loop.
    """

    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    has_batch_axis: bool
    run_options: ort.RunOptions

    @property
    def providers(self) -> list[str]:
        """The execution providers this session actually uses, in priority order."""
        return list(self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference call: feeds by input name -> outputs by output name."""
        results = self.session.run(self._output_names, feeds, self.run_options)
        return dict(zip(self._output_names, results))

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.outputs]

    @property
    def platform(self) -> str:
        """KServe ``ModelMetadata.platform`` (Triton's name for ONNX Runtime models)."""
        return "onnxruntime_onnx"

    def zeros(self, rows: int | None) -> dict[str, np.ndarray]:
        """Feeds of zeros (empty strings for BYTES): ``rows`` on the batch axis, 1 for other dynamic dims."""
        return zero_feeds(self.inputs, rows)

    def warmup(self, max_batch_size: int) -> None:
        """Run zeros at batch 1 and at ``max_batch_size`` (see :func:`serving.backend.warm_up`).

        On CUDA the first run also initialises cuBLAS/cuDNN. Raises ``ValueError`` when an
        output does not keep the batch axis.
        """
        warm_up(self, max_batch_size)


def load_onnx(
    model: str | Path | bytes,
    *,
    intra_op_threads: int = 1,
    providers: Sequence[str] | None = None,
) -> OnnxModel:
    """Create a serving session from a file path or serialized model bytes.

    ``providers=None`` uses :func:`default_providers`. Raises ONNX Runtime's exceptions for
    unreadable models and ``ValueError`` for graphs whose inputs/outputs cannot be served.
    """
    chosen: list[Any] = list(providers) if providers is not None else default_providers()
    # float32 models must give float32 answers: TF32 matmuls keep only 10 mantissa bits.
    chosen = [(CUDA, {"use_tf32": "0"}) if p == CUDA else p for p in chosen]
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, session_options(intra_op_threads), providers=chosen)
    ins = [_spec(a, "input") for a in session.get_inputs()]
    outs = [_spec(a, "output") for a in session.get_outputs()]
    has_batch_axis = bool(ins) and all(batch for _, batch in ins + outs)
    run_options = ort.RunOptions()
    # A request with out-of-range data (e.g. a Gather index) makes ORT log an error line
    # before raising; the exception reaches the client, so the log line is only noise
    # that a misbehaving client could use to flood stderr.
    run_options.log_severity_level = _QUIET
    return OnnxModel(session, [s for s, _ in ins], [s for s, _ in outs], has_batch_axis, run_options)
