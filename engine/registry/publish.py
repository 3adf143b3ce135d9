"""Atomic publishing of a version directory in the model repository (one implementation).

Every writer of the serving repository (River snapshots, exported ONNX models) publishes a
version the same way, so that the server's scanner sees either no version or a complete one:

1. files are written under ``ROOT/<name>/.tmp-<version>-<random>`` (the scanner ignores
   dot-directories), each one fsynced, then the directory itself;
2. the directory is renamed to ``ROOT/<name>/<version>``, where version = highest existing
   version directory + 1 (atomic on one file system); when another writer took that number
   meanwhile, the next free one is taken (version-dependent files are rendered again);
3. ``ROOT/<name>`` is fsynced so that the rename survives a crash.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> publish_version(root / "ctr", {"model.onnx": b"x", "sub/notes.txt": b"y"})
'1'
>>> publish_version(root / "ctr", lambda v: {"model.onnx": f"v{v}".encode()})
'2'
>>> (root / "ctr" / "2" / "model.onnx").read_text(), sorted(p.name for p in (root / "ctr").iterdir())
('v2', ['1', '2'])
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Mapping, Union

from serving.repository import is_version_name, version_key

# A file's content: bytes, or the path of a file to copy.
FileContent = Union[bytes, Path]
Files = Mapping[str, FileContent]


def check_model_name(name: str) -> str:
    """Return ``name`` if it can be a model directory, else raise ``ValueError``.

    >>> check_model_name("ctr")
    'ctr'
    >>> check_model_name(".hidden")
    Traceback (most recent call last):
    ...
    ValueError: invalid model name '.hidden': one directory name, not starting with '.'
    """
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        # The scanner ignores dot-directories; a separator would write outside ROOT/<name>.
        raise ValueError(f"invalid model name {name!r}: one directory name, not starting with '.'")
    return name


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that entries created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: FileContent) -> None:
    """Create ``path`` (it must not exist) with ``data`` (bytes, or a file to copy) and fsync it."""
    with open(path, "xb") as f:
        if isinstance(data, Path):
            with open(data, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def next_version(model_dir: Path) -> int:
    """Highest version-named directory in ``model_dir`` + 1 (1 for none)."""
    # Every version-named directory counts, with or without its model files yet: one being
    # copied in by hand must not be overwritten.
    versions = [version_key(e.name) for e in os.scandir(model_dir) if e.is_dir() and is_version_name(e.name)]
    return max(versions, default=0) + 1


Writer = Callable[[Path, FileContent], None]


def _write_files(directory: Path, files: Files, write: Writer) -> None:
    subdirs: set[Path] = set()
    for rel, data in files.items():
        target = directory / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"file name {rel!r} must be relative and stay inside the version directory")
        if target.parent != directory:
            target.parent.mkdir(parents=True, exist_ok=True)
            subdirs.add(target.parent)
        write(target, data)
    for sub in sorted(subdirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(sub)
    fsync_dir(directory)


def publish_version(
    model_dir: str | Path,
    files: Files | Callable[[str], Files],
    *,
    write: Writer = write_synced,
) -> str:
    """Publish ``files`` (relative name -> bytes or source path) as the next version of ``model_dir``.

    ``files`` may be a function of the version string, for files that record their own
    version: it is called again if a concurrent writer took the number first. ``write``
    creates one file (default :func:`write_synced`, which fsyncs it). Creates
    ``model_dir`` when missing. Returns the version. Raises ``OSError`` from the disk and
    ``ValueError`` for a file name that leaves the version directory.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    tmp = model_dir / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_files(tmp, files(str(version)) if callable(files) else files, write)
        while True:
            try:
                os.rename(tmp, model_dir / str(version))
                break
            except OSError as exc:
                # Another writer took this version number meanwhile: take the next one.
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                version = next_version(model_dir)
                if callable(files):
                    shutil.rmtree(tmp)
                    tmp.mkdir()
                    _write_files(tmp, files(str(version)), write)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(model_dir)
    return str(version)
