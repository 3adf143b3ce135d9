"""Concept drift on the 0/1 error stream of joined examples -- alerts only when error ROSE.

:class:`ErrorRiseDetector` wraps one of river's detectors:

* ``"ddm"`` -- ``river.drift.binary.DDM``; one-sided by construction (fires when
  ``p + s > p_min + 3 s_min``), so every DDM drift is an error rise.
* ``"hddm_a"`` -- ``river.drift.binary.HDDMA`` with ``two_sided_test=False`` (river's default):
  tests only for an increase of the mean. It runs as :class:`~engine.drift.hddm_a.HDDMAIncrease`,
  which makes river's decisions bit for bit at a fraction of the cost (no warning state).
* ``"adwin"`` -- ``river.drift.ADWIN``; two-sided: it also fires when the error *falls* (e.g.
  while a fresh model warms up). Rule used here: on an ADWIN detection, compare the window mean
  before the update (``estimation`` over old + new sub-windows) with the mean after ADWIN dropped
  the old sub-window (``estimation`` over the recent sub-window only). The recent mean is above
  the combined mean iff it is above the dropped sub-window's mean, so the wrapper alerts iff
  ``estimation_after > estimation_before`` -- i.e. the recent error rate is higher than the
  older one. Falls are swallowed (counted in ``n_ignored``).

``grace_period`` (default 0) suppresses alerts for the first updates after construction or
:meth:`ErrorRiseDetector.reset` -- useful right after a model reset, when DDM can fire on the
noisy start of a learning curve (seen once in 10 seeds with GaussianNB on Agrawal).

Measured delays (tests/engine/drift/test_detectors.py): abrupt concept drift on River's Agrawal
generator, classification function 0 for 2000 samples then function 2 (width 1, built by
concatenation because ``ConceptDriftStream(width=1)`` overflows ``math.exp`` in river 0.26.1),
``river.tree.HoeffdingTreeClassifier`` learning progressively (predict, then learn), seeds 0-9,
default detector parameters, 1000 samples after the drift:

==========  =================================================  ======  =====  ============
detector    delay per seed (samples after the drift)            mean    max    false alarms
==========  =================================================  ======  =====  ============
HDDM_A      25, 36, 8, 9, 25, 28, 32, 6, 20, 4                  19.3    36     0
DDM         53, 68, 60, 49, 55, 74, 70, 35, 53, 46              56.3    74     0
==========  =================================================  ======  =====  ============

(Reference from FIELD-NOTES: HDDM_A 24.5, DDM 56.) The tests assert: no alert before the drift,
first alert within 100 (HDDM_A) / 150 (DDM) samples after it, on every seed.

>>> det = ErrorRiseDetector("hddm_a")
>>> alerts = [i for i, e in enumerate([0] * 500 + [1] * 100) if det.update(e)]
>>> alerts[0] >= 500
True
>>> det = ErrorRiseDetector("adwin")
>>> any(det.update(e) for e in [1] * 500 + [0] * 500)  # error fell: no alert
False
>>> det.n_ignored >= 1
True
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from river import drift
from river.drift import binary

from engine.drift.hddm_a import HDDMAIncrease

__all__ = ["DetectorName", "ErrorRiseDetector"]

DetectorName = Literal["ddm", "hddm_a", "adwin"]
_HDDM_A_PARAMS = {"drift_confidence", "warning_confidence", "two_sided_test"}


class ErrorRiseDetector:
    """Alerts when the error rate of a 0/1 error stream rises.

    Args:
        detector: ``"ddm"``, ``"hddm_a"`` or ``"adwin"``.
        grace_period: updates after construction / :meth:`reset` during which alerts are
            suppressed (the detector still learns).
        **params: passed to the river detector (e.g. ``drift_threshold`` for DDM,
            ``drift_confidence`` for HDDM_A, ``delta`` for ADWIN). ``two_sided_test=True`` is
            refused for HDDM_A.

    Attributes:
        n_seen: updates since the last reset.
        n_alerts: alerts returned since the last reset.
        n_ignored: detections by the wrapped detector that were not error rises, or that fell in
            the grace period.

    >>> d = ErrorRiseDetector("ddm", warm_start=10)
    >>> d.update(0), d.n_seen
    (False, 1)
    >>> d.reset(); d.n_seen
    0
    """

    def __init__(self, detector: DetectorName = "hddm_a", grace_period: int = 0, **params: Any) -> None:
        if detector not in ("ddm", "hddm_a", "adwin"):
            raise ValueError(f"unknown detector {detector!r}; use 'ddm', 'hddm_a' or 'adwin'")
        if detector == "hddm_a" and params.get("two_sided_test"):
            raise ValueError("two_sided_test=True would alert on falling error")
        if detector == "hddm_a" and not set(params) <= _HDDM_A_PARAMS:
            raise ValueError(f"unknown HDDM_A parameters {sorted(set(params) - _HDDM_A_PARAMS)}")
        if grace_period < 0:
            raise ValueError("grace_period must be >= 0")
        self.detector_name: DetectorName = detector
        self.grace_period = grace_period
        self.params = dict(params)
        self.reset()

    def _make(self) -> Any:
        if self.detector_name == "ddm":
            return binary.DDM(**self.params)
        if self.detector_name == "hddm_a":
            # The warning confidence only shapes warnings, which alerts do not use.
            return HDDMAIncrease(self.params.get("drift_confidence", 0.001))
        return drift.ADWIN(**self.params)

    def reset(self) -> None:
        """Fresh detector and counters (call after the model was reset or retrained)."""
        self._detector = self._make()
        self.n_seen = 0
        self.n_alerts = 0
        self.n_ignored = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.detector_name == "hddm_a" and not isinstance(self._detector, HDDMAIncrease):
            # A recovery snapshot from before HDDM_A ran lean: carry River's state over.
            self._detector = HDDMAIncrease.from_river(self._detector)

    @property
    def detector(self) -> Any:
        """The wrapped river detector (read-only use)."""
        return self._detector

    def update(self, error: bool | int | float) -> bool:
        """Feed one error indicator (1 = wrong prediction); ``True`` iff the error rate rose."""
        e = float(error)
        if e not in (0.0, 1.0):
            raise ValueError("error must be 0 or 1")
        return self.observe(e == 1.0)

    def observe(self, wrong: bool) -> bool:
        """:meth:`update` for a checked bool (a learner's per-example call): True iff error rose."""
        self.n_seen += 1
        if self.detector_name == "hddm_a":
            if not self._detector.update(wrong):
                return False
            return self._alert_unless_in_grace()
        e = float(wrong)
        before = self._detector.estimation if self.detector_name == "adwin" else None
        self._detector.update(int(e) if self.detector_name != "adwin" else e)
        if not self._detector.drift_detected:
            return False
        if self.detector_name == "adwin" and not self._detector.estimation > before:
            self.n_ignored += 1
            return False
        return self._alert_unless_in_grace()

    def first_alert(self, wrong: Sequence[bool], start: int = 0) -> int | None:
        """:meth:`observe` ``wrong[start]``, ``wrong[start + 1]``, ... until one alerts: its
        index, or None once all were observed."""
        if self.detector_name != "hddm_a":
            for i in range(start, len(wrong)):
                if self.observe(wrong[i]):
                    return i
            return None
        at = start
        while True:
            k = self._detector.first_detection(wrong, at)
            if k is None:
                self.n_seen += len(wrong) - at
                return None
            self.n_seen += k + 1 - at
            if self._alert_unless_in_grace():
                return k
            at = k + 1

    def _alert_unless_in_grace(self) -> bool:
        if self.n_seen <= self.grace_period:
            self.n_ignored += 1
            return False
        self.n_alerts += 1
        return True

    def __repr__(self) -> str:
        return f"ErrorRiseDetector({self.detector_name!r}, grace_period={self.grace_period}, **{self.params!r})"
