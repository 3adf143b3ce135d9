"""The rtml.v1 Predict pipeline, shared by the gRPC service and the in-process API.

One :meth:`PredictPipeline.predict` call, in order:

1. **Version.** A request naming a version gets it. Otherwise the model's ``routing``
   (:mod:`serving.routing`) picks the primary, canary or A/B version; a routed version that
   cannot serve falls back to the primary (``rtml_routing_fallbacks_total``). Without routing,
   the latest READY version serves.
2. **Cache** (``cache_ttl_ms > 0``): an identical request (same model, version, variant,
   instances, requested outputs) seen within the TTL is answered from memory.
3. **Precomputed scores** (``precomputed``, requests that ask for no extra ``outputs``):
   every instance keyed by ``entity_ids[precomputed.key]`` (and carrying no values of its own)
   is looked up in the served version's current ``rtml batch-predict`` run, one Redis command
   for the request; fresh scores answer directly, with their age as ``feature_age_ms``. Misses
   and stale scores are computed online (steps 4-5, for those instances only) or rejected,
   per ``on_miss`` / ``on_stale`` (docs/batch.md).
4. **Inputs.** With ``features`` bindings: every instance's online features are read from
   Redis in one pipelined round trip for the whole request (each distinct entity once),
   defaults fill what is missing, request values override or complement what is fetched
   (see :class:`~serving.config.FeatureBindings`). Without bindings: the request's raw
   ``features`` / ``tensors`` by input name.
5. **Inference** on the version's dynamic batcher (deadline honoured).
6. **Shadow** (``routing.shadow``): the same input tensors are scored by the shadow version
   in an asyncio task that the response never waits for; its failures are counted, never
   returned. Instances answered from precomputed scores are not shadow-scored.
7. **Log**: every prediction (one message per instance; shadow ones too) goes to the
   predictions topic (:mod:`serving.predictions_log`); ``"precomputed": true`` marks those
   answered from precomputed scores (their ``features`` are the inputs the batch run used).

``PredictResponse.feature_age_ms`` holds, per instance, the age of the oldest online value
used (the largest ``now - _t`` over the instance's views that were found), ``-1`` when none of
its online values was found (all defaults, or all supplied by the request); the list is empty
when the request needed no online feature at all. For an instance answered from precomputed
scores it is the age of the score (``now - computed_ms``).

Metrics (on the manager's registry, next to ``rtml_inference_*``):

==========================================================  =========  ===============================
series                                                      type       meaning
==========================================================  =========  ===============================
rtml_feature_fetch_seconds{model}                           histogram  one Redis round trip (a request)
rtml_feature_fetch_errors_total{model}                      counter    fetches that failed (outage,
                                                                       timeout, no store configured)
rtml_feature_missing_total{model,view}                      counter    entities missing or expired at
                                                                       read (answered with defaults)
rtml_routing_requests_total{model,variant,version}          counter    routed requests by variant
rtml_routing_fallbacks_total{model,variant}                 counter    routed version unavailable:
                                                                       served by the primary instead
rtml_shadow_requests_total{model,version,result}            counter    shadow scorings: ok, error,
                                                                       skipped (too many pending)
rtml_cache_requests_total{model,result}                     counter    cache lookups: hit, miss
rtml_precomputed_requests_total{model,result}               counter    precomputed lookups per
                                                                       instance: hit, miss, stale,
                                                                       error
rtml_prediction_score{model,version}                        histogram  first score of each instance
==========================================================  =========  ===============================
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
import weakref
from dataclasses import dataclass
from itertools import chain
from typing import Any, Sequence

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.batch.store import RunMeta, StoredScore, lookup_command, unpack_score
from proto.rtml.v1 import serving_pb2 as rtml_pb
from serving.cache import TTLCache, request_digest
from serving.config import REQUEST_SOURCE, FeatureBindings, ModelConfig, PrecomputedScores, parse_source
from serving.errors import InvalidInput, ModelNotFound, ModelUnavailable, ServingError
from engine.features.keys import composite_key
from serving.features import (
    FeatureConfigError,
    FeatureFetcher,
    FeatureRow,
    FeatureStoreUnavailable,
    ResolvedView,
    decode_row,
    resolve_bindings,
)
from serving.predictions_log import PredictionLogger, prediction_record
from serving.routing import PRIMARY, SHADOW, Route, Router
from serving.tensors import TensorSpec

log = logging.getLogger(__name__)

# 100 us (a local Redis) .. 1 s (a timeout).
FETCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Probabilities and logits alike.
SCORE_BUCKETS = (-10, -5, -2, -1, -0.5, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 5, 10)
NO_AGE = -1.0  # feature_age_ms of an instance that used no online value
_PRIMARY_REFRESH_S = 1.0  # how long a resolved default primary version is reused


class PrecomputedMissing(ServingError):
    """No precomputed score for an instance and the model's ``precomputed.on_miss`` is reject."""

    code = grpc.StatusCode.NOT_FOUND


