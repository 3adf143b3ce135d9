"""ONNX models for the serving benchmark (built here; nothing downloaded).

The two MLPs come from the serving tests' own builder, :func:`tests.serving.models.mlp_model`,
so the benchmark serves exactly the graphs the runtime's tests check (Gemm + Relu layers,
float32, dynamic batch axis, weights from ``numpy.random.default_rng(seed)``: deterministic
bytes):

* ``mlp`` -- the small MLP 64 -> 256 -> 256 -> 1 that FIELD-NOTES measured Triton and MLServer
  with, so the numbers compare;
* ``ranker`` -- a larger MLP ranking model 512 -> 1024 -> 512 -> 256 -> 1 (~1.2 M
  multiply-adds per row, 15x the MLP). It outputs the score as a logit; a final Sigmoid
  would cost nothing measurable. Its compute (~11-50 µs a row) is still small next to a
  Python gRPC request's cost, so it measures the RPC path more than batching;
* ``seq_ranker`` -- a behaviour-sequence transformer ranker
  (:class:`benchmarks.sequence_ranker.SequenceRanker`, ~22 M multiply-adds per row, INT64
  item-id inputs), where ONNX Runtime's compute dominates a served request, as in production
  rankers: the model on which serving's overhead over raw ONNX Runtime is measured.

Every model has the same small interface: ``name``, ``description``, ``build()`` (ONNX
bytes), ``input_specs()``, ``feeds(rows, seed)`` (inputs for ``rows`` rows),
``output_name``, ``macs_per_row`` and ``describe()`` (for result files).

The benchmark runs from the repository root (``python -m benchmarks.serving``), where the
``tests`` package is importable.

>>> import onnxruntime as ort
>>> spec = BENCH_MODELS["mlp"]
>>> sess = ort.InferenceSession(spec.build(), providers=["CPUExecutionProvider"])
>>> [(i.name, i.shape) for i in sess.get_inputs()], [(o.name, o.shape) for o in sess.get_outputs()]
([('input', ['batch', 64])], [('output', ['batch', 1])])
>>> sess.run(None, {spec.input_name: spec.sample(3)})[0].shape
(3, 1)
>>> spec.build() == spec.build(), BENCH_MODELS["ranker"].macs_per_row
(True, 1179904)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from benchmarks.load import InputSpec
from benchmarks.sequence_ranker import SequenceRanker
from tests.serving.models import mlp_model, write_model

# Input/output names of tests.serving.models.mlp_model graphs.
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class BenchModel:
    """A benchmark model: how to build it and what one request row looks like."""

    name: str
    layers: tuple[int, ...]
    description: str
    seed: int = 0

    @property
    def input_name(self) -> str:
        return INPUT_NAME

    @property
    def output_name(self) -> str:
        return OUTPUT_NAME

    @property
    def features(self) -> int:
        """Input width (floats per row)."""
        return self.layers[0]

    @property
    def macs_per_row(self) -> int:
        """Multiply-adds per row (the Gemm work), to tell compute-bound from overhead-bound."""
        return int(sum(a * b for a, b in zip(self.layers[:-1], self.layers[1:])))

    def build(self) -> bytes:
        """The serialized ONNX model (deterministic for a seed)."""
        return mlp_model(seed=self.seed, dims=self.layers).SerializeToString()

    def sample(self, rows: int, seed: int = 1) -> np.ndarray:
        """``rows`` input rows, float32 standard normal (deterministic for a seed)."""
        return np.random.default_rng(seed).standard_normal((rows, self.features)).astype(np.float32)

    def feeds(self, rows: int, seed: int = 1) -> dict[str, np.ndarray]:
        """The model's inputs for ``rows`` rows (see :meth:`sample`)."""
        return {INPUT_NAME: self.sample(rows, seed)}

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec(INPUT_NAME, "FP32", (-1, self.features))]

    def describe(self) -> dict[str, Any]:
        return {"description": self.description, "layers": list(self.layers), "macs_per_row": self.macs_per_row}


class ServingBenchModel(Protocol):
    """What the serving benchmark needs from a model (MLPs and the sequence ranker alike)."""

    name: str
    output_name: str

    @property
    def description(self) -> str: ...

    @property
    def macs_per_row(self) -> int: ...

    def build(self) -> bytes: ...

    def feeds(self, rows: int, seed: int = 1) -> dict[str, np.ndarray]: ...

    def input_specs(self) -> list[InputSpec]: ...

    def describe(self) -> dict[str, Any]: ...


BENCH_MODELS: dict[str, ServingBenchModel] = {
    "mlp": BenchModel("mlp", (64, 256, 256, 1), "small MLP 64→256→256→1"),
    "ranker": BenchModel("ranker", (512, 1024, 512, 256, 1), "ranking model 512→1024→512→256→1"),
    "seq_ranker": SequenceRanker(),
}


def write_repository(
    root: str | Path,
    models: Sequence[ServingBenchModel],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a Triton-layout repository: ``root/<name>/1/model.onnx`` (+ ``root/<name>/config.yaml``).

    ``configs`` maps a model name to its ``config.yaml`` fields (see ``serving.config``); a
    model without an entry gets no config file (the server's defaults).
    """
    root = Path(root)
    for model in models:
        cfg = (configs or {}).get(model.name)
        write_model(root, model.name, 1, model.build(), dict(cfg) if cfg is not None else None)
    return root


__all__ = ["BENCH_MODELS", "BenchModel", "INPUT_NAME", "OUTPUT_NAME", "ServingBenchModel", "write_repository"]
