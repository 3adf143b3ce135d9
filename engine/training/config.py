"""Hyper-parameters of one training run (stored in the run as ``params``).

>>> TrainConfig(kind="lr", downsample_rate=0.25).downsample_rate
0.25
>>> TrainConfig(calibration="none").calibration is None
True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ModelKind = Literal["lr", "deepfm", "two_tower"]


class TrainConfig(BaseModel):
    """Everything :func:`engine.training.train.train_ranker` / ``train_two_tower`` read."""

    model_config = ConfigDict(extra="forbid")

    kind: ModelKind = "deepfm"
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embed_dim: int = Field(8, ge=1)
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Negatives of the training split kept with this probability (1.0: no downsampling).
    downsample_rate: float = Field(1.0, gt=0, le=1)
    focal_gamma: float | None = Field(None, ge=0)  # None: binary cross-entropy
    focal_alpha: float | None = Field(None, gt=0, lt=1)  # weight of positives in focal loss
    # Fit on the validation split after the downsampling correction.
    calibration: Literal["platt", "isotonic"] | None = "platt"
    patience: int = Field(1, ge=0)  # epochs without a better validation log loss before stopping
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch.set_num_threads; None: torch's default
    quiet: bool = False  # no progress bars
    # Two-tower only.
    out_dim: int = Field(32, ge=1)
    temperature: float = Field(0.05, gt=0)
    logq_correction: bool = True
    eval_k: tuple[int, ...] = (10, 50, 100)
    # Datasets: hash buckets per sparse column, and is-null indicators for dense columns.
    buckets: int = Field(1 << 17, ge=2)
    null_indicators: bool = False

    @field_validator("calibration", mode="before")
    @classmethod
    def _none(cls, v: object) -> object:
        return None if v == "none" else v
