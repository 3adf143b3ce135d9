"""The model repository on disk, in Triton's layout.

::

    ROOT/
      <name>/
        config.yaml          optional, see serving.config.ModelConfig
        <version>/           a positive integer: 1, 2, 10 (no leading zeros)
          model.onnx         an ONNX model (plus any external-data files it refers to), or
          model.pkl          a River snapshot: the pickled model and its manifest, as
          manifest.json      engine.learning.snapshots.publish_snapshot writes them

A directory holding both ``model.onnx`` and a snapshot is served as ONNX. Scanning only
reads directory entries and ``stat`` results: it never opens a model. Each
version carries a *fingerprint* (names, sizes and modification times of its files) so that
the manager can tell a version that changed on disk (rewritten in place, or a copy that was
still in progress when it was first seen) from one it already loaded.

Directories whose names start with ``.`` are ignored, so the safe way to publish a version
is to write it under ``ROOT/<name>/.tmp-3`` and ``rename`` it to ``ROOT/<name>/3`` (atomic
on one file system).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "mlp" / "1").mkdir(parents=True); (root / "mlp" / "1" / "model.onnx").write_bytes(b"x")
1
>>> (root / "mlp" / "02").mkdir(); (root / "mlp" / ".tmp-3").mkdir()
>>> (root / "mlp" / "4").mkdir(); (root / "mlp" / "4" / "model.pkl").write_bytes(b"x")
1
>>> sorted(scan_repository(root)["mlp"].versions)  # 4 has no manifest.json (yet)
['1']
>>> (root / "mlp" / "4" / "manifest.json").write_text("{}")
2
>>> [(v.version, v.backend, v.model_path.name) for v in scan_repository(root)["mlp"].versions.values()]
[('1', 'onnx', 'model.onnx'), ('4', 'river', 'model.pkl')]
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from serving.config import CONFIG_FILENAME

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
# A River snapshot (engine.learning.snapshots): the pickled model and what it was trained on.
SNAPSHOT_FILENAME = "model.pkl"
MANIFEST_FILENAME = "manifest.json"

Backend = Literal["onnx", "river"]

# (relative path, size, mtime in ns) of every file; equal fingerprints = nothing changed.
Fingerprint = tuple[tuple[str, int, int], ...]


def is_version_name(name: str) -> bool:
    """True for a canonical positive integer: ``"1"``, ``"12"``; not ``"0"``, ``"01"``, ``"v1"``.

    Leading zeros are refused so that one version has exactly one directory name.

    >>> [is_version_name(n) for n in ("1", "12", "0", "01", "v1", "-1", "")]
    [True, True, False, False, False, False, False]
    """
    return name.isascii() and name.isdigit() and name[0] != "0"


def version_key(version: str) -> int:
    """Sort key: versions order numerically (``"10"`` after ``"9"``)."""
    return int(version)


@dataclass(frozen=True, slots=True)
class VersionSource:
    """One version directory that holds a model: ``backend`` says which kind."""

    name: str
    version: str
    path: Path
    fingerprint: Fingerprint
    backend: Backend = "onnx"

    @property
    def model_path(self) -> Path:
        """The model file: ``model.onnx``, or ``model.pkl`` for a River snapshot."""
        return self.path / (SNAPSHOT_FILENAME if self.backend == "river" else MODEL_FILENAME)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One model directory: its optional config and the versions found in it.

    ``error`` is set when the directory could not be listed; the manager then keeps whatever
    it has loaded for this model rather than reading a transient failure as "all removed".
    """

    name: str
    path: Path
    config_path: Path | None
    config_fingerprint: Fingerprint
    versions: dict[str, VersionSource] = field(default_factory=dict)
    error: str | None = None


def fingerprint_tree(path: Path) -> Fingerprint:
    """Fingerprint of every regular file below ``path`` (recursively), sorted by name."""
    entries: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for fname in filenames:
            full = os.path.join(dirpath, fname)
            try:
                st = os.stat(full)
            except OSError:
                continue  # removed between listing and stat: the next scan sees the new state
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    entries.sort()
    return tuple(entries)


def fingerprint_file(path: Path) -> Fingerprint:
    """Fingerprint of one file, ``()`` when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return ((path.name, st.st_size, st.st_mtime_ns),)


def version_backend(path: Path) -> Backend | None:
    """Which kind of model a version directory holds, None when it holds none (yet)."""
    if (path / MODEL_FILENAME).is_file():
        return "onnx"
    if (path / SNAPSHOT_FILENAME).is_file() and (path / MANIFEST_FILENAME).is_file():
        return "river"
    return None


def scan_model(path: Path) -> ModelSource:
    """Scan one model directory (``ROOT/<name>``)."""
    name = path.name
    config_path = path / CONFIG_FILENAME
    config_fp = fingerprint_file(config_path)
    try:
        children = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        return ModelSource(name, path, None, (), {}, error=f"cannot list {path}: {exc}")
    versions: dict[str, VersionSource] = {}
    for entry in children:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not is_version_name(entry.name):
            log.debug("ignoring %s: version directories are positive integers without leading zeros", entry.path)
            continue
        vpath = Path(entry.path)
        backend = version_backend(vpath)
        if backend is None:
            # Still being copied, or not a model: it is picked up once its files appear.
            log.debug("ignoring %s: no %s, nor %s and %s", vpath, MODEL_FILENAME, SNAPSHOT_FILENAME, MANIFEST_FILENAME)
            continue
        versions[entry.name] = VersionSource(name, entry.name, vpath, fingerprint_tree(vpath), backend)
    return ModelSource(name, path, config_path if config_fp else None, config_fp, versions)


def scan_repository(root: str | Path) -> dict[str, ModelSource]:
    """Every model directory under ``root`` by name. Raises ``OSError`` if root cannot be listed."""
    root = Path(root)
    models: dict[str, ModelSource] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            models[entry.name] = scan_model(Path(entry.path))
    return models
