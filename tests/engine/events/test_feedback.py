"""The click-feedback model: true probabilities, position bias, drift and items as the stream has them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.events.feedback import FeedbackSimulator
from engine.events.schemas import Interaction
from engine.events.simulator import Simulator, SimulatorConfig

T0 = 1_700_000_000_000


def _sim(**kw: object) -> Simulator:
    kw.setdefault("start_time_ms", T0)
    kw.setdefault("n_users", 200)
    kw.setdefault("n_items", 100)
    return Simulator(SimulatorConfig(**kw))  # type: ignore[arg-type]


def _within(clicks: float, expected: float, variance: float, z: float = 4.5) -> bool:
    return abs(clicks - expected) <= z * math.sqrt(variance)


def test_respond_shows_every_item_once_with_its_position_and_request() -> None:
    feedback = FeedbackSimulator(_sim(global_bias=3.0), seed=1)  # high CTR: some clicks for sure
    items = ["i3", "i1", "i7", "i2"]
    events = feedback.respond("u5", items, "req-9", T0 + 1_000)
    impressions = [e for e in events if e.event_type == "impression"]
    clicks = [e for e in events if e.event_type == "click"]
    assert [(e.item_id, e.context["position"]) for e in impressions] == [(i, p) for p, i in enumerate(items)]
    assert all(isinstance(e, Interaction) and e.request_id == "req-9" and e.user_id == "u5" for e in events)
    assert all(e.event_time == T0 + 1_000 for e in impressions)
    assert clicks and events == impressions + clicks
    assert [c.event_time for c in clicks] == sorted(c.event_time for c in clicks)
    for c in clicks:
        assert items[c.context["position"]] == c.item_id  # type: ignore[index]
        assert T0 + 1_000 <= c.event_time < T0 + 1_000 + 0.9 * 10_000  # before the label would close


def test_empirical_click_rate_matches_the_true_probability() -> None:
    sim = _sim(global_bias=-1.0, seed=4)
    feedback = FeedbackSimulator(sim, seed=11)
    items = [f"i{k}" for k in range(0, 50, 5)]  # 10 slots
    truth = feedback.probabilities("u3", items, T0)
    n = 4_000
    clicks = np.zeros(len(items))
    delays: list[int] = []
    for r in range(n):
        for e in feedback.respond("u3", items, f"r{r}", T0):
            if e.event_type == "click":
                clicks[e.context["position"]] += 1  # type: ignore[index]
                delays.append(e.event_time - T0)
    for pos, p in enumerate(truth):
        assert _within(clicks[pos], n * p, n * p * (1 - p)), (pos, clicks[pos], n * p)
        assert truth[pos] == pytest.approx(feedback.true_ctr("u3", items[pos], pos))
    # Delays are the simulator's: exponential with mean click_delay_s (the cap at 9 s barely bites).
    assert np.mean(delays) == pytest.approx(1_500, rel=0.1)


def test_position_bias_lowers_the_click_rate() -> None:
    feedback = FeedbackSimulator(_sim(seed=2), seed=3)
    ctr = [feedback.true_ctr("u0", "i1", pos) for pos in range(10)]
    assert all(a > b for a, b in zip(ctr, ctr[1:]))
    # And the clicks follow: the same item gets fewer clicks at the bottom than at the top.
    feedback_hi = FeedbackSimulator(_sim(seed=2, global_bias=0.0, position_bias=0.3), seed=3)
    top = bottom = 0
    for r in range(3_000):
        for pos, e in ((0, feedback_hi.respond("u0", ["i1", "i2"], f"a{r}", T0)),
                       (1, feedback_hi.respond("u0", ["i2", "i1"], f"b{r}", T0))):
            hit = any(x.event_type == "click" and x.item_id == "i1" for x in e)
            top, bottom = (top + hit, bottom) if pos == 0 else (top, bottom + hit)
    assert top > bottom


def _log_likelihood(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))


@pytest.mark.parametrize("seed", [0, 5])
def test_true_ctr_is_the_streams_probability_before_and_after_drift(seed: int) -> None:
    """The simulator's own clicks are calibrated against true_ctr, drift and new items included."""
    sim = _sim(seed=seed, rate=1_000.0, drift_at_s=15.0, drift_fraction=1.0, global_bias=-1.5)
    events = list(sim.events(duration_s=40.0))
    clicked = {e.request_id for e in events if isinstance(e, Interaction) and e.event_type == "click"}
    impressions = [e for e in events if isinstance(e, Interaction) and e.event_type == "impression"
                   and e.event_time < T0 + 30_000]  # their clicks (<= 9 s + lag later) are in
    assert any(int(e.item_id[1:]) >= 100 for e in impressions)  # new items were shown too
    feedback = FeedbackSimulator(sim)
    drift_ms = T0 + 15_000
    for after in (False, True):
        part = [e for e in impressions if (e.event_time >= drift_ms) == after]
        y = np.array([e.request_id in clicked for e in part], dtype=float)
        p_now = np.array([feedback.true_ctr(e.user_id, e.item_id, e.context["position"], e.event_time)  # type: ignore[arg-type]
                          for e in part])
        assert _within(y.sum(), p_now.sum(), float(np.sum(p_now * (1 - p_now)))), (after, y.sum(), p_now.sum())
        if after:  # the pre-drift tastes (at T0: catalogue items only) explain post-drift clicks worse
            old = np.array([int(e.item_id[1:]) < 100 for e in part])
            p_old = np.array([feedback.true_ctr(e.user_id, e.item_id, e.context["position"])  # type: ignore[arg-type]
                              for e, o in zip(part, old) if o])
            assert _log_likelihood(p_now[old], y[old]) > _log_likelihood(p_old, y[old]) + 20
            assert np.mean(np.abs(p_now[old] - p_old)) > 0.02


