"""Bandit policies with one small protocol: ``choose`` / ``update`` / ``state`` / ``from_state``.

``choose_n(n, exclude, context)`` picks ``n`` distinct arms (exploration slots) by repeated
choice, each time among the arms neither excluded nor chosen already; ``choose_n(1)`` makes
the same decision, from the same random draws, as ``choose()``.

Every policy keeps its statistics in numpy arrays indexed by arm position, draws
randomness only from the :class:`numpy.random.Generator` it was given, and can be
snapshotted to a JSON-able dict (``state()``) and rebuilt from it (``from_state``).

* :class:`ThompsonSampling` -- Beta-Bernoulli posterior per arm (counters ``alpha``, ``beta``).
* :class:`UCB1` -- Auer et al. 2002 (counters ``n``, ``s``).
* :class:`EpsilonGreedy` -- greedy on the empirical mean, uniform arm with probability epsilon
  (counters ``n``, ``s``).
* :class:`LinUCB` -- disjoint contextual LinUCB, one ridge regression per arm
  (``A = l2_lambda*I + sum x x^T``, ``b = sum r x``). Its arithmetic and tie-breaking follow
  MABWiser's ``LearningPolicy.LinUCB`` (``mabwiser/linear.py``): ``A_inv = inv(A)``,
  ``theta = A_inv @ b``, ``score = x.theta + alpha*sqrt(sum((x @ A_inv) * x))``, and the
  first arm (in ``arms`` order) with the highest score wins (``np.argmax``).

The counter policies expose ``COUNTERS`` and :meth:`CounterPolicy.deltas` so a store can
apply a reward as plain atomic increments (see :mod:`engine.bandits.store`).

>>> import numpy as np
>>> policy = ThompsonSampling(["a", "b"], rng=np.random.default_rng(0))
>>> for _ in range(200):
...     arm = policy.choose()
...     policy.update(arm, 1.0 if arm == "b" else 0.0)
>>> policy.choose()
'b'
>>> clone = ThompsonSampling.from_state(policy.state(), rng=np.random.default_rng(0))
>>> clone.state() == policy.state()
True
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Hashable, Iterable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

Arm = Hashable  # in practice str or int: arms must survive a JSON round trip for the store
RngLike = np.random.Generator | int | None

__all__ = [
    "Arm",
    "Policy",
    "CounterPolicy",
    "ThompsonSampling",
    "UCB1",
    "EpsilonGreedy",
    "LinUCB",
    "POLICIES",
    "make_policy",
    "policy_from_state",
]

P = TypeVar("P", bound="_Base")


@runtime_checkable
class Policy(Protocol):
    """What every bandit policy (and :class:`engine.bandits.store.RedisBandit`) offers."""

    arms: list[Arm]

    def choose(self, context: Any = None) -> Arm:
        """Pick an arm (``context`` is a 1-D feature vector for contextual policies)."""
        ...

    def choose_n(self, n: int = 1, exclude: Iterable[Arm] = (), context: Any = None) -> list[Arm]:
        """``n`` distinct arms, best first, none of them in ``exclude``."""
        ...

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        """Learn from the reward observed after playing ``arm``."""
        ...

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot: ``{"kind", "arms", "params", ...statistics}``."""
        ...


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class _Base:
    kind: ClassVar[str] = ""

    def __init__(self, arms: Sequence[Arm], rng: RngLike = None) -> None:
        self.arms: list[Arm] = list(arms)
        if not self.arms:
            raise ValueError("a bandit needs at least one arm")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"duplicate arms: {self.arms!r}")
        self._index = {arm: i for i, arm in enumerate(self.arms)}
        self.rng = _rng(rng)

    def arm_index(self, arm: Arm) -> int:
        """Position of ``arm`` in :attr:`arms` (``KeyError`` for an unknown arm)."""
        try:
            return self._index[arm]
        except KeyError:
            raise KeyError(f"unknown arm {arm!r}; arms are {self.arms!r}") from None

    def params(self) -> dict[str, Any]:
        """Hyper-parameters (constructor keyword arguments) as a JSON-able dict."""
        return {}

    def _context(self, context: Any) -> Any:
        """The context as :meth:`_pick` takes it (validated once per decision)."""
        return context

    def _pick(self, allowed: np.ndarray | None, context: Any) -> int:
        """Position of the chosen arm among ``allowed`` (a bool mask; None: every arm)."""
        raise NotImplementedError

    def choose(self, context: Any = None) -> Arm:
        """Pick one arm (``context`` is the feature vector of a contextual policy)."""
        return self.arms[self._pick(None, self._context(context))]

    def choose_n(self, n: int = 1, exclude: Iterable[Arm] = (), context: Any = None) -> list[Arm]:
        """``n`` distinct arms by repeated choice, never one of ``exclude``; in choice order.

        Each choice is made among the arms not excluded and not chosen yet, with fresh random
        draws, so the result is deterministic given the rng. ``ValueError`` when fewer than
        ``n`` arms remain, ``KeyError`` for an unknown arm in ``exclude``.

        >>> UCB1(["a", "b", "c"]).choose_n(2, exclude=["a"])
        ['b', 'c']
        """
        allowed = np.ones(len(self.arms), dtype=bool)
        for arm in exclude:
            allowed[self.arm_index(arm)] = False
        available = int(allowed.sum())
        if n < 1 or n > available:
            excluded = len(self.arms) - available
            raise ValueError(
                f"cannot choose {n} distinct arm{'s' if n != 1 else ''}: the bandit has {len(self.arms)} arms"
                + (f", {available} after excluding {excluded}" if excluded else "")
            )
        x = self._context(context)
        if n == 1 and available == len(self.arms):
            return [self.arms[self._pick(None, x)]]  # the plain choice, without a mask to apply
        chosen: list[Arm] = []
        for _ in range(n):
            i = self._pick(allowed, x)
            chosen.append(self.arms[i])
            allowed[i] = False
        return chosen

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(arms={self.arms!r}{', ' if params else ''}{params})"


