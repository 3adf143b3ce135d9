"""A seeded simulator of a recommender's traffic, for demos, tests and benchmarks.

Hidden state: every user has a preference vector, every item a vector and a
category (items of a category cluster around its centroid), and user tastes
cluster around a population mean. Each request shows one item to one user at
a slot ``position``:

* ``impression`` (with a fresh ``request_id``) at the request time,
* ``click`` with probability ``sigmoid(u·v + item_bias + global_bias - position_bias * position)``,
  a second or two later,
* ``view`` (item page) after some clicks, ``conversion`` after fewer
  (``sigmoid(u·v + item_bias + conversion_bias)``, tens of seconds later),
* a :class:`~engine.events.schemas.Label` for every impression (1.0 if clicked)
  with the impression's ``request_id``, ``label_delay_s`` later (the attribution
  window closing),
* an :class:`~engine.events.schemas.ItemUpdate` for every item of the initial
  catalogue at the start and for each new item (every ``new_item_every_s``),
  with its category and a noisy observation of its vector as ``embedding``.

Requests arrive as a Poisson process of ``rate`` per second of event time.
Events are yielded in *arrival* order, each arriving a random network lag
(at most ``max_lag_ms``) after its event time, so event times are monotone-ish:
slightly out of order, like a real topic. At ``drift_at_s`` a share
``drift_fraction`` of users re-draw their tastes around a new population mean
(concept drift: per-category click rates move).

The hidden world -- the initial tastes, the drifted ones and every item added later --
is a function of ``seed`` alone, never of the traffic: :class:`~engine.events.feedback.FeedbackSimulator`
answers served recommendations from the very state (and :func:`click_probability`) this stream uses.

>>> sim = Simulator(SimulatorConfig(n_users=50, n_items=20, rate=100.0, start_time_ms=1_700_000_000_000, seed=1))
>>> events = list(sim.events(n=3000))
>>> len(events)
3000
>>> sorted({type(e).__name__ for e in events})
['Interaction', 'ItemUpdate', 'Label']
>>> events == list(sim.events(n=3000))  # deterministic by seed
True
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Literal, TypeAlias

import numpy as np
import orjson

from engine.events.schemas import Interaction, ItemUpdate, Label
from engine.events.validation import (
    BAD_ENUM,
    FUTURE_EVENT_TIME,
    MISSING_FIELD,
    OUT_OF_RANGE,
    UNDECODABLE,
    WRONG_TYPE,
)

MalformedKind: TypeAlias = Literal["interaction", "label", "item"]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A deliberately broken message: ``payload`` must be rejected with ``reason``.

    ``kind`` says which topic it pretends to belong to; ``event_time`` is only
    the simulated time at which it is sent (for pacing), not part of the payload.
    """

    kind: MalformedKind
    payload: bytes
    reason: str
    event_time: int


#: What :meth:`Simulator.events` yields.
SimEvent: TypeAlias = Interaction | Label | ItemUpdate | Malformed


