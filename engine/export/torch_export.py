"""Torch modules to ONNX: rankers (``dense``, ``sparse`` -> ``logit``) and two-tower towers.

Inputs are ``dense`` float32 [batch, n_dense] and ``sparse`` int64 [batch, n_fields]; an input
with no columns is left out of the graph (the module still receives an empty [batch, 0]
tensor, built inside the graph from the other input's batch size). The batch axis is
dynamic. A ranker's core graph outputs ``logit`` float32 [batch, 1]
(:mod:`engine.export.postprocess` appends ``probability``); a tower outputs ``embedding``
float32 [batch, dim].

Exporter. ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript, opset 20
here) is tried first; when it fails (a module ``torch.export`` cannot trace), the
TorchScript exporter (opset 17) is used instead, and :attr:`OnnxGraph.exporter` says which
one produced the graph. Measured here (torch 2.13, 2 cores, a trained DeepFM 400-400-400,
export plus parity on 5k rows): dynamo 1.4 s (3 s for a process's first export), TorchScript
0.7 s; both 1.9e-8 max difference on probabilities (docs/registry.md).

>>> class LR(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.linear = torch.nn.Linear(3, 1)
...     def forward(self, dense, sparse):
...         return self.linear(dense).squeeze(-1)
>>> graph = export_module(LR(), n_dense=3, n_fields=0, exporter="torchscript")
>>> graph.exporter, graph.input_names, graph.output_names
('torchscript', ['dense'], ['logit'])
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import torch

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "torchscript"]
DENSE = "dense"
SPARSE = "sparse"
TORCHSCRIPT_OPSET = 17
# The example batch for tracing: not 0 or 1, which torch.export would specialise on.
_EXAMPLE_ROWS = 3


@dataclass
class OnnxGraph:
    """An exported graph and how it was made."""

    model: onnx.ModelProto
    exporter: str  # "dynamo" | "torchscript"
    input_names: list[str]
    output_names: list[str]

    @property
    def opset(self) -> int:
        """The default-domain opset of the graph."""
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))


class _Wrapper(torch.nn.Module):
    """Adapts ``inner(dense, sparse)`` to the graph's inputs and a [batch, k] output."""

    def __init__(self, inner: torch.nn.Module, n_dense: int, n_fields: int, as_column: bool) -> None:
        super().__init__()
        self.inner = inner
        self.n_dense, self.n_fields, self.as_column = n_dense, n_fields, as_column

    def _call(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        out = self.inner(dense, sparse)
        return out.reshape(-1, 1) if self.as_column else out


class _Both(_Wrapper):
    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self._call(dense, sparse)


class _DenseOnly(_Wrapper):
    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self._call(dense, dense.new_zeros((dense.shape[0], 0), dtype=torch.int64))


class _SparseOnly(_Wrapper):
    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self._call(torch.zeros((sparse.shape[0], 0), dtype=torch.float32), sparse)


def _example(n_dense: int, n_fields: int) -> dict[str, torch.Tensor]:
    examples: dict[str, torch.Tensor] = {}
    if n_dense:
        examples[DENSE] = torch.zeros((_EXAMPLE_ROWS, n_dense), dtype=torch.float32)
    if n_fields:
        # Index 0 is valid for every embedding table.
        examples[SPARSE] = torch.zeros((_EXAMPLE_ROWS, n_fields), dtype=torch.int64)
    return examples


def _export_dynamo(module: torch.nn.Module, examples: dict[str, torch.Tensor], output: str) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(examples.values()),
            dynamo=True,
            input_names=list(examples),
            output_names=[output],
            dynamic_shapes={name: {0: batch} for name in examples},
            verbose=False,
        )
    return program.model_proto


def _export_torchscript(module: torch.nn.Module, examples: dict[str, torch.Tensor], output: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*examples, output]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notice
        torch.onnx.export(
            module,
            tuple(examples.values()),
            buffer,
            dynamo=False,
            input_names=list(examples),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=TORCHSCRIPT_OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


_STAGING_OUTPUT = "rtml_output"


def _rename_values(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename values everywhere in the (flat) main graph."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = mapping.get(value.name, value.name)


def _name_output(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """Give the staged output its final name, moving any internal value of that name aside.

    (The dynamo exporter names values after ops and modules: a tower's ``embedding`` lookup
    would clash with an output called ``embedding``.)
    """
    taken = {n for node in model.graph.node for n in (*node.input, *node.output)}
    taken |= {v.name for v in [*model.graph.value_info, *model.graph.initializer, *model.graph.input]}
    mapping = {_STAGING_OUTPUT: output}
    if output in taken:
        suffix = 0
        while f"{output}_{suffix}" in taken:
            suffix += 1
        mapping[output] = f"{output}_{suffix}"
    _rename_values(model, mapping)
    return model


def export_module(
    inner: torch.nn.Module,
    *,
    n_dense: int,
    n_fields: int,
    output: str = "logit",
    as_column: bool = True,
    exporter: Exporter = "auto",
) -> OnnxGraph:
    """Export ``inner(dense, sparse)`` with a dynamic batch axis.

    ``as_column`` reshapes the output to [batch, 1] (a ranker's logit); else the output is
    kept as it is (a tower's [batch, dim]). Modules in training mode are exported in eval
    mode and restored. Raises ``ValueError`` when there are no inputs at all and the last
    exporter's error when export fails.
    """
    if n_dense < 0 or n_fields < 0 or n_dense + n_fields == 0:
        raise ValueError(f"a model needs dense or sparse inputs (n_dense={n_dense}, n_fields={n_fields})")
    cls = _Both if n_dense and n_fields else _DenseOnly if n_dense else _SparseOnly
    module = cls(inner, n_dense, n_fields, as_column)
    examples = _example(n_dense, n_fields)
    was_training = module.training
    module.eval()
    try:
        if exporter in ("auto", "dynamo"):
            try:
                with torch.no_grad():
                    model = _export_dynamo(module, examples, _STAGING_OUTPUT)
                return OnnxGraph(_name_output(model, output), "dynamo", list(examples), [output])
            except Exception as exc:
                if exporter == "dynamo":
                    raise
                log.info("dynamo export failed (%s: %s); using the TorchScript exporter", type(exc).__name__, exc)
        with torch.no_grad():
            model = _export_torchscript(module, examples, _STAGING_OUTPUT)
        return OnnxGraph(_name_output(model, output), "torchscript", list(examples), [output])
    finally:
        module.train(was_training)


def feeds(dense: Any, sparse: Any, input_names: list[str]) -> dict[str, Any]:
    """The ORT feeds of a graph from full ``dense``/``sparse`` arrays (absent inputs dropped).

    >>> sorted(feeds(np.zeros((2, 3), np.float32), np.zeros((2, 0), np.int64), ["dense"]))
    ['dense']
    """
    arrays = {DENSE: np.ascontiguousarray(dense, np.float32), SPARSE: np.ascontiguousarray(sparse, np.int64)}
    return {name: arrays[name] for name in input_names}
