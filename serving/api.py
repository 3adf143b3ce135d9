"""In-process prediction API: rtml.v1 Predict without gRPC, on the same code path.

:class:`Predictor` is the embedded-model pattern: load a Triton-layout model repository into
the current process and call ``await predictor.predict(model, instances)``. It runs the very
pipeline the gRPC service runs (:class:`~serving.predict.PredictPipeline`: online features
from Redis, routing, cache, predictions log, dynamic batching), built from plain arguments.
:class:`SyncPredictor` wraps it for code without an event loop (a notebook, a batch job, a
Flask view).

An instance is a mapping with any of ``entity_ids`` ({field: id}), ``features``
({name: number}) and ``tensors`` ({input: flat sequence of numbers}), or an
``rtml.v1.Instance`` message. Errors are the server's: :class:`~serving.errors.ServingError`
subclasses whose ``code`` is the gRPC status the same request would get.

Raw features, no Redis or Kafka (this runs as a doctest):

>>> import asyncio, pathlib, tempfile
>>> from serving.onnx_session import identity_model_bytes
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "echo" / "1").mkdir(parents=True)
>>> _ = (root / "echo" / "1" / "model.onnx").write_bytes(identity_model_bytes())
>>> async def main():
...     async with Predictor(root) as predictor:
...         return await predictor.predict("echo", [{"features": {"x": 2.0}}, {"tensors": {"x": [5.0]}}])
>>> prediction = asyncio.run(main())
>>> prediction.model_version, [r.scores for r in prediction.results]
('1', [[2.0], [5.0]])
>>> with SyncPredictor(root) as predictor:
...     predictor.predict("echo", [{"features": {"x": 3.0}}]).scores.tolist()
[[3.0]]

With online features and the predictions log (a model whose ``config.yaml`` has feature
bindings; see :mod:`serving.config`):

>>> predictor = Predictor(                                   # doctest: +SKIP
...     "models/", redis_url="redis://localhost:6379/0", kafka_bootstrap="localhost:9092")
>>> await predictor.start()                                  # doctest: +SKIP
>>> await predictor.predict("ranker", [                      # doctest: +SKIP
...     {"entity_ids": {"user_id": "u42", "item_id": "i7"}, "features": {"price": 9.5}}])
Prediction(request_id='5c0f...', model='ranker', model_version='2', variant='canary', ...)
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from engine.features.spec import FeatureView
from proto.rtml.v1 import serving_pb2 as rtml_pb
from serving.errors import InvalidInput
from serving.features import FeatureFetcher, default_feature_views
from serving.predict import PredictPipeline
from serving.predictions_log import DEFAULT_TOPIC, PredictionLogger

InstanceLike = Mapping[str, Any] | rtml_pb.Instance
_INSTANCE_KEYS = frozenset({"entity_ids", "features", "tensors"})


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """One instance's result: its row of the first output, and any other requested outputs."""

    scores: list[float]
    outputs: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A Predict answer (the fields of ``rtml.v1.PredictResponse``)."""

    request_id: str
    model: str
    model_version: str
    variant: str
    results: list[InstanceResult]
    feature_age_ms: list[float]

    @property
    def scores(self) -> np.ndarray:
        """All instances' scores as a float32 array ``[instances, scores per instance]``."""
        return np.array([r.scores for r in self.results], dtype=np.float32)

    @classmethod
    def from_response(cls, response: rtml_pb.PredictResponse) -> "Prediction":
        return cls(
            request_id=response.request_id,
            model=response.model,
            model_version=response.model_version,
            variant=response.variant,
            results=[
                InstanceResult(list(r.scores), {name: list(v.values) for name, v in r.outputs.items()})
                for r in response.results
            ],
            feature_age_ms=list(response.feature_age_ms),
        )


def to_instance(value: InstanceLike, index: int = 0) -> rtml_pb.Instance:
    """An ``rtml.v1.Instance`` from a mapping (or the message itself).

    Raises :class:`~serving.errors.InvalidInput` for unknown keys or values of the wrong kind.
    """
    if isinstance(value, rtml_pb.Instance):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"instance {index}: expected a mapping or rtml.v1.Instance, got {type(value).__name__}")
    unknown = set(value) - _INSTANCE_KEYS
    if unknown:
        raise InvalidInput(
            f"instance {index}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
            f"(an instance has {', '.join(sorted(_INSTANCE_KEYS))})"
        )
    try:
        inst = rtml_pb.Instance(
            entity_ids={str(k): str(v) for k, v in (value.get("entity_ids") or {}).items()},
            features={str(k): float(v) for k, v in (value.get("features") or {}).items()},
        )
        for name, values in (value.get("tensors") or {}).items():
            flat = np.asarray(values, dtype=np.float32).ravel()
            inst.tensors[str(name)].values.extend(flat.tolist())
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"instance {index}: {exc}") from exc
    return inst


FeatureViews = str | Path | Mapping[str, FeatureView] | Sequence[FeatureView] | None


def _views(feature_views: FeatureViews) -> dict[str, FeatureView]:
    if feature_views is None or isinstance(feature_views, (str, Path)):
        return default_feature_views(feature_views)
    if isinstance(feature_views, Mapping):
        return dict(feature_views)
    return {v.name: v for v in feature_views}


