"""Score every entity of a model offline and publish the scores for serving (docs/batch.md).

:func:`batch_predict` is the batch pattern of the design: when the input space is
enumerable (every user) and hours-old answers are good enough, compute them all at once and
let ``rtml serve`` answer by lookup (``precomputed`` in the model's ``config.yaml``).

1. **Model.** The version (default: the highest) is loaded from the model repository the way
   the server loads it (:func:`serving.manager.load_version`: ONNX Runtime on CUDA when it
   works, else the CPU; or a River snapshot), with its ``config.yaml``.
2. **Entities.** The given ids, or every entity of the views the model's bindings read
   (``SCAN <prefix>:<view>:*``).
3. **Inputs** come from :meth:`serving.predict.PredictPipeline.build_inputs`, the code that
   builds online Predict's inputs (same bindings, defaults, TTL and max-age rules), for
   ``batch_size`` entities per Redis round trip. The bindings are made fail-closed: a Redis
   error aborts the run rather than scoring defaults.
4. **Scores**: one model call per chunk; each entity's first-output row, the time its
   features were read and its input values go into the run's own hash (one HSET per chunk).
5. **Publish**: the run replaces the previous one atomically (:mod:`engine.batch.store`).
   A failure before that leaves the served scores untouched.

Only models whose every input is bound, to views keyed by ``precomputed.key`` alone or to
``request.*`` sources that have a default, can be scored without a request: anything else
is refused with :class:`BatchPredictError` saying why.
"""

from __future__ import annotations

import asyncio
import glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import redis
from prometheus_client import CollectorRegistry

from engine.batch import DEFAULT_BATCH_SIZE, DEFAULT_TTL_MS
from engine.batch.store import RunMeta, ScoreWriter, pack_rows, scores_key
from engine.config import RtmlConfig
from engine.features.online import entity_key
from engine.features.spec import FeatureView
from engine.learning.snapshots import encode_key
from proto.rtml.v1 import serving_pb2 as rtml_pb
from serving.config import REQUEST_SOURCE, ModelConfig, parse_source
from serving.features import (
    FeatureConfigError,
    FeatureFetcher,
    FeatureStoreUnavailable,
    default_feature_views,
    resolve_bindings,
)
from serving.manager import load_version
from serving.predict import PredictPipeline, compile_plan
from serving.repository import scan_model, version_key
from serving.tensors import TensorSpec



class BatchPredictError(ValueError):
    """The model, its config or the arguments cannot be batch-scored; the message says why."""


@dataclass(frozen=True, slots=True)
class BatchPredictResult:
    """What one run did."""

    model: str
    version: str
    run_id: str
    key: str  # the Redis hash serving reads
    entities: int
    seconds: float
    providers: list[str]

    @property
    def rows_per_s(self) -> float:
        return self.entities / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "run_id": self.run_id, "key": self.key,
            "entities": self.entities, "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s),
            "providers": self.providers,
        }


@dataclass(eq=False)
class _Scorer:
    """A loaded version with what PredictPipeline.build_inputs reads of a served model."""

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    config: ModelConfig
    backend: Any  # OnnxModel or RiverModel: .run(feeds) -> outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(feeds)


def load_scorer(cfg: RtmlConfig, model: str, version: str | None, repository: str | Path | None) -> _Scorer:
    """Load ``model``'s version (default: the highest) as the server would; refuses what cannot serve."""
    root = Path(repository if repository is not None else str(cfg.learning.model_repository))
    path = root / model
    if not path.is_dir():
        raise BatchPredictError(f"no model {model!r} in the model repository {root}")
    source = scan_model(path)
    if not source.versions:
        raise BatchPredictError(f"model {model!r} has no version in {path} (expected {path}/<n>/model.onnx)")
    if version is None:
        version = max(source.versions, key=version_key)
    elif version not in source.versions:
        raise BatchPredictError(
            f"model {model!r} has no version {version!r} (versions: {', '.join(sorted(source.versions, key=version_key))})"
        )
    try:
        loaded = load_version(
            source.versions[version], source.config_path, source.config_fingerprint, None,
            encode_key(cfg.learning.snapshot_key),
        )
    except ValueError as exc:  # an invalid config.yaml names its file; a refused snapshot says why
        raise BatchPredictError(f"model {model!r} version {version}: {exc}") from exc
    backend = loaded.model
    return _Scorer(model, version, list(backend.inputs), list(backend.outputs), loaded.max_batch_size,
                   loaded.config, backend)


def check_batchable(scorer: _Scorer, feature_views: Mapping[str, FeatureView]) -> list[str]:
    """The views to enumerate entities from; raises BatchPredictError for configs that cannot work.

    ``feature_views``: serving's views by name (:func:`serving.features.default_feature_views`).
    """
    label = f"model {scorer.name!r} version {scorer.version}"
    config = scorer.config
    policy = config.precomputed
    if policy is None or config.features is None:
        raise BatchPredictError(
            f"{label}: its config.yaml has no 'precomputed' section, so serving would never read batch "
            "scores (add e.g. precomputed: {key: user_id, max_age: 6h}; see docs/batch.md)"
        )
    bindings = config.features
    try:
        views = resolve_bindings(bindings, feature_views)
        plan = compile_plan(scorer, bindings, views)
    except FeatureConfigError as exc:
        raise BatchPredictError(str(exc)) from exc
    if plan.raw:
        names = ", ".join(spec.name for spec in plan.raw)
        raise BatchPredictError(
            f"{label}: input(s) {names} are not bound to features, so only a request could supply them"
        )
    for source in bindings.sources():
        view, _ = parse_source(source)
        if view == REQUEST_SOURCE:
            if source not in bindings.defaults:
                raise BatchPredictError(
                    f"{label}: {source} is a request value without a default; batch prediction has no request "
                    f"(give it one under features.defaults)"
                )
        elif views[view].entity != (policy.key,):
            raise BatchPredictError(
                f"{label}: source {source} reads view {view!r} keyed by {', '.join(views[view].entity)}, but "
                f"precomputed scores are keyed by {policy.key!r} alone"
            )
    return sorted(views)


