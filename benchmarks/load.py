"""Load generator for KServe v2 ``ModelInfer`` over gRPC: closed or open loop, 1..N processes.

::

    python -m benchmarks.load --target 127.0.0.1:8001 --model mlp --concurrency 64 --duration 10
    python -m benchmarks.load --target 127.0.0.1:8001 --model mlp --rate 2000 --duration 10 --processes 2

prints one JSON object (see :func:`summarise`).

Why it is built this way (FIELD-NOTES, "gRPC and serving"): a Python grpc.aio client tops out
near the rate of a Python echo server (~2.8k req/s per process on a 2-core machine), i.e. a
naive client measures itself, not the server. So:

* requests are **pre-serialised**: a small pool of distinct ``ModelInferRequest`` messages is
  encoded once (inputs as ``raw_input_contents``) and the bytes are sent through a raw
  ``channel.unary_unary`` with no serializer/deserializer -- no protobuf work per request in
  the client, and responses stay undecoded bytes;
* the client can be spread over **processes** (``--processes N``; ``multiprocessing`` spawn,
  concurrency and rate split between them, one common start instant), and within a process
  over several HTTP/2 connections (``--channels``);
* per-request work is one ``perf_counter`` pair and one ``list.append``; latencies go back to
  the parent as a numpy array per process and are merged before taking percentiles.

Modes:

* **closed loop** (default): ``C`` workers, each sends its next request when its previous one
  is answered -- throughput at a fixed number of requests in flight;
* **open loop** (``--rate R``): requests are *scheduled* at ``R``/s (``--arrival poisson`` or
  ``fixed`` intervals) whether or not earlier ones came back, and each latency is measured from
  its scheduled instant, so a client or server that falls behind shows up in the latencies
  rather than silently lowering the offered load (no coordinated omission). ``--max-outstanding``
  bounds the requests in flight; requests over it are counted as ``dropped``.

Accounting (both modes): a request belongs to the measurement when it was started (or, open
loop, scheduled) inside ``[warm-up end, warm-up end + duration)``; the run waits for those to
finish (each bounded by ``--timeout``). ``throughput_rps`` is the number that succeeded divided
by ``duration``; errors are counted by gRPC status code name.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import grpc
import numpy as np

from proto.inference import open_inference_grpc_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_METADATA = f"/{SERVICE}/ModelMetadata"
SERVER_READY = f"/{SERVICE}/ServerReady"

_MAX_MESSAGE = 64 * 1024 * 1024
_WIRE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND_SIZE = {(v.kind, v.itemsize): k for k, v in _WIRE_DTYPES.items()}


# --------------------------------------------------------------------------- requests


def datatype_of(array: np.ndarray) -> str:
    """KServe datatype name of a numpy array (``FP32`` for float32, ...).

    >>> datatype_of(np.zeros(2, np.float32)), datatype_of(np.zeros(1, ">i8")), datatype_of(np.ones(1, bool))
    ('FP32', 'INT64', 'BOOL')
    """
    name = _BY_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise ValueError(f"unsupported dtype {array.dtype} (BYTES inputs are not generated here)")
    return name


def build_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    request_id: str = "",
    outputs: Sequence[str] = (),
) -> bytes:
    """One serialized ``ModelInferRequest`` with every input as ``raw_input_contents``.

    Raw bytes are what tritonclient sends and what the server decodes without per-element
    work (typed ``fp32_contents`` cost 5-250x more, FIELD-NOTES).
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        arr = np.ascontiguousarray(value)
        dtype = datatype_of(arr)
        request.inputs.add(name=name, datatype=dtype, shape=list(arr.shape))
        request.raw_input_contents.append(arr.astype(_WIRE_DTYPES[dtype], copy=False).tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def decode_response(data: bytes | pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs of a ``ModelInferResponse`` (raw bytes or message) as numpy arrays by name."""
    response = pb.ModelInferResponse.FromString(data) if isinstance(data, (bytes, bytearray)) else data
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        if tensor.datatype not in _WIRE_DTYPES:
            raise ValueError(f"output {tensor.name!r}: datatype {tensor.datatype} not decoded here")
        raw = response.raw_output_contents[i]
        out[tensor.name] = np.frombuffer(raw, dtype=_WIRE_DTYPES[tensor.datatype]).reshape(tuple(tensor.shape))
    return out


@dataclass(frozen=True)
class InputSpec:
    """A model input as ModelMetadata reports it (``-1``: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def random_inputs(specs: Sequence[InputSpec], rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs for ``specs``: ``rows`` on the batch axis (dim 0), 1 for other free dims."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [1 if d < 0 else d for d in spec.shape]
        if shape:
            shape[0] = rows if spec.shape[0] < 0 else shape[0]
        dtype = _WIRE_DTYPES.get(spec.datatype)
        if dtype is None:
            raise ValueError(f"input {spec.name!r}: datatype {spec.datatype} is not generated by this tool")
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 10, shape).astype(dtype)
        feeds[spec.name] = value
    return feeds


def make_payloads(
    model: str,
    specs: Sequence[InputSpec],
    *,
    rows: int = 1,
    count: int = 64,
    seed: int = 0,
    version: str = "",
) -> list[bytes]:
    """``count`` distinct pre-serialised requests of ``rows`` rows each.

    Distinct payloads keep a response cache (if the server has one) from answering every
    request from memory; 64 is plenty and costs nothing to hold.
    """
    rng = np.random.default_rng(seed)
    return [build_infer_request(model, random_inputs(specs, rows, rng), version=version) for _ in range(count)]


def _channel(target: str, *, local_pool: bool = True) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]
    if local_pool:
        # Channels with equal arguments share one subchannel (one TCP connection) through
        # grpc's global pool; a local pool gives each channel its own connection.
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.insecure_channel(target, options=options)


async def fetch_input_specs(target: str, model: str, version: str = "", timeout: float = 10.0) -> list[InputSpec]:
    """The model's inputs from ``ModelMetadata`` (so the CLI works for any served model)."""
    async with _channel(target, local_pool=False) as channel:
        call = channel.unary_unary(
            MODEL_METADATA,
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        meta = await call(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout)
    return [InputSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.inputs]


async def wait_server_ready(target: str, timeout: float = 60.0) -> None:
    """Poll KServe ``ServerReady`` until it answers ``ready`` (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    async with _channel(target, local_pool=False) as channel:
        call = channel.unary_unary(
            SERVER_READY,
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        while time.monotonic() < deadline:
            try:
                if (await call(pb.ServerReadyRequest(), timeout=2.0)).ready:
                    return
            except grpc.aio.AioRpcError as exc:
                last = exc
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{target} not ready after {timeout:.0f}s (last error: {last})")


async def infer_once(target: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send one pre-serialised ModelInfer request; the raw response bytes."""
    async with _channel(target, local_pool=False) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        return await call(payload, timeout=timeout)


# --------------------------------------------------------------------------- one process


@dataclass
class LoadConfig:
    """What to run. ``rate=None``: closed loop at ``concurrency``; else open loop at ``rate``/s."""

    target: str
    model: str
    concurrency: int = 64
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rate: float | None = None
    arrival: str = "poisson"  # open loop: "poisson" or "fixed"
    processes: int = 1
    channels: int = 1  # HTTP/2 connections per process
    timeout_s: float = 10.0  # per-request deadline
    max_outstanding: int = 10_000  # open loop: in-flight cap per process
    seed: int = 0
    method: str = MODEL_INFER  # the unary RPC the payloads are for (e.g. /rtml.v1.Recommendations/Recommend)


@dataclass
class ProcessResult:
    """What one client process measured (latencies in seconds, for the window's requests)."""

    latencies: np.ndarray
    errors: dict[str, int]
    dropped: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    send_lag: np.ndarray = field(default_factory=lambda: np.empty(0))
    error_samples: dict[str, str] = field(default_factory=dict)


def _cpu_seconds() -> float:
    # Whole process, every thread: grpc's completion-queue threads do part of the client's work.
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


_ERROR_SAMPLES: dict[str, str] = {}  # status name -> first message seen (this process)


def _count_error(errors: collections.Counter[str], exc: grpc.aio.AioRpcError) -> None:
    name = exc.code().name
    errors[name] += 1
    if name not in _ERROR_SAMPLES:
        _ERROR_SAMPLES[name] = str(exc.details())[:300]


async def _closed_worker(
    call: Any, payloads: Sequence[bytes], offset: int, t_measure: float, t_end: float,
    lat: list[float], errors: collections.Counter[str], timeout: float,
) -> None:
    perf = time.perf_counter
    n = len(payloads)
    i = offset
    append = lat.append
    while True:
        t = perf()
        if t >= t_end:
            return
        payload = payloads[i % n]
        i += 1
        try:
            await call(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if t >= t_measure:
                _count_error(errors, exc)
            continue
        if t >= t_measure:
            append(perf() - t)


async def _open_one(
    call: Any, payload: bytes, t_sched: float, lat: list[float], errors: collections.Counter[str], timeout: float,
) -> None:
    try:
        await call(payload, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        _count_error(errors, exc)
        return
    lat.append(time.perf_counter() - t_sched)


async def _open_loop(
    calls: Sequence[Any], payloads: Sequence[bytes], cfg: LoadConfig, rate: float, t0: float,
    t_measure: float, t_end: float, lat: list[float], errors: collections.Counter[str],
    lags: list[float], rng: np.random.Generator,
) -> int:
    """Schedule requests at ``rate``/s from ``t0`` to ``t_end``; returns how many were dropped."""
    perf = time.perf_counter
    total = int(rate * (t_end - t0) * 1.5) + 64
    if cfg.arrival == "fixed":
        gaps = np.full(total, 1.0 / rate)
    elif cfg.arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, total)
    else:
        raise ValueError(f"arrival must be 'poisson' or 'fixed', got {cfg.arrival!r}")
    schedule = (t0 + np.cumsum(gaps)).tolist()  # floats: no numpy scalar per request
    tasks: set[asyncio.Task[None]] = set()
    warm_lat: list[float] = []
    warm_err: collections.Counter[str] = collections.Counter()
    dropped = 0
    n = len(payloads)
    nc = len(calls)
    i = 0
    while i < len(schedule) and schedule[i] < t_end:
        now = perf()
        t_sched = schedule[i]
        if t_sched > now:
            # Sleep to the next instant; asyncio's timer resolution (~1 ms) is fine because the
            # latency clock starts at the scheduled instant, not at the wake-up.
            await asyncio.sleep(t_sched - now)
            continue
        # Issue everything due (catches up after a late wake-up instead of drifting).
        while i < len(schedule) and schedule[i] <= now and schedule[i] < t_end:
            t_sched = schedule[i]
            in_window = t_sched >= t_measure
            if len(tasks) >= cfg.max_outstanding:
                dropped += in_window
            else:
                if in_window:
                    lags.append(now - t_sched)
                task = asyncio.ensure_future(_open_one(
                    calls[i % nc], payloads[i % n], t_sched,
                    lat if in_window else warm_lat, errors if in_window else warm_err, cfg.timeout_s,
                ))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=cfg.timeout_s + 5)
    return dropped


async def _run_async(
    cfg: LoadConfig, payloads: Sequence[bytes], concurrency: int, rate: float | None,
    offset: int, start_wall: float | None = None, ready: Any = None,
) -> ProcessResult:
    """This process's share of the load. ``ready``: a callable that returns the start wall time."""
    channels = [_channel(cfg.target) for _ in range(max(1, cfg.channels))]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout=30)
        calls = [ch.unary_unary(cfg.method, request_serializer=None, response_deserializer=None) for ch in channels]
        if ready is not None:
            start_wall = await asyncio.get_running_loop().run_in_executor(None, ready)
        # One wall-clock instant shared by every process, turned into this process's perf clock.
        t0 = time.perf_counter() + max(0.0, (start_wall or time.time()) - time.time())
        t_measure = t0 + cfg.warmup_s
        t_end = t_measure + cfg.duration_s
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        lat: list[float] = []
        lags: list[float] = []
        errors: collections.Counter[str] = collections.Counter()
        dropped = 0
        if rate is None:
            workers = [
                asyncio.ensure_future(_closed_worker(
                    calls[w % len(calls)], payloads, offset + w, t_measure, t_end, lat, errors, cfg.timeout_s,
                ))
                for w in range(concurrency)
            ]
            done, pending = await asyncio.wait(workers, timeout=(t_end - time.perf_counter()) + cfg.timeout_s + 5)
            for task in pending:
                task.cancel()
            for task in done:
                task.result()  # a bug in a worker should fail loudly, not read as low throughput
        else:
            rng = np.random.default_rng(cfg.seed + offset)
            dropped = await _open_loop(calls, payloads, cfg, rate, t0, t_measure, t_end, lat, errors, lags, rng)
        cpu = _cpu_seconds() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        for ch in channels:
            await ch.close()
    return ProcessResult(np.asarray(lat, dtype=np.float64), dict(errors), dropped, cpu, wall,
                         np.asarray(lags, dtype=np.float64), dict(_ERROR_SAMPLES))


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _child_main(cfg: LoadConfig, payloads: list[bytes], concurrency: int, rate: float | None,
                offset: int, conn: Any) -> None:
    """Entry point of a spawned client process: report ready, wait for the start time, run."""
    def ready() -> float:
        conn.send(("ready", None))
        return float(conn.recv())

    try:
        result = asyncio.run(_run_async(cfg, payloads, concurrency, rate, offset, ready=ready))
        conn.send(("result", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_processes(cfg: LoadConfig, payloads: list[bytes]) -> list[ProcessResult]:
    """Run the load over ``cfg.processes`` spawned processes with one common start instant."""
    n = max(1, cfg.processes)
    if cfg.rate is None and cfg.concurrency < n:
        n = cfg.concurrency  # a process with no worker would only add start-up time
    conc = _split(cfg.concurrency, n)
    rates = [None if cfg.rate is None else cfg.rate / n for _ in range(n)]
    if n == 1:
        return [asyncio.run(_run_async(cfg, payloads, conc[0], rates[0], 0))]
    ctx = mp.get_context("spawn")  # never fork a process that may hold grpc state
    procs, conns = [], []
    try:
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_child_main, args=(cfg, payloads, conc[i], rates[i], i * 1009, child),
                name=f"rtml-load-{i}", daemon=True,
            )
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        for conn in conns:  # every process connected before anyone starts
            if not conn.poll(60):
                raise TimeoutError("a load process did not get ready within 60 s")
            kind, detail = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"load process failed before start: {detail}")
        start = time.time() + 0.2
        for conn in conns:
            conn.send(start)
        results: list[ProcessResult] = []
        limit = cfg.warmup_s + cfg.duration_s + cfg.timeout_s + 30
        for conn in conns:
            if not conn.poll(limit):
                raise TimeoutError("a load process did not report a result")
            kind, detail = conn.recv()
            if kind != "result":
                raise RuntimeError(f"load process failed: {detail}")
            results.append(detail)
        return results
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# --------------------------------------------------------------------------- results


def _ms(value: float) -> float:
    return round(float(value) * 1000.0, 3)


def summarise(cfg: LoadConfig, results: Sequence[ProcessResult], *, request_bytes: int | None = None,
              rows_per_request: int = 1) -> dict[str, Any]:
    """Merge per-process results into the JSON summary (percentiles over all latencies)."""
    lat = np.concatenate([r.latencies for r in results]) if results else np.empty(0)
    lags = np.concatenate([r.send_lag for r in results]) if results else np.empty(0)
    errors: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for r in results:
        errors.update(r.errors)
        for code, message in r.error_samples.items():
            samples.setdefault(code, message)
    ok = int(lat.size)
    if ok:
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        lat_ms = {"p50_ms": _ms(p50), "p95_ms": _ms(p95), "p99_ms": _ms(p99), "max_ms": _ms(lat.max()),
                  "mean_ms": _ms(lat.mean())}
    else:
        lat_ms = {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    wall = max((r.wall_s for r in results), default=0.0)
    cpu = sum(r.cpu_s for r in results)
    out: dict[str, Any] = {
        "target": cfg.target,
        "model": cfg.model,
        "mode": "closed" if cfg.rate is None else "open",
        "concurrency": cfg.concurrency if cfg.rate is None else None,
        "rate": cfg.rate,
        "arrival": cfg.arrival if cfg.rate is not None else None,
        "processes": len(results),
        "channels_per_process": cfg.channels,
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "requests": ok,
        "throughput_rps": round(ok / cfg.duration_s, 1) if cfg.duration_s > 0 else None,
        "rows_per_s": round(ok * rows_per_request / cfg.duration_s, 1) if cfg.duration_s > 0 else None,
        **lat_ms,
        "errors": dict(sorted(errors.items())),
        "error_count": int(sum(errors.values())),
        "error_samples": {code: samples[code] for code in sorted(samples) if code in errors},
        "client_cpu_s": round(cpu, 2),
        # Cores the client itself used while it ran (warm-up included): on a small machine the
        # client competes with the server for the same cores.
        "client_cores": round(cpu / wall, 2) if wall > 0 else None,
        "rows_per_request": rows_per_request,
        "request_bytes": request_bytes,
    }
    if cfg.rate is not None:
        out["dropped"] = int(sum(r.dropped for r in results))
        out["send_lag_p99_ms"] = _ms(float(np.percentile(lags, 99))) if lags.size else None
    return out


def run_load(cfg: LoadConfig, payloads: list[bytes], *, rows_per_request: int = 1) -> dict[str, Any]:
    """Run one load test and return its JSON summary."""
    if not payloads:
        raise ValueError("no payloads")
    if cfg.rate is None and cfg.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if cfg.rate is not None and cfg.rate <= 0:
        raise ValueError("rate must be positive")
    results = run_processes(cfg, payloads)
    return summarise(cfg, results, request_bytes=len(payloads[0]), rows_per_request=rows_per_request)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="host:port of the gRPC server")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", default="", help="model version (default: the server's choice)")
    p.add_argument("--concurrency", "-c", type=int, default=64, help="closed loop: requests in flight (default 64)")
    p.add_argument("--rate", type=float, default=None, help="open loop: requests per second (all processes together)")
    p.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson", help="open-loop arrivals")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    p.add_argument("--channels", type=int, default=1, help="HTTP/2 connections per process (default 1)")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--payloads", type=int, default=64, help="distinct pre-serialised requests (default 64)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds (default 10)")
    p.add_argument("--max-outstanding", type=int, default=10_000, help="open loop: in-flight cap per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", default=None, help="also write the JSON here")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    specs = asyncio.run(fetch_input_specs(args.target, args.model, args.version))
    payloads = make_payloads(args.model, specs, rows=args.batch, count=args.payloads, seed=args.seed,
                             version=args.version)
    cfg = LoadConfig(
        target=args.target, model=args.model, concurrency=args.concurrency, duration_s=args.duration,
        warmup_s=args.warmup, rate=args.rate, arrival=args.arrival, processes=args.processes,
        channels=args.channels, timeout_s=args.timeout, max_outstanding=args.max_outstanding, seed=args.seed,
    )
    result = run_load(cfg, payloads, rows_per_request=args.batch)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0 if result["error_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
