"""The ``rtml serve`` process: one grpc.aio port with every service, plus Prometheus /metrics.

Services on the gRPC port:

* ``inference.GRPCInferenceService`` -- KServe v2 / Open Inference Protocol (tritonclient works
  unchanged); Triton-only methods answer UNIMPLEMENTED with a message listing what is served;
* ``rtml.v1.Prediction`` -- rtml's Predict (:mod:`serving.predict`: online features from
  ``--redis-url``, routing, cache, every prediction published to ``--predictions-topic`` on
  ``--kafka-bootstrap``);
* ``rtml.v1.Bandits`` -- Choose (:mod:`serving.bandits`: the ``--bandits`` specs, state in
  ``--redis-url``, every decision published like a prediction);
* ``rtml.v1.Recommendations`` -- Recommend (:mod:`serving.recommend`, docs/recommend.md), only
  with ``--recommend FILE``: user tower, FAISS retrieval over the items topic, ranker,
  re-ranking, exploration; impressions to ``--events-topic``;
* ``grpc.health.v1.Health`` -- SERVING while every model has at least one ready version;
* ``grpc.reflection.v1alpha.ServerReflection`` -- lists the services above (grpcurl works).

Every KServe, Predict and Choose call goes through :func:`_instrument`, which counts it in
``rtml_grpc_requests_total{method,code}``, times it in
``rtml_grpc_request_duration_seconds{method}``, answers :class:`~serving.errors.ServingError`
subclasses with their own status code and message, and answers anything else with INTERNAL
and a short message (the traceback goes to the log, never to the client). The server keeps
serving whatever a request does. Oversize messages are refused by grpc itself with
RESOURCE_EXHAUSTED before any handler runs.

Run: ``rtml serve --models DIR --grpc-port P --metrics-port M`` or
``python -m serving.server --models DIR ...`` (same arguments, see :func:`serve_main`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import start_http_server

from proto.inference import open_inference_grpc_pb2 as kserve_pb
from engine.bandits.spec import load_bandit_specs
from proto.rtml.v1 import serving_pb2 as rtml_pb
from serving.bandits import BANDITS_SERVICE, BanditService, BanditsServicer
from serving.errors import InvalidInput, ServingError
from serving.features import FeatureFetcher, default_feature_views
from serving.kserve import (
    SERVICE_NAME as KSERVE_SERVICE,
    KServeServicer,
    UnimplementedKServeHandler,
    deadline_from,
    server_ready,
)
from serving.predict import PredictMetrics, PredictPipeline, instances_to_inputs  # noqa: F401  (re-exported)
from serving.predictions_log import DEFAULT_TOPIC, PredictionLogger, PredictionLogMetrics

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "rtml.v1.Prediction"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Request latencies from ~100 µs (metadata calls) to seconds (an overloaded queue).
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_HEALTH_REFRESH_S = 0.5


# -- metrics and error mapping -----------------------------------------------------------------


class GrpcMetrics:
    """Per-method request counters and latency histograms, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rtml_grpc_requests",
            "gRPC requests handled, by RPC method name and final status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "rtml_grpc_request_duration_seconds",
            "Time from handler entry to reply, by RPC method name (status of any kind).",
            ["method"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )


Handler = Callable[[Any, Any], Awaitable[Any]]


def _instrument(method: str, fn: Handler, metrics: GrpcMetrics) -> Handler:
    """Wrap a unary handler with metrics and the ServingError -> status mapping."""
    observe = metrics.duration.labels(method).observe
    ok = metrics.requests.labels(method, "OK").inc
    # Label children for error codes are looked up lazily: errors are the slow path.
    count = metrics.requests.labels

    def record(start: float, code: str) -> None:
        observe(time.perf_counter() - start)
        if code == "OK":
            ok()
        else:
            count(method, code).inc()

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Counted before the status goes out: a client that sees an error and then scrapes
        # /metrics finds it counted.
        start = time.perf_counter()
        try:
            response = await fn(request, context)
        except ServingError as exc:
            record(start, exc.code.name)
            await context.abort(exc.code, str(exc))
        except grpc.aio.AbortError:
            # The handler aborted by itself; the status is already set on the context.
            code_obj = context.code() if hasattr(context, "code") else None
            record(start, code_obj.name if isinstance(code_obj, grpc.StatusCode) else "UNKNOWN")
            raise
        except asyncio.CancelledError:
            # Client went away or its deadline passed: grpc already ended the RPC.
            record(start, "CANCELLED")
            raise
        except Exception as exc:
            log.exception("%s failed with an unexpected error", method)
            record(start, "INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")
        record(start, "OK")
        return response

    return handler