def test_regret_is_zero_for_the_best_list_and_positive_otherwise() -> None:
    sim = _sim(seed=6, n_items=40)
    feedback = FeedbackSimulator(sim)
    best = feedback.best_list("u2", 5, T0)
    assert len(set(best)) == 5
    assert feedback.regret("u2", best, T0) == pytest.approx(0.0, abs=1e-12)
    # The best list beats every other list of 5 (checked against many random ones).
    rng = np.random.default_rng(0)
    for _ in range(200):
        other = [f"i{k}" for k in rng.choice(40, 5, replace=False)]
        assert feedback.regret("u2", other, T0) >= -1e-12
    worst = sorted(best, key=lambda i: feedback.true_ctr("u2", i, 0))  # best items, worst order
    assert feedback.regret("u2", worst, T0) > 0
    # Restricted candidates: the best of those, in the right order.
    pool = ["i1", "i2", "i3"]
    assert sorted(feedback.best_list("u2", 3, T0, pool)) == pool
    assert feedback.regret("u2", ["i1"], T0, pool) >= 0


def test_items_must_exist_at_the_time_they_are_shown() -> None:
    sim = _sim(n_items=10, new_item_every_s=5.0)
    feedback = FeedbackSimulator(sim)
    with pytest.raises(KeyError, match="does not exist yet"):
        feedback.respond("u1", ["i10"], "r", T0 + 4_999)
    assert len(feedback.respond("u1", ["i10", "i11"], "r", T0 + 10_000)) >= 2  # the first two new items
    assert feedback.best_list("u1", 20, T0 + 10_000)[0] in {f"i{k}" for k in range(12)}
    for bad in ("x3", "i", "i03", "u1"):
        with pytest.raises(KeyError):
            feedback.true_ctr("u1", bad, 0)
    with pytest.raises(KeyError, match="unknown user"):
        feedback.true_ctr("nobody", "i1", 0)
    with pytest.raises(ValueError, match="once"):
        feedback.respond("u1", ["i1", "i1"], "r", T0)


def test_seeded_responses_repeat() -> None:
    sim = _sim(global_bias=0.0)
    a, b, c = FeedbackSimulator(sim, seed=7), FeedbackSimulator(sim, seed=7), FeedbackSimulator(sim, seed=8)
    runs = [[f.respond("u1", ["i1", "i2", "i3"], f"r{k}", T0) for k in range(50)] for f in (a, b, c)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_the_streams_new_items_and_drift_are_the_worlds() -> None:
    """What events() announces and uses is what the feedback model is built from."""
    from engine.events.schemas import ItemUpdate

    sim = _sim(n_items=10, rate=200.0, new_item_every_s=1.0, drift_at_s=3.0)
    updates = [e for e in sim.events(duration_s=6.0) if isinstance(e, ItemUpdate)]
    new = [u for u in updates if int(u.item_id[1:]) >= 10]
    assert [u.item_id for u in new] == [f"i{k}" for k in range(10, 15)]
    for k, update in enumerate(new):
        cat, vec, _, _ = sim.new_item(k)
        assert update.category == f"c{int(cat[0])}"
        noise = np.abs(np.asarray(update.embedding) - vec[0]).max()
        assert noise < 6 * sim.config.embedding_noise * sim.config.dim**-0.25  # a noisy view of the same vector
        assert update.event_time == T0 + 1_000 * (k + 1) and sim.n_items_at(update.event_time) == 11 + k
    assert sim.user_vectors_at(T0 + 2_999) is sim.user_vectors
    assert sim.user_vectors_at(T0 + 3_000) is sim.drifted_user_vectors
    assert not np.array_equal(sim.drifted_user_vectors, sim.user_vectors)
