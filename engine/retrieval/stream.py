"""Keep an ItemIndex in step with the items topic while it serves.

:class:`ItemStreamUpdater` reads every partition of the items topic with ``assign()`` (no
consumer group: FIELD-NOTES, group joins take ~20 s on Tansu; nothing is committed, a
restart replays from the beginning or starts at the end, and replays are harmless because
upserts and removals are idempotent). Each poll's records are validated
(:func:`~engine.events.validation.validate_item_update`) and applied as one batch:

* ``active=true`` with an ``embedding`` (or a vector from ``vector_fn``): upsert; the item is
  searchable as soon as the batch is applied (typically tens of milliseconds after the event);
* ``active=true`` without a vector: a metadata change of an item already indexed
  (``category`` null keeps the old one); for an unknown item it is a dead letter
  (``missing_field``: nothing to index it by);
* ``active=false``: removal;
* an update older than the item's last applied one (``event_time``) is skipped and counted:
  with several partitions or producers an old update must not undo a newer one.

A record that cannot be applied goes to ``<topic>.dlq`` (or ``dlq_topic``) byte for byte with
the ``rtml.dlq.*`` headers of :mod:`engine.events.dlq`: validation reasons, ``out_of_range``
for a vector of the wrong dimension or with non-finite values, :data:`VECTOR_FN_FAILED` when
the hook raised. Nothing stops the thread: a failing batch is logged and counted.

``vector_fn(update) -> vector | None`` lets serving compute item vectors with the item tower
(ONNX) from the update's attributes instead of trusting ``embedding``; None means "no vector".
It is called once per record, in the updater's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from engine.events.dlq import DeadLetter, dlq_topic as default_dlq_topic
from engine.events.schemas import ItemUpdate
from engine.events.validation import DEFAULT_MAX_FUTURE_MS, MISSING_FIELD, OUT_OF_RANGE, Invalid, validate_item_update
from engine.metrics import SourceMetrics
from engine.retrieval.catalog import ItemMeta
from engine.retrieval.index import ItemIndex
from engine.runtime.topics import topic_end_offsets, topic_partitions

log = logging.getLogger(__name__)

#: Dead-letter reason: ``vector_fn`` raised for the record.
VECTOR_FN_FAILED = "vector_fn_failed"
#: Dead-letter reason: the index refused a record that passed every check (a bug; kept, not lost).
APPLY_FAILED = "apply_failed"

VectorFn = Callable[[ItemUpdate], "np.ndarray | None"]
_DELIVERY_TIMEOUT_S = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_vector(vector: Any, dim: int) -> np.ndarray | Invalid:
    """``vector`` as float32 of length ``dim``, or why not.

    >>> check_vector([1, 2], 3).detail
    'embedding: expected 3 values; got 2'
    >>> check_vector([1.0, float("nan")], 2).reason
    'out_of_range'
    """
    try:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: reported below
            x = np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        return Invalid(OUT_OF_RANGE, f"embedding: expected {dim} numbers; {exc}")
    if len(x) != dim:
        return Invalid(OUT_OF_RANGE, f"embedding: expected {dim} values; got {len(x)}")
    if not np.isfinite(x).all():
        return Invalid(OUT_OF_RANGE, "embedding: expected finite values (float32); got NaN or inf")
    return x


@dataclass(slots=True)
class _Op:
    update: ItemUpdate
    vector: np.ndarray | None  # None: remove (inactive) or metadata only
    msg: Any


class ItemStreamUpdater:
    """Applies the items topic to an :class:`ItemIndex` in a background thread (see the module docstring).

    Counters: ``applied`` (item changes applied; several updates of one item in one poll count
    once), ``dead_lettered``, ``skipped_stale``, ``errors``
    (batches that failed as a whole); ``lag_ms``: apply time minus event time of the last
    applied record.
    """

    def __init__(
        self,
        index: ItemIndex,
        bootstrap: str,
        topic: str,
        *,
        from_beginning: bool = True,
        dlq_topic: str | None = None,
        metrics: SourceMetrics | None = None,
        vector_fn: VectorFn | None = None,
        batch_size: int = 1_000,
        poll_timeout_s: float = 0.05,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        consumer_config: Mapping[str, Any] | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.index, self.bootstrap, self.topic = index, bootstrap, topic
        self.dlq_topic = dlq_topic or default_dlq_topic(topic)
        self.from_beginning = from_beginning
        self.metrics, self.vector_fn = metrics, vector_fn
        self.batch_size, self.poll_timeout_s, self.max_future_ms = batch_size, poll_timeout_s, max_future_ms
        self._consumer_config = {
            "bootstrap.servers": bootstrap,
            "group.id": "rtml-item-index",  # required by librdkafka; assign() joins no group
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 20,  # kafka.fetch_wait_max_ms's default: freshness without starving Tansu
            **dict(consumer_config or {}),
        }
        self._clock = clock
        self.applied = 0
        self.dead_lettered = 0
        self.skipped_stale = 0
        self.errors = 0
        self.lag_ms: int | None = None
        self._positions: dict[int, int] = {}
        self._progress = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Assign the partitions (raises if the topic is missing) and start the thread."""
        if self._thread is not None:
            raise RuntimeError("ItemStreamUpdater already started")
        partitions = topic_partitions(self.bootstrap, self.topic)
        if self.from_beginning:
            start = {p: 0 for p in partitions}
        else:
            start = topic_end_offsets(self.bootstrap, self.topic)
        self._positions = dict(start)
        self._consumer = Consumer(self._consumer_config)
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in sorted(start.items())])
        self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": False})
        self._thread = threading.Thread(target=self._run, name=f"items-{self.topic}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, flush dead letters, close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._producer is not None:
            self._producer.flush(_DELIVERY_TIMEOUT_S)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> ItemStreamUpdater:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until_caught_up(self, timeout_s: float) -> bool:
        """True once every record up to the topic's end offsets *at call time* has been applied."""
        ends = topic_end_offsets(self.bootstrap, self.topic)
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while any(self._positions.get(p, 0) < end for p, end in ends.items()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return False
                self._progress.wait(min(remaining, 0.1))
        return True

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                msgs = self._consumer.consume(self.batch_size, self.poll_timeout_s)
            except KafkaException as exc:
                log.warning("items topic %s: %s", self.topic, exc)
                time.sleep(0.5)
                continue
            if not msgs:
                continue
            try:
                self._process(msgs)
            except Exception:  # never die: a bug here must not stop item updates for good
                log.exception("items topic %s: failed to apply a batch of %d records", self.topic, len(msgs))
                self.errors += 1
            with self._progress:
                for msg in msgs:
                    if msg.error() is None:
                        self._positions[msg.partition()] = max(self._positions.get(msg.partition(), 0),
                                                               msg.offset() + 1)
                self._progress.notify_all()
            if self.metrics is not None:
                for p, o in self._positions.items():
                    self.metrics.input_position.labels(self.topic, str(p)).set(o)

    def _vector(self, update: ItemUpdate) -> np.ndarray | Invalid | None:
        if self.vector_fn is not None:
            try:
                raw = self.vector_fn(update)
            except Exception as exc:  # the hook is user code: its failure is the record's, not ours
                return Invalid(VECTOR_FN_FAILED, f"vector_fn: {type(exc).__name__}: {exc}"[:500])
        else:
            raw = update.embedding
        return None if raw is None else check_vector(raw, self.index.config.dim)

    def _process(self, msgs: list[Any]) -> None:
        now = self._clock()
        ops: dict[str, _Op] = {}  # last update per item wins within the batch
        dead: list[DeadLetter] = []

        def reject(msg: Any, invalid: Invalid) -> None:
            dead.append(DeadLetter(invalid.reason, invalid.detail, self.topic, msg.partition(), msg.offset(),
                                   msg.value() or b"", now, tuple(msg.headers() or ())))

        good = [m for m in msgs if m.error() is None]
        for msg in msgs:
            if msg.error() is not None:
                log.warning("items topic %s: %s", self.topic, msg.error())
        if self.metrics is not None:
            self.metrics.events_in.labels(self.topic).inc(len(good))
        known: dict[str, ItemMeta | None] = {}  # the index's metas, read once per item
        for msg in good:
            update = validate_item_update(msg.value() or b"", msg.headers(), now, self.max_future_ms)
            if isinstance(update, Invalid):
                reject(msg, update)
                continue
            item_id = update.item_id
            pending = ops.get(item_id)
            if item_id not in known:
                known[item_id] = self.index.meta([item_id])[0]
            last_time = pending.update.event_time if pending is not None else (
                known[item_id].updated_ms if known[item_id] is not None else None)
            if last_time is not None and update.event_time < last_time:
                self.skipped_stale += 1
                continue
            if not update.active:
                ops[item_id] = _Op(update, None, msg)
                continue
            vector = self._vector(update)
            if isinstance(vector, Invalid):
                reject(msg, vector)
                continue
            if vector is None:
                if pending is not None and not pending.update.active:
                    reject(msg, Invalid(MISSING_FIELD, "embedding: required, the item was retired earlier in this batch"))
                    continue
                if pending is not None:
                    vector = pending.vector  # a metadata change right after an upsert in this batch
                elif known[item_id] is None:
                    reject(msg, Invalid(MISSING_FIELD, "embedding: required for an item not in the index"))
                    continue
            ops[item_id] = _Op(update, vector, msg)
        self._apply(ops, known, reject)
        self._dead_letter(dead)

    def _meta(self, update: ItemUpdate, previous: ItemMeta | None) -> ItemMeta:
        category = update.category if update.category is not None or previous is None else previous.category
        return ItemMeta(update.item_id, category, update.event_time, update.event_time, True)

    def _apply(self, ops: dict[str, _Op], known: dict[str, ItemMeta | None],
               reject: Callable[[Any, Invalid], None]) -> None:
        upserts = [op for op in ops.values() if op.update.active and op.vector is not None]
        metas_only = [op for op in ops.values() if op.update.active and op.vector is None]
        removals = [op for op in ops.values() if not op.update.active]
        if upserts:
            ids = [op.update.item_id for op in upserts]
            metas = [self._meta(op.update, known.get(op.update.item_id)) for op in upserts]
            try:
                self.index.upsert(ids, np.stack([op.vector for op in upserts]), metas)
            except Exception as exc:  # should not happen after check_vector; keep the records, not the thread
                log.exception("items topic %s: upsert failed", self.topic)
                for op in upserts:
                    reject(op.msg, Invalid(APPLY_FAILED, f"upsert: {type(exc).__name__}: {exc}"[:500]))
                upserts = []
        if metas_only:
            self.index.update_meta([self._meta(op.update, known.get(op.update.item_id)) for op in metas_only])
        if removals:
            self.index.remove([op.update.item_id for op in removals])
        done = upserts + metas_only + removals
        if done:
            self.applied += len(done)
            applied_at = self._clock()
            self.lag_ms = applied_at - max(op.update.event_time for op in done)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        assert self._producer is not None
        for dl in dead:
            value, headers = dl.to_kafka()
            self._producer.produce(self.dlq_topic, value=value, headers=headers)
        remaining = self._producer.flush(_DELIVERY_TIMEOUT_S)
        if remaining:
            log.error("items topic %s: %d dead letters not delivered to %s", self.topic, remaining, self.dlq_topic)
        self.dead_lettered += len(dead)
        if self.metrics is not None:
            self.metrics.dlq_written.labels(self.dlq_topic).inc(len(dead))
