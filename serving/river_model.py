"""Serving a River snapshot (see :mod:`engine.learning.snapshots`) like an ONNX model.

A snapshot takes one input, ``features``, FP64 ``[-1, n_features]``: column *j* is the
manifest's *j*-th feature, so the ``config.yaml`` the publisher writes (``features: {inputs:
{features: [<names>]}}``) lets Predict fill it from the online store and the request. FP64,
because River learns on Python floats: the served score then equals the learner's own
``predict_proba_one`` on the same values, where FP32 would round the inputs first. It gives
one output, ``probability``, FP32 ``[-1, 1]``: the probability of the positive class
(``True`` / ``1``), 0.0 while the model knows no positive class yet.

Each row becomes the dict ``{feature: value}`` and goes through ``predict_proba_one``: River
predicts one example at a time, so a batch costs its rows in Python calls (tens of
microseconds each for a linear model). Serving only reads the model, so the batcher's
inference thread may run it while the loader thread warms up another version.

>>> from river import linear_model
>>> learner = linear_model.LogisticRegression()
>>> learner.learn_one({"a": 1.0, "b": 0.0}, True)
>>> served = RiverModel(learner, ("a", "b"))
>>> [(s.name, s.datatype, s.shape) for s in served.inputs + served.outputs], served.platform
([('features', 'FP64', (-1, 2)), ('probability', 'FP32', (-1, 1))], 'river')
>>> out = served.run({"features": np.array([[1.0, 0.0], [0.0, 1.0]])})["probability"]
>>> out.shape, bool(abs(out[0, 0] - learner.predict_proba_one({"a": 1.0, "b": 0.0})[True]) < 1e-7)
((2, 1), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engine.learning.snapshots import INPUT_NAME, OUTPUT_NAME, load_snapshot
from serving.backend import warm_up, zero_feeds
from serving.tensors import TensorSpec

PLATFORM = "river"


@dataclass(eq=False)
class RiverModel:
    """A River classifier behind the :class:`~serving.backend.ModelBackend` interface."""

    model: Any
    features: tuple[str, ...]
    inputs: list[TensorSpec] = field(init=False)
    outputs: list[TensorSpec] = field(init=False)
    has_batch_axis: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.inputs = [TensorSpec(INPUT_NAME, "FP64", (-1, len(self.features)))]
        self.outputs = [TensorSpec(OUTPUT_NAME, "FP32", (-1, 1))]

    @property
    def providers(self) -> list[str]:
        """Where it runs: River, in the batcher's Python thread."""
        return [PLATFORM]

    @property
    def platform(self) -> str:
        """KServe ``ModelMetadata.platform``."""
        return PLATFORM

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Positive-class probability of every row of ``feeds["features"]``."""
        names = self.features
        predict = self.model.predict_proba_one
        # tolist(): Python floats, the type the learner saw; River on numpy scalars is slower.
        rows = np.asarray(feeds[INPUT_NAME]).reshape(-1, len(names)).tolist()
        # True == 1 as a dict key, so this finds a positive class labelled 1 as well.
        scores = [predict(dict(zip(names, row))).get(True, 0.0) for row in rows]
        return {OUTPUT_NAME: np.asarray(scores, dtype=np.float32).reshape(-1, 1)}

    def zeros(self, rows: int | None) -> dict[str, np.ndarray]:
        """Feeds of zeros: ``rows`` rows (1 when None)."""
        return zero_feeds(self.inputs, rows)

    def warmup(self, max_batch_size: int) -> None:
        """Run zeros at batch 1 and ``max_batch_size``: a model that cannot predict fails here, not on a client."""
        warm_up(self, max_batch_size)


def load_river(version_dir: str | Path, key: bytes | None = None) -> RiverModel:
    """Verify and load the snapshot in ``version_dir`` (raises ``ValueError`` when refused)."""
    snapshot = load_snapshot(version_dir, key)
    return RiverModel(snapshot.model, snapshot.features)
