"""How dataflow jobs are launched as processes (used by ``rtml up``, tests and benchmarks).

A job of N processes is N ``python -m bytewax.run`` commands cross-wired with
``-i/-a`` (Bytewax scales with processes, not threads: FIELD-NOTES). With recovery
on, the recovery directory is initialised once with one partition per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.config import RtmlConfig, to_env
from engine.runtime.ports import free_port
from engine.runtime.supervisor import ProcessSpec

FEATURES_FLOW = "dataflows.features:flow_from_env()"


def init_recovery(directory: str | Path, partitions: int) -> None:
    """Create Bytewax recovery partitions unless the directory already holds them."""
    path = Path(directory)
    if path.exists() and any(path.glob("part-*.sqlite3")):
        return
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)], check=True)


def _worker_ports(cfg: RtmlConfig, n: int) -> list[int]:
    """Free ports for the processes to talk to each other, never a metrics port.

    A free port is only free until someone binds it: the metrics ports are bound later by
    the processes themselves, so they are excluded explicitly (a collision made a metrics
    scrape land on a Bytewax socket).
    """
    reserved = {cfg.metrics.port + i for i in range(n)} | {cfg.metrics.supervisor_port}
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in reserved and port not in ports:
            ports.append(port)
    return ports


def dataflow_specs(cfg: RtmlConfig, flow: str = FEATURES_FLOW, name: str = "features") -> list[ProcessSpec]:
    """Process specs for one dataflow job, with recovery when configured."""
    p = cfg.pipeline
    n = p.processes
    base = [sys.executable, "-m", "bytewax.run", flow]
    if p.recovery and p.recovery_dir:
        recovery = Path(p.recovery_dir) / name
        init_recovery(recovery, n)
        base += ["-r", str(recovery), "-s", str(p.snapshot_interval_s), "-b", "0"]
    addresses = ";".join(f"127.0.0.1:{port}" for port in _worker_ports(cfg, n)) if n > 1 else ""
    env = to_env(cfg)
    specs = []
    for i in range(n):
        argv = list(base)
        if n > 1:
            argv += ["-i", str(i), "-a", addresses]
        specs.append(ProcessSpec(f"{name}-{i}", argv, {**env, "RTML_PROCESS_INDEX": str(i)}))
    return specs
