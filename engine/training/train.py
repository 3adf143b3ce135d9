"""Training loops: :func:`train_ranker` (LR, DeepFM) and :func:`train_two_tower`.

* Whole splits live on the device as tensors; each epoch draws a permutation from a
  seeded generator and slices batches from it (no DataLoader, no per-row Python), so a
  CPU run with a seed is deterministic.
* Negative downsampling (rate ``w``) applies to the training split only; validation log
  loss, early stopping and calibration all use ``q``, the corrected probability.
* Early stopping keeps the weights of the epoch with the best validation loss.
* Progress bars (tqdm) go to stderr only when it is a terminal and ``quiet`` is off.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.training.calibration import apply_calibrator, fit_calibrator
from engine.training.config import TrainConfig
from engine.training.data import ClickData, PairData
from engine.training.metrics import classification_report, log_loss
from engine.training.models import DenseTransform, build_model
from engine.training.retrieval import retrieval_report
from engine.training.run import TrainingRun

log = logging.getLogger(__name__)

__all__ = ["downsample", "focal_loss", "resolve_device", "train_ranker", "train_two_tower"]


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU.

    >>> resolve_device("cpu").type
    'cpu'
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def downsample(data: ClickData, w: float, seed: int) -> ClickData:
    """Keep every positive and each negative with probability ``w``.

    >>> d = ClickData(np.zeros((1000, 1)), np.zeros((1000, 0)), np.r_[np.ones(100), np.zeros(900)])
    >>> s = downsample(d, 0.5, seed=0)
    >>> int(s.label.sum()), 400 < len(s) - 100 < 500
    (100, True)
    """
    if w >= 1.0:
        return data
    rng = np.random.default_rng([seed, 3])
    keep = (data.label > 0.5) | (rng.random(len(data)) < w)
    return data[keep]


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float, alpha: float | None = None) -> torch.Tensor:
    """Mean focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``; gamma 0 is BCE.

    >>> x, y = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.0])
    >>> bool(torch.isclose(focal_loss(x, y, 0.0), nn.functional.binary_cross_entropy_with_logits(x, y)))
    True
    """
    ce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    return loss.mean()


def _progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=quiet or not sys.stderr.isatty())


def _tensors(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    arrays = tuple(np.ascontiguousarray(a) for a in arrays)
    # torch warns on read-only buffers (arrays backed by Arrow memory): copy those.
    return [torch.from_numpy(a if a.flags.writeable else a.copy()).to(device) for a in arrays]


def train_ranker(train: ClickData, valid: ClickData, cfg: TrainConfig,
                 dataset_manifest: dict | None = None, features: dict | None = None,
                 field_dims: list[int] | None = None) -> TrainingRun:
    """Train ``cfg.kind`` ("lr" or "deepfm") on ``train``; stop early and calibrate on ``valid``.

    ``field_dims`` defaults to the largest bucket id seen per field + 1; pass the hash bucket
    counts when later data may hold buckets these splits do not.
    """
    if cfg.kind not in ("lr", "deepfm"):
        raise ValueError(f"train_ranker trains lr or deepfm, not {cfg.kind!r}")
    if train.n_dense != valid.n_dense or train.n_fields != valid.n_fields:
        raise ValueError("train and valid must have the same columns")
    device = resolve_device(cfg.device)
    params = cfg.model_dump(mode="json")
    field_dims = field_dims or _max_dims(train.sparse, valid.sparse)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.kind, train.n_dense, field_dims, params)
        fitted = downsample(train, cfg.downsample_rate, cfg.seed)
        for m in model.modules():  # statistics of the (downsampled) training inputs
            if isinstance(m, DenseTransform):
                m.fit(fitted.dense)
        model.to(device)
        run = TrainingRun(cfg.kind, model, train.n_dense, field_dims, cfg.downsample_rate, None, {}, params,
                          dataset_manifest, features=features)
        dense, sparse, label = _tensors(device, fitted.dense, fitted.sparse, fitted.label)
        n = len(fitted)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            logits, y = model(dense[idx], sparse[idx]), label[idx]
            return (focal_loss(logits, y, cfg.focal_gamma, cfg.focal_alpha) if cfg.focal_gamma is not None
                    else nn.functional.binary_cross_entropy_with_logits(logits, y))

        def valid_loss() -> float:
            return log_loss(valid.label, run.predict_corrected(valid.dense, valid.sparse))

        best_epoch, history = _fit(model, n, cfg, cfg.kind, batch_loss, valid_loss, "valid_log_loss")
        q = run.predict_corrected(valid.dense, valid.sparse)
        run.calibrator = fit_calibrator(cfg.calibration, q, valid.label)
        run.metrics = {
            "best_epoch": best_epoch, "history": history, "device": str(device),
            "train_rows": len(train), "train_rows_used": n,
            "valid": classification_report(valid.label, q),
            # In-sample for the calibrator (fit on this split): an optimistic figure.
            "valid_calibrated": classification_report(valid.label, apply_calibrator(run.calibrator, q)),
        }
    return run


def _inbatch_loss(model: nn.Module, batch: list[torch.Tensor], keys: torch.Tensor, log_q: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    ud, us, idn, isp = batch
    u, v = model.user_tower(ud, us), model.item_tower(idn, isp)
    logits = u @ v.T / temperature
    if log_q is not None:  # sampled softmax: popular items appear as negatives more often
        logits = logits - log_q[None, :]
    same = keys[:, None] == keys[None, :]
    same.fill_diagonal_(False)  # the same item as another row's positive is no negative
    logits = logits.masked_fill(same, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(len(keys), device=logits.device))


def train_two_tower(train: PairData, valid: PairData, cfg: TrainConfig, dataset_manifest: dict | None = None,
                    features: dict | None = None, user_field_dims: list[int] | None = None,
                    item_field_dims: list[int] | None = None) -> TrainingRun:
    """Two-tower retrieval with in-batch softmax (optional log-Q correction); early stopping on
    the validation in-batch loss; final validation Recall/NDCG/MAP@K by exact top-K."""
    device = resolve_device(cfg.device)
    params = cfg.model_dump(mode="json")
    params["kind"] = "two_tower"
    ufd = user_field_dims or _max_dims(train.user_sparse, valid.user_sparse)
    ifd = item_field_dims or _max_dims(train.item_sparse, valid.item_sparse)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = build_model("two_tower", train.user_dense.shape[1], ufd, params, train.item_dense.shape[1], ifd)
        model.user_tower.dense_transform.fit(train.user_dense)
        model.item_tower.dense_transform.fit(train.item_dense)
        model.to(device)
        run = TrainingRun("two_tower", model, train.user_dense.shape[1], ufd, 1.0, None, {}, params,
                          dataset_manifest, item_n_dense=train.item_dense.shape[1], item_field_dims=ifd,
                          features=features)
        arrays = _tensors(device, train.user_dense, train.user_sparse, train.item_dense, train.item_sparse)
        varrays = _tensors(device, valid.user_dense, valid.user_sparse, valid.item_dense, valid.item_sparse)
        keys, log_q, vkeys, vlog_q = _keys_and_logq(train, valid, device)
        n, b = len(train), cfg.batch_size

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return _inbatch_loss(model, [a[idx] for a in arrays], keys[idx],
                                 log_q[idx] if cfg.logq_correction else None, cfg.temperature)

        def valid_loss() -> float:
            model.eval()
            with torch.no_grad():
                vl = [float(_inbatch_loss(model, [a[s:s + b] for a in varrays], vkeys[s:s + b],
                                          vlog_q[s:s + b] if cfg.logq_correction else None,
                                          cfg.temperature)) * len(vkeys[s:s + b])
                      for s in range(0, len(valid), b)]
            return sum(vl) / max(len(valid), 1)

        best_epoch, history = _fit(model, n, cfg, "two_tower", batch_loss, valid_loss, "valid_loss")
        report = retrieval_report(run, valid, cfg.eval_k)
        report.pop("recall_curve")
        run.metrics = {"best_epoch": best_epoch, "history": history, "device": str(device), "train_rows": n,
                       "valid": report}
    return run


def _fit(model: nn.Module, n: int, cfg: TrainConfig, name: str, batch_loss: Callable[[torch.Tensor], torch.Tensor],
         valid_loss: Callable[[], float], valid_key: str) -> tuple[int, list[dict[str, Any]]]:
    """AdamW over shuffled mini-batches of ``n`` rows, early stopping on ``valid_loss``.

    Leaves the best epoch's weights in ``model``; returns that epoch and the history.
    """
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Any]] | None = None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        with _progress((n + cfg.batch_size - 1) // cfg.batch_size, f"{name} epoch {epoch}", cfg.quiet) as bar:
            for s in range(0, n, cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                loss = batch_loss(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
        vloss = valid_loss()
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), valid_key: vloss})
        log.info("%s epoch %d: train loss %.5f, %s %.5f", name, epoch, total / max(n, 1),
                 valid_key.replace("_", " "), vloss)
        if best is None or vloss < best[0]:
            best = (vloss, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] > cfg.patience:
            break
    assert best is not None
    model.load_state_dict(best[2])
    return best[1], history


def _max_dims(*arrays: np.ndarray) -> list[int]:
    n_fields = arrays[0].shape[1]
    return [max(max((int(a[:, f].max()) for a in arrays if len(a)), default=0) + 1, 2) for f in range(n_fields)]


def _keys_and_logq(train: PairData, valid: PairData, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Item keys and log sampling probabilities (item frequency in the training pairs)."""
    uniq, inverse, counts = np.unique(train.item_key, return_inverse=True, return_counts=True)
    log_q = np.log(counts / counts.sum())[inverse].astype(np.float32)
    pos = np.searchsorted(uniq, valid.item_key).clip(0, len(uniq) - 1)
    known = uniq[pos] == valid.item_key
    vlog_q = np.where(known, np.log(counts / counts.sum())[pos], np.log(0.5 / counts.sum())).astype(np.float32)
    return tuple(_tensors(device, train.item_key, log_q, valid.item_key, vlog_q))
