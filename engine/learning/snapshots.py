"""Versioned River model snapshots in the model repository, and loading them back safely.

The learning dataflow publishes its online model as a new version of a model in the serving
repository (Triton's layout, see :mod:`serving.repository`); the server hot-reloads it like
an ONNX version and serves it through the same Predict / ModelInfer path::

    ROOT/<name>/
      config.yaml            written once, by the first publish, when absent: binds the
                             input "features" to the feature sources (Predict fills them)
      <version>/             highest existing version + 1 (ONNX versions count too)
        model.pkl            pickle of the River model
        manifest.json        {"format": "rtml-river-snapshot/1", "sha256", "hmac_sha256",
                              "river_version", "python_version", "kind", "features",
                              "output": "probability", "created_ms", ...metadata}

A version is written under ``ROOT/<name>/.tmp-<version>-<random>`` (the scanner ignores
dot-directories), fsynced, then renamed into place (:mod:`engine.registry.publish`, shared
with the ONNX model registry), so a reader sees either no version or
a complete one. Only the newest ``keep`` *snapshot* versions stay; ONNX versions are never
pruned.

Trust model. Unpickling runs code chosen by whoever wrote the pickle, so a snapshot is only
ever loaded from the operator-controlled model repository, never from a client or an
upload. Within that trust boundary two checks apply, both before anything is unpickled:

* ``sha256`` of ``model.pkl`` must match the manifest: catches truncation, a half-copied
  file, bit rot and casual edits (it authenticates nothing: whoever can rewrite the pickle
  can rewrite the manifest too).
* With a key (``learning.snapshot_key``, shared by the publisher and the server),
  ``hmac_sha256`` = HMAC-SHA256(key, pickle bytes) must match: only a holder of the key can
  produce a snapshot the server will unpickle, so write access to the repository alone is not
  enough to run code in the server. With a key set, unsigned snapshots are refused. The HMAC
  covers the pickle, not the rest of the manifest.

The River ``major.minor`` that wrote the snapshot must equal the installed one: River's
pickles are not compatible across minor versions (attributes are renamed, classes move).

>>> import tempfile
>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for i in range(20):
...     model.learn_one({"user.clicks_1h": float(i % 5), "request.price": 9.5}, i % 5 > 2)
>>> root = tempfile.mkdtemp()
>>> publish_snapshot(root, "ctr", model, features=["user.clicks_1h", "request.price"],
...                  kind="logistic_regression", key=b"secret", metadata={"examples": 20})
'1'
>>> snap = load_snapshot(f"{root}/ctr/1", key=b"secret")
>>> snap.features, snap.manifest["examples"]
(('user.clicks_1h', 'request.price'), 20)
>>> x = {"user.clicks_1h": 4.0, "request.price": 9.5}
>>> snap.model.predict_proba_one(x) == model.predict_proba_one(x)
True
>>> try:
...     load_snapshot(f"{root}/ctr/1", key=b"other")
... except ValueError as exc:
...     print(str(exc).removeprefix(f"{root}/ctr/1: "))
refusing River snapshot: hmac_sha256 does not match (signed with another key, or the pickle was replaced)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import platform
import secrets
import shutil
import time
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import ValidationError

from engine.registry.publish import check_model_name, fsync_dir, publish_version, write_synced
from serving.config import CONFIG_FILENAME, ModelConfig
from serving.repository import (
    MANIFEST_FILENAME,
    SNAPSHOT_FILENAME,
    scan_model,
    version_key,
)

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "rtml-river-snapshot/1"
# The one input a served snapshot takes: [rows, len(features)], columns in manifest order.
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
# Manifest keys publish_snapshot owns; metadata may not overwrite them.
_RESERVED = frozenset(
    {"format", "sha256", "hmac_sha256", "river_version", "python_version", "kind", "features", "output", "created_ms"}
)


@dataclass(frozen=True, slots=True)
class RiverSnapshot:
    """A verified, unpickled snapshot: the River model, its manifest and its version directory."""

    model: Any
    manifest: dict[str, Any]
    path: Path

    @property
    def features(self) -> tuple[str, ...]:
        """The model's feature names, in the order of the served input's columns."""
        return tuple(self.manifest["features"])


def encode_key(text: str | None) -> bytes | None:
    """The HMAC key from its configured text (``learning.snapshot_key``): UTF-8; None or "" = no key.

    Publisher and server must derive the key the same way, so both use this.

    >>> encode_key("s3cret"), encode_key(""), encode_key(None)
    (b's3cret', None, None)
    """
    return text.encode("utf-8") if text else None


def river_version() -> str:
    """The installed River's version (from package metadata: importing river is slow)."""
    return _metadata.version("river")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


