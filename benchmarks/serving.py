"""Serving benchmark: rtml serve end to end (KServe v2 gRPC) against raw ONNX Runtime in-process.

Run from the repository root::

    python -m benchmarks.serving            # ~4-5 minutes on 2 cores
    python -m benchmarks.serving --quick    # ~1.5 minutes: shorter runs, same grid
    python -m benchmarks.serving --out DIR --name serving_gpu --no-readme --device-label "NVIDIA H200"

One run, for each model of :mod:`benchmarks.models` (the small MLP 64→256→256→1, the MLP
ranking model 512→1024→512→256→1, and the behaviour-sequence transformer ranker whose compute
dominates a request):

1. *floor*: raw in-process ONNX Runtime through :func:`serving.onnx_session.load_onnx` --
   the very session options and provider choice the server uses (``intra_op_threads`` from the
   model's config.yaml, 1 by default) -- at batch 1/8/32/128: calls/s and rows/s (median of
   three timed blocks);
2. *ceiling*: the same load (C=64, ranker-sized requests) against :mod:`benchmarks.echo_server`,
   a grpc.aio server that answers every ModelInfer with a constant reply -- what no server can
   beat with this client on this machine; the ratio target is checked against it;
3. *served*: ``python -m serving.server`` as a subprocess on free ports over a temporary
   repository in Triton's layout (``ROOT/<name>/1/model.onnx`` + ``config.yaml``), loaded by
   :mod:`benchmarks.load` (pre-serialised batch-1 ModelInfer requests, closed loop) at
   C = 1, 16, 64, 256: throughput, p50/p95/p99, and from the server's Prometheus counters the
   average batch the dynamic batcher reached (``rtml_inference_count_total`` /
   ``rtml_inference_exec_count_total`` over the run), mean queue and compute time per batch,
   and the server's and client's CPU;
4. ``ratio_to_floor`` = served rows/s ÷ raw ONNX Runtime rows/s *at the batch size the server
   actually reached*: the floor is measured again at the integer sizes on either side of the
   average batch (after the served runs, with the server stopped so that nothing competes with
   it) and interpolated log-linearly at the average.

Client and server share this machine's cores, so every served number includes the client's
cost; the client's own CPU use is recorded next to the server's (a Python grpc.aio client
cannot measure a server faster than itself, which is why it pre-serialises and can use several
processes: FIELD-NOTES "gRPC and serving").

Results: ``benchmarks/results/serving.json`` and the README table between
``<!-- bench:serving:start -->`` / ``<!-- bench:serving:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from benchmarks import load
from benchmarks.models import BENCH_MODELS, ServingBenchModel, write_repository
from benchmarks.report import REPO_ROOT, fmt_rate, machine_description, machine_line, publish, reprint_from_json

NAME = "serving"
FLOOR_BATCHES = (1, 8, 32, 128)
CONCURRENCIES = (1, 16, 64, 256)
# Per-model config.yaml (serving.config.ModelConfig fields). Triton's peer run used its dynamic
# batcher with no queue delay; 128 rows leaves room above the ~32-row batches seen at C=64.
# inline_compute_us (opt-in) runs the small MLP's ~10 µs batches on the event loop: the thread
# hand-off costs more than that; the ranker's batches take longer and stay on the thread.
MODEL_CONFIG: dict[str, Any] = {"max_batch_size": 128, "max_queue_delay_us": 0, "queue_capacity": 1024,
                                "inline_compute_us": 50}
# The targets (FIELD-NOTES: Triton 2.51, same client, same machine class, busy machine).
TARGETS: dict[str, Any] = {
    "mlp_c64": {
        "model": "mlp", "concurrency": 64, "min_throughput_rps": 2600, "max_p99_ms": 75,
        # Triton on a quiet machine, for a second, stricter comparison (not the target).
        "quiet_machine_reference": {"throughput_rps": 3709, "p99_ms": 27},
        "reference": "NVIDIA Triton 2.51, dynamic batcher without delay, batch-1 requests, C=64, 2 client "
                     "processes: 2,601 req/s p99 75 ms on a busy machine (3,709 req/s p99 27 ms on a quiet one)",
    },
    # The "larger model" target, on both larger models: the MLP ranker (where the RPC
    # path dominates a request) and the sequence ranker (where ONNX Runtime's compute does).
    "ranker_ratio": {
        "model": "ranker", "concurrency": 64, "min_ratio_to_floor": 0.6,
        "reference": "served rows/s >= 0.6x raw ONNX Runtime rows/s at the same batch size",
    },
    "seq_ranker_ratio": {
        "model": "seq_ranker", "concurrency": 64, "min_ratio_to_floor": 0.6,
        "reference": "served rows/s >= 0.6x raw ONNX Runtime rows/s at the same batch size",
    },
}
RATIO_TARGETS = tuple(key for key, t in TARGETS.items() if "min_ratio_to_floor" in t)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago.

    Local (not ``engine.runtime.ports``) so that this benchmark imports nothing of the streaming
    stack (Kafka, Redis clients): it also runs on a GPU machine that has only the serving
    dependencies.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port_closed(port: int, timeout: float = 5.0) -> bool:
    """Wait until nothing accepts connections on ``127.0.0.1:port``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            return True
        time.sleep(0.05)
    return False