class PrecomputedStale(ServingError):
    """A precomputed score is over ``precomputed.max_age`` and ``on_stale`` is reject.

    FAILED_PRECONDITION, not UNAVAILABLE: retrying cannot help until batch-predict runs again.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION


class PredictMetrics:
    """The Predict pipeline's series (see the module docstring), registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.fetch_seconds = Histogram(
            "rtml_feature_fetch_seconds",
            "Online feature fetch: one pipelined Redis round trip for a request's instances.",
            ["model"],
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self.fetch_errors = Counter(
            "rtml_feature_fetch_errors",
            "Online feature fetches that failed (Redis down or slow, or no store configured).",
            ["model"],
            registry=registry,
        )
        self.missing = Counter(
            "rtml_feature_missing",
            "Entity hashes missing or expired at read; their bound columns got defaults.",
            ["model", "view"],
            registry=registry,
        )
        self.routing = Counter(
            "rtml_routing_requests", "Routed Predict requests by variant.", ["model", "variant", "version"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "rtml_routing_fallbacks",
            "Routed requests whose version could not serve and went to the primary version.",
            ["model", "variant"],
            registry=registry,
        )
        self.shadow = Counter(
            "rtml_shadow_requests",
            "Shadow scorings by result: ok, error (shadow version failed), skipped (too many pending).",
            ["model", "version", "result"],
            registry=registry,
        )
        self.cache = Counter(
            "rtml_cache_requests", "Predict cache lookups by result (hit, miss).", ["model", "result"],
            registry=registry,
        )
        self.precomputed = Counter(
            "rtml_precomputed_requests",
            "Instances looked up in precomputed scores: hit, miss (no score, or not looked up), stale "
            "(over max_age), error (Redis unreadable).",
            ["model", "result"],
            registry=registry,
        )
        self.score = Histogram(
            "rtml_prediction_score",
            "First score of each predicted instance, by model version.",
            ["model", "version"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )


# -- inputs from the request alone -------------------------------------------------------------


def _row_count(spec: TensorSpec, batched: bool) -> tuple[tuple[int, ...], int]:
    """Per-instance shape of an input and its element count (-1 when one dim is free)."""
    tail = spec.shape[1:] if batched else spec.shape
    free = sum(1 for d in tail if d < 0)
    if free > 1:
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(spec.shape)} with {free} free dimensions per "
            "instance; Predict cannot infer them from a flat vector (use ModelInfer)"
        )
    return tail, (-1 if free else int(np.prod(tail, dtype=np.int64)))


def _cast(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BOOL":
        return arr != 0
    if arr.dtype != spec.dtype:
        return arr.astype(spec.dtype)
    return arr


def _raw_input(
    spec: TensorSpec, instances: Sequence[Any], batched: bool, hint: str, *, hint_needs_entities: bool = False
) -> np.ndarray:
    """One input from the request: per instance ``tensors[name]`` or (one value) ``features[name]``.

    ``hint`` is appended to the missing-input message (only for instances with entity ids when
    ``hint_needs_entities``: that hint explains why the ids were not used).
    """
    if spec.datatype == "BYTES":
        raise InvalidInput(f"input '{spec.name}' is BYTES: Predict carries floats only (use ModelInfer)")
    n = len(instances)
    tail, per_row = _row_count(spec, batched)
    rows: list[Any] = []
    width = per_row
    for i, inst in enumerate(instances):
        vec = inst.tensors.get(spec.name)
        if vec is not None:
            values = vec.values
            if width < 0:
                width = len(values)
            if len(values) != width:
                raise InvalidInput(
                    f"instance {i}: input '{spec.name}' needs {width} values per instance, got {len(values)}"
                )
            rows.append(values)
        elif per_row == 1 and spec.name in inst.features:
            rows.append((inst.features[spec.name],))
        else:
            extra = hint if (inst.entity_ids or not hint_needs_entities) else ""
            raise InvalidInput(f"instance {i}: missing input '{spec.name}'{extra}")
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.float32, count=n * max(width, 0))
    shape = tuple(width if d < 0 else d for d in tail)
    return _cast(flat.reshape((n, *shape) if batched else shape), spec)


def instances_to_inputs(model: Any, instances: Sequence[Any]) -> dict[str, np.ndarray]:
    """Build the model's input tensors from Predict instances (raw features only, no bindings).

    Each input is taken, per instance, from ``tensors[input]`` (the instance's flattened row)
    or, for inputs holding one value per instance, from ``features[input]``. Rows are stacked
    along the batch axis and cast to the input's datatype.
    """
    n = len(instances)
    batched = getattr(model, "max_batch_size", 1) > 0
    if not batched and n != 1:
        raise InvalidInput(f"model '{model.name}' has no batch axis: send exactly one instance, got {n}")
    names = {s.name for s in model.inputs}
    for i, inst in enumerate(instances):
        for key in chain(inst.tensors.keys(), inst.features.keys()):
            if key not in names:
                raise InvalidInput(
                    f"instance {i}: unknown feature '{key}' for model '{model.name}' "
                    f"(inputs: {', '.join(sorted(names))})"
                )
    return {
        spec.name: _raw_input(
            spec, instances, batched, " (this model has no feature bindings, so entity ids do not fill inputs)", hint_needs_entities=True
        )
        for spec in model.inputs
    }


# -- inputs from feature bindings --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    name: str  # "user.clicks_1h" / "request.price"
    view: ResolvedView | None  # None for request values
    column: int  # index into view.columns
    override_key: str  # instance.features key that supplies / overrides it
    default: float | None  # None: a request value without a default is required


