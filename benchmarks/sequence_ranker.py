"""A behaviour-sequence ranker for the serving benchmark: compute-bound, as production rankers are.

The shape of Alibaba's Behavior Sequence Transformer (BST): the user's last ``history`` items
and the candidate item are embedded (one shared item table, learned positions), pass through
``layers`` transformer encoder layers (``heads`` heads, width ``dim``, feed-forward 4x), and
an MLP scores the mean of the sequence and the candidate's output together with ``dense``
context features. Item id 0 is padding and is masked out of the attention and the mean.

Inputs (batch axis first, dynamic): ``history`` INT64 ``[batch, history]``, ``target`` INT64
``[batch]``, ``dense`` FP32 ``[batch, dense]``; output ``score`` FP32 ``[batch, 1]`` (a logit).
The weights are random but deterministic for a seed; nothing is downloaded. With the default
sizes a row costs about 22 M multiply-adds, so ONNX Runtime's compute -- not the RPC path --
dominates a served request, which is what the ratio-to-ONNX-Runtime target is about.

>>> spec = SequenceRanker(history=8, dim=16, layers=1, heads=2, items=100, dense=3)
>>> import onnxruntime as ort
>>> sess = ort.InferenceSession(spec.build(), providers=["CPUExecutionProvider"])
>>> [(i.name, i.type) for i in sess.get_inputs()]
[('history', 'tensor(int64)'), ('target', 'tensor(int64)'), ('dense', 'tensor(float)')]
>>> sess.run(None, spec.feeds(5))[0].shape
(5, 1)
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.load import InputSpec


@dataclass(frozen=True)
class SequenceRanker:
    """A BST-style ranker; see the module docs. Same interface as :class:`benchmarks.models.BenchModel`."""

    name: str = "seq_ranker"
    history: int = 50
    dim: int = 128
    layers: int = 2
    heads: int = 4
    items: int = 20_000
    dense: int = 16
    seed: int = 0

    output_name: str = "score"

    @property
    def description(self) -> str:
        return (f"sequence ranker (BST-style): {self.layers} transformer layers over {self.history} history items "
                f"+ the candidate, width {self.dim}")

    @property
    def macs_per_row(self) -> int:
        """Multiply-adds per row: projections, attention, feed-forward and the scoring MLP."""
        s, d = self.history + 1, self.dim
        per_layer = s * d * 3 * d + 2 * s * s * d + s * d * d + 2 * s * d * 4 * d
        top = (2 * d + self.dense) * 512 + 512 * 256 + 256
        return self.layers * per_layer + top

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec("history", "INT64", (-1, self.history)), InputSpec("target", "INT64", (-1,)),
                InputSpec("dense", "FP32", (-1, self.dense))]

    def feeds(self, rows: int, seed: int = 1) -> dict[str, np.ndarray]:
        """``rows`` requests' inputs: real item ids (no padding), standard normal context."""
        rng = np.random.default_rng(seed)
        return {
            "history": rng.integers(1, self.items, (rows, self.history), dtype=np.int64),
            "target": rng.integers(1, self.items, (rows,), dtype=np.int64),
            "dense": rng.standard_normal((rows, self.dense)).astype(np.float32),
        }

    def describe(self) -> dict[str, Any]:
        return {"description": self.description, "history": self.history, "dim": self.dim, "layers": self.layers,
                "heads": self.heads, "items": self.items, "dense": self.dense, "macs_per_row": self.macs_per_row}

    def build(self) -> bytes:
        """The serialized ONNX model (torch export with a dynamic batch axis; cached per process)."""
        return _export(self.history, self.dim, self.layers, self.heads, self.items, self.dense, self.seed)


@functools.lru_cache(maxsize=4)
def _export(history: int, dim: int, layers: int, heads: int, items: int, dense: int, seed: int) -> bytes:
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(dim, 3 * dim)
            self.out = torch.nn.Linear(dim, dim)
            self.ff = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.ReLU(), torch.nn.Linear(4 * dim, dim))
            self.norm1 = torch.nn.LayerNorm(dim)
            self.norm2 = torch.nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            att = (q @ k.transpose(-1, -2)) * (dim // heads) ** -0.5 + mask
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, dim)
            x = self.norm1(x + self.out(y))
            return self.norm2(x + self.ff(x))

    class Ranker(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = torch.nn.Embedding(items, dim)
            self.position = torch.nn.Parameter(torch.randn(history + 1, dim) * 0.02)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
            self.top = torch.nn.Sequential(
                torch.nn.Linear(2 * dim + dense, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(),
                torch.nn.Linear(256, 1),
            )

        def forward(self, history_ids: torch.Tensor, target: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            seq = torch.cat([history_ids, target.unsqueeze(1)], 1)
            x = self.item(seq) + self.position
            mask = (seq == 0).to(x.dtype)[:, None, None, :] * -1e9
            for block in self.blocks:
                x = block(x, mask)
            keep = (seq != 0).to(x.dtype).unsqueeze(-1)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
            return self.top(torch.cat([pooled, x[:, -1], context], -1))

    torch.manual_seed(seed)
    model = Ranker().eval()
    example = (torch.randint(1, items, (2, history)), torch.randint(1, items, (2,)), torch.randn(2, dense))
    batch = torch.export.Dim("batch")
    # The exporter narrates its steps on stdout; the benchmark's own log is what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model, example, dynamo=True, input_names=["history", "target", "dense"], output_names=["score"],
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), verbose=False,
        )
    assert program is not None
    return program.model_proto.SerializeToString()


__all__ = ["SequenceRanker"]
