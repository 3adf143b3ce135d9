"""Thompson sampling over arms that come and go: one Beta posterior per item, in Redis.

:class:`~engine.bandits.store.RedisBandit` keeps a fixed arm list (positions in the hash);
exploration over a catalogue cannot: items appear every minute and the candidates differ per
request. A :class:`DynamicThompson` stores only what rewards added, per arm, in one hash
``<prefix>:bandit:<name>`` (the same key scheme):

============== ===================================================================
field          value
============== ===================================================================
``meta``       JSON ``{"kind": "thompson", "dynamic_arms": true, "params"}`` (``HSETNX``)
``version``    integer, +1 per applied reward
``a:<arm>``    sum of rewards of the arm (``HINCRBYFLOAT``)
``b:<arm>``    sum of ``1 - reward`` of the arm
============== ===================================================================

The posterior of an arm is ``Beta(prior_alpha + a, prior_beta + b)``; an arm never rewarded
has the prior, so nothing is written when an arm is first chosen. A reward is two
increments plus the version, queued on the caller's pipeline (:meth:`queue_update`, the
signature :class:`~engine.bandits.rewards.BanditRewarder` calls), so the learning dataflow
rewards these bandits exactly as the fixed-arm ones.

Serving reads the posteriors of a request's candidates with one ``HMGET``
(:meth:`read_command`, pipelined with the request's feature reads) and decides locally
(:func:`choose_among`).

>>> import numpy as np
>>> alpha, beta = posteriors([b"3", None, b"1", None], 2, prior_alpha=1.0, prior_beta=1.0)
>>> alpha.tolist(), beta.tolist()
([4.0, 1.0], [2.0, 1.0])
>>> choose_among(["x", "y", "z"], np.array([50.0, 1.0, 1.0]), np.array([1.0, 50.0, 50.0]), 1,
...              np.random.default_rng(0))
['x']
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import redis

from engine.bandits.policies import RngLike, _rng
from engine.bandits.store import META, VERSION, bandit_key

__all__ = ["DynamicThompson", "choose_among", "posteriors"]

KIND = "thompson"


def posteriors(
    reply: Sequence[bytes | str | None], n: int, *, prior_alpha: float, prior_beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters of ``n`` arms from an HMGET reply ``[a_1..a_n, b_1..b_n]``."""
    values = np.array([0.0 if v is None else float(v) for v in reply], dtype=np.float64)
    return prior_alpha + values[:n], prior_beta + values[n:2 * n]


def choose_among(
    arms: Sequence[str], alpha: np.ndarray, beta: np.ndarray, n: int, rng: np.random.Generator
) -> list[str]:
    """The ``n`` arms with the highest posterior draws (one draw per arm), best first."""
    if n <= 0 or not arms:
        return []
    draws = rng.beta(alpha, beta)
    order = np.argsort(-draws, kind="stable")[:n]
    return [arms[i] for i in order]


class DynamicThompson:
    """A Beta-Bernoulli Thompson bandit over any string arms, state in Redis (module docstring).

    Constructing one writes ``meta`` if absent and raises ``ValueError`` when the hash holds
    another bandit (different kind or params), like :class:`~engine.bandits.store.RedisBandit`.
    """

    kind = KIND

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        prefix: str = "rtml",
        rng: RngLike = None,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("Beta prior parameters must be positive")
        self.client = client
        self.name = name
        self.key = bandit_key(prefix, name)
        self.rng = _rng(rng)
        self.prior_alpha, self.prior_beta = float(prior_alpha), float(prior_beta)
        self._meta = {"kind": KIND, "dynamic_arms": True,
                      "params": {"prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta}}
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(self.key, META, json.dumps(self._meta))
        pipe.hsetnx(self.key, VERSION, 0)
        pipe.hget(self.key, META)
        stored = json.loads(pipe.execute()[-1])
        if stored != self._meta:
            raise ValueError(f"{self.key} holds a different bandit: {stored!r}, not {self._meta!r}")

    def read_command(self, arms: Sequence[str]) -> tuple[Any, ...]:
        """The HMGET whose reply :func:`posteriors` decodes (for a caller's own pipeline)."""
        return ("HMGET", self.key, *[f"a:{a}" for a in arms], *[f"b:{a}" for a in arms])

    def posteriors(self, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(alpha, beta)`` of ``arms`` as stored now (one round trip)."""
        if not arms:
            return np.zeros(0), np.zeros(0)
        reply = self.client.execute_command(*self.read_command(arms))
        return posteriors(reply, len(arms), prior_alpha=self.prior_alpha, prior_beta=self.prior_beta)

    def choose_n(self, arms: Sequence[str], n: int) -> list[str]:
        """``n`` of ``arms`` by Thompson sampling on their stored posteriors."""
        alpha, beta = self.posteriors(arms)
        return choose_among(arms, alpha, beta, n, self.rng)

    def queue_update(self, pipe: Any, arm: Any, reward: float, context: Any = None) -> int:
        """Queue one reward on ``pipe`` (no I/O); returns the number of commands queued.

        ``ValueError`` for a reward outside [0, 1] (nothing queued); ``context`` is ignored.
        """
        reward = float(reward)
        if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise ValueError(f"Thompson sampling needs rewards in [0, 1], got {reward}")
        arm = str(arm)
        pipe.hincrbyfloat(self.key, f"a:{arm}", reward)
        pipe.hincrbyfloat(self.key, f"b:{arm}", 1.0 - reward)
        pipe.hincrby(self.key, VERSION, 1)
        return 3

    def update(self, arm: Any, reward: float, context: Any = None) -> int:
        """Apply one reward atomically; returns the new stored version."""
        pipe = self.client.pipeline(transaction=True)
        self.queue_update(pipe, arm, reward)
        return int(pipe.execute()[-1])

    def __repr__(self) -> str:
        return f"DynamicThompson({self.key!r}, prior=({self.prior_alpha}, {self.prior_beta}))"
