"""``evaluate_run``: metrics of a run on a labelled split, as ``report.json`` plus PNG plots.

Rankers (``lr``, ``deepfm``): AUC, log loss, ECE, calibration ratio of the served
probability (``calibrated``: after correction and calibrator) and of ``q`` (``uncalibrated``:
after the downsampling correction only), the reliability curve, and, for synthetic data,
the same metrics of the true probability (``truth``: the noise floor). Plots:
``reliability.png`` (reliability diagram) and ``scores.png`` (score histograms by label).

Two-tower runs: Recall@K, NDCG@K, MAP@K (:mod:`engine.training.retrieval`) and
``recall_at_k.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.training.calibration import apply_calibrator  # noqa: E402
from engine.training.data import ClickData, PairData  # noqa: E402
from engine.training.metrics import classification_report, reliability  # noqa: E402
from engine.training.retrieval import retrieval_report  # noqa: E402
from engine.training.run import TrainingRun, _jsonable  # noqa: E402

REPORT = "report.json"


def evaluate_run(run: TrainingRun, data: ClickData | PairData, out_dir: str | Path, n_bins: int = 100,
                 ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate ``run`` on ``data``; write ``report.json`` and plots into ``out_dir``; return the report
    (``report["files"]`` lists the written paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if run.kind == "two_tower":
        if not isinstance(data, PairData):
            raise TypeError("a two-tower run is evaluated on PairData")
        report = _retrieval(run, data, out, ks or tuple(run.params.get("eval_k", (10, 50, 100))))
    else:
        if not isinstance(data, ClickData):
            raise TypeError("a ranker is evaluated on ClickData")
        report = _ranking(run, data, out, n_bins)
    report["files"].append(str(out / REPORT))
    (out / REPORT).write_text(json.dumps(_jsonable(report), indent=2, allow_nan=True))
    return report


def _ranking(run: TrainingRun, data: ClickData, out: Path, n_bins: int) -> dict[str, Any]:
    q = run.predict_corrected(data.dense, data.sparse)
    p = apply_calibrator(run.calibrator, q)
    report: dict[str, Any] = {
        "kind": run.kind,
        "calibrator": None if run.calibrator is None else run.calibrator["kind"],
        "downsample_rate": run.downsample_rate,
        "calibrated": classification_report(data.label, p, n_bins),
        "uncalibrated": classification_report(data.label, q, n_bins),
        "reliability": reliability(data.label, p, n_bins),
    }
    if data.true_p is not None:
        report["truth"] = classification_report(data.label, data.true_p, n_bins)
    report["files"] = [_plot_reliability(data.label, {"calibrated": p, "uncalibrated (q)": q}, n_bins,
                                         out / "reliability.png"),
                       _plot_scores(data.label, p, out / "scores.png")]
    return report


def _plot_reliability(y: np.ndarray, curves: dict[str, np.ndarray], n_bins: int, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for name, p in curves.items():
        r = reliability(y, p, n_bins)
        pts = [(mp, my) for mp, my, c in zip(r["mean_pred"], r["mean_label"], r["count"]) if c >= 50]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, label=name)
            top = max(top, max(xs), max(ys))
    top = top * 1.05 or 1.0  # click rates are small: zoom to where the predictions are
    ax.plot([0, top], [0, top], "k--", lw=1, label="perfect")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean prediction", ylabel="observed click rate",
           title=f"Reliability ({n_bins} equal-width bins, bins with >= 50 rows)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _plot_scores(y: np.ndarray, p: np.ndarray, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, float(np.quantile(p, 0.999)) or 1.0, 60)
    for value, name in ((0, "negatives"), (1, "positives")):
        ax.hist(p[y == value], bins=bins, density=True, alpha=0.5, label=name)
    ax.set(xlabel="predicted probability", ylabel="density", title="Scores by label")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _retrieval(run: TrainingRun, data: PairData, out: Path, ks: Sequence[int]) -> dict[str, Any]:
    report = {"kind": run.kind, **retrieval_report(run, data, ks)}
    curve = report["recall_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(curve) + 1), curve)
    ax.set(xlabel="K", ylabel="Recall@K", title="Recall@K (exact dot-product top-K)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=100)
    plt.close(fig)
    report["files"] = [str(out / "recall_at_k.png")]
    return report
