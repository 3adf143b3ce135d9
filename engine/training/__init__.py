"""Offline training and evaluation: click rankers (LR, DeepFM), a two-tower retriever,
calibration, metrics and the ``rtml train`` / ``rtml evaluate`` commands (docs/training.md).

Modules, one concept each: :mod:`.data` (arrays and stable hashing), :mod:`.synthetic`
(generators with a known truth), :mod:`.calibration`, :mod:`.models`, :mod:`.config`,
:mod:`.train`, :mod:`.run` (the saved artefact), :mod:`.metrics`, :mod:`.evaluate`, :mod:`.cli`.
"""
