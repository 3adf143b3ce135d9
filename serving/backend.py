"""What the manager needs from a loaded model, whatever runs it (ONNX Runtime, River).

:class:`~serving.manager.ServedModel` validates requests against ``inputs``, batches them
along dim 0 when ``has_batch_axis``, and calls ``run`` in its batcher's inference thread.
:class:`serving.onnx_session.OnnxModel` and :class:`serving.river_model.RiverModel` are the
two implementations; the helpers below are the parts they share.

>>> from serving.tensors import TensorSpec
>>> feeds = zero_feeds([TensorSpec("x", "FP64", (-1, 3))], rows=2)
>>> feeds["x"].dtype, feeds["x"].shape
(dtype('float64'), (2, 3))
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

from serving.tensors import TensorSpec


class ModelBackend(Protocol):
    """A loaded model version, ready to run.

    ``inputs``/``outputs`` carry full shapes with -1 for dynamic dims; ``has_batch_axis`` is
    True when every input and output has a dynamic first dim. ``providers`` says where it runs
    (ONNX Runtime execution providers, or ``["river"]``); ``platform`` is the KServe
    ``ModelMetadata.platform``. ``run`` blocks: call it off the event loop.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    has_batch_axis: bool

    @property
    def providers(self) -> list[str]: ...

    @property
    def platform(self) -> str: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def zeros(self, rows: int | None) -> dict[str, np.ndarray]: ...

    def warmup(self, max_batch_size: int) -> None: ...


def zero_feeds(specs: Sequence[TensorSpec], rows: int | None) -> dict[str, np.ndarray]:
    """Feeds of zeros (empty strings for BYTES): ``rows`` on the batch axis, 1 for other dynamic dims."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [1 if d < 0 else d for d in spec.shape]
        if rows is not None:
            shape[0] = rows
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def warm_up(model: ModelBackend, max_batch_size: int) -> None:
    """Run zeros at batch 1 and at ``max_batch_size`` (once if 0 = no batch axis).

    The first run allocates memory (ONNX Runtime's arena, CUDA libraries), which would
    otherwise land on the first client's latency. Also checks that every output keeps the
    batch axis, since the batcher splits outputs by rows; raises ``ValueError`` when one
    does not.
    """
    sizes = [None] if max_batch_size == 0 else sorted({1, max_batch_size})
    for rows in sizes:
        outputs = model.run(model.zeros(rows))
        if rows is None:
            continue
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise ValueError(
                    f"output {name!r} has shape {list(value.shape)} for a batch of {rows} rows: "
                    "its first dim does not follow the batch axis, so batching cannot split it "
                    "(set max_batch_size: 0 in config.yaml)"
                )