class Predictor:
    """rtml.v1 Predict in-process over a model repository (asyncio).

    ``models``: a repository directory (loaded by a manager this predictor owns, polled every
    ``poll_interval_s`` for new versions; 0 = never) or a started
    :class:`~serving.manager.ModelManager` (the caller keeps owning it). ``redis_url``,
    ``redis_key_prefix`` and ``feature_views`` (a specs YAML path, views, or None for the
    packaged defaults) configure online features; ``kafka_bootstrap`` and
    ``predictions_topic`` the predictions log. Metrics go to the manager's registry.
    ``snapshot_key`` is the owned manager's HMAC key for River snapshots (see
    :class:`~serving.manager.ModelManager`).

    Use from one event loop: ``async with Predictor(...) as p`` or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        models: str | Path | Any,
        *,
        redis_url: str | None = None,
        redis_key_prefix: str = "rtml",
        feature_views: FeatureViews = None,
        kafka_bootstrap: str | None = None,
        predictions_topic: str = DEFAULT_TOPIC,
        poll_interval_s: float = 2.0,
        providers: list[str] | None = None,
        registry: CollectorRegistry | None = None,
        cache_max_entries: int = 10_000,
        feature_timeout_s: float = 0.25,
        snapshot_key: bytes | None = None,
    ) -> None:
        self._owns_manager = isinstance(models, (str, Path))
        if self._owns_manager:
            from serving.manager import ModelManager  # heavy (onnxruntime): imported when used

            self.manager: Any = ModelManager(
                models,
                poll_interval_s=poll_interval_s,
                registry=registry,
                providers=providers,
                snapshot_key=snapshot_key,
            )
        else:
            self.manager = models
        self._fetcher_args = dict(
            url=redis_url, views=_views(feature_views), key_prefix=redis_key_prefix, timeout_s=feature_timeout_s
        )
        self._kafka = kafka_bootstrap
        self._topic = predictions_topic
        self._cache_max_entries = cache_max_entries
        self.pipeline: PredictPipeline | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry holding the serving and Predict metrics."""
        return self.manager.registry

    async def start(self) -> "Predictor":
        """Load the repository (when owned) and set up features and the predictions log."""
        if self.pipeline is not None:
            return self
        if self._owns_manager:
            await self.manager.start()
        logger = None
        if self._kafka:
            logger = PredictionLogger(self._kafka, self._topic, registry=self.manager.registry).start()
        self.pipeline = PredictPipeline(
            self.manager,
            fetcher=FeatureFetcher(**self._fetcher_args),  # type: ignore[arg-type]
            logger=logger,
            registry=self.manager.registry,
            cache_max_entries=self._cache_max_entries,
        )
        return self

    async def stop(self) -> None:
        """Finish shadow scorings, flush the predictions log, unload owned models. Idempotent."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await pipeline.close()
            if self._owns_manager:
                await self.manager.stop()

    async def __aenter__(self) -> "Predictor":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def predict(
        self,
        model: str,
        instances: Iterable[InstanceLike],
        version: str | int | None = None,
        *,
        request_id: str | None = None,
        outputs: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> Prediction:
        """Score ``instances`` with ``model`` (``version``: None lets routing / latest decide).

        ``outputs`` names extra outputs to return; ``timeout_s`` is the request's deadline.
        """
        return Prediction.from_response(
            await self.predict_request(
                make_request(model, instances, version, request_id=request_id, outputs=outputs),
                timeout_s=timeout_s,
            )
        )

    async def predict_request(
        self, request: rtml_pb.PredictRequest, *, timeout_s: float | None = None
    ) -> rtml_pb.PredictResponse:
        """The protobuf-level call: exactly what the gRPC Predict handler does."""
        if self.pipeline is None:
            raise RuntimeError("Predictor is not started (use `async with Predictor(...)` or `await start()`)")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return await self.pipeline.predict(request, deadline=deadline)


def make_request(
    model: str,
    instances: Iterable[InstanceLike],
    version: str | int | None = None,
    *,
    request_id: str | None = None,
    outputs: Sequence[str] = (),
) -> rtml_pb.PredictRequest:
    """An ``rtml.v1.PredictRequest`` from plain Python values."""
    request = rtml_pb.PredictRequest(model=model, request_id=request_id or "", outputs=list(outputs))
    if version is not None:
        request.version = str(version)
    request.instances.extend(to_instance(inst, i) for i, inst in enumerate(instances))
    return request


class SyncPredictor:
    """A blocking :class:`Predictor`: its own event loop runs in a daemon thread.

    Same arguments as :class:`Predictor`; ``predict`` blocks the calling thread (any thread)
    until the answer is there. Use ``with SyncPredictor(...) as p`` or ``close()``.
    """

    def __init__(self, models: str | Path | Any, *, start_timeout_s: float = 120.0, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rtml-predictor", daemon=True)
        self._thread.start()
        self._predictor = Predictor(models, **kwargs)
        try:
            self._call(self._predictor.start(), start_timeout_s)
        except BaseException:
            self.close()
            raise

    @property
    def predictor(self) -> Predictor:
        """The wrapped asyncio predictor (lives on this wrapper's loop)."""
        return self._predictor

    def _call(self, coro: Any, timeout_s: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def predict(
        self,
        model: str,
        instances: Iterable[InstanceLike],
        version: str | int | None = None,
        *,
        request_id: str | None = None,
        outputs: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> Prediction:
        """Blocking :meth:`Predictor.predict`."""
        # Build the request here: the caller's iterables are read in the caller's thread.
        request = make_request(model, instances, version, request_id=request_id, outputs=outputs)
        response = self._call(self._predictor.predict_request(request, timeout_s=timeout_s), None)
        return Prediction.from_response(response)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the predictor and its loop thread. Idempotent."""
        if self._thread.is_alive():
            try:
                self._call(self._predictor.stop(), timeout_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout_s)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "SyncPredictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