def _parsing(fn: Handler, request_cls: Any, max_bytes: int) -> Handler:
    """Parse the request inside the handler, so size and syntax errors get a clear status.

    gRPC's own limit answers RESOURCE_EXHAUSTED with no word on which limit, and a
    deserializer error surfaces as a bare failure; here an oversize or undecodable
    request is INVALID_ARGUMENT saying what was wrong and what is accepted.
    """

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        if len(raw) > max_bytes:
            raise InvalidInput(
                f"request is {len(raw):,} bytes; the limit is {max_bytes:,} bytes "
                f"(rtml serve --max-message-mb): send fewer rows per request"
            )
        try:
            request = request_cls.FromString(raw)
        except DecodeError as exc:
            raise InvalidInput(f"request is not a valid {request_cls.DESCRIPTOR.full_name}: {exc}") from None
        return await fn(request, context)

    return handler


def _service_handler(
    methods: dict[str, tuple[Handler, Any, Any]], metrics: GrpcMetrics, max_request_bytes: int
) -> dict[str, grpc.RpcMethodHandler]:
    """Unary method handlers ``{rpc: handler}`` for one service, each instrumented.

    ``methods`` maps an RPC name to (coroutine, request class, response class). Requests
    arrive as bytes and are parsed by :func:`_parsing` under the metrics and error mapping.
    """
    return {
        name: grpc.unary_unary_rpc_method_handler(
            _instrument(name, _parsing(fn, req_cls, max_request_bytes), metrics),
            request_deserializer=None,
            response_serializer=resp_cls.SerializeToString,
        )
        for name, (fn, req_cls, resp_cls) in methods.items()
    }


