"""The model registry: versions with metadata, over serving's model repository.

The registry *is* the repository that ``rtml serve`` scans (Triton's layout,
:mod:`serving.repository`); a registered version is served as soon as it appears::

    ROOT/<name>/<version>/
      model.onnx              the served graph (ONNX versions)
      metadata.json           registry metadata (below); serving ignores it
      variants/int8.onnx ...  other precisions of the same export, not served
    ROOT/<name>/<version>/
      model.pkl, manifest.json  a River snapshot (engine.learning.snapshots): its manifest is
                                its metadata; the registry lists it with backend "river"

``metadata.json`` (format ``rtml-model/1``): ``name``, ``version``, ``created_ms``, ``kind``,
``parent`` ("<model>/<version>", possibly another model, or None), ``dataset_manifest``,
``metrics``, ``export`` (exporter, opset, inputs/outputs, parity), ``precision``, ``variants``
(per precision: file and measurements), ``calibrator``, ``source_run``, plus any extra keys
the caller adds. Versions are published atomically (:mod:`engine.registry.publish`).

>>> import tempfile
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> v1 = reg.register("ctr", b"onnx-bytes", {"kind": "deepfm", "metrics": {"auc": 0.71}})
>>> v2 = reg.register("ctr", b"onnx-bytes", {"kind": "deepfm", "parent": f"ctr/{v1}"})
>>> reg.list_models(), reg.versions("ctr"), reg.latest("ctr").version
(['ctr'], ['1', '2'], '2')
>>> [f"{v.name}/{v.version}" for v in reg.lineage("ctr", "2")]
['ctr/2', 'ctr/1']
>>> reg.get("ctr", "1").metadata["metrics"], reg.get("ctr", "2").backend
({'auc': 0.71}, 'onnx')
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.registry.publish import FileContent, check_model_name, publish_version
from serving.repository import (
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    is_version_name,
    version_backend,
    version_key,
)

METADATA_FILENAME = "metadata.json"
METADATA_FORMAT = "rtml-model/1"
# Keys register() owns; callers' metadata may not set them.
_RESERVED = frozenset({"format", "name", "version"})


def parse_ref(ref: str) -> tuple[str, str]:
    """``"model/version"`` -> ``(model, version)``; raises ``ValueError`` otherwise.

    >>> parse_ref("ctr/3")
    ('ctr', '3')
    """
    name, sep, version = str(ref).rpartition("/")
    if not sep or not name or not is_version_name(version):
        raise ValueError(f"a model version reference is '<model>/<version>' (version a positive integer), got {ref!r}")
    return name, version


@dataclass(frozen=True)
class VersionInfo:
    """One version: where it is, what serves it, its metadata and its files (relative paths)."""

    name: str
    version: str
    path: Path
    backend: str | None  # "onnx" | "river" | None (no model file: incomplete or foreign)
    metadata: dict[str, Any]
    files: tuple[str, ...]

    @property
    def ref(self) -> str:
        """``"<name>/<version>"``, as ``parent`` references are written."""
        return f"{self.name}/{self.version}"

    @property
    def parent(self) -> str | None:
        parent = self.metadata.get("parent")
        return str(parent) if parent else None

    @property
    def created_ms(self) -> int | None:
        value = self.metadata.get("created_ms")
        return int(value) if isinstance(value, (int, float)) else None

    def summary(self) -> dict[str, Any]:
        """One line's worth: for ``rtml registry list``."""
        m = self.metadata
        return {
            "model": self.name,
            "version": self.version,
            "backend": self.backend,
            "kind": m.get("kind"),
            "precision": m.get("precision"),
            "created_ms": self.created_ms,
            "parent": self.parent,
            "metrics": {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class ModelRegistry:
    """Versions of models under ``root`` (the serving model repository)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- writing ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: bytes | str | Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        extra_files: Mapping[str, FileContent] | None = None,
    ) -> str:
        """Publish ``model`` (ONNX bytes or a file) as the next version of ``name``; return it.

        ``metadata`` (JSON-serialisable) goes to ``metadata.json`` with ``format``, ``name``,
        ``version`` and, unless given, ``created_ms``; ``extra_files`` (relative name -> bytes
        or path) are written beside it. A ``parent`` must be a ``"model/version"`` reference.
        """
        check_model_name(name)
        meta = dict(metadata or {})
        clash = sorted(_RESERVED.intersection(meta))
        if clash:
            raise ValueError(f"metadata may not set {', '.join(clash)}")
        if meta.get("parent") is not None:
            parse_ref(meta["parent"])
        meta.setdefault("created_ms", int(time.time() * 1000))
        extra = dict(extra_files or {})
        reserved_files = {MODEL_FILENAME, METADATA_FILENAME, MANIFEST_FILENAME}.intersection(extra)
        if reserved_files:
            raise ValueError(f"extra_files may not replace {', '.join(sorted(reserved_files))}")
        content = Path(model) if isinstance(model, (str, Path)) else model
        json.dumps(meta)  # fail before touching the disk when not serialisable

        def files(version: str) -> dict[str, FileContent]:
            doc = {"format": METADATA_FORMAT, "name": name, "version": version, **meta}
            return {MODEL_FILENAME: content, METADATA_FILENAME: json.dumps(doc, indent=2).encode(), **extra}

        return publish_version(self.root / name, files)

    # -- reading ---------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Names of the models that have at least one version with a model file."""
        try:
            entries = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        return [n for n in entries if self.versions(n)]

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` holding a model (ONNX or River), oldest first."""
        model_dir = self.root / check_model_name(name)
        try:
            entries = [e for e in os.scandir(model_dir) if e.is_dir() and is_version_name(e.name)]
        except FileNotFoundError:
            return []
        found = [e.name for e in entries if version_backend(Path(e.path)) is not None]
        return sorted(found, key=version_key)

    def get(self, name: str, version: str) -> VersionInfo:
        """One version; raises ``KeyError`` when it does not exist (or holds no model)."""
        path = self.root / check_model_name(name) / str(version)
        backend = version_backend(path) if is_version_name(str(version)) and path.is_dir() else None
        if backend is None:
            raise KeyError(f"no model version {name}/{version} in {self.root}")
        meta_file = METADATA_FILENAME if (path / METADATA_FILENAME).is_file() else MANIFEST_FILENAME
        metadata = _read_json(path / meta_file)
        files = tuple(sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()))
        return VersionInfo(name, str(version), path, backend, metadata, files)

    def latest(self, name: str) -> VersionInfo | None:
        """The highest version of ``name``, None when it has none."""
        versions = self.versions(name)
        return self.get(name, versions[-1]) if versions else None

    def lineage(self, name: str, version: str) -> list[VersionInfo]:
        """This version, its parent, the parent's parent, ...: stops at a missing version or a cycle."""
        chain: list[VersionInfo] = []
        seen: set[str] = set()
        ref: str | None = f"{name}/{version}"
        while ref is not None and ref not in seen:
            seen.add(ref)
            try:
                info = self.get(*parse_ref(ref))
            except (KeyError, ValueError):
                if not chain:
                    raise KeyError(f"no model version {ref} in {self.root}") from None
                break  # the parent was removed (or the reference is bad): the known chain ends here
            chain.append(info)
            ref = info.parent
        return chain
