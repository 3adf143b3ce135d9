"""How dataflow jobs are launched as processes (used by ``rtml up``, tests and benchmarks).

A job of N processes is N ``python -m bytewax.run`` commands cross-wired with
``-i/-a`` (Bytewax scales with processes, not threads: FIELD-NOTES). With recovery
on, the recovery directory is initialised once with one partition per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.config import RtmlConfig, to_env
from engine.runtime.placement import SPREAD_MODULUS
from engine.runtime.ports import free_port
from engine.runtime.supervisor import ProcessSpec

# Import strings, not imports: importing dataflows pulls in Bytewax.
FEATURES_FLOW = "dataflows.features:flow_from_env()"
LEARNING_FLOW = "dataflows.learning:flow_from_env()"
DRIFT_FLOW = "dataflows.drift:flow_from_env()"
JOBS = ("features", "learning", "drift")


LAYOUT_FILE = "rtml-layout.json"


def features_layout(cfg: RtmlConfig) -> dict[str, Any]:
    """What the features job's state keys depend on: the shards per view, and how shard keys
    are placed (``spread-840``: operators/route.py, engine/runtime/placement.py). Not the
    number of processes: the keys split evenly over any of 1 to 8, so a job may rescale."""
    return {"shards_per_view": cfg.pipeline.shards_per_view, "shard_keys": f"spread-{SPREAD_MODULUS}"}


def init_recovery(directory: str | Path, partitions: int, layout: dict[str, Any] | None = None) -> None:
    """Create Bytewax recovery partitions unless the directory already holds them.

    ``layout``: the settings the job's state keys depend on. They are recorded with new
    state; existing state written under other settings is refused (its keys would be
    orphaned and the job would silently start afresh).
    """
    path = Path(directory)
    record = path / LAYOUT_FILE
    if path.exists() and any(path.glob("part-*.sqlite3")):
        if layout is not None:
            before = json.loads(record.read_text()) if record.exists() else "no recorded layout (an older rtml)"
            if before != layout:
                raise RuntimeError(
                    f"the recovery state in {path} was written with {before}, not {layout}: restore those "
                    "settings, or start from a fresh recovery directory"
                )
        return
    path.mkdir(parents=True, exist_ok=True)
    if layout is not None:  # first: a crash before the partitions exist leaves no refusable state
        record.write_text(json.dumps(layout))
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)], check=True)


def _worker_ports(cfg: RtmlConfig, n: int) -> list[int]:
    """Free ports for the processes to talk to each other, never a metrics port.

    A free port is only free until someone binds it: the metrics ports are bound later by
    the processes themselves, so they are excluded explicitly (a collision made a metrics
    scrape land on a Bytewax socket).
    """
    m = cfg.metrics
    reserved = {port + i for port in (m.port, m.learning_port, m.drift_port) for i in range(n)} | {m.supervisor_port}
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in reserved and port not in ports:
            ports.append(port)
    return ports


def dataflow_specs(
    cfg: RtmlConfig,
    flow: str = FEATURES_FLOW,
    name: str = "features",
    *,
    processes: int | None = None,
    recovery_dir: str | Path | None = None,
    recovery: bool | None = None,
    layout: dict[str, Any] | None = None,
) -> list[ProcessSpec]:
    """Process specs for one dataflow job, with recovery when configured.

    Defaults follow ``pipeline`` (processes, recovery, ``<recovery_dir>/<name>``).
    ``layout``: see :func:`init_recovery`.
    """
    p = cfg.pipeline
    n = p.processes if processes is None else processes
    base = [sys.executable, "-m", "bytewax.run", flow]
    if (p.recovery if recovery is None else recovery) and (recovery_dir or p.recovery_dir):
        directory = Path(recovery_dir) if recovery_dir else Path(p.recovery_dir or "") / name
        init_recovery(directory, n, layout)
        base += ["-r", str(directory), "-s", str(p.snapshot_interval_s), "-b", "0"]
    addresses = ";".join(f"127.0.0.1:{port}" for port in _worker_ports(cfg, n)) if n > 1 else ""
    env = to_env(cfg)
    specs = []
    for i in range(n):
        argv = list(base)
        if n > 1:
            argv += ["-i", str(i), "-a", addresses]
        # Each process knows the job's size (a flow may be shaped by it).
        specs.append(ProcessSpec(f"{name}-{i}", argv,
                                 {**env, "RTML_PROCESS_INDEX": str(i), "RTML_PIPELINE_PROCESSES": str(n)}))
    return specs


def job_specs(cfg: RtmlConfig, job: str) -> list[ProcessSpec]:
    """Process specs of a named job: ``features`` (``pipeline.processes`` processes),
    ``learning`` (``learning.processes``: input and join in one, learners in the others) or
    ``drift`` (one)."""
    if job == "features":
        return dataflow_specs(cfg, layout=features_layout(cfg))
    if job == "learning":
        lc = cfg.learning
        # With several processes the state keys are placed for that many (dataflows/learning.py).
        return dataflow_specs(cfg, LEARNING_FLOW, "learning", processes=lc.processes, recovery=lc.recovery,
                              recovery_dir=lc.recovery_dir,
                              layout={"processes": lc.processes, "join_shards": lc.join_shards})
    if job == "drift":
        return dataflow_specs(cfg, DRIFT_FLOW, "drift", processes=1)
    raise ValueError(f"unknown job {job!r}; known: {', '.join(JOBS)}")