def _add_service(server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # Registered methods are matched by grpc's core without a Python-level handler lookup.
    server.add_registered_method_handlers(service, handlers)


# -- rtml.v1.Prediction -----------------------------------------------------------------------


class PredictionServicer:
    """``rtml.v1.Prediction``: Predict through :class:`~serving.predict.PredictPipeline`
    (online features, routing, cache, predictions log), the same path as :mod:`serving.api`."""

    def __init__(self, pipeline: PredictPipeline) -> None:
        self._pipeline = pipeline

    async def Predict(self, request: rtml_pb.PredictRequest, context: Any) -> rtml_pb.PredictResponse:
        return await self._pipeline.predict(request, deadline=deadline_from(context))


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the server listens. Port 0 picks a free port (see :attr:`RtmlServer.grpc_port`)."""

    host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_port: int | None = 8002  # None: no /metrics HTTP endpoint
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Calls in flight beyond this are refused at once with RESOURCE_EXHAUSTED by gRPC itself.
    # Without a cap, gRPC core queues up to grpc.server.max_pending_requests (1000) and then
    # CANCELs calls, which clients cannot tell from their own cancellations.
    max_concurrent_rpcs: int = 512
    # Worker processes of one `rtml serve --workers N` share the port on purpose.
    reuse_port: bool = False
    grace_s: float = 5.0
    # rtml.v1 Predict: online features (None: models with feature bindings answer as during a
    # Redis outage) and the predictions log (None: predictions are not published).
    redis_url: str | None = None
    redis_key_prefix: str = "rtml"
    feature_specs: str | None = None  # feature views YAML; None: the packaged defaults
    kafka_bootstrap: str | None = None
    predictions_topic: str = DEFAULT_TOPIC
    # rtml.v1 Choose: bandit specs YAML (state in redis_url under redis_key_prefix, decisions
    # published with the predictions); None: no bandits, Choose answers NOT_FOUND.
    bandits: str | None = None
    # rtml.v1 Recommend: the recommend config YAML (docs/recommend.md); None: the service is
    # not registered (UNIMPLEMENTED). Impressions go to events_topic, items come from items_topic.
    recommend: str | None = None
    events_topic: str = "events"
    items_topic: str = "items"


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding every served service's file, for server reflection.

    The KServe file lives in its own pool (see ``proto/inference/__init__.py``), the others in
    protobuf's default pool; reflection takes a single pool, so the files are added to one.
    """
    pool = descriptor_pool.DescriptorPool()
    for module in (kserve_pb, rtml_pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class RtmlServer:
    """grpc.aio server over a started :class:`~serving.manager.ModelManager`.

    The caller owns the manager (starts it before :meth:`start`, stops it after :meth:`stop`);
    :func:`serve_main` does both for the CLI.
    """

    def __init__(self, manager: Any, options: ServerOptions = ServerOptions()) -> None:
        self.manager = manager
        self.options = options
        self.metrics = GrpcMetrics(manager.registry)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self._http: Any = None
        self.pipeline: PredictPipeline | None = None
        self.bandits: BanditService | None = None
        self.recommend: Any = None  # serving.recommend.service.RecommendService when configured
        self._recommend_metrics: Any = None  # registered on first use, reused across restarts
        # Registered once per server (a registry refuses a second set), reused across restarts.
        self._predict_metrics = PredictMetrics(manager.registry)
        self._log_metrics: PredictionLogMetrics | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None

    def _make_pipeline(self) -> PredictPipeline:
        opts = self.options
        fetcher = FeatureFetcher(
            opts.redis_url, views=default_feature_views(opts.feature_specs), key_prefix=opts.redis_key_prefix
        )
        logger = None
        if opts.kafka_bootstrap:
            if self._log_metrics is None:
                self._log_metrics = PredictionLogMetrics(self.manager.registry)
            logger = PredictionLogger(opts.kafka_bootstrap, opts.predictions_topic, metrics=self._log_metrics).start()
        return PredictPipeline(self.manager, fetcher=fetcher, logger=logger, metrics=self._predict_metrics)

    async def _make_bandits(self) -> BanditService:
        opts = self.options
        specs = load_bandit_specs(opts.bandits) if opts.bandits else []
        # Decisions go to the predictions log through Predict's producer (one per server).
        logger = self.pipeline.logger if self.pipeline is not None else None
        service = BanditService(specs, opts.redis_url, prefix=opts.redis_key_prefix, logger=logger)
        try:
            return await service.start()
        except BaseException:
            service.close()
            raise

    async def _make_recommend(self) -> Any:
        from serving.recommend.config import load_recommend_config
        from serving.recommend.metrics import RecommendMetrics
        from serving.recommend.service import RecommendService

        opts = self.options
        assert self.pipeline is not None
        if self._recommend_metrics is None:
            self._recommend_metrics = RecommendMetrics(self.manager.registry)
        service = RecommendService(
            load_recommend_config(opts.recommend), self.manager, self.pipeline.fetcher,
            redis_url=opts.redis_url, prefix=opts.redis_key_prefix, kafka_bootstrap=opts.kafka_bootstrap,
            events_topic=opts.events_topic, items_topic=opts.items_topic, predictions=self.pipeline.logger,
            metrics=self._recommend_metrics,
        )
        try:
            return await service.start()
        except BaseException:
            await service.close()
            raise

    def _build(self) -> grpc.aio.Server:
        opts = self.options
        server = grpc.aio.server(
            maximum_concurrent_rpcs=opts.max_concurrent_rpcs,
            options=[
                # Twice our own limit: requests in between are refused by _parsing with
                # INVALID_ARGUMENT and a message; only beyond this does grpc answer alone.
                ("grpc.max_receive_message_length", 2 * opts.max_message_bytes),
                ("grpc.max_send_message_length", opts.max_message_bytes),
                # Two servers must not silently share one port by accident: fail to bind
                # instead, unless they are workers of one `rtml serve --workers N`.
                ("grpc.so_reuseport", 1 if opts.reuse_port else 0),
            ]
        )
        assert self.pipeline is not None
        kserve = KServeServicer(self.manager, default_model=self.pipeline.default_model)
        _add_service(
            server,
            KSERVE_SERVICE,
            _service_handler(
                {
                    "ServerLive": (kserve.ServerLive, kserve_pb.ServerLiveRequest, kserve_pb.ServerLiveResponse),
                    "ServerReady": (kserve.ServerReady, kserve_pb.ServerReadyRequest, kserve_pb.ServerReadyResponse),
                    "ModelReady": (kserve.ModelReady, kserve_pb.ModelReadyRequest, kserve_pb.ModelReadyResponse),
                    "ServerMetadata": (
                        kserve.ServerMetadata, kserve_pb.ServerMetadataRequest, kserve_pb.ServerMetadataResponse,
                    ),
                    "ModelMetadata": (
                        kserve.ModelMetadata, kserve_pb.ModelMetadataRequest, kserve_pb.ModelMetadataResponse,
                    ),
                    "ModelInfer": (kserve.ModelInfer, kserve_pb.ModelInferRequest, kserve_pb.ModelInferResponse),
                },
                self.metrics,
                opts.max_message_bytes,
            ),
        )
        # Any other inference.GRPCInferenceService method (Triton's extras): UNIMPLEMENTED.
        server.add_generic_rpc_handlers((UnimplementedKServeHandler(),))
        assert self.pipeline is not None
        predict = PredictionServicer(self.pipeline)
        _add_service(
            server,
            PREDICTION_SERVICE,
            _service_handler(
                {"Predict": (predict.Predict, rtml_pb.PredictRequest, rtml_pb.PredictResponse)},
                self.metrics,
                opts.max_message_bytes,
            ),
        )
        assert self.bandits is not None
        bandits = BanditsServicer(self.bandits)
        _add_service(
            server,
            BANDITS_SERVICE,
            _service_handler(
                {"Choose": (bandits.Choose, rtml_pb.ChooseRequest, rtml_pb.ChooseResponse)},
                self.metrics,
                opts.max_message_bytes,
            ),
        )
        services: tuple[str, ...] = ()
        if self.recommend is not None:
            from serving.recommend.service import RECOMMEND_SERVICE, RecommendationsServicer

            recommend = RecommendationsServicer(self.recommend)
            _add_service(
                server,
                RECOMMEND_SERVICE,
                _service_handler(
                    {"Recommend": (recommend.Recommend, rtml_pb.RecommendRequest, rtml_pb.RecommendResponse)},
                    self.metrics,
                    opts.max_message_bytes,
                ),
            )
            services = (RECOMMEND_SERVICE,)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (
            KSERVE_SERVICE,
            PREDICTION_SERVICE,
            BANDITS_SERVICE,
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server, pool=_reflection_pool())
        return server

    async def _refresh_health(self) -> None:
        """Keep grpc.health.v1 in step with the manager (models load and unload over time)."""
        names = ("", KSERVE_SERVICE, PREDICTION_SERVICE)
        last: int | None = None
        while True:
            try:
                ready = server_ready(self.manager)
            except Exception:  # a status probe must never take the health service down
                log.exception("readiness check failed")
                ready = False
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for name in names:
                    await self._health.set(name, status)
                last = status
            await asyncio.sleep(_HEALTH_REFRESH_S)

    async def start(self) -> None:
        """Bind the gRPC port (and the metrics port) and start serving."""
        opts = self.options
        self.pipeline = self._make_pipeline()
        try:
            self.bandits = await self._make_bandits()
            if opts.recommend:
                self.recommend = await self._make_recommend()
            server = self._build()
            address = f"{opts.host}:{opts.grpc_port}"
            try:
                port = server.add_insecure_port(address)
            except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError
                raise OSError(f"cannot bind gRPC address {address} (in use?)") from exc
            if port == 0:
                raise OSError(f"cannot bind gRPC address {address}")
            self.grpc_port = port
            if opts.metrics_port is not None:
                self._http, _ = start_http_server(opts.metrics_port, addr=opts.host, registry=self.manager.registry)
                self.metrics_port = self._http.server_port
            await server.start()
        except BaseException:
            await self._close_pipeline()  # no producer thread or Redis pool left behind
            raise
        self._server = server
        self._health_task = asyncio.create_task(self._refresh_health(), name="rtml-health")
        log.info(
            "rtml serving gRPC on %s:%d%s",
            opts.host,
            port,
            f", metrics on http://{opts.host}:{self.metrics_port}/metrics" if self.metrics_port else "",
        )

    async def wait(self) -> None:
        """Until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, refuse new RPCs, let running ones finish."""
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.options.grace_s if grace_s is None else grace_s)
            self._server = None
        await self._close_pipeline()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    async def _close_pipeline(self) -> None:
        # After the gRPC server: running Predicts have finished, shadows and the log drain here.
        recommend, self.recommend = self.recommend, None
        if recommend is not None:
            await recommend.close()
        bandits, self.bandits = self.bandits, None
        if bandits is not None:
            bandits.close()
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await pipeline.close()


class BackgroundServer:
    """A manager and an :class:`RtmlServer` on their own event loop in a daemon thread.

    For tests, benchmarks and the in-process use of a real server: ``start()`` returns once
    the ports are bound and the models are loaded; ``stop()`` shuts both down.
    """

    def __init__(self, manager_factory: Callable[[], Any], options: ServerOptions) -> None:
        self._factory = manager_factory
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rtml-server", daemon=True)
        self.server: RtmlServer | None = None
        self.manager: Any = None

    def _run(self, coro: Awaitable[Any], timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self._thread.start()

        async def _start() -> None:
            self.manager = self._factory()
            await self.manager.start()
            self.server = RtmlServer(self.manager, self._options)
            await self.server.start()

        try:
            self._run(_start(), timeout)
        except BaseException:
            self.stop()  # no half-started loop thread left behind
            raise
        return self

    @property
    def grpc_address(self) -> str:
        assert self.server is not None and self.server.grpc_port is not None
        return f"{self._options.host}:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        assert self.server is not None and self.server.metrics_port is not None
        return f"http://{self._options.host}:{self.server.metrics_port}/metrics"

    def stop(self, timeout: float = 30.0) -> None:
        async def _stop() -> None:
            if self.server is not None:
                await self.server.stop()
            if self.manager is not None:
                await self.manager.stop()

        try:
            if self._thread.is_alive():
                self._run(_stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- CLI ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtml serve",
        description="Serve ONNX models and River snapshots over gRPC (KServe v2 + rtml.v1.Prediction) "
        "with Prometheus metrics.",
    )
    p.add_argument(
        "--models", required=True, help="model repository: DIR/<name>/<version>/model.onnx (or a River snapshot)"
    )
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 picks a free one; default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port (default 8002; -1 disables)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between model repository scans")
    p.add_argument(
        "--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest gRPC message accepted or sent, MiB (default 64)",
    )
    p.add_argument("--grace", type=float, default=5.0, help="seconds running RPCs get to finish on shutdown")
    p.add_argument(
        "--max-concurrent-rpcs", type=int, default=512,
        help="calls in flight before new ones get RESOURCE_EXHAUSTED (default 512)",
    )
    p.add_argument(
        "--redis-url", default=None,
        help="online feature store for Predict feature bindings (e.g. redis://localhost:6379/0); "
        "without it, bound models answer with defaults (fail-open) or UNAVAILABLE (fail-closed)",
    )
    p.add_argument("--redis-key-prefix", default=None,
                   help="Redis key prefix of the feature hashes (default: redis.key_prefix of the rtml config)")
    p.add_argument(
        "--feature-specs", default=None,
        help="feature views YAML the bindings refer to (default: the packaged engine/defaults/features.yaml)",
    )
    p.add_argument(
        "--kafka-bootstrap", default=None,
        help="Kafka bootstrap.servers to publish every prediction to (default: predictions are not published)",
    )
    p.add_argument(
        "--predictions-topic", default=DEFAULT_TOPIC, help=f"topic for published predictions (default {DEFAULT_TOPIC})"
    )
    p.add_argument(
        "--snapshot-key-env", default=None, metavar="VAR",
        help="environment variable holding the HMAC key River snapshots must be signed with "
        "(default: learning.snapshot_key of the rtml config, e.g. RTML_LEARNING_SNAPSHOT_KEY; "
        "no key: snapshots are checked by sha256 only)",
    )
    p.add_argument(
        "--bandits", default=None, metavar="FILE",
        help="bandit specs YAML served by rtml.v1.Bandits/Choose, state in --redis-url "
        "(default: learning.bandits of the rtml config; none: no bandits)",
    )
    p.add_argument(
        "--recommend", default=None, metavar="FILE",
        help="recommend config YAML: serve rtml.v1.Recommendations/Recommend (docs/recommend.md); "
        "default: not served",
    )
    p.add_argument("--events-topic", default=None,
                   help="topic for Recommend's impression events (default: kafka.events_topic of the rtml config)")
    p.add_argument("--items-topic", default=None,
                   help="items topic the Recommend index follows (default: kafka.items_topic of the rtml config)")
    p.add_argument(
        "--workers", type=int, default=1,
        help="server processes sharing the gRPC port (SO_REUSEPORT; the kernel spreads connections); "
        "worker i serves /metrics on metrics-port + i (default 1)",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for workers
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def _with_config_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Unset store flags come from the rtml configuration (RTML_CONFIG file, RTML_* variables).

    Also sets ``args.snapshot_key`` (bytes or None). The key is read from the environment,
    never from the command line, where every user of the host could read it in ``ps``.
    Raises ``ValueError`` when ``--snapshot-key-env`` names an unset or empty variable: a
    server told to verify snapshots must not silently accept unsigned ones, and
    (:class:`~engine.bandits.spec.BanditSpecError`) when the ``--bandits`` file is invalid.
    """
    from engine.config import load_config
    from engine.learning.snapshots import encode_key

    cfg = load_config()
    if args.redis_url is None:
        args.redis_url = cfg.redis.url
    if args.redis_key_prefix is None:
        args.redis_key_prefix = cfg.redis.key_prefix
    if args.feature_specs is None:
        args.feature_specs = cfg.pipeline.feature_specs
    if args.kafka_bootstrap is None:
        args.kafka_bootstrap = cfg.kafka.bootstrap
    if args.bandits is None:
        args.bandits = cfg.learning.bandits
    if args.bandits:
        load_bandit_specs(args.bandits)  # a bad file is a usage error (exit 2), before serving
    if args.events_topic is None:
        args.events_topic = cfg.kafka.events_topic
    if args.items_topic is None:
        args.items_topic = cfg.kafka.items_topic
    if args.recommend:
        from serving.recommend.config import load_recommend_config

        load_recommend_config(args.recommend)  # a bad file is a usage error too
    if args.snapshot_key_env is None:
        args.snapshot_key = encode_key(cfg.learning.snapshot_key)
    else:
        args.snapshot_key = encode_key(os.environ.get(args.snapshot_key_env))
        if args.snapshot_key is None:
            raise ValueError(f"--snapshot-key-env {args.snapshot_key_env}: that environment variable is unset or empty")
    return args


def _run_workers(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start ``--workers`` copies of this server on one port and wait for them.

    One grpc.aio event loop saturates a core at a few thousand requests/s (the protocol
    work is grpc's, not the model's), so on a multi-core host throughput scales with
    processes, not threads. Each worker loads its own models and serves its own metrics.
    """
    from engine.runtime.ports import free_port

    port = args.grpc_port or free_port(args.host if args.host != "0.0.0.0" else "127.0.0.1")
    base = [a for a in argv]
    children = []
    for i in range(args.workers):
        child = [sys.executable, "-m", "serving.server", *base, "--workers", "1", "--reuse-port",
                 "--grpc-port", str(port)]
        if args.metrics_port >= 0:
            child += ["--metrics-port", str(args.metrics_port + i if args.metrics_port else 0)]
        children.append(subprocess.Popen(child))
    log.info("rtml serve: %d workers on %s:%d", args.workers, args.host, port)
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    codes = []
    for c in children:
        while True:
            try:
                codes.append(c.wait())
                break
            except KeyboardInterrupt:
                continue
        if not stopping:  # one worker died on its own: take the others down too
            forward(signal.SIGTERM, None)
    # A worker killed by a signal reports a negative code: any failure exits 1.
    return 0 if all(code == 0 for code in codes) else 1


async def _serve(args: argparse.Namespace) -> int:
    from serving.manager import ModelManager  # heavy (onnxruntime): imported when serving

    manager = ModelManager(args.models, poll_interval_s=args.poll_interval, snapshot_key=args.snapshot_key)
    options = ServerOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        reuse_port=args.reuse_port,
        grace_s=args.grace,
        redis_url=args.redis_url,
        redis_key_prefix=args.redis_key_prefix,
        feature_specs=args.feature_specs,
        kafka_bootstrap=args.kafka_bootstrap,
        predictions_topic=args.predictions_topic,
        bandits=args.bandits,
        recommend=args.recommend,
        events_topic=args.events_topic,
        items_topic=args.items_topic,
    )
    # Signals are taken from the start: a SIGINT while models load or the port binds must
    # still end in a clean shutdown (exit 0), not a KeyboardInterrupt mid-start.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = RtmlServer(manager, options)
    try:
        await manager.start()
        await server.start()
        await stop.wait()
        log.info("shutting down (grace %.1f s)", args.grace)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
        await manager.stop()
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``rtml serve --models DIR --grpc-port P --metrics-port M [--host H] [--poll-interval S]``.

    Returns the process exit code: 0 after a clean SIGINT/SIGTERM shutdown, 2 when the
    repository or a port cannot be used.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = _with_config_defaults(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))  # exits 2, like any other bad flag
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.workers > 1:
        return _run_workers(args, argv)
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler was installed: still a stop
        return 0
    except OSError as exc:
        log.error("rtml serve: %s", exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(serve_main())
