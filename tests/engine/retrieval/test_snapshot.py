"""save / load: the same answers, metas and pending changes, without a rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.retrieval.catalog import ItemMeta
from engine.retrieval.index import IndexConfig, ItemIndex
from tests.engine.retrieval.helpers import clustered, ids


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_round_trip(tmp_path: Path, kind: str) -> None:
    dim = 16
    x = clustered(1_000, dim, seed=30)
    index = ItemIndex(IndexConfig(dim=dim, kind=kind, use_gpu="never", auto_rebuild=False))
    index.upsert(ids(1_000), x, [ItemMeta(i, "cat", 100, 200) for i in ids(1_000)])
    index.rebuild()
    index.upsert(["i3", "late"], np.stack([-x[3], x[4]]))  # pending: a replacement and an addition
    index.remove(["i5"])
    path = index.save(tmp_path / "idx.npz")

    loaded = ItemIndex.load(path)
    assert loaded.stats()["index"] == index.stats()["index"]
    assert (loaded.generation, len(loaded), loaded.stats()["main_dead"]) == (1, 1_000, 2)
    assert loaded.search(x[:50], 10) == index.search(x[:50], 10)
    assert loaded.meta(["i0", "i5", "late"]) == index.meta(["i0", "i5", "late"])
    np.testing.assert_array_equal(loaded.vectors(["i3", "late"]), index.vectors(["i3", "late"]))
    loaded.upsert(["i5"], x[5:6])  # still a working index
    loaded.rebuild()
    assert loaded.search(x[5:6], 1)[0][0][0] == "i5"

    with pytest.raises(ValueError, match="dim"):
        ItemIndex.load(path, IndexConfig(dim=dim + 1, kind=kind))
    knobs = ItemIndex.load(path, IndexConfig(dim=dim, kind=kind, ef_search=200, nprobe=4, use_gpu="never"))
    assert knobs.config.ef_search == 200


def test_empty_round_trip(tmp_path: Path) -> None:
    index = ItemIndex(IndexConfig(dim=4, use_gpu="never"))
    loaded = ItemIndex.load(index.save(tmp_path / "e.npz"))
    assert len(loaded) == 0 and loaded.search(np.ones((1, 4)), 3) == [[]]