@dataclass(frozen=True, slots=True)
class _BoundInput:
    spec: TensorSpec
    shape: tuple[int, ...]  # per instance
    size: int  # values per instance (= number of sources)
    sources: tuple[_Source, ...]


@dataclass(frozen=True, slots=True)
class InputPlan:
    """How one model version's inputs are built under its bindings (compiled once per version)."""

    batched: bool
    bound: tuple[_BoundInput, ...]
    raw: tuple[TensorSpec, ...]
    input_names: frozenset[str]
    feature_keys: frozenset[str]  # accepted instance.features keys
    bindings: FeatureBindings


def compile_plan(model: Any, bindings: FeatureBindings, views: dict[str, ResolvedView]) -> InputPlan:
    """Check the bindings against the model's inputs; raises FeatureConfigError naming the problem."""
    label = f"model {model.name!r} version {model.version}"
    batched = model.max_batch_size > 0
    specs = {s.name: s for s in model.inputs}
    unknown = [name for name in bindings.inputs if name not in specs]
    if unknown:
        raise FeatureConfigError(
            f"{label}: feature bindings name input(s) {', '.join(map(repr, unknown))} the model does not have "
            f"(inputs: {', '.join(specs)})"
        )
    bound: list[_BoundInput] = []
    raw: list[TensorSpec] = []
    keys: set[str] = set()
    for spec in model.inputs:
        names = bindings.inputs.get(spec.name)
        if names is None:
            raw.append(spec)
            if spec.datatype != "BYTES":
                keys.add(spec.name)  # a one-value input may come from features[name]
            continue
        if spec.datatype == "BYTES":
            raise FeatureConfigError(f"{label}: input {spec.name!r} is BYTES; feature bindings give numbers")
        tail = spec.shape[1:] if batched else spec.shape
        k = len(names)
        free = [d for d in tail if d < 0]
        fixed = int(np.prod([d for d in tail if d >= 0], dtype=np.int64))
        if len(free) > 1 or (not free and fixed != k) or (free and (fixed == 0 or k % fixed)):
            raise FeatureConfigError(
                f"{label}: input {spec.name!r} has shape {list(spec.shape)} but is bound to {k} source(s); "
                f"it needs {k} values per instance (e.g. shape [-1, {k}])"
            )
        shape = tuple(k // fixed if d < 0 else d for d in tail)
        sources = []
        for name in names:
            view, column = parse_source(name)
            if view == REQUEST_SOURCE:
                sources.append(_Source(name, None, 0, column, bindings.defaults.get(name)))
            else:
                resolved = views[view]
                sources.append(
                    _Source(
                        name,
                        resolved,
                        resolved.columns.index(column),
                        name,
                        bindings.defaults.get(name, bindings.default),
                    )
                )
            keys.add(sources[-1].override_key)
        bound.append(_BoundInput(spec, shape, k, tuple(sources)))
    return InputPlan(batched, tuple(bound), tuple(raw), frozenset(specs), frozenset(keys), bindings)


@dataclass(slots=True)
class BuiltInputs:
    """Model inputs plus what the response and the predictions log report about them."""

    inputs: dict[str, np.ndarray]
    ages: list[float]  # per instance; empty when nothing was fetched
    used: list[dict[str, Any]] | None  # per instance: source/input name -> value (for the log)
    defaults: list[list[str]] | None  # per instance: sources filled with a default


_MISSING_ROW = FeatureRow((), None, False)


# -- the pipeline ------------------------------------------------------------------------------


@dataclass(slots=True)
class _CacheEntry:
    version: str
    variant: str
    scores: list[list[float]]
    extra: dict[str, list[list[float]]]
    ages: list[float]
    used: list[dict[str, Any]] | None
    defaults: list[list[str]] | None
    precomputed: list[bool] | None  # per instance; None: none was


@dataclass(slots=True)
class _RouteState:
    router: Router
    primary: str | None = None
    primary_at: float = float("-inf")


@dataclass(slots=True)
class _ModelCache:
    ttl_ms: int
    cache: TTLCache[_CacheEntry]


class PredictPipeline:
    """rtml.v1 Predict over a :class:`~serving.manager.ModelManager`.

    ``fetcher`` reads online features (None: models with bindings behave as during a Redis
    outage); ``logger`` publishes predictions (None: not published). Metrics go to
    ``metrics``, else to new series on ``registry`` (default: the manager's registry; a
    registry takes one set: pass ``metrics`` to re-create a pipeline on the same registry). The pipeline takes
    ownership of both: :meth:`close` closes them. ``cache_max_entries`` bounds each model's
    cache; ``shadow_max_pending`` the shadow scorings in flight (more are skipped and counted,
    so a slow shadow version cannot pile up work); ``shadow_timeout_s`` is the deadline each
    shadow scoring gets. Use from one event loop.
    """

    def __init__(
        self,
        manager: Any,
        *,
        fetcher: FeatureFetcher | None = None,
        logger: PredictionLogger | None = None,
        registry: CollectorRegistry | None = None,
        metrics: PredictMetrics | None = None,
        cache_max_entries: int = 10_000,
        shadow_max_pending: int = 256,
        shadow_timeout_s: float = 10.0,
    ) -> None:
        self.manager = manager
        self.fetcher = fetcher if fetcher is not None else FeatureFetcher(None)
        self.logger = logger
        if metrics is None:
            metrics = PredictMetrics(registry if registry is not None else getattr(manager, "registry", None))
        self.metrics = metrics
        self.cache_max_entries = cache_max_entries
        self.shadow_max_pending = shadow_max_pending
        self.shadow_timeout_s = shadow_timeout_s
        # Per served version / config: compiled once, dropped with the version (weak keys).
        self._plans: weakref.WeakKeyDictionary[Any, InputPlan | FeatureConfigError] = weakref.WeakKeyDictionary()
        self._routes: weakref.WeakKeyDictionary[Any, _RouteState] = weakref.WeakKeyDictionary()
        self._caches: dict[str, _ModelCache] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._score_children: dict[tuple[str, str], Any] = {}
        self._run_metas: dict[tuple[str, str], tuple[bytes, RunMeta | None]] = {}
        self._warned: set[str] = set()
        self._closed = False

    # -- public ------------------------------------------------------------------------------

    async def predict(
        self, request: rtml_pb.PredictRequest, *, deadline: float | None = None
    ) -> rtml_pb.PredictResponse:
        """Answer one Predict request; raises :class:`~serving.errors.ServingError` subclasses.

        ``deadline`` is a ``time.monotonic()`` instant (None: no deadline).
        """
        name = request.model
        if not name:
            raise InvalidInput("PredictRequest.model is empty")
        manager = self.manager
        request_id = request.request_id or uuid.uuid4().hex
        instances = request.instances
        n = len(instances)
        shadow_version: str | None = None
        variant = ""
        if request.HasField("version") and request.version:
            model = manager.get(name, request.version)  # pinned: no routing, no shadow
            if n == 0:
                raise InvalidInput("PredictRequest has no instances")
        else:
            latest = manager.get(name)
            if n == 0:
                raise InvalidInput("PredictRequest has no instances")
            routing = latest.config.routing
            if routing is None:
                model = latest
            else:
                model, variant, shadow_version = self._route(name, latest, instances, request_id)
        output_names = [s.name for s in model.outputs]
        for out in request.outputs:
            if out not in output_names:
                raise InvalidInput(
                    f"unknown output '{out}' requested from model '{model.name}' (it has {', '.join(output_names)})"
                )
        config: ModelConfig = model.config
        logger = self.logger

        cache: TTLCache[_CacheEntry] | None = None
        cache_key: bytes | None = None
        if config.cache_ttl_ms > 0:
            cache = self._cache_for(name, config.cache_ttl_ms)
            cache_key = self._cache_key(model, variant, request)
            entry = cache.get(cache_key)
            if entry is not None:
                self.metrics.cache.labels(name, "hit").inc()
                response = self._cached_response(request_id, name, entry)
                if logger is not None:
                    self._log(request_id, name, entry.version, variant, instances, entry.scores,
                              entry.ages, entry.used, entry.defaults, cached=True, precomputed=entry.precomputed)
                return response
            self.metrics.cache.labels(name, "miss").inc()

        want_log = logger is not None  # what the log needs is kept for cache hits too
        hits: list[_Hit | None] | None = None
        if config.precomputed is not None and not request.outputs:  # stored: the first output only
            hits = await self._precomputed(model, config.precomputed, instances)
        online = instances
        if hits is not None:
            online = [inst for inst, hit in zip(instances, hits) if hit is None]
        built = BuiltInputs({}, [], None, None)
        scores: list[list[float]] = []
        extra_rows: dict[str, list[list[float]]] = {}
        if online:
            built = await self.build_inputs(model, online, want_log=want_log)
            outputs = await model.infer(built.inputs, deadline=deadline)
            rows = len(online)
            scores = np.asarray(outputs[output_names[0]], dtype=np.float32).reshape(rows, -1).tolist()
            extra_rows = {
                out: np.asarray(outputs[out]).astype(np.float32, copy=False).reshape(rows, -1).tolist()
                for out in request.outputs
            }
        ages, used, defaults = built.ages, built.used, built.defaults
        marks: list[bool] | None = None
        if hits is not None and len(online) < n:
            scores, ages, used, defaults, marks = _merge_hits(hits, scores, built, want_log)

        response = rtml_pb.PredictResponse(
            request_id=request_id, model=model.name, model_version=model.version, variant=variant
        )
        results = response.results
        for i, row in enumerate(scores):
            result = results.add(scores=row)
            for out, out_rows in extra_rows.items():
                result.outputs[out].values.extend(out_rows[i])
        if ages:
            response.feature_age_ms.extend(ages)
        self._observe_scores(name, model.version, scores)

        if online and shadow_version is not None and shadow_version != model.version:
            # Precomputed instances have no input tensors to score: the shadow sees the rest.
            self._spawn_shadow(name, shadow_version, built, online, request_id)
        if logger is not None:
            self._log(request_id, name, model.version, variant, instances, scores, ages, used, defaults,
                      cached=False, precomputed=marks)
        if cache is not None and cache_key is not None:
            cache.put(
                cache_key,
                _CacheEntry(model.version, variant, scores, extra_rows, ages, used, defaults, marks),
            )
        return response

    async def build_inputs(
        self,
        model: Any,
        instances: Sequence[Any],
        *,
        want_log: bool = False,
        bindings: FeatureBindings | None = None,
    ) -> BuiltInputs:
        """The input tensors Predict gives ``model`` for ``instances`` (step 3 of :meth:`predict`).

        ``bindings`` overrides the version's ``config.features`` (batch prediction passes them
        fail-closed). ``want_log`` also returns what the predictions log records per instance.
        Batch prediction (:mod:`engine.batch`) builds its inputs here, so that offline scores
        come from exactly the inputs online Predict would use.
        """
        if bindings is None:
            bindings = model.config.features
        if bindings is not None:
            return await self._bound_inputs(model, bindings, instances, want_log)
        return BuiltInputs(
            instances_to_inputs(model, instances),
            [],
            [_raw_used(inst) for inst in instances] if want_log else None,
            None,
        )

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait (up to ``timeout_s``) for shadow scorings, then close the fetcher and logger."""
        self._closed = True
        tasks = list(self._shadow_tasks)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.fetcher.close()
        if self.logger is not None:
            # flush() blocks: keep it off the event loop (other servers may share the loop).
            await asyncio.to_thread(self.logger.close, timeout_s)

    # -- precomputed scores ------------------------------------------------------------------

    async def _precomputed(self, model: Any, policy: PrecomputedScores, instances: Sequence[Any]) -> list[_Hit | None]:
        """Each instance's fresh precomputed score, None where it must be computed online.

        Raises PrecomputedMissing / PrecomputedStale (or FeatureStoreUnavailable) where the
        policy says reject.
        """
        name, version, key = model.name, model.version, policy.key
        n = len(instances)
        hits: list[_Hit | None] = [None] * n
        ids: list[str] = []
        where: list[int] = []
        first_miss: str | None = None
        for i, inst in enumerate(instances):
            entity = inst.entity_ids.get(key)
            # An instance that brings its own values is scored on them, never from a lookup.
            if entity and not inst.features and not inst.tensors:
                ids.append(entity)
                where.append(i)
            elif first_miss is None:
                first_miss = (f"instance {i} cannot be looked up (it needs entity_ids['{key}'] and no features "
                              "or tensors of its own)")
        counts = {"hit": 0, "miss": n - len(ids), "stale": 0, "error": 0}
        first_stale: str | None = None
        if ids:
            reply: Any
            try:
                [reply] = await self.fetcher.execute([lookup_command(self.fetcher.key_prefix, name, version, ids)])
                if isinstance(reply, BaseException):  # e.g. WRONGTYPE: not a hash
                    raise FeatureStoreUnavailable(f"unreadable scores hash: {reply}")
            except FeatureStoreUnavailable as exc:
                self.metrics.precomputed.labels(name, "error").inc(len(ids))
                if policy.on_miss == "reject":
                    raise FeatureStoreUnavailable(
                        f"model '{name}' version {version}: precomputed scores cannot be read and "
                        f"precomputed.on_miss is reject: {exc}"
                    ) from exc
                self._warn_once(f"precomputed:{name}", "model %r: precomputed scores cannot be read, "
                                "computing online: %s", name, exc)
                return hits
            self._warned.discard(f"precomputed:{name}")
            meta = self._run_meta(model, policy, reply[0])
            now_ms = int(time.time() * 1000)
            max_age = policy.max_age_ms
            for i, entity, raw in zip(where, ids, reply[1:]):
                stored = _unpack(raw) if meta is not None else None
                if stored is None:
                    counts["miss"] += 1
                    first_miss = first_miss or f"no precomputed score for {key} {entity!r} (instance {i})"
                    continue
                age = max(now_ms - stored.computed_ms, 0)
                if max_age is not None and age > max_age:
                    counts["stale"] += 1
                    first_stale = first_stale or (
                        f"the precomputed score for {key} {entity!r} (instance {i}) is {age} ms old, "
                        f"over precomputed.max_age ({max_age} ms)"
                    )
                    continue
                assert meta is not None
                counts["hit"] += 1
                hits[i] = _Hit(stored.scores, float(age), dict(zip(meta.sources, stored.features)))
        for result, count in counts.items():
            if count:
                self.metrics.precomputed.labels(name, result).inc(count)
        label = f"model '{name}' version {version}"
        if first_miss is not None and policy.on_miss == "reject":
            raise PrecomputedMissing(f"{label}: {first_miss}, and precomputed.on_miss is reject")
        if first_stale is not None and policy.on_stale == "reject":
            raise PrecomputedStale(
                f"{label}: {first_stale}, and precomputed.on_stale is reject (run `rtml batch-predict {name}`)"
            )
        return hits

    def _run_meta(self, model: Any, policy: PrecomputedScores, raw: bytes | None) -> RunMeta | None:
        """The current run's metadata (parsed once per run), None when its scores cannot serve."""
        if raw is None:
            return None  # no run published for this version
        cache_key = (model.name, model.version)
        cached = self._run_metas.get(cache_key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        problem = ""
        meta: RunMeta | None = None
        try:
            meta = RunMeta.from_json(raw)
        except (ValueError, TypeError, KeyError) as exc:
            problem = f"unreadable run metadata ({exc})"
        else:
            sources = tuple(model.config.features.sources())
            if meta.key != policy.key:
                problem = f"run {meta.run_id} is keyed by {meta.key!r}, the config says {policy.key!r}"
            elif meta.sources != sources:
                problem = f"run {meta.run_id} was computed from other feature bindings ({', '.join(meta.sources)})"
        if problem:
            # Scores computed for another key or other inputs would answer the wrong question.
            self._warn_once(f"precomputed-run:{model.name}:{model.version}",
                            "model %r version %s: ignoring precomputed scores: %s; rerun batch-predict",
                            model.name, model.version, problem)
            meta = None
        self._run_metas[cache_key] = (raw, meta)
        return meta

    # -- routing -----------------------------------------------------------------------------

    def _route(self, name: str, latest: Any, instances: Sequence[Any], request_id: str) -> tuple[Any, str, str | None]:
        """(served model, variant, shadow version) for an unpinned request to a routed model."""
        state = self._routes.get(latest)
        if state is None:
            state = self._routes[latest] = _RouteState(Router(name, latest.config.routing))
        router = state.router
        if router.splits:
            route = router.choose(router.routing_key((inst.entity_ids for inst in instances), request_id))
        else:
            route = Route(PRIMARY, router.routing.primary)
        model: Any = None
        variant = route.variant
        if route.version is not None:
            try:
                model = self.manager.get(name, route.version)
            except (ModelNotFound, ModelUnavailable) as exc:
                self.metrics.fallbacks.labels(name, variant).inc()
                self._warn_once(f"route:{name}:{route.version}",
                                "model %r: %s version %s cannot serve (%s); serving the primary version",
                                name, variant, route.version, exc)
                variant = PRIMARY
        if model is None:
            model = self._primary(name, latest, state)
        self.metrics.routing.labels(name, variant, model.version).inc()
        return model, variant, router.shadow_version

    def default_model(self, name: str) -> Any:
        """The version an unpinned request gets without entity routing (KServe ModelInfer too):
        the model's routing primary, else the latest ready version."""
        latest = self.manager.get(name)
        if latest.config.routing is None:
            return latest
        state = self._routes.get(latest)
        if state is None:
            state = self._routes[latest] = _RouteState(Router(name, latest.config.routing))
        return self._primary(name, latest, state)

    def _primary(self, name: str, latest: Any, state: _RouteState) -> Any:
        now = time.monotonic()
        if state.primary is None or now - state.primary_at > _PRIMARY_REFRESH_S:
            # A short-lived cache: the set of READY versions changes only on loads/unloads,
            # and listing them on every request would cost more than the routing itself.
            ready = [s.version for s in self.manager.models()
                     if s.name == name and self.manager.is_ready(name, s.version)]
            state.primary = state.router.pick_primary(ready) or latest.version
            state.primary_at = now
        try:
            return self.manager.get(name, state.primary)
        except (ModelNotFound, ModelUnavailable) as exc:
            self._warn_once(f"primary:{name}:{state.primary}",
                            "model %r: primary version %s cannot serve (%s); serving the latest version %s",
                            name, state.primary, exc, latest.version)
            state.primary_at = float("-inf")
            return latest

    # -- features ----------------------------------------------------------------------------

    def _plan(self, model: Any, bindings: FeatureBindings) -> InputPlan:
        plan = self._plans.get(model)
        if plan is None:
            try:
                views = resolve_bindings(bindings, self.fetcher.views)
                plan = compile_plan(model, bindings, views)
            except FeatureConfigError as exc:
                plan = exc
                log.error("%s", exc)
            self._plans[model] = plan
        if isinstance(plan, FeatureConfigError):
            raise plan
        return plan

    async def _bound_inputs(
        self, model: Any, bindings: FeatureBindings, instances: Sequence[Any], want_log: bool
    ) -> BuiltInputs:
        plan = self._plan(model, bindings)
        name = model.name
        n = len(instances)
        if not plan.batched and n != 1:
            raise InvalidInput(f"model '{name}' has no batch axis: send exactly one instance, got {n}")
        names, keys = plan.input_names, plan.feature_keys
        # Which (view, entity) hashes each instance needs: each distinct one is read once.
        lookup_index: dict[tuple[str, str], int] = {}
        lookups: list[tuple[ResolvedView, str]] = []
        needs: list[dict[str, int]] = []
        for i, inst in enumerate(instances):
            tensors, feats, ids = inst.tensors, inst.features, inst.entity_ids
            for key in tensors:
                if key not in names:
                    raise InvalidInput(
                        f"instance {i}: unknown tensor '{key}' for model '{name}' (inputs: {', '.join(sorted(names))})"
                    )
            for key in feats:
                if key not in keys:
                    raise InvalidInput(
                        f"instance {i}: unknown feature '{key}' for model '{name}' "
                        f"(accepted: {', '.join(sorted(keys))})"
                    )
            need: dict[str, int] = {}
            for bound in plan.bound:
                if bound.spec.name in tensors:
                    continue
                for src in bound.sources:
                    view = src.view
                    if view is None or view.name in need or src.override_key in feats:
                        continue
                    values = []
                    for fld in view.entity:
                        value = ids.get(fld)
                        if not value:
                            raise InvalidInput(
                                f"instance {i}: entity_ids has no '{fld}', needed for feature view "
                                f"'{view.name}' (source {src.name} of input '{bound.spec.name}')"
                            )
                        values.append(value)
                    lookup = (view.name, composite_key(values))
                    index = lookup_index.get(lookup)
                    if index is None:
                        index = lookup_index[lookup] = len(lookups)
                        lookups.append((view, lookup[1]))
                    need[view.name] = index
            needs.append(need)

        rows: list[FeatureRow] = []
        if lookups:
            rows = await self._fetch(name, plan.bindings, lookups)

        used: list[dict[str, Any]] | None = [{} for _ in range(n)] if want_log else None
        defaults: list[list[str]] | None = [[] for _ in range(n)] if want_log else None
        inputs: dict[str, np.ndarray] = {}
        for bound in plan.bound:
            spec = bound.spec
            matrix: list[list[float]] = []
            for i, inst in enumerate(instances):
                vec = inst.tensors.get(spec.name)
                if vec is not None:
                    if len(vec.values) != bound.size:
                        raise InvalidInput(
                            f"instance {i}: input '{spec.name}' needs {bound.size} values per instance, "
                            f"got {len(vec.values)}"
                        )
                    row = list(vec.values)
                    if used is not None:
                        used[i][spec.name] = row
                    matrix.append(row)
                    continue
                feats, need = inst.features, needs[i]
                row = []
                for src in bound.sources:
                    if src.override_key in feats:
                        value = feats[src.override_key]
                    elif src.view is None:
                        if src.default is None:
                            raise InvalidInput(
                                f"instance {i}: missing request feature '{src.override_key}' "
                                f"(source {src.name} of input '{spec.name}', no default configured)"
                            )
                        value = src.default
                        if defaults is not None:
                            defaults[i].append(src.name)
                    else:
                        fetched = rows[need[src.view.name]].values
                        value = fetched[src.column] if fetched else None
                        if value is None:
                            value = src.default
                            if defaults is not None:
                                defaults[i].append(src.name)
                    row.append(value)
                    if used is not None:
                        used[i][src.name] = value
                matrix.append(row)
            arr = np.array(matrix, dtype=np.float64).reshape((n, *bound.shape) if plan.batched else bound.shape)
            inputs[spec.name] = _cast(arr, spec)
        for spec in plan.raw:
            inputs[spec.name] = _raw_input(
                spec, instances, plan.batched, " (not bound to features in the model config)"
            )
            if used is not None:
                for i, inst in enumerate(instances):
                    vec = inst.tensors.get(spec.name)
                    used[i][spec.name] = list(vec.values) if vec is not None else inst.features[spec.name]

        ages: list[float] = []
        if lookups:
            for need in needs:
                found = [rows[j].age_ms for j in need.values() if rows[j].found]
                ages.append(float(max(found)) if found else NO_AGE)  # type: ignore[type-var]
        return BuiltInputs(inputs, ages, used, defaults)

    async def _fetch(
        self, name: str, bindings: FeatureBindings, lookups: list[tuple[ResolvedView, str]]
    ) -> list[FeatureRow]:
        metrics = self.metrics
        started = time.perf_counter()
        try:
            replies = await self.fetcher.fetch(lookups)
        except FeatureStoreUnavailable as exc:
            metrics.fetch_seconds.labels(name).observe(time.perf_counter() - started)
            metrics.fetch_errors.labels(name).inc()
            if not bindings.fail_open:
                raise FeatureStoreUnavailable(
                    f"model '{name}' needs its online features and is fail-closed (features.fail_open: false): {exc}"
                ) from exc
            self._warn_once(f"fetch:{name}", "model %r: answering with default features: %s", name, exc)
            return [_MISSING_ROW] * len(lookups)
        metrics.fetch_seconds.labels(name).observe(time.perf_counter() - started)
        self._warned.discard(f"fetch:{name}")  # warn again at the next outage
        now_ms = int(time.time() * 1000)
        max_age = bindings.max_feature_age_ms
        rows = [decode_row(raw, view, now_ms, max_age) for (view, _), raw in zip(lookups, replies)]
        for (view, _), row in zip(lookups, rows):
            if not row.found:
                metrics.missing.labels(name, view.name).inc()
        return rows

    # -- shadow ------------------------------------------------------------------------------

    def _spawn_shadow(
        self, name: str, version: str, built: BuiltInputs, instances: Sequence[Any], request_id: str
    ) -> None:
        if self._closed or len(self._shadow_tasks) >= self.shadow_max_pending:
            self.metrics.shadow.labels(name, version, "skipped").inc()
            return
        # Copy what the task reads from the request: the proto may be reused once we return.
        entity_ids = [dict(inst.entity_ids) for inst in instances]
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(name, version, built, entity_ids, request_id), name=f"rtml-shadow-{name}-{version}"
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(
        self, name: str, version: str, built: BuiltInputs, entity_ids: list[dict[str, str]], request_id: str
    ) -> None:
        try:
            model = self.manager.get(name, version)
            outputs = await model.infer(built.inputs, deadline=time.monotonic() + self.shadow_timeout_s)
            first = model.outputs[0].name
            scores = np.asarray(outputs[first], dtype=np.float32).reshape(len(entity_ids), -1).tolist()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ServingError or anything else: never reaches the caller
            self.metrics.shadow.labels(name, version, "error").inc()
            self._warn_once(f"shadow:{name}:{version}", "model %r: shadow version %s failed: %s", name, version, exc)
            return
        self.metrics.shadow.labels(name, version, "ok").inc()
        self._observe_scores(name, version, scores)
        if self.logger is not None:
            self._log_records(request_id, name, version, SHADOW, entity_ids, scores, built.ages, built.used,
                              built.defaults, cached=False)

    # -- cache -------------------------------------------------------------------------------

    def _cache_for(self, name: str, ttl_ms: int) -> TTLCache[_CacheEntry]:
        entry = self._caches.get(name)
        if entry is None or entry.ttl_ms != ttl_ms:  # a config change starts a fresh cache
            entry = self._caches[name] = _ModelCache(ttl_ms, TTLCache(self.cache_max_entries, ttl_ms))
        return entry.cache

    @staticmethod
    def _cache_key(model: Any, variant: str, request: rtml_pb.PredictRequest) -> bytes:
        # id(model): a version reloaded in place (same number, new files) must not answer
        # from the old load's results. Deterministic serialisation sorts the maps.
        head = f"{model.name}\0{model.version}\0{id(model)}\0{variant}\0{','.join(request.outputs)}".encode()
        return request_digest(
            chain((head,), (inst.SerializeToString(deterministic=True) for inst in request.instances))
        )

    @staticmethod
    def _cached_response(request_id: str, name: str, entry: _CacheEntry) -> rtml_pb.PredictResponse:
        response = rtml_pb.PredictResponse(
            request_id=request_id, model=name, model_version=entry.version, variant=entry.variant
        )
        results = response.results
        for i, row in enumerate(entry.scores):
            result = results.add(scores=row)
            for out, rows in entry.extra.items():
                result.outputs[out].values.extend(rows[i])
        if entry.ages:
            response.feature_age_ms.extend(entry.ages)
        return response

    # -- logging and metrics -----------------------------------------------------------------

    def _observe_scores(self, name: str, version: str, scores: list[list[float]]) -> None:
        child = self._score_children.get((name, version))
        if child is None:
            child = self._score_children[(name, version)] = self.metrics.score.labels(name, version)
        observe = child.observe
        for row in scores:
            if row:
                observe(row[0])

    def _log(
        self,
        request_id: str,
        name: str,
        version: str,
        variant: str,
        instances: Sequence[Any],
        scores: list[list[float]],
        ages: list[float],
        used: list[dict[str, Any]] | None,
        defaults: list[list[str]] | None,
        *,
        cached: bool,
        precomputed: list[bool] | None = None,
    ) -> None:
        self._log_records(request_id, name, version, variant or PRIMARY, [dict(inst.entity_ids) for inst in instances],
                          scores, ages, used, defaults, cached=cached, precomputed=precomputed)

    def _log_records(
        self,
        request_id: str,
        name: str,
        version: str,
        variant: str,
        entity_ids: list[dict[str, str]],
        scores: list[list[float]],
        ages: list[float],
        used: list[dict[str, Any]] | None,
        defaults: list[list[str]] | None,
        *,
        cached: bool,
        precomputed: list[bool] | None = None,
    ) -> None:
        logger = self.logger
        assert logger is not None
        now_ms = int(time.time() * 1000)
        for i, ids in enumerate(entity_ids):
            row = scores[i]
            age = ages[i] if ages else None
            record = prediction_record(
                request_id, name, version, variant, ids, row, now_ms,
                features=used[i] if used is not None else None,
                feature_defaults=defaults[i] if defaults is not None else None,
                feature_age_ms=None if age is None or age < 0 else age,
                cached=cached,
                precomputed=precomputed[i] if precomputed is not None else False,
            )
            key = ids.get("user_id") or next(iter(ids.values()), None) or request_id
            logger.log(record, key)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        # One line per problem until it clears: an outage must not write a line per request.
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


@dataclass(frozen=True, slots=True)
class _Hit:
    """One instance answered from precomputed scores."""

    scores: list[float]
    age_ms: float
    features: dict[str, float]  # the inputs the score was computed from, by source


def _unpack(raw: bytes | None) -> StoredScore | None:
    if raw is None:
        return None
    try:
        return unpack_score(raw)
    except (struct.error, ValueError):  # not written by batch-predict: no score
        return None


def _merge_hits(
    hits: Sequence[_Hit | None], online_scores: list[list[float]], built: BuiltInputs, want_log: bool
) -> tuple[list[list[float]], list[float], list[dict[str, Any]] | None, list[list[str]] | None, list[bool]]:
    """Per-instance scores, ages, log features, defaults and precomputed marks, in request order."""
    scores: list[list[float]] = []
    ages: list[float] = []
    used: list[dict[str, Any]] | None = [] if want_log else None
    defaults: list[list[str]] | None = [] if want_log else None
    marks: list[bool] = []
    j = 0
    for hit in hits:
        marks.append(hit is not None)
        if hit is not None:
            scores.append(hit.scores)
            ages.append(hit.age_ms)
            if used is not None and defaults is not None:
                used.append(hit.features)
                defaults.append([])
            continue
        scores.append(online_scores[j])
        ages.append(built.ages[j] if built.ages else NO_AGE)
        if used is not None and defaults is not None:
            used.append(built.used[j] if built.used is not None else {})
            defaults.append(built.defaults[j] if built.defaults is not None else [])
        j += 1
    return scores, ages, used, defaults, marks


def _raw_used(inst: Any) -> dict[str, Any]:
    used: dict[str, Any] = dict(inst.features)
    for name, vec in inst.tensors.items():
        used[name] = list(vec.values)
    return used
