"""Continuous learning: label join, online learners, progressive validation, snapshots."""