@dataclass(slots=True)
class SimulatorConfig:
    """Knobs of :class:`Simulator`. Times are seconds of *event time* after ``start_time_ms``.

    >>> SimulatorConfig(rate=0)
    Traceback (most recent call last):
    ...
    ValueError: rate: expected > 0; got 0
    """

    n_users: int = 1_000
    n_items: int = 500
    dim: int = 16  # size of the hidden preference vectors
    rate: float = 1_000.0  # requests (impressions) per second; total events are ~2.2x this
    drift_at_s: float | None = None
    drift_fraction: float = 0.5  # share of users whose tastes change at drift_at_s
    new_item_every_s: float | None = 5.0
    invalid_fraction: float = 0.0  # share of requests replaced by a malformed message
    start_time_ms: int | None = None  # None: wall clock when the Simulator is built
    seed: int = 0
    n_categories: int = 8
    global_bias: float = -3.0  # sets the overall CTR (3-10% with the defaults, depending on seed)
    position_bias: float = 0.15  # lower slots get fewer clicks
    n_positions: int = 10
    conversion_bias: float = -3.0  # P(conversion | click) = sigmoid(u·v + item_bias + this)
    view_prob: float = 0.5  # P(view | click)
    click_delay_s: float = 1.5  # mean delay impression -> click
    conversion_delay_s: float = 30.0  # mean delay click -> conversion
    label_delay_s: float = 10.0  # attribution window: label this long after the impression
    max_lag_ms: int = 200  # largest arrival lag, i.e. how out of order event times get
    embedding_noise: float = 0.1  # noise of the observed item embedding vs the hidden vector

    def __post_init__(self) -> None:
        checks = [
            ("n_users", self.n_users >= 1, ">= 1"),
            ("n_items", self.n_items >= 1, ">= 1"),
            ("dim", self.dim >= 1, ">= 1"),
            ("rate", self.rate > 0 and math.isfinite(self.rate), "> 0"),
            ("drift_fraction", 0.0 <= self.drift_fraction <= 1.0, "in [0, 1]"),
            ("invalid_fraction", 0.0 <= self.invalid_fraction <= 1.0, "in [0, 1]"),
            ("n_categories", self.n_categories >= 1, ">= 1"),
            ("n_positions", self.n_positions >= 1, ">= 1"),
            ("view_prob", 0.0 <= self.view_prob <= 1.0, "in [0, 1]"),
            ("click_delay_s", self.click_delay_s >= 0, ">= 0"),
            ("conversion_delay_s", self.conversion_delay_s >= 0, ">= 0"),
            ("label_delay_s", self.label_delay_s >= 0, ">= 0"),
            ("max_lag_ms", self.max_lag_ms >= 0, ">= 0"),
            ("drift_at_s", self.drift_at_s is None or self.drift_at_s >= 0, ">= 0 or None"),
            ("new_item_every_s", self.new_item_every_s is None or self.new_item_every_s > 0, "> 0 or None"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}; got {getattr(self, name)!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def click_probability(affinity: np.ndarray, position: np.ndarray | int, config: SimulatorConfig) -> np.ndarray:
    """P(click) of an impression shown at slot ``position``, with ``affinity = u·v + item_bias``.

    The one formula behind every simulated click (the stream's and the feedback model's).

    >>> cfg = SimulatorConfig(global_bias=0.0, position_bias=1.0)
    >>> click_probability(np.array([0.0, 0.0]), np.array([0, 1]), cfg).round(3).tolist()
    [0.5, 0.269]
    """
    return _sigmoid(affinity + config.global_bias - config.position_bias * np.asarray(position))


def click_delays_ms(rng: np.random.Generator, n: int, config: SimulatorConfig) -> np.ndarray:
    """``n`` delays impression -> click (ms): exponential, capped so that a click lands before its label.

    >>> cfg = SimulatorConfig(click_delay_s=1.0, label_delay_s=2.0)
    >>> bool((click_delays_ms(np.random.default_rng(0), 1000, cfg) <= 1800.0).all())
    True
    """
    return np.minimum(rng.exponential(max(config.click_delay_s * 1000.0, 1e-9), n), 0.9 * config.label_delay_s * 1000.0)


_DEVICES = ("ios", "android", "web")
_BATCH = 4096  # requests drawn per numpy batch


class Simulator:
    """Generates a reproducible stream of interactions, labels and item updates.

    The hidden state is drawn from ``seed`` once; :meth:`events` starts a fresh,
    identical stream on every call (its state lives in the generator, not here).

    >>> sim = Simulator(SimulatorConfig(n_items=3, start_time_ms=1_700_000_000_000))
    >>> [type(e).__name__ for e in sim.events(n=3)]
    ['ItemUpdate', 'ItemUpdate', 'ItemUpdate']
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config = config or SimulatorConfig()
        self.start_time_ms: int = (
            int(time.time() * 1000) if config.start_time_ms is None else int(config.start_time_ms)
        )
        # Independent streams for the hidden world, the traffic, the drift and the items
        # added later, so that changing e.g. rate does not change who likes what, and the
        # world at any time is known without generating traffic (children 0 and 1 are
        # what they were before the last two existed: spawn keys are positional).
        world_seq, self._traffic_seed, self._drift_seq, self._new_items_seq = np.random.SeedSequence(
            config.seed
        ).spawn(4)
        rng = np.random.default_rng(world_seq)
        d = config.dim
        scale = d**-0.25  # per-dimension std so that dot products have std ~1
        self.category_centroids = rng.normal(0.0, scale, (config.n_categories, d))
        self.taste_mean = rng.normal(0.0, scale, d)
        self.user_vectors = self.taste_mean + rng.normal(0.0, 0.7 * scale, (config.n_users, d))
        # User activity is skewed: a few heavy users, a long tail.
        activity = 1.0 / np.arange(1, config.n_users + 1) ** 0.8
        rng.shuffle(activity)
        self.user_cdf = np.cumsum(activity) / activity.sum()
        self.item_categories, self.item_vectors, self.item_bias, self.item_weight = self._draw_items(
            rng, config.n_items
        )
        for arr in (
            self.category_centroids,
            self.taste_mean,
            self.user_vectors,
            self.user_cdf,
            self.item_categories,
            self.item_vectors,
            self.item_bias,
            self.item_weight,
        ):
            arr.setflags(write=False)  # shared by every events() stream: keep it immutable
        self.user_ids: tuple[str, ...] = tuple(f"u{i}" for i in range(config.n_users))
        # Request ids are unique per (start time, seed) so that two runs never collide.
        self.request_prefix = f"r{self.start_time_ms:x}s{config.seed}-"

    def _draw_items(
        self, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        scale = cfg.dim**-0.25
        cats = rng.integers(0, cfg.n_categories, n)
        vecs = self.category_centroids[cats] + rng.normal(0.0, 0.5 * scale, (n, cfg.dim))
        bias = rng.normal(0.0, 0.3, n)
        weight = rng.lognormal(0.0, 1.0, n)  # how often the recommender shows it
        return cats, vecs, bias, weight

    @staticmethod
    def item_id(index: int) -> str:
        """The id of the item at ``index`` (initial items first, then new ones)."""
        return f"i{index}"

    @cached_property
    def drifted_user_vectors(self) -> np.ndarray:
        """Every user's taste from ``drift_at_s`` on: a share ``drift_fraction`` re-drawn around a new mean.

        Drawn lazily (and once) from the seed, so the stream and the feedback model agree.

        >>> sim = Simulator(SimulatorConfig(n_users=4, drift_fraction=0.0, start_time_ms=0))
        >>> bool((sim.drifted_user_vectors == sim.user_vectors).all())
        True
        """
        cfg = self.config
        rng = np.random.default_rng(self._drift_seq)
        scale = cfg.dim**-0.25
        drifted = rng.random(cfg.n_users) < cfg.drift_fraction
        new_mean = rng.normal(0.0, scale, cfg.dim)
        users = np.array(self.user_vectors)
        users[drifted] = new_mean + rng.normal(0.0, 0.7 * scale, (int(drifted.sum()), cfg.dim))
        users.setflags(write=False)
        return users

    def user_vectors_at(self, t_ms: float) -> np.ndarray:
        """The users' hidden tastes at event time ``t_ms`` (drifted from ``drift_at_s`` on)."""
        drift_at = self.config.drift_at_s
        if drift_at is not None and t_ms - self.start_time_ms >= drift_at * 1000.0:
            return self.drifted_user_vectors
        return self.user_vectors

    def n_items_at(self, t_ms: float) -> int:
        """How many items exist at event time ``t_ms``: the catalogue plus one per ``new_item_every_s``.

        >>> sim = Simulator(SimulatorConfig(n_items=3, new_item_every_s=5.0, start_time_ms=0))
        >>> sim.n_items_at(0), sim.n_items_at(4_999), sim.n_items_at(10_000)
        (3, 3, 5)
        """
        every = self.config.new_item_every_s
        if not every or t_ms < self.start_time_ms:
            return self.config.n_items
        return self.config.n_items + int((t_ms - self.start_time_ms) // (every * 1000.0))

    def new_item(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The ``k``-th item added after the catalogue (``item_id(n_items + k)``), as length-1 arrays.

        Category, hidden vector, bias and show weight, drawn from the seed and ``k`` only.

        >>> sim = Simulator(SimulatorConfig(start_time_ms=0))
        >>> bool((sim.new_item(3)[1] == sim.new_item(3)[1]).all())
        True
        """
        seq = self._new_items_seq
        rng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, k)))
        return self._draw_items(rng, 1)

    def events(self, n: int | None = None, duration_s: float | None = None) -> Iterator[SimEvent]:
        """Yield up to ``n`` events, or the events of ``duration_s`` seconds of event time.

        With neither, the stream is endless. With ``duration_s``, events arriving
        after the end are cut (labels of the last requests may be missing).

        >>> sim = Simulator(SimulatorConfig(n_items=2, rate=50, start_time_ms=1_700_000_000_000))
        >>> evs = list(sim.events(duration_s=2.0))
        >>> all(e.event_time < 1_700_000_002_000 for e in evs)
        True
        """
        if n is not None and n < 0:
            raise ValueError(f"n: expected >= 0; got {n}")
        if duration_s is not None and duration_s < 0:
            raise ValueError(f"duration_s: expected >= 0; got {duration_s}")
        if n == 0:
            return
        emitted = 0
        for event in self._stream(None if duration_s is None else self.start_time_ms + duration_s * 1000.0):
            yield event
            emitted += 1
            if n is not None and emitted >= n:
                return

    def _stream(self, end_ms: float | None) -> Iterator[SimEvent]:
        cfg = self.config
        rng = np.random.default_rng(self._traffic_seed)
        t0 = self.start_time_ms
        d = cfg.dim
        scale = d**-0.25

        # Per-stream copies of the item arrays (new items extend them); users are swapped
        # for their drifted tastes at drift_at_s.
        users = self.user_vectors
        cats = list(self.item_categories)
        vecs = np.array(self.item_vectors)
        bias = np.array(self.item_bias)
        weight = np.array(self.item_weight)
        n_active = cfg.n_items
        item_cdf = np.cumsum(weight[:n_active]) / weight[:n_active].sum()
        item_ids = [self.item_id(i) for i in range(n_active)]
        user_ids = self.user_ids
        user_cdf = self.user_cdf
        catalogue = malformed_examples("interaction") if cfg.invalid_fraction > 0 else []

        heap: list[tuple[float, int, SimEvent]] = []
        seq = 0  # tie-breaker: equal arrival times keep generation order
        max_lag = cfg.max_lag_ms
        mean_lag = max_lag / 4.0

        def lag() -> float:
            return min(rng.exponential(mean_lag), max_lag) if max_lag else 0.0

        def item_update(index: int, at_ms: int) -> ItemUpdate:
            emb = vecs[index] + rng.normal(0.0, cfg.embedding_noise * scale, d)
            return ItemUpdate(
                item_ids[index],
                at_ms,
                f"c{cats[index]}",
                np.round(emb, 4).tolist(),
                True,
                {"bias_bucket": int(bias[index] > 0)},
            )

        # The initial catalogue is a snapshot at t0 that arrives before any request.
        for i in range(n_active):
            yield item_update(i, t0)

        # Boundaries (ms after t0) where the world changes; requests are drawn
        # between them. Poisson arrivals are memoryless, so restarting the
        # inter-arrival draw at a boundary keeps the process exact.
        next_item_ms = cfg.new_item_every_s * 1000.0 if cfg.new_item_every_s else math.inf
        drift_ms = cfg.drift_at_s * 1000.0 if cfg.drift_at_s is not None else math.inf
        now_rel = 0.0  # ms after t0 of the last request
        request_no = 0
        prefix = self.request_prefix
        cb = cfg.conversion_bias
        mean_gap_ms = 1000.0 / cfg.rate
        label_delay_ms = cfg.label_delay_s * 1000.0
        conv_delay_ms = cfg.conversion_delay_s * 1000.0
        end_rel = math.inf if end_ms is None else end_ms - t0
        heappush, heappop = heapq.heappush, heapq.heappop

        while True:
            boundary = min(next_item_ms, drift_ms, end_rel)
            gaps = rng.exponential(mean_gap_ms, _BATCH)
            times = now_rel + np.cumsum(gaps)
            cut = int(np.searchsorted(times, boundary))
            crossed = cut < _BATCH
            times = times[:cut]
            b = cut
            if b:
                u_idx = np.searchsorted(user_cdf, rng.random(b))
                i_idx = np.minimum(np.searchsorted(item_cdf, rng.random(b)), n_active - 1)
                pos = rng.integers(0, cfg.n_positions, b)
                affinity = np.einsum("ij,ij->i", users[u_idx], vecs[i_idx]) + bias[i_idx]
                p_click = click_probability(affinity, pos, cfg)
                r = rng.random((5, b))
                clicked = r[0] < p_click
                viewed = clicked & (r[1] < cfg.view_prob)
                converted = clicked & (r[2] < _sigmoid(affinity + cb))
                device = (r[3] * len(_DEVICES)).astype(np.int64)
                invalid = r[4] < cfg.invalid_fraction
                # Delays, capped so a click lands before its label.
                click_at = times + click_delays_ms(rng, b, cfg)
                view_at = click_at + rng.exponential(1000.0, b)
                # Dwell time grows with affinity (no extra random draws: streams stay seed-stable).
                dwell = np.minimum((view_at - click_at) * 30.0 * _sigmoid(affinity), 600_000.0).astype(np.int64)
                conv_at = click_at + rng.exponential(max(conv_delay_ms, 1e-9), b)
                label_at = times + label_delay_ms + rng.random(b) * 1000.0
                lags = np.minimum(rng.exponential(max(mean_lag, 1e-9), (5, b)), max_lag) if max_lag else np.zeros((5, b))
                invalid_pick = rng.integers(0, max(len(catalogue), 1), b)

                # numpy -> Python once per batch; the loop below is the hot part.
                t_l = (times + t0).astype(np.int64).tolist()
                click_l = (click_at + t0).astype(np.int64).tolist()
                view_l = (view_at + t0).astype(np.int64).tolist()
                conv_l = (conv_at + t0).astype(np.int64).tolist()
                label_l = (label_at + t0).astype(np.int64).tolist()
                lag_l = lags.tolist()
                u_l, i_l, pos_l, dev_l = u_idx.tolist(), i_idx.tolist(), pos.tolist(), device.tolist()
                clicked_l, viewed_l, conv_l_flag, invalid_l = (
                    clicked.tolist(),
                    viewed.tolist(),
                    converted.tolist(),
                    invalid.tolist(),
                )
                pick_l = invalid_pick.tolist()
                dwell_l = dwell.tolist()
                lag0, lag1, lag2, lag3, lag4 = lag_l

                for k in range(b):
                    t = t_l[k]
                    # Everything that arrives before this request can be released:
                    # later requests (and their events) arrive after their own time >= t.
                    while heap and heap[0][0] <= t:
                        yield heappop(heap)[2]
                    if invalid_l[k]:
                        payload, reason = catalogue[pick_l[k]]
                        heappush(heap, (t + lag0[k], seq, Malformed("interaction", payload, reason, t)))
                        seq += 1
                        continue
                    uid = user_ids[u_l[k]]
                    iid = item_ids[i_l[k]]
                    rid = prefix + str(request_no)
                    request_no += 1
                    ctx = {"device": _DEVICES[dev_l[k]], "position": pos_l[k]}
                    heappush(heap, (t + lag0[k], seq, Interaction(uid, iid, "impression", t, ctx, rid)))
                    click = clicked_l[k]
                    lt = label_l[k]
                    heappush(
                        heap,
                        (lt + lag1[k], seq + 1, Label(rid, 1.0 if click else 0.0, lt, uid, iid)),
                    )
                    seq += 2
                    if click:
                        ct = click_l[k]
                        heappush(heap, (ct + lag2[k], seq, Interaction(uid, iid, "click", ct, dict(ctx), rid)))
                        seq += 1
                        if viewed_l[k]:
                            vt = view_l[k]
                            view_ctx = {**ctx, "dwell_ms": dwell_l[k]}
                            heappush(heap, (vt + lag3[k], seq, Interaction(uid, iid, "view", vt, view_ctx, rid)))
                            seq += 1
                        if conv_l_flag[k]:
                            cvt = conv_l[k]
                            heappush(
                                heap, (cvt + lag4[k], seq, Interaction(uid, iid, "conversion", cvt, dict(ctx), rid))
                            )
                            seq += 1
                now_rel = float(times[-1])

            if not crossed:
                continue
            now_rel = boundary
            if boundary >= end_rel:
                break
            at = int(t0 + boundary)
            while heap and heap[0][0] <= at:
                yield heappop(heap)[2]
            if boundary == drift_ms:
                drift_ms = math.inf
                users = self.drifted_user_vectors  # concept drift: see drifted_user_vectors
            if boundary == next_item_ms:
                next_item_ms += cfg.new_item_every_s * 1000.0  # type: ignore[operator]
                c, v, bi, w = self.new_item(n_active - cfg.n_items)
                cats.append(int(c[0]))
                vecs = np.vstack([vecs, v])
                bias = np.concatenate([bias, bi])
                # New items get a boost so that they are actually shown.
                weight = np.concatenate([weight, w * 3.0])
                item_ids.append(self.item_id(n_active))
                n_active += 1
                item_cdf = np.cumsum(weight) / weight.sum()
                heappush(heap, (at + lag(), seq, item_update(n_active - 1, at)))
                seq += 1

        # End of a bounded run: release what has arrived by the end.
        end_abs = t0 + end_rel
        while heap and heap[0][0] <= end_abs:
            yield heappop(heap)[2]


# --------------------------------------------------------------------------- malformed catalogue

_T = 1_700_000_000_000  # 2023-11-14, valid for any "now" after it


def _js(**fields: object) -> bytes:
    return orjson.dumps(fields)


def _interaction(**override: object) -> dict[str, object]:
    base: dict[str, object] = {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "event_time": _T,
        "context": {"device": "ios"},
    }
    base.update(override)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _proto_interaction_nan() -> bytes:
    from proto.rtml.v1 import events_pb2 as pb

    m = pb.Interaction(user_id="u1", item_id="i1", event_type="click", event_time=_T)
    m.context["score"].double_value = float("nan")
    return m.SerializeToString()


def malformed_examples(kind: MalformedKind = "interaction") -> list[tuple[bytes, str]]:
    """Malformed payloads for ``kind``'s topic, each with the reason it must get.

    Sent without headers (so the decoder sniffs), validated with any ``now_ms``
    after 2023-11-14 and ``max_future_ms`` below 70 years. The interaction list
    covers every reason code; label and item lists cover those that apply.

    >>> sorted({reason for _, reason in malformed_examples()})
    ['bad_enum', 'future_event_time', 'missing_field', 'out_of_range', 'undecodable', 'wrong_type']
    """
    if kind == "interaction":
        return [
            (b"", UNDECODABLE),
            (b"not json at all", UNDECODABLE),
            (b'{"user_id": "u1", "item_id": ', UNDECODABLE),
            (b"[1, 2, 3]", UNDECODABLE),
            (b'"just a string"', UNDECODABLE),
            (b"\xff\xfe\xfd\x00\x01garbage", UNDECODABLE),
            (b'{"user_id": NaN}', UNDECODABLE),
            (_js(**_interaction(user_id=_DROP)), MISSING_FIELD),
            (_js(**_interaction(item_id=_DROP)), MISSING_FIELD),
            (_js(**_interaction(event_type=_DROP)), MISSING_FIELD),
            (_js(**_interaction(event_time=_DROP)), MISSING_FIELD),
            (_js(**_interaction(user_id=42)), WRONG_TYPE),
            (_js(**_interaction(user_id=None)), WRONG_TYPE),
            (_js(**_interaction(event_type=["click"])), WRONG_TYPE),
            (_js(**_interaction(event_time=str(_T))), WRONG_TYPE),
            (_js(**_interaction(event_time=float(_T))), WRONG_TYPE),
            (_js(**_interaction(event_time=True)), WRONG_TYPE),
            (_js(**_interaction(context="mobile")), WRONG_TYPE),
            (_js(**_interaction(request_id=7)), WRONG_TYPE),
            (_js(**_interaction(event_type="clik")), BAD_ENUM),
            (_js(**_interaction(event_type="CLICK")), BAD_ENUM),
            (_js(**_interaction(user_id="")), OUT_OF_RANGE),
            (_js(**_interaction(item_id="x" * 257)), OUT_OF_RANGE),
            (_js(**_interaction(event_time=_T // 1000)), OUT_OF_RANGE),  # seconds, not ms
            (_js(**_interaction(event_time=-1)), OUT_OF_RANGE),
            (_js(**_interaction(context={"geo": {"lat": 1.0}})), OUT_OF_RANGE),
            (_js(**_interaction(context={"tags": ["a", "b"]})), OUT_OF_RANGE),
            (_js(**_interaction(context={"k": None})), OUT_OF_RANGE),
            (_js(**_interaction(context={f"k{i}": i for i in range(65)})), OUT_OF_RANGE),
            (_js(**_interaction(context={"big": 2**64 - 1})), OUT_OF_RANGE),
            (_proto_interaction_nan(), OUT_OF_RANGE),
            (_js(**_interaction(event_time=4_102_444_800_000)), FUTURE_EVENT_TIME),  # 2100-01-01
        ]
    if kind == "label":
        label = {"request_id": "r1", "label": 1.0, "event_time": _T}
        return [
            (b"\x00\x01\x02", UNDECODABLE),
            (b"null", UNDECODABLE),
            (_js(**{k: v for k, v in label.items() if k != "request_id"}), MISSING_FIELD),
            (_js(**{k: v for k, v in label.items() if k != "label"}), MISSING_FIELD),
            (_js(**{**label, "label": "1"}), WRONG_TYPE),
            (_js(**{**label, "label": True}), WRONG_TYPE),
            (_js(**{**label, "user_id": 3}), WRONG_TYPE),
            (_js(**{**label, "request_id": ""}), OUT_OF_RANGE),
            (_js(**{**label, "event_time": 0}), OUT_OF_RANGE),
            (_js(**{**label, "event_time": 4_102_444_800_000}), FUTURE_EVENT_TIME),
        ]
    if kind == "item":
        item = {"item_id": "i1", "event_time": _T, "category": "c1", "embedding": [0.1, 0.2]}
        return [
            (b"{{", UNDECODABLE),
            (b"12", UNDECODABLE),
            (_js(**{k: v for k, v in item.items() if k != "item_id"}), MISSING_FIELD),
            (_js(**{k: v for k, v in item.items() if k != "event_time"}), MISSING_FIELD),
            (_js(**{**item, "embedding": "0.1,0.2"}), WRONG_TYPE),
            (_js(**{**item, "embedding": [0.1, "x"]}), WRONG_TYPE),
            (_js(**{**item, "active": "yes"}), WRONG_TYPE),
            (_js(**{**item, "category": 5}), WRONG_TYPE),
            (_js(**{**item, "embedding": []}), OUT_OF_RANGE),
            (_js(**{**item, "attributes": {"a": [1]}}), OUT_OF_RANGE),
            (_js(**{**item, "event_time": 4_102_444_800_000}), FUTURE_EVENT_TIME),
        ]
    raise ValueError(f"kind: expected 'interaction', 'label' or 'item'; got {kind!r}")


__all__ = [
    "Malformed",
    "MalformedKind",
    "SimEvent",
    "Simulator",
    "SimulatorConfig",
    "click_delays_ms",
    "click_probability",
    "malformed_examples",
]
