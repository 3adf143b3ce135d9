"""Clicks on *served* recommendations, from the simulator's hidden preference model.

:class:`~engine.events.simulator.Simulator` invents both the recommendations and the
clicks. To evaluate a real recommender (bandit regret, A/B tests, the demo), the lists
must come from the recommender and only the user's reaction from the simulator:
:class:`FeedbackSimulator` answers a shown list with one impression per item and clicks
drawn with the true probabilities -- the same :func:`~engine.events.simulator.click_probability`,
user tastes (drifted after ``drift_at_s``), items (new ones included) and click delays
as the simulator's own stream.

>>> from engine.events.simulator import Simulator, SimulatorConfig
>>> sim = Simulator(SimulatorConfig(n_users=20, n_items=30, start_time_ms=1_700_000_000_000, seed=3))
>>> feedback = FeedbackSimulator(sim, seed=0)
>>> shown = feedback.respond("u1", ["i4", "i7", "i9"], "req-1", now_ms=1_700_000_000_000)
>>> [(e.event_type, e.item_id, e.context["position"]) for e in shown][:3]
[('impression', 'i4', 0), ('impression', 'i7', 1), ('impression', 'i9', 2)]
>>> round(feedback.regret("u1", feedback.best_list("u1", 3, 1_700_000_000_000), 1_700_000_000_000), 12)
0.0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from engine.events.schemas import Interaction
from engine.events.simulator import Simulator, click_delays_ms, click_probability


class FeedbackSimulator:
    """A simulated user population reacting to the lists a recommender shows.

    ``seed`` draws the clicks and their delays (None: derived from the simulator's seed);
    the preferences themselves are ``sim``'s. Times are epoch ms of event time.
    """

    def __init__(self, sim: Simulator, seed: int | None = None) -> None:
        self.sim = sim
        # Clicks get their own stream, distinct from the simulator's world and traffic.
        self._rng = np.random.default_rng([sim.config.seed, 0xFEED] if seed is None else seed)
        self._user_index = {uid: i for i, uid in enumerate(sim.user_ids)}
        # Hidden vectors and biases of every item seen so far (new items appended on demand).
        self._item_vectors = np.array(sim.item_vectors)
        self._item_bias = np.array(sim.item_bias)

    # -- the true model ---------------------------------------------------------------------

    def _item_indices(self, items: Sequence[str], now_ms: float) -> np.ndarray:
        n_items = self.sim.n_items_at(now_ms)
        indices = []
        for item in items:
            index = int(item[1:]) if item[1:].isdigit() else -1
            if index < 0 or self.sim.item_id(index) != item:
                raise KeyError(f"unknown item {item!r}")
            if index >= n_items:
                raise KeyError(f"item {item!r} does not exist yet at {now_ms:.0f} ms ({n_items} items then)")
            indices.append(index)
        top = max(indices, default=-1)
        while top >= len(self._item_bias):
            _, vec, bias, _ = self.sim.new_item(len(self._item_bias) - self.sim.config.n_items)
            self._item_vectors = np.vstack([self._item_vectors, vec])
            self._item_bias = np.concatenate([self._item_bias, bias])
        return np.asarray(indices, dtype=np.int64)

    def _user_vector(self, user_id: str, now_ms: float) -> np.ndarray:
        try:
            index = self._user_index[user_id]
        except KeyError:
            raise KeyError(f"unknown user {user_id!r}") from None
        return self.sim.user_vectors_at(now_ms)[index]

    def _affinity(self, user_id: str, items: Sequence[str], now_ms: float) -> np.ndarray:
        indices = self._item_indices(items, now_ms)
        return self._item_vectors[indices] @ self._user_vector(user_id, now_ms) + self._item_bias[indices]

    def probabilities(
        self, user_id: str, items: Sequence[str], now_ms: float, positions: Sequence[int] | None = None
    ) -> np.ndarray:
        """True click probability of each item, shown at ``positions`` (default: its place in ``items``)."""
        slots = np.arange(len(items)) if positions is None else np.asarray(positions)
        return click_probability(self._affinity(user_id, items, now_ms), slots, self.sim.config)

    def true_ctr(self, user_id: str, item_id: str, position: int, now_ms: float | None = None) -> float:
        """P(click) of ``item_id`` shown to ``user_id`` at slot ``position`` at ``now_ms``.

        ``now_ms`` None means the simulator's start (before any drift).
        """
        at = self.sim.start_time_ms if now_ms is None else now_ms
        return float(self.probabilities(user_id, [item_id], at, [position])[0])

    # -- regret ---------------------------------------------------------------------------

    def expected_clicks(self, user_id: str, items: Sequence[str], now_ms: float) -> float:
        """Expected clicks on ``items`` shown in this order."""
        return float(self.probabilities(user_id, items, now_ms).sum())

    def best_list(
        self, user_id: str, k: int, now_ms: float, candidates: Sequence[str] | None = None
    ) -> list[str]:
        """The ``k`` items (of ``candidates``; default every item at ``now_ms``) with the most expected clicks.

        Solved as an assignment of items to slots, which stays exact whatever the
        shape of the click curve (sorting by affinity is only optimal where it is convex).
        """
        pool = list(candidates) if candidates is not None else [
            self.sim.item_id(i) for i in range(self.sim.n_items_at(now_ms))
        ]
        k = min(k, len(pool))
        if k <= 0:
            return []
        affinity = self._affinity(user_id, pool, now_ms)
        gain = click_probability(affinity[None, :], np.arange(k)[:, None], self.sim.config)  # [slot, item]
        slots, chosen = linear_sum_assignment(gain, maximize=True)
        return [pool[c] for _, c in sorted(zip(slots, chosen))]

    def regret(
        self, user_id: str, items: Sequence[str], now_ms: float, candidates: Sequence[str] | None = None
    ) -> float:
        """Expected clicks of the best list of the same length minus those of ``items`` (>= 0)."""
        best = self.best_list(user_id, len(items), now_ms, candidates)
        return self.expected_clicks(user_id, best, now_ms) - self.expected_clicks(user_id, items, now_ms)

    # -- feedback -------------------------------------------------------------------------

    def respond(self, user_id: str, items: list[str], request_id: str, now_ms: int) -> list[Interaction]:
        """The user's reaction to ``items`` shown at ``now_ms`` in this order.

        One impression per item at ``now_ms`` (context ``position``, the request id), then
        the clicks drawn with the true probabilities, each a click delay later, in time order.
        """
        if len(set(items)) != len(items):
            raise ValueError(f"items: a list shows each item once; got {items}")
        p = self.probabilities(user_id, items, now_ms)
        clicked = self._rng.random(len(items)) < p
        delays = click_delays_ms(self._rng, len(items), self.sim.config)
        events = [
            Interaction(user_id, item, "impression", now_ms, {"position": pos}, request_id)
            for pos, item in enumerate(items)
        ]
        clicks = [
            Interaction(user_id, items[pos], "click", now_ms + int(delays[pos]), {"position": pos}, request_id)
            for pos in np.flatnonzero(clicked).tolist()
        ]
        return events + sorted(clicks, key=lambda e: e.event_time)


__all__ = ["FeedbackSimulator"]
