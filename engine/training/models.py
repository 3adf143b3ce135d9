"""Torch models: logistic regression, DeepFM and a two-tower retriever.

Every ranker takes ``forward(dense float32[B, n_dense], sparse int64[B, n_fields])`` and
returns the click logit ``float32[B]``. Sparse fields share one ``nn.Embedding`` with
per-field row offsets (one gather for all fields instead of one table per field). Dense
inputs pass through :class:`DenseTransform` (signed ``log1p`` then standardisation with
statistics fitted on the training split and kept as buffers), so the exported graph
carries its own preprocessing.

>>> m = DeepFM(n_dense=3, field_dims=[10, 5], embed_dim=4, hidden=(8,))
>>> m(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long)).shape
torch.Size([2])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class DenseTransform(nn.Module):
    """``(sign(x) * log1p(|x|) - mean) / std``; ``fit`` sets mean/std from data."""

    def __init__(self, n_dense: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_dense))
        self.register_buffer("std", torch.ones(n_dense))

    def fit(self, dense: np.ndarray) -> "DenseTransform":
        x = np.sign(dense) * np.log1p(np.abs(dense.astype(np.float64)))
        if x.shape[0]:
            self.mean.copy_(torch.from_numpy(x.mean(0)).float())
            self.std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-6)).float())
        return self

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return (torch.sign(dense) * torch.log1p(torch.abs(dense)) - self.mean) / self.std


class FieldEmbedding(nn.Module):
    """All fields' embeddings in one table; field f's bucket b is row ``offset[f] + b``."""

    def __init__(self, field_dims: Sequence[int], dim: int) -> None:
        super().__init__()
        offsets = np.concatenate(([0], np.cumsum(field_dims)[:-1])) if len(field_dims) else np.zeros(0)
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long))
        self.table = nn.Embedding(max(int(sum(field_dims)), 1), dim)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:  # [B, F] -> [B, F, dim]
        return self.table(sparse + self.offsets)


def mlp(n_in: int, hidden: Sequence[int], n_out: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU(-Dropout) layers, then a linear output."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class LogisticRegression(nn.Module):
    """Bias + linear dense part + one weight per (field, bucket)."""

    def __init__(self, n_dense: int, field_dims: Sequence[int]) -> None:
        super().__init__()
        self.dense_transform = DenseTransform(n_dense)
        self.dense_linear = nn.Linear(n_dense, 1)
        self.weights = FieldEmbedding(field_dims, 1)
        nn.init.zeros_(self.weights.table.weight)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.dense_linear(self.dense_transform(dense)).squeeze(-1) + self.weights(sparse).sum(dim=(1, 2))


class DeepFM(nn.Module):
    """DeepFM (Guo et al. 2017): first-order terms + FM pairwise term + an MLP over the
    concatenated field embeddings and dense inputs, all sharing one embedding table."""

    def __init__(self, n_dense: int, field_dims: Sequence[int], embed_dim: int = 8,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = LogisticRegression(n_dense, field_dims)
        self.embedding = FieldEmbedding(field_dims, embed_dim)
        nn.init.normal_(self.embedding.table.weight, std=0.01)
        self.deep = mlp(len(field_dims) * embed_dim + n_dense, hidden, 1, dropout)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        e = self.embedding(sparse)  # [B, F, k]
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        deep_in = torch.cat([e.flatten(1), self.linear.dense_transform(dense)], dim=1)
        return self.linear(dense, sparse) + fm + self.deep(deep_in).squeeze(-1)


class Tower(nn.Module):
    """One side of the two-tower model: embeddings + dense -> MLP -> L2-normalised vector."""

    def __init__(self, n_dense: int, field_dims: Sequence[int], embed_dim: int, hidden: Sequence[int],
                 out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense_transform = DenseTransform(n_dense)
        self.embedding = FieldEmbedding(field_dims, embed_dim)
        nn.init.normal_(self.embedding.table.weight, std=0.05)
        self.net = mlp(len(field_dims) * embed_dim + n_dense, hidden, out_dim, dropout)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embedding(sparse).flatten(1), self.dense_transform(dense)], dim=1)
        return nn.functional.normalize(self.net(x), dim=-1)


class TwoTower(nn.Module):
    """User and item towers; the score of a pair is the dot product of their vectors.

    >>> m = TwoTower(2, [5], 1, [7, 3], embed_dim=4, hidden=(8,), out_dim=6)
    >>> u = m.user_tower(torch.zeros(3, 2), torch.ones(3, 1, dtype=torch.long))
    >>> u.shape, round(float(u.detach().norm(dim=1)[0]), 4)
    (torch.Size([3, 6]), 1.0)
    """

    def __init__(self, user_n_dense: int, user_field_dims: Sequence[int], item_n_dense: int,
                 item_field_dims: Sequence[int], embed_dim: int = 16, hidden: Sequence[int] = (128,),
                 out_dim: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.user_tower = Tower(user_n_dense, user_field_dims, embed_dim, hidden, out_dim, dropout)
        self.item_tower = Tower(item_n_dense, item_field_dims, embed_dim, hidden, out_dim, dropout)

    def forward(self, user_dense: torch.Tensor, user_sparse: torch.Tensor, item_dense: torch.Tensor,
                item_sparse: torch.Tensor) -> torch.Tensor:
        return (self.user_tower(user_dense, user_sparse) * self.item_tower(item_dense, item_sparse)).sum(-1)


def build_model(kind: str, n_dense: int, field_dims: Sequence[int], params: dict,
                item_n_dense: int = 0, item_field_dims: Sequence[int] = ()) -> nn.Module:
    """The architecture of ``kind`` from a run's shapes and hyper-parameters (``TrainConfig`` dict).

    >>> type(build_model("lr", 2, [4], {})).__name__
    'LogisticRegression'
    """
    hidden = tuple(params.get("hidden", (128, 64)))
    if kind == "lr":
        return LogisticRegression(n_dense, field_dims)
    if kind == "deepfm":
        return DeepFM(n_dense, field_dims, params.get("embed_dim", 8), hidden, params.get("dropout", 0.0))
    if kind == "two_tower":
        return TwoTower(n_dense, field_dims, item_n_dense, item_field_dims, params.get("embed_dim", 8), hidden,
                        params.get("out_dim", 32), params.get("dropout", 0.0))
    raise ValueError(f"unknown model kind {kind!r}")