class CounterPolicy(_Base):
    """A context-free policy whose statistics are per-arm counters updated by addition.

    Subclasses set ``COUNTERS`` (names), ``initial`` values and :meth:`deltas`; a reward
    for arm ``i`` adds ``deltas(reward)[j]`` to counter ``COUNTERS[j]`` at position ``i``,
    which a store can do with ``HINCRBYFLOAT``.
    """

    COUNTERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, arms: Sequence[Arm], rng: RngLike = None) -> None:
        super().__init__(arms, rng)
        init = self.initial()
        self.counters: dict[str, np.ndarray] = {
            name: np.full(len(self.arms), init[name], dtype=np.float64) for name in self.COUNTERS
        }
        # UCB1 / epsilon-greedy: the deterministic (exploiting) choice among all arms, kept
        # until the next update. Serving decides many times from one snapshot, so a decision
        # becomes a lookup; counters must therefore change only through update().
        self._best: int | None = None

    def initial(self) -> dict[str, float]:
        """Starting value of each counter (the same for every arm)."""
        return {name: 0.0 for name in self.COUNTERS}

    def deltas(self, reward: float) -> tuple[float, ...]:
        """Increments, one per counter in ``COUNTERS``, that a reward causes."""
        raise NotImplementedError

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        """Add :meth:`deltas` of ``reward`` to ``arm``'s counters (``context`` is ignored)."""
        i = self.arm_index(arm)
        for name, delta in zip(self.COUNTERS, self.deltas(float(reward))):
            self.counters[name][i] += delta
        self._best = None

    def state(self) -> dict[str, Any]:
        """``{"kind", "arms", "params", "counters": {name: [per-arm floats]}}``."""
        return {
            "kind": self.kind,
            "arms": list(self.arms),
            "params": self.params(),
            "counters": {name: values.tolist() for name, values in self.counters.items()},
        }

    @classmethod
    def from_state(cls: type[P], state: Mapping[str, Any], rng: RngLike = None) -> P:
        """Rebuild a policy from :meth:`state` (randomness comes from ``rng``)."""
        if state.get("kind") != cls.kind:
            raise ValueError(f"state is for {state.get('kind')!r}, not {cls.kind!r}")
        policy = cls(state["arms"], rng=rng, **state.get("params", {}))
        for name in cls.COUNTERS:  # type: ignore[attr-defined]
            values = np.asarray(state["counters"][name], dtype=np.float64)
            if values.shape != (len(policy.arms),):
                raise ValueError(f"counter {name!r} has shape {values.shape}, expected ({len(policy.arms)},)")
            policy.counters[name] = values.copy()  # type: ignore[attr-defined]
        policy._best = None  # type: ignore[attr-defined]
        return policy