def scan_entities(client: redis.Redis, prefix: str, views: Iterable[str]) -> list[str]:
    """Every entity id that has a hash in any of ``views`` (sorted, each once)."""
    found: set[str] = set()
    for view in views:
        head = entity_key(prefix, view, "")
        for key in client.scan_iter(match=glob.escape(head) + "*", count=1000):
            found.add((key.decode() if isinstance(key, bytes) else key)[len(head):])
    return sorted(found)


def read_ids(path: str | Path) -> list[str]:
    """Entity ids from a file, one per line (blank lines skipped)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


async def batch_predict_async(
    cfg: RtmlConfig,
    model: str,
    version: str | None = None,
    users: Sequence[str] | None = None,
    repository: str | Path | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> BatchPredictResult:
    """:func:`batch_predict` for callers that already run an event loop."""
    if not cfg.redis.url:
        raise BatchPredictError("batch prediction reads features from and writes scores to Redis: set redis.url "
                                "(RTML_REDIS_URL)")
    if batch_size < 1 or ttl_ms < 1:
        raise BatchPredictError("batch_size and ttl_ms must be positive")
    started = time.perf_counter()
    scorer = load_scorer(cfg, model, version, repository)
    feature_views = default_feature_views(cfg.pipeline.feature_specs)
    views = check_batchable(scorer, feature_views)
    config = scorer.config
    assert config.precomputed is not None and config.features is not None
    key = config.precomputed.key
    # Fail-closed: a Redis outage must abort the run, never publish scores of default features.
    bindings = config.features.model_copy(update={"fail_open": False})
    sources = bindings.sources()
    prefix = cfg.redis.key_prefix
    client = redis.Redis.from_url(cfg.redis.url)
    fetcher = FeatureFetcher(
        cfg.redis.url, views=feature_views, key_prefix=prefix,
        timeout_s=30.0, retry_after_s=0.0,
    )
    pipeline = PredictPipeline(None, fetcher=fetcher, registry=CollectorRegistry())
    writer = ScoreWriter(client, prefix, scorer.name, scorer.version, ttl_ms)
    try:
        if users is None:
            ids = scan_entities(client, prefix, views)
        else:
            ids = list(dict.fromkeys(users))  # each once, in the given order
            if any(not u for u in ids):
                raise BatchPredictError("an entity id is empty")
        run_started_ms = int(time.time() * 1000)
        chunk = batch_size if scorer.max_batch_size > 0 else 1  # no batch axis: one entity per call
        output = scorer.outputs[0].name
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            instances = [rtml_pb.Instance(entity_ids={key: entity}) for entity in part]
            built = await pipeline.build_inputs(scorer, instances, want_log=True, bindings=bindings)
            computed_ms = int(time.time() * 1000)  # when these entities' features were read
            outputs = scorer.run(built.inputs)
            scores = np.asarray(outputs[output], dtype=np.float32).reshape(len(part), -1)
            assert built.used is not None
            values = np.array([[row[s] for s in sources] for row in built.used], dtype=np.float64)
            writer.write(zip(part, pack_rows(computed_ms, scores, values.reshape(len(part), len(sources)))))
        meta = RunMeta(writer.run_id, scorer.name, scorer.version, key, run_started_ms, int(time.time() * 1000),
                       len(ids), tuple(sources), output)
        published = writer.publish(meta)
    except BaseException as exc:
        try:
            writer.abort()
        except redis.RedisError:
            pass  # Redis is the problem: the unpublished run expires on its own (ttl_ms)
        if isinstance(exc, redis.RedisError):  # scan / write / publish: one error type for callers
            raise FeatureStoreUnavailable(f"Redis failed during batch prediction: {type(exc).__name__}: {exc}") from exc
        raise
    finally:
        await pipeline.close()
        client.close()
    return BatchPredictResult(scorer.name, scorer.version, writer.run_id, scores_key(prefix, scorer.name, scorer.version),
                              published, time.perf_counter() - started, list(getattr(scorer.backend, "providers", [])))


def batch_predict(
    cfg: RtmlConfig,
    model: str,
    version: str | None = None,
    users: Sequence[str] | None = None,
    repository: str | Path | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> BatchPredictResult:
    """Score ``users`` (default: every entity of the model's views) and publish the run atomically.

    ``repository`` defaults to ``cfg.learning.model_repository``; ``version`` to the highest.
    ``ttl_ms`` is how long the published scores (and an abandoned run) are kept. Raises
    :class:`BatchPredictError` for a model or config that cannot be batch-scored and
    :class:`~serving.features.FeatureStoreUnavailable` when Redis fails mid-run (nothing is
    published then).
    """
    return asyncio.run(
        batch_predict_async(cfg, model, version, users, repository, batch_size=batch_size, ttl_ms=ttl_ms)
    )
