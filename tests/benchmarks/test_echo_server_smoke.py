"""The serving benchmark's ceiling: the echo server answers, and ceiling_run measures it.

The echo server runs as a subprocess on a free port; a short run checks that every request
succeeds, that the reply is the constant one-row answer, and that the ceiling record carries
what the README line and the ratio target's reachability are computed from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from benchmarks import load
from benchmarks.models import BENCH_MODELS
from benchmarks.serving import RunPlan, ServerProcess, ceiling_lines, ceiling_run, evaluate_targets

MODEL = BENCH_MODELS["ranker"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_echo_server_answers_the_constant_reply(tmp_path: Path) -> None:
    server = ServerProcess.echo(tmp_path / "echo.log", MODEL.name).start()
    try:
        payload = load.make_payloads(MODEL.name, [load.InputSpec(MODEL.input_name, "FP32", (-1, 512))], count=1)[0]
        outputs = load.decode_response(asyncio.run(load.infer_once(server.target, payload)))
        assert set(outputs) == {"output"}
        assert outputs["output"].shape == (1, 1) and np.all(outputs["output"] == 0)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_ceiling_run_records_throughput_and_cpu_per_request(tmp_path: Path) -> None:
    plan = RunPlan(duration_s=1.0, warmup_s=0.3, client_processes=1, target_repeats=2)
    payloads = load.make_payloads(MODEL.name, [load.InputSpec(MODEL.input_name, "FP32", (-1, 512))], count=4)
    c = ceiling_run(tmp_path, MODEL, 8, plan, payloads)
    assert c["error_count"] == 0 and c["concurrency"] == 8 and c["payload_model"] == "ranker"
    assert len(c["runs_rps"]) == 2 and c["throughput_rps"] == max(c["runs_rps"]) > 50
    assert c["request_bytes"] == len(payloads[0]) > 2048  # 512 floats of raw input
    assert c["client_cpu_us_per_request"] > 0 and c["server_cpu_us_per_request"] > 0
    # A floor that needs more than the ceiling: reported as out of reach, in the README line too.
    served = {"ranker": [{"concurrency": 64, "ratio_to_floor": 0.05, "floor_batch": 2.0}]}
    floors = {"ranker": {1: {"rows_per_s": 10 * c["throughput_rps"]}}}
    targets = evaluate_targets(served, floors, c)
    assert targets["ranker_ratio"]["reachable_with_this_client_here"] is False
    lines = ceiling_lines({"ceiling": c, "targets": targets})
    assert len(lines) == 2 and lines[0].startswith("Ceiling:") and "out of reach" in lines[1]
