"""Batch prediction: score every entity offline, serve the scores by lookup (docs/batch.md).

The defaults of a run live here, so that ``rtml``'s parser can show them without importing
the serving stack :mod:`engine.batch.predict` needs.
"""

DEFAULT_BATCH_SIZE = 1024
DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000  # a week: stale scores stay visible (counted "stale", not "miss")
