"""Model manager: loads every version in the repository, hot-swaps, validates, serves.

The manager owns one :class:`ServedModel` per loaded ``(name, version)``, each with its
own :class:`~serving.batcher.DynamicBatcher` and backend: an ONNX Runtime session, or a
River snapshot (:mod:`serving.river_model`, verified with the manager's ``snapshot_key``
before it is unpickled). Every version present
on disk is loaded (Triton's ``all`` version policy), so that routing can address any of
them; ``get(name)`` answers the highest READY version.

Lifecycle of a version (polled every ``poll_interval_s``):

* appears on disk -> LOADING -> session created, warmed up (in the loader thread, never on
  the event loop) -> READY: it is published in one step, so ``get(name)`` switches from the
  old latest to the new one between two requests, and both stay loaded.
* its files change (rewritten in place, config.yaml edited) -> reloaded in the background;
  the old load keeps serving until the new one is READY, then is retired.
* removed from disk -> unpublished at once (``get`` no longer returns it); requests already
  holding it finish on it; after ``drain_grace_s`` its queue is drained and it is unloaded.
* unloadable (not ONNX, truncated, bad config, warm-up fails, a snapshot refused by its hash,
  HMAC or River version) -> FAILED with the reason and a
  WARNING log line naming the path; whatever was serving keeps serving. A FAILED version is
  retried only when its files (or the model's config.yaml) change.

Example (the doctest builds a one-node model in a temporary repository):

>>> import asyncio, pathlib, tempfile, numpy as np
>>> from serving.onnx_session import identity_model_bytes
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "echo" / "1").mkdir(parents=True)
>>> _ = (root / "echo" / "1" / "model.onnx").write_bytes(identity_model_bytes())
>>> async def demo():
...     manager = ModelManager(root, poll_interval_s=0)
...     await manager.start()
...     model = manager.get("echo")
...     out = await model.infer({"x": np.ones((3, 1), np.float32)})
...     states = [(s.name, s.version, s.state.value) for s in manager.models()]
...     await manager.stop()
...     return model.version, out["y"].shape, states
>>> asyncio.run(demo())
('1', (3, 1), [('echo', '1', 'READY')])
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from serving.backend import ModelBackend
from serving.batcher import DynamicBatcher
from serving.config import ModelConfig, load_model_config
from serving.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    ServingError,
)
from serving.metrics import ServingMetrics, VersionMetrics
from serving.onnx_session import load_onnx
from serving.river_model import load_river
from serving.repository import (
    Fingerprint,
    ModelSource,
    VersionSource,
    fingerprint_file,
    fingerprint_tree,
    scan_repository,
    version_key,
)
from serving.tensors import NUMPY_TO_DATATYPE, TensorSpec

log = logging.getLogger(__name__)

_FAILURE_REASONS: dict[type[BaseException], str] = {
    InvalidInput: "invalid_input",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline_exceeded",
    ModelUnavailable: "unavailable",
    ModelNotFound: "not_found",
}


class ModelState(str, enum.Enum):
    """State of one model version, as ``models()`` reports it."""

    READY = "READY"
    LOADING = "LOADING"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One known ``name``/``version`` and its state; ``reason`` explains FAILED (or a failed reload)."""

    name: str
    version: str
    state: ModelState
    reason: str = ""


def map_ort_error(exc: Exception) -> ServingError:
    """An exception from an ONNX Runtime run -> the ServingError the request receives.

    ONNX Runtime's ``InvalidArgument`` (bad shape or type, an index out of range in the data)
    is the client's fault; anything else (out of memory, provider failure) is the server's.
    """
    if isinstance(exc, ServingError):
        return exc
    if type(exc).__name__ == "InvalidArgument":  # onnxruntime.capi.onnxruntime_pybind11_state
        return InvalidInput(f"inference rejected the input: {exc}")
    return ModelUnavailable(f"inference failed: {type(exc).__name__}: {exc}")