# Looked up at call time (not bound as a default): tests swap it to simulate a failing disk.
_write_synced = write_synced


def _check_features(features: Sequence[str]) -> list[str]:
    names = list(features)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"features must be a non-empty list of non-empty names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"features list a name twice: {names!r}")
    return names


def _write_bindings(model_dir: Path, features: list[str]) -> None:
    """Write ``config.yaml`` binding the input to the features, unless one exists (or cannot apply)."""
    config_path = model_dir / CONFIG_FILENAME
    if config_path.exists():
        return
    if any(v.backend == "onnx" for v in scan_model(model_dir).versions.values()):
        # A config applies to every version: bindings to an input "features" would break
        # Predict on ONNX versions that have no such input.
        log.info("not writing %s: model %s has ONNX versions", config_path, model_dir.name)
        return
    raw = {"features": {"inputs": {INPUT_NAME: features}}}
    try:
        ModelConfig.model_validate(raw)
    except ValidationError as exc:
        # e.g. a feature name that is not "<view>.<column>": callers send raw tensors instead.
        log.info("not writing feature bindings to %s: %s", config_path, " ".join(str(exc).split()))
        return
    tmp = model_dir / f".{CONFIG_FILENAME}.tmp-{secrets.token_hex(4)}"
    _write_synced(tmp, yaml.safe_dump(raw, sort_keys=False).encode())
    try:
        # link() never replaces an existing file: a config written meanwhile (by an operator)
        # wins, and the server never sees a half-written one.
        os.link(tmp, config_path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_dir(model_dir)


def _prune(model_dir: Path, keep: int) -> None:
    snapshots = sorted(
        (v for v in scan_model(model_dir).versions.values() if v.backend == "river"),
        key=lambda v: version_key(v.version),
    )
    for old in snapshots[: max(len(snapshots) - keep, 0)]:
        # Renamed out of sight first: removing files one by one would show the server a
        # version whose files change under it.
        trash = model_dir / f".trash-{old.version}-{secrets.token_hex(4)}"
        try:
            os.rename(old.path, trash)
        except OSError as exc:
            log.warning("cannot prune snapshot %s: %s", old.path, exc)
            continue
        shutil.rmtree(trash, ignore_errors=True)
        log.info("pruned River snapshot %s", old.path)


def publish_snapshot(
    repository: str | Path,
    name: str,
    model: Any,
    *,
    features: Sequence[str],
    kind: str,
    key: bytes | None = None,
    metadata: Mapping[str, Any] | None = None,
    keep: int = 5,
) -> str:
    """Write ``model`` as a new version of ``name`` in ``repository``; return the version.

    ``features`` are the keys of the model's input dicts, in the order of the served
    input's columns; ``kind`` names the learner (for people and dashboards). ``key`` signs
    the pickle (HMAC-SHA256); ``metadata`` (examples seen, metrics, ...) is merged into the
    manifest and must be JSON-serialisable. Afterwards only the newest ``keep`` snapshot
    versions remain. Raises ``ValueError`` for bad arguments; ``OSError`` from the disk.
    """
    names = _check_features(features)
    if not callable(getattr(model, "predict_proba_one", None)):
        # Refused here rather than by every server that would load it.
        raise ValueError(f"{type(model).__name__} has no predict_proba_one: only River classifiers can be served")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    extra = dict(metadata or {})
    clash = sorted(_RESERVED.intersection(extra))
    if clash:
        raise ValueError(f"metadata may not set manifest field(s) {', '.join(clash)}")
    check_model_name(name)
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)

    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    manifest = {
        "format": SNAPSHOT_FORMAT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "hmac_sha256": hmac.new(key, blob, hashlib.sha256).hexdigest() if key is not None else None,
        "river_version": river_version(),
        "python_version": platform.python_version(),
        "kind": kind,
        "features": names,
        "output": OUTPUT_NAME,
        "created_ms": int(time.time() * 1000),
        **extra,
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()

    # Bindings first: a config.yaml appearing after the version would reload it at once.
    _write_bindings(model_dir, names)
    version = publish_version(
        model_dir,
        {SNAPSHOT_FILENAME: blob, MANIFEST_FILENAME: manifest_bytes},
        write=lambda path, data: _write_synced(path, data),
    )
    log.info("published River snapshot %s/%s (%s, %d bytes)", model_dir, version, kind, len(blob))
    _prune(model_dir, keep)
    return version


def load_snapshot(version_dir: str | Path, key: bytes | None = None) -> RiverSnapshot:
    """Verify and unpickle the snapshot in ``version_dir`` (see the trust model above).

    Checks, in order, before unpickling: the manifest's format and features, the River
    ``major.minor``, the pickle's sha256 and, when ``key`` is given, its HMAC (an unsigned
    snapshot is refused then). Every refusal raises ``ValueError`` naming the path and why.
    """
    path = Path(version_dir)

    def refuse(reason: str) -> ValueError:
        return ValueError(f"{path}: refusing River snapshot: {reason}")

    try:
        manifest = json.loads((path / MANIFEST_FILENAME).read_bytes())
    except (OSError, ValueError) as exc:
        raise refuse(f"cannot read {MANIFEST_FILENAME}: {' '.join(str(exc).split())}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise refuse(f"manifest format is {found!r}, expected {SNAPSHOT_FORMAT!r}")
    features = manifest.get("features")
    try:
        _check_features(features if isinstance(features, list) else [])
    except ValueError as exc:
        raise refuse(f"manifest {exc}") from None
    written, installed = str(manifest.get("river_version")), river_version()
    if _major_minor(written) != _major_minor(installed):
        raise refuse(f"written by river {written}, this process has river {installed} (major.minor must match)")
    try:
        blob = (path / SNAPSHOT_FILENAME).read_bytes()
    except OSError as exc:
        raise refuse(f"cannot read {SNAPSHOT_FILENAME}: {exc}") from exc
    # Not a secret: a plain comparison is fine here (the HMAC below is compared in constant time).
    if hashlib.sha256(blob).hexdigest() != manifest.get("sha256"):
        raise refuse(f"sha256 of {SNAPSHOT_FILENAME} does not match the manifest (truncated or modified)")
    if key is not None:
        signature = manifest.get("hmac_sha256")
        if not isinstance(signature, str):
            raise refuse("unsigned (no hmac_sha256) and a snapshot key is configured")
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a refusal).
        if not hmac.compare_digest(hmac.new(key, blob, hashlib.sha256).hexdigest().encode(), signature.encode()):
            raise refuse("hmac_sha256 does not match (signed with another key, or the pickle was replaced)")
    try:
        model = pickle.loads(blob)
    except Exception as exc:
        raise refuse(f"cannot unpickle {SNAPSHOT_FILENAME}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(model, "predict_proba_one", None)):
        raise refuse(f"{type(model).__name__} has no predict_proba_one (not a River classifier)")
    return RiverSnapshot(model, manifest, path)
