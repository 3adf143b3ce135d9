"""Exploration slots are rewarded by clicks through the learning dataflow (no new reward code)."""

from __future__ import annotations

import pytest

from engine.bandits.spec import parse_bandit_specs
from serving.recommend.config import ExplorationConfig
from tests.dataflows.test_learning_flow import T0, Topics, prediction, produce


@pytest.mark.slow
def test_clicked_explored_items_gain_posterior_mass(stack, unique_topic, tmp_path, redis_client) -> None:
    topics = Topics(unique_topic, stack, tmp_path, label_window_ms=5_000, out_of_orderness_ms=0)
    # The entry docs/recommend.md asks the learning config's bandit file to hold.
    specs = parse_bandit_specs("bandits: [{name: rec-explore, policy: thompson, dynamic_arms: true, "
                               "params: {prior_alpha: 1, prior_beta: 1}}]")
    spec = specs[0]
    assert spec == ExplorationConfig(slots=2).bandit_spec()
    preds, events = [], []
    for i in range(10):
        t = T0 + i * 1000
        # One response, two explored slots, as serving logs them: one decision per slot.
        for item in ("new-a", "new-b"):
            preds.append(prediction(f"r{i}", t, {}, model=spec.name, variant="bandit", arm=item, score=None,
                                    entity_ids={"user_id": "u1", "item_id": item}))
        if i % 2 == 0:  # new-a clicked in half the responses; new-b never
            events.append({"user_id": "u1", "item_id": "new-a", "event_type": "click", "event_time": t + 300,
                           "request_id": f"r{i}"})
    preds.append(prediction("tick", T0 + 100_000, {}, model="other"))
    events.append({"user_id": "u", "item_id": "x", "event_type": "view", "event_time": T0 + 100_000})
    produce(stack.bootstrap, topics.predictions, preds)
    produce(stack.bootstrap, topics.events, events)
    produce(stack.bootstrap, topics.labels, [{"request_id": "tick", "label": 0.0, "event_time": T0 + 100_000}])
    topics.run([], bandits=specs, snapshots=False)
    bandit = specs[0].redis_bandit(redis_client, prefix="rtml")
    alpha, beta = bandit.posteriors(["new-a", "new-b", "never-shown"])
    assert alpha.tolist() == [1 + 5, 1, 1] and beta.tolist() == [1 + 5, 1 + 10, 1]
