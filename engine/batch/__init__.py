"""Batch prediction: score every entity offline, serve the scores by lookup (docs/batch.md)."""