class ThompsonSampling(CounterPolicy):
    """Beta-Bernoulli Thompson sampling: play the arm with the highest posterior draw.

    Rewards in ``[0, 1]`` add ``r`` to ``alpha`` and ``1 - r`` to ``beta``.

    >>> import numpy as np
    >>> ts = ThompsonSampling([0, 1, 2], rng=np.random.default_rng(1))
    >>> ts.update(2, 1.0); ts.update(2, 1.0); ts.update(0, 0.0)
    >>> ts.counters["alpha"].tolist(), ts.counters["beta"].tolist()
    ([1.0, 1.0, 3.0], [2.0, 1.0, 1.0])
    >>> ts.choose() in (0, 1, 2)
    True
    """

    kind = "thompson"
    COUNTERS = ("alpha", "beta")

    def __init__(
        self, arms: Sequence[Arm], rng: RngLike = None, prior_alpha: float = 1.0, prior_beta: float = 1.0
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("Beta prior parameters must be positive")
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        super().__init__(arms, rng)

    def params(self) -> dict[str, Any]:
        return {"prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta}

    def initial(self) -> dict[str, float]:
        return {"alpha": self.prior_alpha, "beta": self.prior_beta}

    def deltas(self, reward: float) -> tuple[float, float]:
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"Thompson sampling needs rewards in [0, 1], got {reward}")
        return reward, 1.0 - reward

    def _pick(self, allowed: np.ndarray | None, context: Any) -> int:
        """Draw one sample per arm from Beta(alpha, beta); the largest allowed one wins."""
        # Every arm is drawn even when some are not allowed, so the rng advances the same way
        # whatever the mask (decisions stay reproducible from the seed alone).
        draws = self.rng.beta(self.counters["alpha"], self.counters["beta"])
        if allowed is not None:
            draws[~allowed] = -np.inf
        return int(draws.argmax())


class UCB1(CounterPolicy):
    """UCB1: play each arm once (in ``arms`` order), then ``argmax mean + sqrt(2 ln N / n)``.

    Ties go to the first arm. ``rng`` is accepted for a uniform constructor but unused.

    >>> ucb = UCB1(["x", "y"])
    >>> ucb.choose()
    'x'
    >>> ucb.update("x", 1.0); ucb.choose()
    'y'
    >>> ucb.update("y", 0.0); ucb.choose()
    'x'
    """

    kind = "ucb1"
    COUNTERS = ("n", "s")

    def __init__(self, arms: Sequence[Arm], rng: RngLike = None, c: float = 2.0) -> None:
        self.c = float(c)
        super().__init__(arms, rng)

    def params(self) -> dict[str, Any]:
        return {"c": self.c}

    def deltas(self, reward: float) -> tuple[float, float]:
        return 1.0, reward

    def _pick(self, allowed: np.ndarray | None, context: Any) -> int:
        if allowed is None:
            if self._best is None:
                self._best = self._bound_argmax(None)
            return self._best
        return self._bound_argmax(allowed)

    def _bound_argmax(self, allowed: np.ndarray | None) -> int:
        """First untried allowed arm, else the allowed arm with the highest upper confidence bound."""
        n = self.counters["n"]
        untried = n == 0
        if allowed is not None:
            untried &= allowed
        first = np.flatnonzero(untried)
        if first.size:
            return int(first[0])
        if allowed is None:
            bound = self.counters["s"] / n + np.sqrt(self.c * math.log(n.sum()) / n)
        else:
            # Excluded arms may be untried (n = 0): their bounds are masked, not computed.
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = self.counters["s"] / n + np.sqrt(self.c * math.log(n.sum()) / n)
            bound[~allowed] = -np.inf
        return int(bound.argmax())


class EpsilonGreedy(CounterPolicy):
    """Epsilon-greedy: a uniform random arm with probability ``epsilon``, else the best mean.

    Untried arms count as having an infinite mean (each is tried once, in ``arms`` order);
    ties among the best go to the first arm.

    >>> import numpy as np
    >>> eg = EpsilonGreedy(["a", "b"], rng=np.random.default_rng(0), epsilon=0.0)
    >>> eg.choose()
    'a'
    >>> eg.update("a", 0.2); eg.update("b", 0.9); eg.choose()
    'b'
    """

    kind = "epsilon_greedy"
    COUNTERS = ("n", "s")

    def __init__(self, arms: Sequence[Arm], rng: RngLike = None, epsilon: float = 0.01) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = float(epsilon)
        super().__init__(arms, rng)

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def deltas(self, reward: float) -> tuple[float, float]:
        return 1.0, reward

    def _pick(self, allowed: np.ndarray | None, context: Any) -> int:
        """Explore (a uniform allowed arm) with probability epsilon, else the best allowed mean."""
        if self.epsilon > 0.0 and self.rng.random() < self.epsilon:
            if allowed is None:
                return int(self.rng.integers(len(self.arms)))
            candidates = np.flatnonzero(allowed)
            return int(candidates[self.rng.integers(candidates.size)])
        if allowed is None:
            if self._best is None:
                self._best = self._greedy(None)
            return self._best
        return self._greedy(allowed)

    def _greedy(self, allowed: np.ndarray | None) -> int:
        n = self.counters["n"]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(n > 0, self.counters["s"] / n, np.inf)
        if allowed is not None:
            means[~allowed] = -np.inf
        return int(means.argmax())


class LinUCB(_Base):
    """Disjoint LinUCB with a ridge regression per arm; decisions match MABWiser's LinUCB.

    ``A`` has shape ``(n_arms, d, d)`` and ``b`` ``(n_arms, d)``; inverses are cached and
    recomputed (batched ``np.linalg.inv``) only for arms updated since the last choice.

    >>> import numpy as np
    >>> lin = LinUCB(["a", "b"], n_features=2, alpha=1.0)
    >>> lin.update("a", 1.0, [1.0, 0.0]); lin.update("b", 1.0, [0.0, 1.0])
    >>> lin.choose([1.0, 0.0]), lin.choose([0.0, 1.0])
    ('a', 'b')
    >>> [round(v, 6) for v in lin.scores([1.0, 0.0])]
    [1.207107, 1.0]
    """

    kind = "linucb"

    def __init__(
        self,
        arms: Sequence[Arm],
        n_features: int,
        rng: RngLike = None,
        alpha: float = 1.0,
        l2_lambda: float = 1.0,
    ) -> None:
        super().__init__(arms, rng)
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        self.n_features = int(n_features)
        self.alpha = float(alpha)
        self.l2_lambda = float(l2_lambda)
        k, d = len(self.arms), self.n_features
        self.A = np.broadcast_to(self.l2_lambda * np.identity(d), (k, d, d)).copy()
        self.b = np.zeros((k, d))
        self._A_inv = self.A.copy() if self.l2_lambda == 1.0 else np.linalg.inv(self.A)
        self._theta = np.zeros((k, d))
        self._dirty = np.zeros(k, dtype=bool)

    def params(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "alpha": self.alpha, "l2_lambda": self.l2_lambda}

    def _vector(self, context: Any) -> np.ndarray:
        if context is None:
            raise ValueError("LinUCB needs a context vector")
        x = np.asarray(context, dtype=np.float64).reshape(-1)
        if x.shape != (self.n_features,):
            raise ValueError(f"context has {x.size} features, expected {self.n_features}")
        return x

    def _context(self, context: Any) -> np.ndarray:
        return self._vector(context)

    def precompute(self) -> None:
        """Invert ``A`` for every arm updated since the last choice (else done by the next one).

        Lets a store build a snapshot off the serving thread, ready to decide.
        """
        self._refresh()

    def _refresh(self) -> None:
        if self._dirty.any():
            idx = np.flatnonzero(self._dirty)
            self._A_inv[idx] = np.linalg.inv(self.A[idx])
            self._theta[idx] = np.matmul(self._A_inv[idx], self.b[idx][..., None])[..., 0]
            self._dirty[idx] = False

    def scores(self, context: Any) -> list[float]:
        """Upper confidence bound per arm, in ``arms`` order."""
        return self._scores(self._vector(context)).tolist()

    def _scores(self, x: np.ndarray) -> np.ndarray:
        self._refresh()
        x_A_inv = np.matmul(x, self._A_inv)  # (k, d): row i is x @ A_inv[i]
        ucb = self.alpha * np.sqrt(np.sum(x_A_inv * x, axis=1))
        return np.matmul(self._theta, x) + ucb

    def _pick(self, allowed: np.ndarray | None, context: np.ndarray) -> int:
        """The allowed arm with the highest ``x.theta + alpha*sqrt(x A^-1 x)``; ties go to the first."""
        scores = self._scores(context)
        if allowed is not None:
            scores[~allowed] = -np.inf
        return int(scores.argmax())

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        """``A[arm] += x x^T`` and ``b[arm] += reward * x``."""
        i = self.arm_index(arm)
        x = self._vector(context)
        self.A[i] += np.outer(x, x)
        self.b[i] += float(reward) * x
        self._dirty[i] = True

    def state(self) -> dict[str, Any]:
        """``{"kind", "arms", "params", "A": nested lists, "b": nested lists}``."""
        return {
            "kind": self.kind,
            "arms": list(self.arms),
            "params": self.params(),
            "A": self.A.tolist(),
            "b": self.b.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], rng: RngLike = None) -> "LinUCB":
        """Rebuild from :meth:`state`."""
        if state.get("kind") != cls.kind:
            raise ValueError(f"state is for {state.get('kind')!r}, not {cls.kind!r}")
        policy = cls(state["arms"], rng=rng, **state["params"])
        A = np.asarray(state["A"], dtype=np.float64)
        b = np.asarray(state["b"], dtype=np.float64)
        if A.shape != policy.A.shape or b.shape != policy.b.shape:
            raise ValueError(f"A/b shapes {A.shape}/{b.shape} do not match {policy.A.shape}/{policy.b.shape}")
        policy.A, policy.b = A.copy(), b.copy()
        policy._dirty[:] = True
        return policy


POLICIES: dict[str, type[CounterPolicy] | type[LinUCB]] = {
    cls.kind: cls for cls in (ThompsonSampling, UCB1, EpsilonGreedy, LinUCB)
}


def make_policy(kind: str, arms: Sequence[Arm], rng: RngLike = None, **params: Any) -> Any:
    """Build a policy by its ``kind`` (``thompson``, ``ucb1``, ``epsilon_greedy``, ``linucb``).

    >>> make_policy("ucb1", ["a", "b"])
    UCB1(arms=['a', 'b'], c=2.0)
    """
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(f"unknown bandit kind {kind!r}; known: {sorted(POLICIES)}") from None
    return cls(arms, rng=rng, **params)


def policy_from_state(state: Mapping[str, Any], rng: RngLike = None) -> Any:
    """Rebuild whichever policy ``state["kind"]`` names.

    >>> p = policy_from_state(EpsilonGreedy(["a"], epsilon=0.5).state())
    >>> type(p).__name__, p.epsilon
    ('EpsilonGreedy', 0.5)
    """
    try:
        cls = POLICIES[state["kind"]]
    except KeyError:
        raise ValueError(f"unknown bandit kind {state.get('kind')!r}") from None
    return cls.from_state(state, rng=rng)
