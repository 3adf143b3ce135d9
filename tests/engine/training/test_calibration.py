"""Downsampling correction and calibrators against their definitions and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from engine.training.calibration import (apply_calibrator, downsampling_correction, fit_calibrator, fit_isotonic,
                                         fit_platt, logit, sigmoid)


def test_correction_inverts_downsampling() -> None:
    # Bayes: among kept rows P(y=1) = p / (p + (1 - p) w); the correction must map it back to p.
    p = np.linspace(0.001, 0.999, 999)
    for w in (0.05, 0.25, 0.7):
        biased = p / (p + (1 - p) * w)
        np.testing.assert_allclose(downsampling_correction(biased, w), p, rtol=1e-12)
    np.testing.assert_array_equal(downsampling_correction(p, 1.0), p)
    with pytest.raises(ValueError):
        downsampling_correction(p, 0.0)


def test_correction_recovers_click_rate_empirically() -> None:
    rng = np.random.default_rng(1)
    p = rng.beta(1, 20, 400_000)
    y = rng.random(p.size) < p
    keep = y | (rng.random(p.size) < 0.2)
    biased = p[keep] / (p[keep] + (1 - p[keep]) * 0.2)  # what a model trained on kept rows learns
    assert biased.mean() / y.mean() > 3
    q = downsampling_correction(biased, 0.2)
    # Re-weighting kept rows by 1/w for negatives gives the original population back.
    weights = np.where(y[keep], 1.0, 1 / 0.2)
    assert np.average(q, weights=weights) / y.mean() == pytest.approx(1.0, abs=0.02)


def test_platt_matches_sklearn_unregularised_logistic_regression() -> None:
    rng = np.random.default_rng(2)
    q = sigmoid(rng.normal(-3, 1, 50_000))
    y = rng.random(q.size) < sigmoid(1.3 * logit(q) + 0.4)
    c = fit_platt(q, y)
    ref = LogisticRegression(C=1e12, tol=1e-12, max_iter=1000).fit(logit(q)[:, None], y)
    assert c["a"] == pytest.approx(ref.coef_[0, 0], abs=1e-4)
    assert c["b"] == pytest.approx(ref.intercept_[0], abs=1e-4)
    assert c["a"] == pytest.approx(1.3, abs=0.1)
    out = apply_calibrator(c, q)
    np.testing.assert_allclose(out, ref.predict_proba(logit(q)[:, None])[:, 1], atol=1e-6)
    assert out.mean() == pytest.approx(y.mean(), rel=1e-6)  # MLE with an intercept matches the mean


def test_isotonic_matches_sklearn_and_its_contract() -> None:
    rng = np.random.default_rng(3)
    q = np.round(rng.beta(1, 15, 20_000), 4)  # ties
    y = rng.random(q.size) < np.clip(q * 1.5, 0, 1)
    c = fit_isotonic(q, y)
    x = np.asarray(c["x"])
    assert (np.diff(x) > 0).all() and (np.diff(c["y"]) >= 0).all()
    ref = IsotonicRegression(out_of_bounds="clip").fit(q, y)
    probe = np.concatenate([np.unique(q), [0.0, 1.0, -1.0]])
    np.testing.assert_allclose(apply_calibrator(c, probe), ref.predict(probe), atol=1e-9)
    # Clipped to the end values outside the fitted range.
    assert apply_calibrator(c, np.array([-5.0]))[0] == c["y"][0]
    assert apply_calibrator(c, np.array([5.0]))[0] == c["y"][-1]


def test_platt_clips_before_logit_and_fit_calibrator_by_name() -> None:
    c = {"kind": "platt", "a": 1.0, "b": 0.0}
    assert apply_calibrator(c, np.array([0.0, 1.0])).tolist() == pytest.approx([1e-7, 1 - 1e-7])
    q, y = np.array([0.1, 0.2, 0.3, 0.9]), np.array([0, 1, 0, 1])
    assert fit_calibrator(None, q, y) is None and fit_calibrator("none", q, y) is None
    assert fit_calibrator("isotonic", q, y)["kind"] == "isotonic"
    with pytest.raises(ValueError):
        fit_calibrator("beta", q, y)
    with pytest.raises(ValueError):
        fit_platt(q, np.zeros(4))


def test_platt_never_reverses_the_order_of_scores() -> None:
    import numpy as np

    from engine.training.calibration import apply_calibrator, fit_platt, sigmoid

    rng = np.random.default_rng(3)
    z = rng.normal(size=5_000)
    y = (rng.random(5_000) < sigmoid(-1.5 * z - 2)).astype(np.float64)  # scores anti-correlated with labels
    params = fit_platt(sigmoid(z), y)
    assert params["a"] == 0.0
    out = apply_calibrator(params, sigmoid(z))
    np.testing.assert_allclose(out, y.mean(), rtol=1e-9)  # the base rate, never a flipped ranking
