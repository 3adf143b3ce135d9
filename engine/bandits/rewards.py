"""Bandit rewards from joined examples: a decision's outcome becomes a reward in Redis.

Serving logs every ``Choose`` decision as a prediction record (``model`` = bandit name,
``arm`` set, ``context`` for LinUCB; see :mod:`serving.bandits`). The label join pairs it
with its outcome: a click carrying the decision's ``request_id`` gives label 1.0, the label
window closing without one gives 0.0. :meth:`BanditRewarder.apply` turns a batch of those
joined examples into rewards (reward = ``example.label``) for the bandits' shared state.

Round trips: every reward of a batch -- counter increments of Thompson / UCB1 /
epsilon-greedy and LinUCB's update script alike -- goes into one ``MULTI/EXEC`` pipeline,
so a batch costs one round trip (plus one ``SCRIPT EXISTS`` when it holds a LinUCB reward)
and is applied all-or-nothing. Delivery is what the caller makes it: replaying a batch after
a crash applies its rewards twice (at-least-once).

Usage (needs a Redis server; exercised in ``tests/engine/bandits/test_rewards.py``)::

    rewarder = BanditRewarder(redis.Redis(), load_bandit_specs("bandits.yaml"), prefix="rtml")
    counts = rewarder.apply(joined_examples)   # {"home-banner": 812, "no_arm": 40, ...}
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable, Sequence

import redis

from engine.bandits.spec import BanditSpec
from engine.bandits.store import RedisBandit
from engine.learning.records import JoinedExample

__all__ = ["BanditRewarder"]

log = logging.getLogger(__name__)


class BanditRewarder:
    """Applies joined examples as rewards to the :class:`RedisBandit` of each spec.

    Constructing one creates each bandit's hash if absent (and raises ``ValueError`` when
    Redis holds a different definition under a spec's name).
    """

    def __init__(self, client: redis.Redis, specs: Sequence[BanditSpec], prefix: str = "rtml") -> None:
        self.client = client
        self.bandits: dict[str, RedisBandit] = {spec.name: spec.redis_bandit(client, prefix=prefix) for spec in specs}

    def apply(self, examples: Iterable[JoinedExample]) -> dict[str, int]:
        """Apply every bandit decision among ``examples``; returns counts by outcome.

        Keys: a bandit's name -- rewards applied to it; ``no_arm`` -- not a bandit decision
        (``prediction.arm`` is None: an ordinary model's prediction); ``unknown_bandit`` --
        ``prediction.model`` names no bandit of the specs; ``invalid`` -- an arm the bandit
        does not have, a reward it cannot take (non-finite, or outside [0, 1] for Thompson) or
        a missing or wrong-length LinUCB context; ``error`` -- refused by Redis (the bandit's
        hash was deleted or damaged). Only non-zero counts are present. Redis being
        unreachable raises redis-py's ``ConnectionError`` / ``TimeoutError``, with nothing
        of the batch applied when the ``EXEC`` was not sent.
        """
        counts: Counter[str] = Counter()
        pipe = self.client.pipeline(transaction=True)
        # (bandit name, its first reply, one past its last reply) per queued reward.
        queued: list[tuple[str, int, int]] = []
        replies = 0
        for example in examples:
            prediction = example.prediction
            if prediction.arm is None:
                counts["no_arm"] += 1
                continue
            bandit = self.bandits.get(prediction.model)
            if bandit is None:
                counts["unknown_bandit"] += 1
                continue
            try:
                n = bandit.queue_update(pipe, prediction.arm, example.label, prediction.context)
            except (KeyError, ValueError) as exc:
                counts["invalid"] += 1
                log.debug("bandit %s: reward not applied: %s", prediction.model, exc)
                continue
            queued.append((prediction.model, replies, replies + n))
            replies += n
        if queued:
            results: list[Any] = pipe.execute(raise_on_error=False)
            for name, start, end in queued:
                error = next((r for r in results[start:end] if isinstance(r, Exception)), None)
                if error is None:
                    counts[name] += 1
                else:
                    counts["error"] += 1
                    log.warning("bandit %s: Redis refused a reward: %s", name, error)
        else:
            pipe.reset()
        return dict(counts)
