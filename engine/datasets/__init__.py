"""Point-in-time correct training sets (``rtml dataset build``); see docs/datasets.md.

* :mod:`engine.datasets.pit` -- the generic point-in-time join (:func:`point_in_time_join`);
* :mod:`engine.datasets.offline` -- feature tables from rtml's offline store;
* :mod:`engine.datasets.examples` -- labelled examples from files or from raw events;
* :mod:`engine.datasets.splits` -- time-based train / validation / test splits;
* :mod:`engine.datasets.build` -- the dataset files and their manifest;
* :mod:`engine.datasets.cli` -- the ``rtml dataset`` subcommands.
"""

from engine.datasets.build import DatasetManifest, build_dataset, build_from_offline_store
from engine.datasets.examples import examples_from_events, load_examples
from engine.datasets.pit import FeatureTable, point_in_time_join
from engine.datasets.splits import SplitSpec, split_by_time

__all__ = [
    "DatasetManifest",
    "FeatureTable",
    "SplitSpec",
    "build_dataset",
    "build_from_offline_store",
    "examples_from_events",
    "load_examples",
    "point_in_time_join",
    "split_by_time",
]
