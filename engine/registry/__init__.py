"""The model registry over serving's model repository (see :mod:`engine.registry.registry`).

Light on purpose: :mod:`engine.learning.snapshots` (and so the server) imports
:mod:`engine.registry.publish`; torch and the exporter load only with
:mod:`engine.registry.export`.
"""

from engine.registry.registry import ModelRegistry, VersionInfo

__all__ = ["ModelRegistry", "VersionInfo"]
