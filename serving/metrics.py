"""Prometheus metrics of the model runtime, named in the spirit of Triton's ``nv_inference_*``.

All series carry ``model`` and ``version`` labels and live on the registry the
:class:`~serving.manager.ModelManager` owns (never the process-global default registry, so two
managers, e.g. in tests, do not collide). The gRPC layer adds its per-method series on the
same registry.

=============================================  =========  ==========================================
series                                         type       meaning
=============================================  =========  ==========================================
rtml_inference_request_success_total           counter    requests answered by the model
rtml_inference_request_failure_total{reason}   counter    requests failed: invalid_input,
                                                          overloaded, deadline_exceeded,
                                                          unavailable, cancelled, internal
rtml_inference_request_duration_seconds        histogram  ServedModel.infer of successful requests
rtml_inference_queue_duration_seconds          histogram  enqueue to dispatch of each request
rtml_inference_compute_duration_seconds        histogram  one ONNX Runtime call (a whole batch)
rtml_inference_batch_size                      histogram  rows per ONNX Runtime call
rtml_inference_count_total                     counter    rows inferred (Triton: inference count)
rtml_inference_exec_count_total                counter    ONNX Runtime calls (execution count)
rtml_inference_pending_request_count           gauge      requests queued, not yet dispatched
rtml_inference_model_versions{state}           gauge      1 per known version, in its state
                                                          (READY, LOADING, FAILED)
=============================================  =========  ==========================================

``count / exec_count`` is the average batch size actually reached.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> metrics = ServingMetrics(registry)
>>> v1 = metrics.for_version("mlp", "1")
>>> v1.observe_execution(rows=8, compute_s=0.001)
>>> b'rtml_inference_count_total{model="mlp",version="1"} 8.0' in generate_latest(registry)
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LABELS = ("model", "version")

# 50 us .. 10 s: a batch-1 MLP call is ~30 us, a queued request under overload seconds.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """The metric families, registered once per registry; :meth:`for_version` binds labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.success = Counter(
            "rtml_inference_request_success", "Inference requests answered by the model.", _LABELS, registry=registry
        )
        self.failure = Counter(
            "rtml_inference_request_failure",
            "Inference requests that failed, by reason.",
            (*_LABELS, "reason"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "rtml_inference_request_duration_seconds",
            "Time in ServedModel.infer of successful requests: validation, queue, compute, split.",
            _LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_duration = Histogram(
            "rtml_inference_queue_duration_seconds",
            "Time a request waited in the batcher queue before its batch was dispatched.",
            _LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_duration = Histogram(
            "rtml_inference_compute_duration_seconds",
            "Duration of one ONNX Runtime call (one batch).",
            _LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "rtml_inference_batch_size",
            "Rows per ONNX Runtime call.",
            _LABELS,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference_count = Counter(
            "rtml_inference_count", "Rows inferred (one request may carry several).", _LABELS, registry=registry
        )
        self.exec_count = Counter(
            "rtml_inference_exec_count", "ONNX Runtime calls (batches executed).", _LABELS, registry=registry
        )
        self.pending = Gauge(
            "rtml_inference_pending_request_count",
            "Requests queued in the batcher, not yet dispatched.",
            _LABELS,
            registry=registry,
        )
        self.versions = Gauge(
            "rtml_inference_model_versions",
            "Model versions known to the server: 1 for the state each version is in.",
            (*_LABELS, "state"),
            registry=registry,
        )
        # (model, version) -> the state label currently set to 1, so a change removes the old one.
        self._states: dict[tuple[str, str], str] = {}
        self._reasons: dict[tuple[str, str], set[str]] = {}

    def for_version(self, model: str, version: str) -> "VersionMetrics":
        """Label-bound children for one model version (bind once, use per request)."""
        return VersionMetrics(self, model, version)

    def set_state(self, model: str, version: str, state: str | None) -> None:
        """Record a version's state; ``None`` removes the version from the gauge."""
        key = (model, version)
        old = self._states.pop(key, None)
        if old is not None and old != state:
            self.versions.remove(model, version, old)
        if state is not None:
            self.versions.labels(model, version, state).set(1)
            self._states[key] = state

    def remove_version(self, model: str, version: str) -> None:
        """Drop every series of an unloaded version (keeps /metrics from growing with each deploy)."""
        for family in (
            self.success,
            self.request_duration,
            self.queue_duration,
            self.compute_duration,
            self.batch_size,
            self.inference_count,
            self.exec_count,
            self.pending,
        ):
            family.remove(model, version)
        for reason in self._reasons.pop((model, version), set()):
            self.failure.remove(model, version, reason)


class VersionMetrics:
    """The series of one model version, labels bound in advance to keep per-request cost low."""

    def __init__(self, metrics: ServingMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._success = metrics.success.labels(model, version)
        self._request_duration = metrics.request_duration.labels(model, version)
        self._queue_duration = metrics.queue_duration.labels(model, version)
        self._compute_duration = metrics.compute_duration.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._inference_count = metrics.inference_count.labels(model, version)
        self._exec_count = metrics.exec_count.labels(model, version)
        self.pending = metrics.pending.labels(model, version)
        self._failures: dict[str, Counter] = {}

    def observe_success(self, duration_s: float) -> None:
        self._success.inc()
        self._request_duration.observe(duration_s)

    def observe_failure(self, reason: str) -> None:
        # Failures stay out of the duration histogram: instant refusals (overloaded, invalid
        # input) would otherwise pull the latency percentiles of served requests down.
        child = self._failures.get(reason)
        if child is None:
            child = self._failures[reason] = self._metrics.failure.labels(self._model, self._version, reason)
            self._metrics._reasons.setdefault((self._model, self._version), set()).add(reason)
        child.inc()

    def observe_queue(self, seconds: float) -> None:
        self._queue_duration.observe(seconds)

    def observe_execution(self, rows: int, compute_s: float) -> None:
        self._batch_size.observe(rows)
        self._inference_count.inc(rows)
        self._exec_count.inc()
        self._compute_duration.observe(compute_s)
