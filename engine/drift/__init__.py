"""In-stream drift detection (library level).

* :mod:`engine.drift.binning` -- bin edges (quantile, uniform, Evidently-compatible Sturges)
  and epsilon-filled histograms.
* :mod:`engine.drift.statistics` -- PSI, Jensen-Shannon distance, exact KS (scipy) and
  streaming KS on Apache DataSketches KLL sketches; every call returns a
  :class:`~engine.drift.statistics.DriftResult` that records binning, epsilon and KS method.
* :mod:`engine.drift.detectors` -- :class:`~engine.drift.detectors.ErrorRiseDetector`, concept
  drift on a 0/1 error stream (DDM / HDDM_A / ADWIN from river) that alerts only on a rise.
* :mod:`engine.drift.monitor` -- :class:`~engine.drift.monitor.DriftMonitor`, tumbling-window data
  and prediction drift per model over prediction records, against a reference file or a pinned
  first window (run in-stream by dataflows/drift.py; metrics: :class:`engine.metrics.DriftMetrics`).
"""

from engine.drift.binning import Binning, histogram, quantile_binning, sturges_evidently_binning, uniform_binning
from engine.drift.detectors import ErrorRiseDetector
from engine.drift.monitor import DriftMonitor, DriftStat, MonitorOutput, Reference, load_reference
from engine.drift.statistics import DriftResult, js_distance, kll_sketch, ks_exact, ks_kll, psi

__all__ = [
    "Binning",
    "DriftMonitor",
    "DriftResult",
    "DriftStat",
    "ErrorRiseDetector",
    "histogram",
    "js_distance",
    "kll_sketch",
    "ks_exact",
    "ks_kll",
    "load_reference",
    "MonitorOutput",
    "psi",
    "quantile_binning",
    "Reference",
    "sturges_evidently_binning",
    "uniform_binning",
]
