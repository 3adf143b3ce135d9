"""Model shapes and building blocks."""

from __future__ import annotations

import numpy as np
import torch

from engine.training.models import DeepFM, DenseTransform, FieldEmbedding, LogisticRegression, build_model


def test_field_embedding_uses_offsets_into_one_table() -> None:
    emb = FieldEmbedding([3, 5], dim=2)
    assert emb.table.num_embeddings == 8
    out = emb(torch.tensor([[2, 4]]))
    torch.testing.assert_close(out[0, 0], emb.table.weight[2])
    torch.testing.assert_close(out[0, 1], emb.table.weight[3 + 4])


def test_dense_transform_standardises_signed_log() -> None:
    x = np.random.default_rng(0).lognormal(2, 1, (1_000, 3)).astype(np.float32)
    t = DenseTransform(3).fit(x)
    z = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)


def test_rankers_output_one_logit_per_row_even_without_fields() -> None:
    dense, sparse = torch.rand(5, 4), torch.randint(0, 3, (5, 2))
    for m in (LogisticRegression(4, [3, 3]), DeepFM(4, [3, 3], embed_dim=4, hidden=(8, 4))):
        assert m(dense, sparse).shape == (5,)
    m = DeepFM(4, [], embed_dim=4, hidden=(8,))
    assert m(dense, torch.zeros(5, 0, dtype=torch.long)).shape == (5,)


def test_fm_term_equals_sum_of_pairwise_products() -> None:
    torch.manual_seed(0)
    m = DeepFM(1, [4, 4, 4], embed_dim=3, hidden=(2,))
    with torch.no_grad():
        e = m.embedding(torch.tensor([[1, 2, 3]]))[0]
    pairs = sum(float(e[i] @ e[j]) for i in range(3) for j in range(i + 1, 3))
    fm = 0.5 * (e.sum(0).pow(2) - e.pow(2).sum(0)).sum()
    assert abs(float(fm) - pairs) < 1e-6


def test_two_tower_vectors_are_unit_length() -> None:
    m = build_model("two_tower", 2, [5], {"embed_dim": 4, "hidden": [8], "out_dim": 6}, 3, [7])
    v = m.item_tower(torch.rand(4, 3), torch.randint(0, 7, (4, 1)))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4))