def _datatype_of(array: np.ndarray) -> str:
    return NUMPY_TO_DATATYPE.get(array.dtype, str(array.dtype))


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class ServedModel:
    """One loaded model version: its tensor specs, validation, and batched inference.

    ``inputs``/``outputs`` carry the full shapes with -1 for dynamic dims; when
    ``max_batch_size > 0`` dim 0 is the batch axis (-1). ``providers`` lists the ONNX
    Runtime execution providers the session actually uses (``["river"]`` for a River
    snapshot); ``platform`` is ``onnxruntime_onnx`` or ``river``.
    """

    def __init__(
        self,
        name: str,
        version: str,
        model: ModelBackend,
        config: ModelConfig,
        max_batch_size: int,
        *,
        metrics: VersionMetrics | None = None,
        path: Path | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.inputs: list[TensorSpec] = list(model.inputs)
        self.outputs: list[TensorSpec] = list(model.outputs)
        self.max_batch_size = max_batch_size
        self.config = config
        self.path = path
        self.providers: list[str] = model.providers
        self.platform: str = model.platform
        self._model = model
        self._metrics = metrics
        self._label = f"model {name!r} version {version}"
        # Per input: (spec, dtype, rank, [(axis, required size)]); checked on every request.
        self._checks: dict[str, tuple[TensorSpec, np.dtype, int, list[tuple[int, int]]]] = {}
        for spec in self.inputs:
            first = 1 if max_batch_size > 0 else 0
            fixed = [(axis, size) for axis, size in enumerate(spec.shape) if axis >= first and size >= 0]
            self._checks[spec.name] = (spec, spec.dtype, len(spec.shape), fixed)
        self._batcher = DynamicBatcher(
            model.run,
            max_batch_size=max_batch_size,
            max_queue_delay_us=config.max_queue_delay_us,
            queue_capacity=config.queue_capacity,
            inline_compute_us=config.inline_compute_us,
            name=f"{name}-v{version}",
            metrics=metrics,
            map_error=map_ort_error,
        )

    def __repr__(self) -> str:
        return (
            f"ServedModel({self.name!r}, {self.version!r}, max_batch_size={self.max_batch_size}, "
            f"providers={self.providers})"
        )

    @property
    def batcher(self) -> DynamicBatcher:
        """This version's batcher (its ``stats`` show the batching decisions)."""
        return self._batcher

    def validate(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check names, dtypes and shapes; return the batch rows (1 for a model without batch axis).

        Raises :class:`~serving.errors.InvalidInput` naming the input and what was expected.
        Dtypes must match exactly: silently casting FP64 to FP32 would change results.
        """
        checks = self._checks
        if not isinstance(inputs, Mapping):
            raise InvalidInput(f"{self._label}: inputs must be a mapping of name to array")
        if len(inputs) != len(checks) or any(name not in checks for name in inputs):
            missing = [n for n in checks if n not in inputs]
            unexpected = [n for n in inputs if n not in checks]
            parts = []
            if missing:
                parts.append("missing input " + ", ".join(repr(n) for n in missing))
            if unexpected:
                parts.append("unexpected input " + ", ".join(repr(n) for n in unexpected))
            expected = ", ".join(f"{s.name!r} {s.datatype}{_shape_str(s.shape)}" for s in self.inputs)
            raise InvalidInput(f"{self._label}: {'; '.join(parts)} (the model takes {expected})")
        batching = self.max_batch_size > 0
        rows = -1
        rows_from = ""
        for name, array in inputs.items():
            spec, dtype, rank, fixed = checks[name]
            if not isinstance(array, np.ndarray):
                raise InvalidInput(f"{self._label}: input {name!r} must be a numpy array, got {type(array).__name__}")
            if array.dtype != dtype and not (spec.datatype == "BYTES" and array.dtype.kind in "OSU"):
                raise InvalidInput(
                    f"{self._label}: input {name!r} has datatype {_datatype_of(array)}, expected {spec.datatype}"
                )
            shape = array.shape
            if len(shape) != rank:
                raise InvalidInput(
                    f"{self._label}: input {name!r} has shape {_shape_str(shape)} (rank {len(shape)}), "
                    f"expected {_shape_str(spec.shape)} (rank {rank})"
                )
            for axis, size in fixed:
                if shape[axis] != size:
                    raise InvalidInput(
                        f"{self._label}: input {name!r} has shape {_shape_str(shape)}, expected "
                        f"{_shape_str(spec.shape)} (dim {axis} must be {size})"
                    )
            if batching:
                if rows < 0:
                    rows, rows_from = shape[0], name
                elif shape[0] != rows:
                    raise InvalidInput(
                        f"{self._label}: input {name!r} has {shape[0]} rows but input {rows_from!r} has {rows}: "
                        "all inputs need the same batch size"
                    )
        if not batching:
            return 1
        if rows < 1:
            raise InvalidInput(f"{self._label}: input {rows_from!r} has batch size 0, expected at least 1 row")
        if rows > self.max_batch_size:
            raise InvalidInput(
                f"{self._label}: batch size {rows} (input {rows_from!r}) exceeds max_batch_size {self.max_batch_size}"
            )
        return rows

    async def infer(
        self, inputs: Mapping[str, np.ndarray], *, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Validate, queue to this version's batcher, await the outputs (split to this request's rows).

        ``deadline`` is in ``time.monotonic()`` seconds. Raises InvalidInput, Overloaded,
        DeadlineExceeded or ModelUnavailable. Outputs may be views into the batch's output
        arrays: treat them as read-only.
        """
        started = time.perf_counter()
        metrics = self._metrics
        try:
            rows = self.validate(inputs)
            outputs = await self._batcher.submit(inputs, rows, deadline)
        except ServingError as exc:
            if metrics is not None:
                metrics.observe_failure(_FAILURE_REASONS.get(type(exc), "internal"))
            raise
        except asyncio.CancelledError:
            if metrics is not None:
                metrics.observe_failure("cancelled")
            raise
        except Exception:
            if metrics is not None:
                metrics.observe_failure("internal")
            raise
        if metrics is not None:
            metrics.observe_success(time.perf_counter() - started)
        return outputs

    def run_unbatched(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One blocking backend call, bypassing the batcher (benchmarks, tests, warm-up)."""
        return self._model.run(inputs)

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new requests, finish (``drain``) or fail queued ones, stop the inference thread."""
        await self._batcher.close(drain=drain)


# -- loading (runs in the loader thread) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: ModelBackend
    config: ModelConfig
    max_batch_size: int
    seconds: float


def resolve_max_batch_size(config: ModelConfig, model: ModelBackend) -> int:
    """The max batch size a version is served with.

    A model whose inputs and outputs all have a dynamic first dim batches up to
    ``config.max_batch_size``. Any other model is served without batching (0); a config that
    explicitly asks for batching such a model is an error.
    """
    if model.has_batch_axis:
        return config.max_batch_size
    if "max_batch_size" in config.model_fields_set and config.max_batch_size > 0:
        fixed = [s for s in model.inputs + model.outputs if not s.shape or s.shape[0] != -1]
        detail = ", ".join(f"{s.name!r} {_shape_str(s.shape)}" for s in fixed)
        raise ValueError(
            f"config sets max_batch_size {config.max_batch_size} but the model has no batch axis "
            f"(first dim not dynamic: {detail}); set max_batch_size: 0"
        )
    return 0


def load_version(
    source: VersionSource,
    config_path: Path | None,
    config_fingerprint: Fingerprint,
    providers: Sequence[str] | None,
    snapshot_key: bytes | None = None,
) -> _Loaded:
    """Read config, load the model (ONNX session or verified River snapshot), warm it up.

    Blocking. Raises on any problem: ``ValueError`` for a refused snapshot.
    """
    started = time.perf_counter()
    config = load_model_config(config_path) if config_path is not None else ModelConfig()
    model: ModelBackend
    if source.backend == "river":
        model = load_river(source.path, snapshot_key)
    else:
        model = load_onnx(source.model_path, intra_op_threads=config.intra_op_threads, providers=providers)
    max_batch_size = resolve_max_batch_size(config, model)
    if config.warmup:
        try:
            model.warmup(max_batch_size)
        except Exception as exc:
            raise ValueError(f"warm-up failed: {exc}") from exc
    # A copy still in progress when the scan saw it: refuse this load; the next scan sees a
    # new fingerprint and loads the finished files.
    current_config = fingerprint_file(config_path) if config_path is not None else ()
    if fingerprint_tree(source.path) != source.fingerprint or current_config != config_fingerprint:
        raise ValueError("files changed while loading (copy in progress?); retrying on the next scan")
    return _Loaded(model, config, max_batch_size, time.perf_counter() - started)


# -- the manager ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Slot:
    """Everything the manager knows about one name/version."""

    state: ModelState
    reason: str = ""
    served: ServedModel | None = None
    attempted: tuple[Fingerprint, Fingerprint] | None = None  # files of the last load attempt


class ModelManager:
    """Loads a model repository, keeps it in sync with the disk, and hands out served models.

    ``providers=None`` picks CUDA when it really works in this process, else CPU (see
    :func:`serving.onnx_session.default_providers`). ``poll_interval_s <= 0`` disables
    background polling (call :meth:`refresh` to rescan). ``registry`` receives the serving
    metrics (a fresh ``CollectorRegistry`` when None). ``drain_grace_s``: how long a removed or
    replaced version keeps accepting requests from callers that fetched it just before,
    before it drains and unloads. ``snapshot_key``: River snapshots must carry an HMAC-SHA256
    of their pickle under this key, or are refused (None: only their sha256 is checked; see
    :mod:`engine.learning.snapshots` for the trust model).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        poll_interval_s: float = 2.0,
        registry: CollectorRegistry | None = None,
        providers: list[str] | None = None,
        drain_grace_s: float = 1.0,
        snapshot_key: bytes | None = None,
    ) -> None:
        self.root = Path(root)
        self.poll_interval_s = poll_interval_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self.providers = providers
        self.snapshot_key = snapshot_key
        self.drain_grace_s = drain_grace_s
        self._metrics = ServingMetrics(self.registry)
        self._slots: dict[str, dict[str, _Slot]] = {}
        self._latest: dict[str, ServedModel] = {}
        # One loader thread: loads are serialised so that a burst of new versions does not
        # take every core away from the models already serving.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtml-model-loader")
        self._lock: asyncio.Lock | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything in the repository (returns when each version is READY or FAILED),
        then poll for changes in the background."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        self._lock = asyncio.Lock()
        await self.refresh()
        if self.poll_interval_s > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop(), name="rtml-model-poll")

    async def stop(self) -> None:
        """Stop polling, drain every loaded version, release the threads."""
        self._stopped = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
            self._poll_task = None
        served = [slot.served for slots in self._slots.values() for slot in slots.values() if slot.served]
        for name, slots in self._slots.items():
            for version in slots:
                self._metrics.set_state(name, version, None)
        self._slots.clear()
        self._latest.clear()
        for task in list(self._retiring):
            task.cancel()  # skips the grace sleep; the task still drains (see _drain)
        await asyncio.gather(*(m.close(drain=True) for m in served), *self._retiring, return_exceptions=True)
        self._loader.shutdown(wait=False)

    async def refresh(self) -> None:
        """Rescan the repository now and apply what changed (what the poller does)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._reconcile()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # the poller must survive anything a repository can do
                log.exception("model repository scan of %s failed", self.root)

    # -- lookups -------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The READY version asked for; ``None``/``""`` = the highest READY version.

        Raises ModelNotFound for an unknown name or version (the message lists what exists)
        and ModelUnavailable for a version that is known but LOADING or FAILED.
        """
        slots = self._slots.get(name)
        if not slots:
            names = sorted(self._slots)
            listed = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            raise ModelNotFound(f"model {name!r} not found; available models: {listed or 'none'}")
        if version is None or version == "":
            served = self._latest.get(name)
            if served is None:
                raise ModelUnavailable(f"model {name!r} has no READY version ({self._describe(name)})")
            return served
        version = str(version)
        slot = slots.get(version)
        if slot is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; available versions: {self._describe(name)}"
            )
        if slot.served is None:
            detail = f": {slot.reason}" if slot.reason else ""
            raise ModelUnavailable(f"model {name!r} version {version} is {slot.state.value}{detail}")
        return slot.served

    def is_ready(self, name: str, version: str | None = None) -> bool:
        """True if :meth:`get` would return a model."""
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def models(self) -> list[ModelStatus]:
        """Every known name/version (sorted by name, then version number) with its state."""
        return [
            ModelStatus(name, version, slot.state, slot.reason)
            for name in sorted(self._slots)
            for version, slot in sorted(self._slots[name].items(), key=lambda kv: version_key(kv[0]))
        ]

    def _describe(self, name: str) -> str:
        slots = self._slots.get(name, {})
        return ", ".join(f"{v} {slots[v].state.value}" for v in sorted(slots, key=version_key)) or "none"

    # -- reconciliation ------------------------------------------------------------------

    async def _reconcile(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            scan = await loop.run_in_executor(self._loader, scan_repository, self.root)
        except OSError as exc:
            # Unreadable root (e.g. a network mount hiccup): keep serving what is loaded.
            log.warning("cannot scan model repository %s: %s; keeping the loaded models", self.root, exc)
            return
        for name in list(self._slots):
            source = scan.get(name)
            if source is not None and source.error is not None:
                log.warning("%s; keeping the loaded versions of model %r", source.error, name)
                continue
            for version in list(self._slots[name]):
                if source is None or version not in source.versions:
                    self._remove(name, version)
        for name, source in scan.items():
            if source.error is not None:
                continue
            for version in sorted(source.versions, key=version_key):
                if self._stopped:
                    return
                await self._load_if_changed(source, source.versions[version])

    async def _load_if_changed(self, model: ModelSource, source: VersionSource) -> None:
        name, version = source.name, source.version
        files = (source.fingerprint, model.config_fingerprint)
        slots = self._slots.setdefault(name, {})
        slot = slots.get(version)
        if slot is not None and slot.attempted == files:
            return
        if slot is None:
            slot = slots[version] = _Slot(ModelState.LOADING)
            self._metrics.set_state(name, version, ModelState.LOADING.value)
        slot.attempted = files
        loop = asyncio.get_running_loop()
        try:
            loaded: _Loaded = await loop.run_in_executor(
                self._loader,
                load_version,
                source,
                model.config_path,
                model.config_fingerprint,
                self.providers,
                self.snapshot_key,
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
            reason = " ".join(reason.split())  # one log line, one-line status reason
            if self._slots.get(name, {}).get(version) is not slot:
                return  # removed while loading
            if slot.served is not None:
                slot.reason = f"reload failed, still serving the previous load: {reason}"
                log.warning(
                    "refusing model %r version %s (%s): %s; the previous load keeps serving",
                    name, version, source.model_path, reason,
                )
            else:
                slot.state, slot.reason = ModelState.FAILED, reason
                self._metrics.set_state(name, version, ModelState.FAILED.value)
                serving = self._latest.get(name)
                log.warning(
                    "refusing model %r version %s (%s): %s; version is FAILED%s",
                    name, version, source.model_path, reason,
                    f", latest READY version {serving.version} keeps serving" if serving else "",
                )
            return
        if self._stopped or self._slots.get(name, {}).get(version) is not slot:
            return  # removed (or manager stopped) while loading: drop the new session
        served = ServedModel(
            name,
            version,
            loaded.model,
            loaded.config,
            loaded.max_batch_size,
            metrics=self._metrics.for_version(name, version),
            path=source.model_path,
        )
        previous = slot.served
        # Publish: one assignment each, no await in between, so every get() sees either the
        # old state or the new one.
        slot.served, slot.state, slot.reason = served, ModelState.READY, ""
        self._refresh_latest(name)
        self._metrics.set_state(name, version, ModelState.READY.value)
        log.info(
            "loaded model %r version %s from %s in %.2fs (providers %s, max_batch_size %d, inputs %s)",
            name, version, source.model_path, loaded.seconds, ",".join(served.providers),
            served.max_batch_size, ", ".join(f"{s.name}:{s.datatype}{_shape_str(s.shape)}" for s in served.inputs),
        )
        if previous is not None:
            self._retire(previous, remove_metrics=False)

    def _remove(self, name: str, version: str) -> None:
        slots = self._slots[name]
        slot = slots.pop(version)
        if not slots:
            del self._slots[name]
        self._refresh_latest(name)
        self._metrics.set_state(name, version, None)
        if slot.served is not None:
            log.info("model %r version %s was removed from %s: draining and unloading", name, version, self.root)
            self._retire(slot.served, remove_metrics=True)
        else:
            self._metrics.remove_version(name, version)

    def _refresh_latest(self, name: str) -> None:
        ready = [(version_key(v), s.served) for v, s in self._slots.get(name, {}).items() if s.served is not None]
        if ready:
            self._latest[name] = max(ready, key=lambda kv: kv[0])[1]
        else:
            self._latest.pop(name, None)

    def _retire(self, served: ServedModel, *, remove_metrics: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(served, remove_metrics))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, served: ServedModel, remove_metrics: bool) -> None:
        try:
            # Callers that fetched this version just before it was unpublished may still be
            # on their way to infer() (e.g. awaiting a feature fetch): give them time.
            await asyncio.sleep(self.drain_grace_s)
        except asyncio.CancelledError:
            pass  # stop(): skip the grace period, still drain below
        await served.close(drain=True)
        if remove_metrics and served.version not in self._slots.get(served.name, {}):
            self._metrics.remove_version(served.name, served.version)
        log.info("unloaded model %r version %s", served.name, served.version)

    def __repr__(self) -> str:
        return f"ModelManager({str(self.root)!r}, models={sorted(self._slots)})"

