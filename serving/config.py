"""Per-model serving configuration: the optional ``ROOT/<name>/config.yaml``.

Every field has a default, so a model directory without a config serves with
dynamic batching up to 64 rows, no queue delay and one ONNX Runtime thread.

>>> ModelConfig().max_batch_size
64
>>> ModelConfig.model_validate({"max_queue_delay_us": 500}).max_queue_delay_us
500
>>> for bad in ({"max_batch_size": 128, "queue_capacity": 64}, {"max_batch": 8}):
...     try:
...         ModelConfig.model_validate(bad)
...     except ValueError as exc:
...         print(exc.errors()[0]["type"])
value_error
extra_forbidden
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_FILENAME = "config.yaml"


class ModelConfig(BaseModel):
    """How one model (all of its versions) is served.

    ``max_batch_size`` counts rows along the batch axis (dim 0). ``0`` means the model has
    no batch axis: each request runs alone and its shapes must match the model exactly.
    When the model's graph has no dynamic first dimension and the config leaves
    ``max_batch_size`` at its default, the server serves it with ``max_batch_size = 0``;
    an explicit positive value for such a model is refused at load time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(64, ge=0)
    # Triton's policy: the batcher never waits while a batch is full or the runner is busy;
    # it waits at most this long (counted from the oldest queued request's arrival) only to
    # top up a partial batch. 0 = dispatch whatever is queued as soon as the runner is free.
    max_queue_delay_us: int = Field(0, ge=0)
    # Counted in rows, so that one 64-row request weighs as much as 64 single-row ones.
    queue_capacity: int = Field(1024, ge=1)
    intra_op_threads: int = Field(1, ge=1)
    warmup: bool = True

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> "ModelConfig":
        # Otherwise a maximal request could never be admitted and would always be refused
        # as "overloaded", which would be a configuration error reported as load shedding.
        if self.queue_capacity < self.max_batch_size:
            raise ValueError(
                f"queue_capacity ({self.queue_capacity}) must be at least max_batch_size ({self.max_batch_size})"
            )
        return self


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a ``config.yaml``; an empty file means all defaults.

    Raises ``ValueError`` (pydantic's ``ValidationError`` is one) with the file name in the
    message when the YAML is unreadable or a field is unknown or out of range.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read model config: {' '.join(str(exc).split())}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: model config must be a mapping, got {type(raw).__name__}")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        # One line per problem, without pydantic's documentation links: this ends up in a
        # log line and in the model's FAILED reason.
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{path}: invalid model config: {details}") from exc