def log(msg: str) -> None:
    print(f"[serving {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- floor


def _session(model: ServingBenchModel, intra_op_threads: int) -> Any:
    # The server's own loader: same SessionOptions, same CUDA-or-CPU provider probe.
    from serving.onnx_session import load_onnx

    return load_onnx(model.build(), intra_op_threads=intra_op_threads)


def time_calls(session: Any, feeds: Mapping[str, np.ndarray], seconds: float, blocks: int = 3) -> float:
    """Median calls/s of ``session.run(feeds)`` over ``blocks`` blocks of ~``seconds``/``blocks`` each."""
    run = session.run
    for _ in range(3):  # warm-up: arena growth for this shape, CUDA graph/kernel selection
        run(feeds)
    rates: list[float] = []
    per_block = seconds / blocks
    for _ in range(blocks):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + per_block
        while True:
            run(feeds)
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(n / (now - t0))
    return statistics.median(rates)


def payloads_for(model: ServingBenchModel, count: int = 64) -> list[bytes]:
    """``count`` distinct pre-serialised batch-1 ModelInfer requests for ``model``."""
    return [load.build_infer_request(model.name, model.feeds(1, seed=1000 + i)) for i in range(count)]


def measure_floor(model: ServingBenchModel, batches: Iterable[int], *, intra_op_threads: int = 1,
                  seconds: float = 1.2, session: Any = None) -> dict[int, dict[str, float]]:
    """Raw ONNX Runtime ``{batch: {calls_per_s, rows_per_s, us_per_call}}`` for ``model``."""
    session = session or _session(model, intra_op_threads)
    out: dict[int, dict[str, float]] = {}
    for batch in batches:
        feeds = model.feeds(batch, seed=batch)
        calls = time_calls(session, feeds, seconds)
        out[int(batch)] = {
            "calls_per_s": round(calls, 1),
            "rows_per_s": round(calls * batch, 1),
            "us_per_call": round(1e6 / calls, 2),
        }
    return out


# --------------------------------------------------------------------------- server


class ServerProcess:
    """``python -m serving.server`` in its own process group, on free loopback ports.

    :meth:`echo` starts :mod:`benchmarks.echo_server` (the ceiling) the same way instead.
    """

    def __init__(self, repository: Path, log_path: Path, *, poll_interval_s: float = 3600.0,
                 extra_args: Sequence[str] = ()) -> None:
        self.repository = repository
        self.log_path = log_path
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        while self.metrics_port == self.grpc_port:
            self.metrics_port = free_port()
        self.argv = [
            sys.executable, "-m", "serving.server", "--models", str(repository),
            "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
            # The repository never changes during a benchmark: no rescans competing for the GIL.
            "--poll-interval", str(poll_interval_s), *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def echo(cls, log_path: Path, model: str) -> "ServerProcess":
        """The constant-reply server of :mod:`benchmarks.echo_server` (no metrics endpoint)."""
        server = cls(Path(), log_path)
        server.argv = [sys.executable, "-m", "benchmarks.echo_server", "--grpc-port", str(server.grpc_port),
                       "--model", model]
        return server

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(REPO_ROOT), start_new_session=True,
            )
        try:
            asyncio.run(self._wait_ready(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                await load.wait_server_ready(self.target, timeout=2.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{self.logs()}") from None

    def logs(self, max_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def providers(self) -> dict[str, str]:
        """Execution providers per model, from the manager's "loaded model" log lines."""
        found: dict[str, str] = {}
        for m in re.finditer(r"loaded model '([^']+)' version \S+ .*?\(providers ([^,)]+)", self.logs(200_000)):
            found[m.group(1)] = m.group(2)
        return found

    def cpu_seconds(self) -> float | None:
        if self.proc is None:
            return None
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            return t.user + t.system
        except Exception:  # noqa: BLE001 - psutil missing or the process gone
            return None

    def stop(self, grace_s: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait(5)
        self.proc = None
        wait_port_closed(self.grpc_port, timeout=5)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, str, str], float]:
    """Samples of the rtml_* series as ``{(sample name, model, extra label): value}``.

    ``extra label`` is the failure ``reason`` or the gRPC ``code`` where a series has one.
    """
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("rtml_"):
            continue
        for s in family.samples:
            key = (s.name, s.labels.get("model", ""), s.labels.get("reason", s.labels.get("code", "")))
            if "le" in s.labels:
                continue
            out[key] = out.get(key, 0.0) + float(s.value)
    return out


def _delta(after: Mapping[tuple[str, str, str], float], before: Mapping[tuple[str, str, str], float],
           name: str, model: str, extra: str = "") -> float:
    return after.get((name, model, extra), 0.0) - before.get((name, model, extra), 0.0)


def server_side(after: Mapping[tuple[str, str, str], float], before: Mapping[tuple[str, str, str], float],
                model: str) -> dict[str, Any]:
    """What the server's counters say about one run: batches, rows, queue and compute time."""
    rows = _delta(after, before, "rtml_inference_count_total", model)
    execs = _delta(after, before, "rtml_inference_exec_count_total", model)
    q_n = _delta(after, before, "rtml_inference_queue_duration_seconds_count", model)
    q_s = _delta(after, before, "rtml_inference_queue_duration_seconds_sum", model)
    c_n = _delta(after, before, "rtml_inference_compute_duration_seconds_count", model)
    c_s = _delta(after, before, "rtml_inference_compute_duration_seconds_sum", model)
    failures = {
        key[2]: int(after[key] - before.get(key, 0.0))
        for key in after
        if key[0] == "rtml_inference_request_failure_total" and key[1] == model and after[key] - before.get(key, 0.0) > 0
    }
    return {
        "rows": int(rows),
        "executions": int(execs),
        "avg_batch": round(rows / execs, 2) if execs else None,
        "mean_queue_ms": round(q_s / q_n * 1000, 3) if q_n else None,
        "mean_compute_ms": round(c_s / c_n * 1000, 3) if c_n else None,
        "compute_s": round(c_s, 3),  # ONNX Runtime time summed over the run's batches
        "failures": failures,
    }


# --------------------------------------------------------------------------- served runs


@dataclass(frozen=True)
class RunPlan:
    """Durations of one benchmark run (``--quick`` shortens them)."""

    duration_s: float = 8.0
    warmup_s: float = 2.0
    floor_s: float = 1.2
    client_processes: int = 2
    # The target points (C=64) are run this many times and the median run (by throughput) is
    # reported: one 8-second run on a shared 2-core machine swings too much for a met/not met.
    target_repeats: int = 3

    @classmethod
    def quick(cls, client_processes: int = 2) -> "RunPlan":
        return cls(duration_s=3.0, warmup_s=1.0, floor_s=0.6, client_processes=client_processes, target_repeats=1)


def served_run(server: ServerProcess, model: ServingBenchModel, concurrency: int, plan: RunPlan,
               payloads: list[bytes], *, processes: int | None = None) -> dict[str, Any]:
    """One closed-loop load run against the server, with the server's view of it."""
    procs = processes if processes is not None else (1 if concurrency == 1 else plan.client_processes)
    cfg = load.LoadConfig(
        target=server.target, model=model.name, concurrency=concurrency, duration_s=plan.duration_s,
        warmup_s=plan.warmup_s, processes=procs, timeout_s=30.0,
    )
    before = scrape(server.metrics_url)
    busy0, client0 = _machine_busy_seconds(), _client_seconds()
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    result = load.run_load(cfg, payloads)
    cpu1, t1 = server.cpu_seconds(), time.perf_counter()
    busy1, client1 = _machine_busy_seconds(), _client_seconds()
    after = scrape(server.metrics_url)
    side = server_side(after, before, model.name)
    result["server"] = side
    result["avg_batch"] = side["avg_batch"]
    # Counters and CPU span the warm-up and the process start-up too: the averages hold for
    # the whole run, which the measured window is a part of.
    result["server_cores"] = round((cpu1 - cpu0) / (t1 - t0), 2) if cpu0 is not None and cpu1 is not None else None
    # Share of the time the ONNX Runtime thread was computing: near 1 means the runner (and so
    # batching) is the limit; near 0 means requests are limited before they reach it (RPC path).
    result["runner_busy_fraction"] = round(side["compute_s"] / (t1 - t0), 3)
    # Server CPU per request: what the whole path (gRPC, decode, batcher, ORT, encode) costs.
    if result["server_cores"] and result["throughput_rps"]:
        result["server_cpu_us_per_request"] = round(result["server_cores"] * 1e6 / result["throughput_rps"], 1)
    # The client's whole cost, start-up of its processes included (client_cores counts only
    # the load window): this process plus the client processes it spawned and joined.
    result["client_cores_total"] = round((client1 - client0) / (t1 - t0), 2)
    if busy0 is not None and busy1 is not None:
        # Everything the machine ran meanwhile; what neither the server nor the client used was
        # someone else's (other tests, other jobs): a run with high other_cores is a noisy one.
        busy = (busy1 - busy0) / (t1 - t0)
        result["machine_busy_cores"] = round(busy, 2)
        result["other_cores"] = round(max(0.0, busy - (result["server_cores"] or 0.0) - result["client_cores_total"]), 2)
    return result


def ceiling_run(workdir: Path, model: ServingBenchModel, concurrency: int, plan: RunPlan,
                payloads: list[bytes]) -> dict[str, Any]:
    """The echo server (:mod:`benchmarks.echo_server`) under the served runs' load: the ceiling.

    Same client, payloads, concurrency and processes as the served runs; the *best* of
    ``plan.target_repeats`` runs is kept, so the ceiling is generous to the server side.
    """
    server = ServerProcess.echo(workdir / "echo.log", model.name).start()
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(max(1, plan.target_repeats)):
            cfg = load.LoadConfig(
                target=server.target, model=model.name, concurrency=concurrency, duration_s=plan.duration_s,
                warmup_s=plan.warmup_s, processes=plan.client_processes, timeout_s=30.0,
            )
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            r = load.run_load(cfg, payloads)
            cpu1, t1 = server.cpu_seconds(), time.perf_counter()
            rps = r["throughput_rps"] or 0.0
            server_cores = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
            runs.append({
                "throughput_rps": r["throughput_rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "error_count": r["error_count"], "client_cores": r["client_cores"],
                "client_cpu_us_per_request": round(r["client_cores"] * 1e6 / rps, 1) if rps else None,
                "server_cores": round(server_cores, 2) if server_cores is not None else None,
                "server_cpu_us_per_request": round(server_cores * 1e6 / rps, 1) if rps and server_cores else None,
            })
    finally:
        server.stop()
    best = max(runs, key=lambda x: x["throughput_rps"] or 0.0)
    return best | {
        "server": "benchmarks.echo_server: constant pre-serialised reply, no parsing, no model",
        "payload_model": model.name, "request_bytes": len(payloads[0]), "concurrency": concurrency,
        "processes": plan.client_processes, "runs_rps": [x["throughput_rps"] for x in runs],
    }


def _client_seconds() -> float:
    """CPU seconds of this process and of its terminated, waited-for children (the client processes).

    The server is a child too but still running, so RUSAGE_CHILDREN does not include it.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine spent busy so far (psutil), None without psutil."""
    try:
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))
    except Exception:  # noqa: BLE001 - best effort
        return None


def floor_batches_for(avg_batch: float | None) -> set[int]:
    """The integer batch sizes around a reached average batch (the floor is measured at both)."""
    if avg_batch is None:
        return set()
    return {max(1, math.floor(avg_batch)), max(1, math.ceil(avg_batch))}


def ratio_floor(floor: dict[int, dict[str, float]], batch: float | None) -> tuple[float, float | None]:
    """The floor's rows/s at a (fractional) average batch: log-linear between measured sizes.

    >>> f = {1: {"rows_per_s": 100.0}, 2: {"rows_per_s": 400.0}}
    >>> ratio_floor(f, 1.5), ratio_floor(f, 2), ratio_floor(f, None)
    ((1.5, 225.0), (2, 400.0), (1, None))
    """
    if batch is None:
        return 1, None
    b = max(1.0, float(batch))
    if b.is_integer() and int(b) in floor:
        return int(b), floor[int(b)]["rows_per_s"]
    xs = sorted(floor)
    lx = np.log(xs)
    ly = np.log([floor[x]["rows_per_s"] for x in xs])
    return round(b, 2), round(float(np.exp(np.interp(np.log(b), lx, ly))), 1)


def run_benchmark(
    *,
    models: Sequence[str] = ("mlp", "ranker"),
    concurrencies: Sequence[int] = CONCURRENCIES,
    floor_batches: Sequence[int] = FLOOR_BATCHES,
    plan: RunPlan = RunPlan(),
    workdir: Path | None = None,
    device_label: str | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the result dict (also what ``serving.json`` holds)."""
    from serving.config import ModelConfig

    config = ModelConfig.model_validate(MODEL_CONFIG)  # the server validates the same fields
    started = time.time()
    chosen = [BENCH_MODELS[m] for m in models]
    tmp = tempfile.TemporaryDirectory(prefix="rtml-bench-serving-")
    work = Path(workdir) if workdir is not None else Path(tmp.name)
    try:
        repo = write_repository(work / "models", chosen, {m.name: MODEL_CONFIG for m in chosen})
        # 1. floor (no server running: the floor gets the machine to itself)
        floors: dict[str, dict[int, dict[str, float]]] = {}
        sessions: dict[str, Any] = {}
        floor_providers: dict[str, list[str]] = {}
        for model in chosen:
            sessions[model.name] = _session(model, config.intra_op_threads)
            floor_providers[model.name] = sessions[model.name].providers
            log(f"floor {model.name}: batches {list(floor_batches)} on {floor_providers[model.name][0]}")
            floors[model.name] = measure_floor(model, floor_batches, seconds=plan.floor_s, session=sessions[model.name])
        # 2. the ceiling: the same load against a server that does nothing (ranker-sized requests,
        #    the model whose target is a ratio to raw ONNX Runtime)
        ceiling_model = BENCH_MODELS["ranker"] if "ranker" in models else chosen[0]
        log(f"ceiling: echo server, {ceiling_model.name}-sized requests, C=64")
        ceiling = ceiling_run(work, ceiling_model, 64, plan, payloads_for(ceiling_model))
        log(f"ceiling: {ceiling['throughput_rps']:.0f} req/s (runs {ceiling['runs_rps']}), p99 {ceiling['p99_ms']} ms, "
            f"client {ceiling['client_cpu_us_per_request']} + server {ceiling['server_cpu_us_per_request']} µs CPU/request")
        # 3. served runs, one server for both models (the idle one costs nothing)
        served: dict[str, list[dict[str, Any]]] = {m.name: [] for m in chosen}
        server = ServerProcess(repo, work / "server.log")
        t_start = time.perf_counter()
        server.start()
        startup_s = time.perf_counter() - t_start
        try:
            server_providers = server.providers()
            for model in chosen:
                payloads = payloads_for(model)
                target_cs = {t["concurrency"] for t in TARGETS.values() if t["model"] == model.name}
                for c in concurrencies:
                    repeats = plan.target_repeats if c in target_cs else 1
                    runs = [served_run(server, model, c, plan, payloads) for _ in range(max(1, repeats))]
                    r = sorted(runs, key=lambda x: x["throughput_rps"] or 0.0)[len(runs) // 2]
                    if len(runs) > 1:
                        r["repeats"] = [
                            {k: x[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "avg_batch", "error_count", "other_cores")
                             if k in x}
                            for x in runs
                        ]
                    tag = f" (median of {len(runs)}: {[x['throughput_rps'] for x in runs]})" if len(runs) > 1 else ""
                    log(f"{model.name} C={c}: {r['throughput_rps']:.0f} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms "
                        f"batch {r['avg_batch']} errors {r['error_count']} cores: server {r['server_cores']} "
                        f"client {r['client_cores']} other {r.get('other_cores')}{tag}")
                    served[model.name].append(r)
        finally:
            server.stop()
            server_log_tail = server.logs(3000)
        # 4. the floor again at each batch size the server reached, without the server
        for model in chosen:
            reached = sorted(set().union(*(floor_batches_for(r["avg_batch"]) for r in served[model.name])))
            missing = [b for b in reached if b not in floors[model.name]]
            if missing:
                floors[model.name].update(measure_floor(model, missing, seconds=plan.floor_s, session=sessions[model.name]))
            for r in served[model.name]:
                b, floor_rows = ratio_floor(floors[model.name], r["avg_batch"])
                r["floor_batch"] = b
                r["floor_rows_per_s"] = floor_rows
                r["ratio_to_floor"] = round(r["rows_per_s"] / floor_rows, 4) if floor_rows else None
        sessions.clear()
    finally:
        tmp.cleanup()

    machine = machine_description()
    targets = evaluate_targets(served, floors, ceiling, machine.get("usable_cores"))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "device": device_label or "CPU",
        "machine": machine,
        "plan": plan.__dict__ | {"concurrencies": list(concurrencies), "floor_batches": list(floor_batches)},
        "model_config": MODEL_CONFIG | {"intra_op_threads": config.intra_op_threads},
        "models": {
            m.name: m.describe() | {"floor_providers": floor_providers[m.name],
                                    "server_provider": server_providers.get(m.name)}
            for m in chosen
        },
        "floor": {name: {str(b): v for b, v in sorted(f.items())} for name, f in floors.items()},
        "served": served,
        "ceiling": ceiling,
        "server_startup_s": round(startup_s, 2),
        "targets": targets,
        "seconds": round(time.time() - started, 1),
        "notes": [
            "Client and server run on the same machine and share its cores; client_cores and server_cores "
            "are each process tree's CPU time over the run's wall time. 'ceiling' is the same load against "
            "benchmarks.echo_server (a grpc.aio server answering every ModelInfer with a constant reply): "
            "no server can serve faster with this client on this machine.",
            "avg_batch = rtml_inference_count_total / rtml_inference_exec_count_total over the run "
            "(warm-up included); ratio_to_floor = served rows/s / raw ONNX Runtime rows/s at avg_batch "
            "(log-linear between the integer sizes around it, each measured in-process with the server's "
            "session options while no server runs).",
            "Requests are batch-1 KServe v2 ModelInfer with raw_input_contents, pre-serialised; closed loop; "
            f"C=1 uses one client process, larger C {plan.client_processes} processes. The target points run "
            f"{plan.target_repeats} time(s); the median run by throughput is reported (all in 'repeats').",
        ],
        "server_log_tail": server_log_tail[-1500:],
    }
    return result


def _find(served: Mapping[str, list[dict[str, Any]]], model: str, c: int) -> dict[str, Any] | None:
    return next((r for r in served.get(model, []) if r["concurrency"] == c), None)


def evaluate_targets(served: Mapping[str, list[dict[str, Any]]],
                     floors: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
                     ceiling: Mapping[str, Any] | None = None,
                     cores: float | None = None) -> dict[str, Any]:
    """The issue's targets with what was measured and met / not met.

    For the ratio target it also records whether the target is reachable at all here: batch-1
    requests make served rows/s = req/s, and raw ONNX Runtime's rows/s is lowest at batch 1,
    so the target needs at least ``min_ratio x`` that many req/s -- compared with the echo
    ceiling (the same client against a server that does nothing). And in CPU: at that rate
    the client and a do-nothing gRPC server cost their measured CPU per request, and the
    model itself computes ``min_ratio`` of the time (served rows/s over the single-threaded
    floor's rows/s at the same batch *is* the runner's busy share), so the machine needs at
    least the sum of the two, against its ``cores``.

    >>> served = {"ranker": [{"concurrency": 64, "ratio_to_floor": 0.05, "floor_batch": 2.4}]}
    >>> t = evaluate_targets(served, {"ranker": {1: {"rows_per_s": 20000.0}, 8: {"rows_per_s": 70000.0}}},
    ...                      {"throughput_rps": 7000.0, "client_cpu_us_per_request": 100.0,
    ...                       "server_cpu_us_per_request": 100.0}, cores=2)["ranker_ratio"]
    >>> t["met"], t["least_required_rps"], t["reachable_with_this_client_here"], t["cores_needed_at_least"]
    (False, 12000.0, False, 3.0)
    """
    out: dict[str, Any] = {}
    t = TARGETS["mlp_c64"]
    r = _find(served, t["model"], t["concurrency"])
    if r is not None:
        met = (r["throughput_rps"] or 0) >= t["min_throughput_rps"] and r["p99_ms"] is not None \
            and r["p99_ms"] <= t["max_p99_ms"] and r["error_count"] == 0
        quiet = t["quiet_machine_reference"]
        met_quiet = met and r["throughput_rps"] >= quiet["throughput_rps"] and r["p99_ms"] <= quiet["p99_ms"]
        out["mlp_c64"] = t | {"throughput_rps": r["throughput_rps"], "p99_ms": r["p99_ms"], "met": bool(met),
                              "met_vs_quiet_machine_reference": bool(met_quiet)}
    for key in RATIO_TARGETS:
        ratio_target = _ratio_target(TARGETS[key], served, (floors or {}).get(TARGETS[key]["model"]), ceiling, cores)
        if ratio_target is not None:
            out[key] = ratio_target
    return out


def _ratio_target(t: Mapping[str, Any], served: Mapping[str, list[dict[str, Any]]],
                  floor: Mapping[int, Mapping[str, float]] | None, ceiling: Mapping[str, Any] | None,
                  cores: float | None) -> dict[str, Any] | None:
    """One ratio-to-ONNX-Runtime target: measured, met, and reachable at all (see evaluate_targets)."""
    r = _find(served, t["model"], t["concurrency"])
    if r is None:
        return None
    best = max((x for x in served.get(t["model"], []) if x.get("ratio_to_floor") is not None),
               key=lambda x: x["ratio_to_floor"], default=None)
    ratio = r.get("ratio_to_floor")
    out = dict(t) | {
        "ratio_to_floor": ratio, "at_batch": r.get("floor_batch"),
        "best_ratio": best["ratio_to_floor"] if best else None,
        "best_at_concurrency": best["concurrency"] if best else None,
        "met": bool(ratio is not None and ratio >= t["min_ratio_to_floor"]),
    }
    if floor and ceiling and ceiling.get("throughput_rps"):
        least = min(v["rows_per_s"] for v in floor.values())
        required = round(t["min_ratio_to_floor"] * least, 1)
        out |= {
            "least_floor_rows_per_s": least, "least_required_rps": required,
            "echo_ceiling_rps": ceiling["throughput_rps"],
            "reachable_with_this_client_here": ceiling["throughput_rps"] >= required,
        }
        per_request_us = (ceiling.get("client_cpu_us_per_request") or 0.0) + \
            (ceiling.get("server_cpu_us_per_request") or 0.0)
        if per_request_us and cores:
            needed = round(required * per_request_us / 1e6 + t["min_ratio_to_floor"], 2)
            out |= {"cores_needed_at_least": needed, "cores": cores}
            out["reachable_with_this_client_here"] &= needed <= cores
    return out


# --------------------------------------------------------------------------- report


def _f(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def config_line(config: Mapping[str, Any]) -> str:
    """The served models' config.yaml fields, as one line of the README block.

    >>> config_line({"max_batch_size": 128, "inline_compute_us": 50})
    'max_batch_size 128, inline_compute_us 50'
    """
    return ", ".join(f"{k} {v}" for k, v in config.items())


def markdown_table(result: Mapping[str, Any]) -> str:
    """The README block: served runs, then the floor."""
    m = result["machine"]
    device = result.get("device") or "CPU"
    lines = [
        f"Serving, KServe v2 ModelInfer over gRPC, batch-1 requests, closed loop; {device}; "
        f"client on the same machine ({machine_line(m)}; {result['date']}).",
        "",
        f"Model config.yaml: {config_line(result.get('model_config') or {})}.",
        "",
        "Models: " + "; ".join(f"`{name}` {m['description']} ({m['macs_per_row'] / 1e6:.2g}M multiply-adds per row)"
                               for name, m in result["models"].items()) + ".",
        "",
        "| model | C | req/s | p50 ms | p99 ms | avg batch | raw ORT rows/s at that batch | ratio to floor "
        "| server / client cores | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    targets = result.get("targets", {})
    for name, runs in result["served"].items():
        for r in runs:
            target = ""
            t = targets.get("mlp_c64")
            if t and name == t["model"] and r["concurrency"] == t["concurrency"]:
                target = f"≥ {t['min_throughput_rps']:,} req/s at p99 ≤ {t['max_p99_ms']} ms (Triton, busy): " \
                         f"{'met' if t['met'] else 'not met'}"
                q = t.get("quiet_machine_reference")
                if q and "met_vs_quiet_machine_reference" in t:  # absent from older result files
                    target += f"; Triton quiet {q['throughput_rps']:,} req/s p99 {q['p99_ms']} ms: " \
                              f"{'met' if t['met_vs_quiet_machine_reference'] else 'not met'}"
            for key in RATIO_TARGETS:
                t = targets.get(key)
                if t and name == t["model"] and r["concurrency"] == t["concurrency"]:
                    target = f"ratio ≥ {t['min_ratio_to_floor']}: {'met' if t['met'] else 'not met'}"
            errors = f" ({r['error_count']} errors)" if r["error_count"] else ""
            lines.append(
                f"| {name} | {r['concurrency']} | {fmt_rate(r['throughput_rps'])}{errors} | {_f(r['p50_ms'])} "
                f"| {_f(r['p99_ms'])} | {_f(r['avg_batch'])} | {fmt_rate(r.get('floor_rows_per_s'))} "
                f"(batch {r.get('floor_batch')}) | {_f(r.get('ratio_to_floor'), 3)} "
                f"| {_f(r.get('server_cores'), 2)} / {_f(r.get('client_cores'), 2)} | {target} |"
            )
    batches = sorted({int(b) for f in result["floor"].values() for b in f}, key=int)
    std = [b for b in batches if b in FLOOR_BATCHES] or batches
    lines += [
        "",
        "| floor: raw ONNX Runtime in-process | " + " | ".join(f"batch {b}" for b in std) + " |",
        "| --- | " + " | ".join("---:" for _ in std) + " |",
    ]
    for name, f in result["floor"].items():
        cells = []
        for b in std:
            v = f.get(str(b))
            cells.append("n/a" if v is None else f"{fmt_rate(v['calls_per_s'])} calls/s ({fmt_rate(v['rows_per_s'])} rows/s)")
        provider = (result["models"][name].get("floor_providers") or ["?"])[0].replace("ExecutionProvider", "")
        threads = result["model_config"]["intra_op_threads"]
        lines.append(f"| {name} ({provider}, {threads} intra-op thread{'s' if threads != 1 else ''}) | " + " | ".join(cells) + " |")
    lines += ["", *bottleneck_lines(result), *ceiling_lines(result), "",
              "Client and server share the machine's cores (the server/client cores column is each one's CPU "
              "over the run). Reproduce: `python -m benchmarks.serving` (results in `benchmarks/results/serving.json`)."]
    return "\n".join(lines)


def bottleneck_lines(result: Mapping[str, Any]) -> list[str]:
    """One sentence per model at C=64: server CPU per request and how busy ONNX Runtime was."""
    out = []
    for name, runs in result["served"].items():
        r = next((x for x in runs if x["concurrency"] == 64), None) or (runs[-1] if runs else None)
        if not r or r.get("server_cpu_us_per_request") is None:
            continue
        out.append(
            f"{name} at C={r['concurrency']}: the server spent {r['server_cpu_us_per_request']:.0f} µs of CPU per "
            f"request while ONNX Runtime computed {100 * (r.get('runner_busy_fraction') or 0):.0f}% of the time "
            f"(average batch {_f(r['avg_batch'])})."
        )
    return out


def ceiling_lines(result: Mapping[str, Any]) -> list[str]:
    """What a server doing nothing reached with the same client, and what that means for the ratio target."""
    c = result.get("ceiling")
    if not c or not c.get("throughput_rps"):
        return []
    out = [
        f"Ceiling: a grpc.aio server that answers every ModelInfer with a constant reply (no parsing, no model; "
        f"`benchmarks/echo_server.py`) reached {fmt_rate(c['throughput_rps'])} req/s, p99 {_f(c['p99_ms'])} ms, with "
        f"the same client at C={c['concurrency']} ({c['payload_model']}-sized requests, best of "
        f"{len(c.get('runs_rps') or [1])}); the client spent {_f(c.get('client_cpu_us_per_request'), 0)} µs and that "
        f"server {_f(c.get('server_cpu_us_per_request'), 0)} µs of CPU per request."
    ]
    t = result.get("targets", {}).get("ranker_ratio") or {}
    # Only the MLP ranker's target is in question: the sequence ranker needs a few hundred req/s.
    if "least_required_rps" in t:
        verdict = ("so the target is out of reach of any server on this machine with this client"
                   if not t["reachable_with_this_client_here"] else "so the target is reachable here in principle")
        cpu = ""
        if "cores_needed_at_least" in t:
            cpu = (f" At that rate the client and a do-nothing server alone would use "
                   f"{t['cores_needed_at_least'] - t['min_ratio_to_floor']:.2f} cores and the model "
                   f"{t['min_ratio_to_floor']} of a core: at least {t['cores_needed_at_least']:.2f} cores "
                   f"of the machine's {t['cores']}.")
        out.append(
            f"The ranker's ratio target needs at least {fmt_rate(t['least_required_rps'])} req/s "
            f"({t['min_ratio_to_floor']} × raw ONNX Runtime's {fmt_rate(t['least_floor_rows_per_s'])} rows/s at its "
            f"least efficient batch): {t['least_required_rps'] / t['echo_ceiling_rps']:.1f}× the ceiling, {verdict}."
            + cpu
        )
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter runs (3 s + 1 s warm-up each), same grid")
    p.add_argument("--models", nargs="+", default=list(BENCH_MODELS), choices=list(BENCH_MODELS))
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    p.add_argument("--duration", type=float, default=None, help="measured seconds per served run")
    p.add_argument("--client-processes", type=int, default=None,
                   help="client processes for C > 1 (default 2; 4 on machines with 8+ cores)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--name", default=NAME, help="result file name without .json (default serving)")
    p.add_argument("--device-label", default=None, help="what ran the models, e.g. 'NVIDIA H200' (default CPU)")
    p.add_argument("--no-readme", action="store_true", help="do not update the README table")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: print the table of an earlier result file (and update the README)")
    args = p.parse_args(argv)

    if args.from_json:
        return reprint_from_json(args.from_json, args.name, markdown_table, not args.no_readme)

    procs = args.client_processes or (4 if (os.cpu_count() or 2) >= 8 else 2)
    plan = RunPlan.quick(procs) if args.quick else RunPlan(client_processes=procs)
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration_s=args.duration)
    result = run_benchmark(models=args.models, concurrencies=args.concurrency, plan=plan,
                           device_label=args.device_label)
    # serving_gpu results (--name) get their own README table
    path = publish(args.name, result, markdown_table, args.out, readme=not args.no_readme)
    log(f"wrote {path} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
