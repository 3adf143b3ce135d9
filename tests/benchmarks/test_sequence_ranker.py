"""The serving benchmark's sequence ranker: what it declares, and served by the real server.

A small instance (8 history items, width 16) keeps the export fast; the benchmark's default
instance differs only in sizes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import load
from benchmarks.models import BENCH_MODELS, write_repository
from benchmarks.sequence_ranker import SequenceRanker
from benchmarks.serving import ServerProcess, payloads_for

SMALL = SequenceRanker(name="seq_small", history=8, dim=16, layers=1, heads=2, items=500, dense=3)


def test_declared_inputs_match_the_graph_and_the_batch_axis_is_dynamic() -> None:
    sess = ort.InferenceSession(SMALL.build(), providers=["CPUExecutionProvider"])
    graph = [(i.name, i.shape[1:]) for i in sess.get_inputs()]
    assert graph == [(s.name, list(s.shape[1:])) for s in SMALL.input_specs()]
    assert all(i.shape[0] not in (1, 2) for i in sess.get_inputs())  # a symbolic batch dimension
    for rows in (1, 7):
        out = sess.run(None, SMALL.feeds(rows, seed=rows))[0]
        assert out.shape == (rows, 1) and np.isfinite(out).all()


def test_padding_and_an_empty_history_give_finite_scores() -> None:
    sess = ort.InferenceSession(SMALL.build(), providers=["CPUExecutionProvider"])
    feeds = SMALL.feeds(1, seed=3)
    padded = dict(feeds, history=feeds["history"].copy())
    padded["history"][0, :4] = 0  # id 0 is padding: masked out of attention and the mean
    empty = dict(feeds, history=np.zeros_like(feeds["history"]))  # a user with no history yet
    full, part, none = (sess.run(None, f)[0] for f in (feeds, padded, empty))
    assert np.isfinite(full).all() and np.isfinite(part).all() and np.isfinite(none).all()
    assert not np.allclose(full, part) and not np.allclose(part, none)


def test_default_instance_is_the_compute_bound_one() -> None:
    spec = BENCH_MODELS["seq_ranker"]
    assert isinstance(spec, SequenceRanker)
    assert spec.macs_per_row > 15 * BENCH_MODELS["ranker"].macs_per_row  # ~22 M vs ~1.2 M


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_served_output_equals_onnxruntime(tmp_path: Path) -> None:
    from serving.onnx_session import load_onnx

    repo = write_repository(tmp_path / "models", [SMALL], {SMALL.name: {"max_batch_size": 16}})
    server = ServerProcess(Path(repo), tmp_path / "server.log").start(timeout=60)
    try:
        specs = asyncio.run(load.fetch_input_specs(server.target, SMALL.name))
        assert specs == SMALL.input_specs()
        payload = payloads_for(SMALL, count=1)[0]
        served = load.decode_response(asyncio.run(load.infer_once(server.target, payload)))[SMALL.output_name]
    finally:
        server.stop()
    session = load_onnx(SMALL.build(), intra_op_threads=1, providers=["CPUExecutionProvider"])
    local = session.run(SMALL.feeds(1, seed=1000))[SMALL.output_name]
    assert served.shape == (1, 1)
    np.testing.assert_array_equal(served, local)
