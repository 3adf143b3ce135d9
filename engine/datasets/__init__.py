"""Point-in-time correct training sets (``rtml dataset build``); see docs/datasets.md.

* :mod:`engine.datasets.pit` -- the generic point-in-time join (:func:`point_in_time_join`);
* :mod:`engine.datasets.offline` -- feature tables from rtml's offline store;
* :mod:`engine.datasets.examples` -- labelled examples from files or from raw events;
* :mod:`engine.datasets.splits` -- time-based train / validation / test splits;
* :mod:`engine.datasets.build` -- the dataset files and their manifest;
* :mod:`engine.datasets.cli` -- the ``rtml dataset`` subcommands.

Nothing is imported here: pandas and pyarrow load only with the module that needs them
(``rtml`` builds its parser from every package's ``cli``).
"""
