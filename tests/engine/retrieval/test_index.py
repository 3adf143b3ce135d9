"""ItemIndex semantics: upsert / replace / remove / exclude, before and after rebuilds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.retrieval.catalog import ItemMeta
from engine.retrieval.index import IndexConfig, ItemIndex
from tests.engine.retrieval.helpers import clustered, ids

DIM = 16


def make(kind: str = "hnsw", **kw) -> ItemIndex:
    return ItemIndex(IndexConfig(dim=DIM, kind=kind, use_gpu="never", auto_rebuild=False, **kw), clock=lambda: 7)


def top_ids(index: ItemIndex, q: np.ndarray, k: int, **kw) -> list[list[str]]:
    return [[i for i, _ in row] for row in index.search(q, k, **kw)]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "flat"])
@pytest.mark.parametrize("built", [False, True])
def test_replace_remove_exclude(kind: str, built: bool) -> None:
    x = clustered(600, DIM, seed=1)
    index = make(kind)
    index.upsert(ids(600), x)
    if built:
        index.rebuild()
        assert index.generation == 1 and index.stats()["delta_rows"] == 0
    # Each item finds itself first.
    assert [row[0] for row in top_ids(index, x[:20], 1)] == ids(20)

    # Replace i0 with a far-away vector: its old vector must never match it again.
    new = -x[0]
    index.upsert(["i0"], new[None])
    # HNSW on inner product does not reach every node when k ~ n: "everything" is exact only elsewhere.
    exhaustive = kind != "hnsw" or not built
    found = index.search(x[:1], 600)[0]
    by_id = dict(found)
    assert len(found) == len(by_id)  # no stale duplicate of i0
    assert len(found) == 600 or not exhaustive
    assert by_id.get("i0", float(new @ x[0])) == pytest.approx(float(new @ x[0]), abs=1e-4)
    assert "i0" not in top_ids(index, x[:1], 50)[0]
    assert top_ids(index, new[None], 1)[0] == ["i0"]
    np.testing.assert_allclose(index.vectors(["i0", "nope"]), np.stack([new, np.zeros(DIM)]), atol=1e-6)

    # Remove: never returned, even when asking for everything.
    assert index.remove(["i1", "i2", "i1", "missing"]) == 2
    everything = top_ids(index, x[1:3], 1000)
    assert all("i1" not in row and "i2" not in row for row in everything)
    assert all(len(row) == 598 for row in everything) or not exhaustive
    assert len(index) == 598 and index.meta(["i1"]) == [None]

    # Exclusions still give k results, best first.
    own = top_ids(index, x[3:4], 30)[0]
    excluded = set(own[:25])
    got = index.search(x[3:4], 10, exclude=[excluded])[0]
    assert len(got) == 10 and not excluded & {i for i, _ in got}
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@pytest.mark.parametrize("built", [False, True])
def test_k_is_filled_through_many_tombstones(built: bool) -> None:
    """Dead rows crowding the head of the main index or the delta must not shorten answers."""
    x = clustered(400, DIM, seed=2, clusters=4)
    index = make("flat")
    index.upsert(ids(400), x)
    if built:
        index.rebuild()
    order = top_ids(index, x[:1], 400)[0]
    index.remove(order[:150])  # the 150 best matches of the query are gone
    got = top_ids(index, x[:1], 20)[0]
    assert got == order[150:170]


def test_batch_last_wins_and_metas() -> None:
    index = make("flat")
    v = np.eye(DIM, dtype=np.float32)
    index.upsert(["a", "a", "b"], v[:3], [ItemMeta("a", "x", 5, 5), ItemMeta("a", "y", 6, 6), ItemMeta("b", None, 1, 1)])
    assert len(index) == 2 and top_ids(index, v[1:2], 1) == [["a"]]
    assert index.meta(["a"])[0] == ItemMeta("a", "y", 6, 6)
    index.upsert(["a"], v[4:5], [ItemMeta("a", "z", 9, 9)])
    assert index.meta(["a"])[0] == ItemMeta("a", "z", 6, 9)  # first seen kept
    index.upsert(["b"], v[5:6])  # no meta: category kept, updated now (clock 7)
    assert index.meta(["b"])[0] == ItemMeta("b", None, 1, 7)
    with pytest.raises(ValueError, match="shape"):
        index.upsert(["c"], np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="finite"):
        index.upsert(["c"], np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match="metas"):
        index.upsert(["c"], v[:1], [ItemMeta("d", None, 1, 1)])


def test_changes_during_a_build_are_carried_over() -> None:
    """Upserts/removals that land between the snapshot and the swap survive the swap."""
    x = clustered(300, DIM, seed=3)
    index = make("hnsw")
    index.upsert(ids(300), x)
    real_build = index._build

    def build_with_interference(plan):
        out = real_build(plan)
        index.upsert(["i5", "new"], np.stack([-x[5], x[6]]))  # replaced + added mid-build
        index.remove(["i7"])
        return out

    index._build = build_with_interference  # type: ignore[method-assign]
    index.rebuild()
    assert index.generation == 1
    assert top_ids(index, x[7:8], 300)[0].count("i7") == 0
    assert dict(index.search(x[5:6], 301)[0])["i5"] == pytest.approx(float(-x[5] @ x[5]), abs=1e-4)
    assert set(top_ids(index, x[6:7], 2)[0]) == {"i6", "new"}
    stats = index.stats()
    assert stats["main_dead"] == 2 and stats["delta_rows"] == 2 and stats["size"] == 300


def test_l2_metric_scores_are_negative_distances() -> None:
    index = ItemIndex(IndexConfig(dim=2, metric="l2", kind="flat", use_gpu="never"))
    index.upsert(["a", "b"], np.array([[0, 0], [3, 4]], np.float32))
    index.rebuild()
    index.upsert(["c"], np.array([[1, 0]], np.float32))
    assert index.search(np.array([[0, 0]], np.float32), 3)[0] == [("a", 0.0), ("c", -1.0), ("b", -25.0)]


def test_background_rebuild_starts_at_threshold() -> None:
    index = ItemIndex(IndexConfig(dim=DIM, kind="flat", use_gpu="never", rebuild_after=50))
    x = clustered(120, DIM, seed=4)
    index.upsert(ids(40), x[:40])
    assert not index.maybe_rebuild()
    index.upsert(ids(80)[40:], x[40:80])  # 80 pending >= 50: a rebuild starts in the background
    index.close()
    assert index.generation == 1 and index.stats()["main_rows"] == 80
    assert top_ids(index, x[:3], 1) == [["i0"], ["i1"], ["i2"]]


def test_gpu_always_without_gpu_raises() -> None:
    with pytest.raises(RuntimeError, match="no GPU"):
        ItemIndex(IndexConfig(dim=4, use_gpu="always"))


def test_bad_queries() -> None:
    index = make("flat")
    with pytest.raises(ValueError, match="queries"):
        index.search(np.ones((1, DIM + 1)), 3)
    with pytest.raises(ValueError, match="exclude"):
        index.search(np.ones((2, DIM)), 3, exclude=[set()])
    assert index.search(np.ones((2, DIM)), 3) == [[], []]


def test_delta_items_do_not_hide_better_main_items_behind_tombstones() -> None:
    """Main rows past the first fetch that beat the delta's answers are fetched (exact main: exact answer)."""
    x = clustered(400, DIM, seed=5, clusters=4)
    index = make("flat")
    index.upsert(ids(400), x)
    index.rebuild()
    order = top_ids(index, x[:1], 400)[0]
    index.remove(order[:15])  # the first fetch (k + k tombstones = 20 rows) holds only 5 live ones
    index.upsert([f"copy{j}" for j in range(10)], index.vectors(order[30:40]))  # delta: ranks 30..39
    assert top_ids(index, x[:1], 10)[0] == order[15:25]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_answers_equal_brute_force_under_random_churn(seed: int) -> None:
    """With an exact main index, every answer is exactly the top k of the live items minus exclusions."""
    rng = np.random.default_rng(seed)
    x = clustered(500, DIM, seed=seed, clusters=5)
    index = make("flat")
    index.upsert(ids(500), x)
    index.rebuild()
    queries = clustered(20, DIM, seed=seed + 100, clusters=5)
    for step in range(6):
        victims = [f"i{j}" for j in rng.choice(500, 40, replace=False)]
        index.remove(victims[:20])
        index.upsert(victims[20:], clustered(20, DIM, seed=seed * 10 + step, clusters=5))
        live_ids, live = index.items()
        scores = queries @ live.T
        exclude = [set(rng.choice(live_ids, 15, replace=False).tolist()) for _ in queries]
        for row, (got, ex) in enumerate(zip(index.search(queries, 10, exclude=exclude), exclude)):
            allowed = [j for j in range(len(live_ids)) if live_ids[j] not in ex]
            want = np.sort(scores[row][allowed])[::-1][:10]  # compare scores: equal scores may swap ids
            np.testing.assert_allclose([s for _, s in got], want, rtol=1e-5, atol=1e-6)
            assert not ex & {i for i, _ in got} and len({i for i, _ in got}) == 10
