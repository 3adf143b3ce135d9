"""The parity gate: an exported graph must answer what the torch model answers.

:func:`check_parity` runs the ONNX graph with ONNX Runtime on a sample and compares one of
its outputs with a reference function (the training run's own ``predict_proba``, or a
tower's torch forward). The sample is seeded random rows (dense ~ N(0, 1) scaled, sparse
uniform over each field's buckets) plus real validation rows when given; it is run once
row 1 alone (batch 1) and once whole (at least 257 rows), which exercises the dynamic batch
axis. The largest absolute difference above ``tolerance`` raises :class:`ParityError`, and
callers register nothing.

>>> import numpy as np
>>> from engine.export.postprocess import attach_postprocess
>>> from onnx import TensorProto, helper, numpy_helper
>>> core = helper.make_model(helper.make_graph(
...     [helper.make_node("ReduceSum", ["dense", "axes"], ["logit"], keepdims=1)], "sum",
...     [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 2])],
...     [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
...     [numpy_helper.from_array(np.array([1], np.int64), "axes")]),
...     opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
>>> model = attach_postprocess(core).SerializeToString()
>>> dense, sparse = sample_inputs(2, [], rows=300, seed=0)
>>> ref = lambda d, s: 1 / (1 + np.exp(-d.astype(np.float64).sum(1)))
>>> check_parity(model, ref, dense, sparse, tolerance=1e-6) < 1e-6
True
>>> check_parity(model, lambda d, s: ref(d, s) + 1e-3, dense, sparse, tolerance=1e-6)
Traceback (most recent call last):
...
engine.export.parity.ParityError: ONNX Runtime output 'probability' differs from the reference by 0.001 at batch 1 (tolerance 1e-06)
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from engine.export.torch_export import feeds
from serving.onnx_session import CPU, load_onnx

DEFAULT_TOLERANCE = 1e-5
# Odd, above the usual batch sizes and not a power of two: the dynamic axis is really used.
MIN_ROWS = 257

Reference = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ParityError(ValueError):
    """The exported graph does not reproduce the torch model within the tolerance."""


def sample_inputs(
    n_dense: int,
    field_dims: Sequence[int],
    *,
    rows: int = MIN_ROWS,
    seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random rows followed by the given validation rows: ``dense`` float32, ``sparse`` int64.

    >>> d, s = sample_inputs(3, [4, 10], rows=5)
    >>> d.shape, s.shape, bool(s[:, 0].max() < 4)
    ((5, 3), (5, 2), True)
    """
    rng = np.random.default_rng(seed)
    # Heavy-tailed and signed, like counts and prices after any transform the model holds.
    dense = (rng.standard_normal((rows, n_dense)) * rng.choice([1.0, 10.0, 100.0], (rows, n_dense))).astype(np.float32)
    sparse = np.column_stack([rng.integers(0, d, rows) for d in field_dims]) if len(field_dims) else np.zeros((rows, 0))
    sparse = sparse.astype(np.int64).reshape(rows, len(field_dims))
    if validation is not None:
        rows_v = len(validation[0])
        dense = np.concatenate([dense, np.asarray(validation[0], np.float32).reshape(rows_v, n_dense)])
        sparse = np.concatenate([sparse, np.asarray(validation[1], np.int64).reshape(rows_v, len(field_dims))])
    return dense, sparse


def check_parity(
    model: bytes,
    reference: Reference,
    dense: np.ndarray,
    sparse: np.ndarray,
    *,
    output: str = "probability",
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Max |ORT(model)[output] − reference(dense, sparse)| over batch 1 and the whole sample.

    The ORT session runs on the CPU provider, where results do not depend on the batch
    (see :mod:`serving.onnx_session`). Returns the max difference; raises
    :class:`ParityError` above ``tolerance`` or on any non-finite value.
    """
    return check_outputs(model, {output: (reference, tolerance)}, dense, sparse)[output]


def check_outputs(
    model: bytes,
    checks: Mapping[str, tuple[Reference, float]],
    dense: np.ndarray,
    sparse: np.ndarray,
) -> dict[str, float]:
    """:func:`check_parity` for several outputs ``{output: (reference, tolerance)}`` of one graph,
    from one session and one run per batch shape; the max difference per output."""
    if len(dense) < 1:
        raise ValueError("parity needs at least one row")
    session = load_onnx(model, providers=[CPU])
    names = [s.name for s in session.inputs]
    runs = [(label, rows, session.run(feeds(dense[rows], sparse[rows], names)))
            for label, rows in (("batch 1", slice(0, 1)), (f"batch {len(dense)}", slice(None)))]
    worst: dict[str, float] = {}
    for output, (reference, tolerance) in checks.items():
        expected = np.asarray(reference(dense, sparse), np.float64).reshape(len(dense), -1)
        worst[output] = 0.0
        for label, rows, result in runs:
            got = np.asarray(result[output], np.float64).reshape(expected[rows].shape)
            if not np.all(np.isfinite(got)):
                raise ParityError(f"ONNX Runtime output {output!r} is not finite at {label}")
            diff = float(np.max(np.abs(got - expected[rows]))) if got.size else 0.0
            worst[output] = max(worst[output], diff)
            if not diff <= tolerance:
                raise ParityError(
                    f"ONNX Runtime output {output!r} differs from the reference by {diff:.3g} at {label} "
                    f"(tolerance {tolerance:g})"
                )
    return worst
