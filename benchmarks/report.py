"""Helpers shared by the benchmarks: machine description, result files, README tables.

Each benchmark writes ``benchmarks/results/<name>.json`` and a markdown table into the
repository README between ``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``.

>>> text = "intro\\n<!-- bench:x:start -->\\nold\\n<!-- bench:x:end -->\\nrest\\n"
>>> replace_between_markers(text, "x", "| a |")
'intro\\n<!-- bench:x:start -->\\n| a |\\n<!-- bench:x:end -->\\nrest\\n'
>>> replace_between_markers("no markers", "x", "| a |") is None
True
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = REPO_ROOT / "README.md"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001 - best effort
        try:
            pages = os.sysconf("SC_PHYS_PAGES")
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
        except (ValueError, OSError):
            return None


def machine_description() -> dict[str, Any]:
    """CPU model, core count, RAM, Python and OS of this machine (for result files)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
    }


def machine_line(machine: dict[str, Any] | None = None) -> str:
    """One human line describing the machine, for README tables."""
    m = machine or machine_description()
    return (
        f"{m['cpu']}, {m['usable_cores']} cores, {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}, {m['os']}"
    )


def replace_between_markers(text: str, name: str, markdown: str) -> str | None:
    """``text`` with the block between the ``name`` markers replaced (None without markers)."""
    start, end = _markers(name)
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return text[: i + len(start)] + "\n" + markdown.strip("\n") + "\n" + text[j:]


def update_readme_table(name: str, markdown: str, readme: str | os.PathLike[str] | None = None) -> bool:
    """Replace the README text between the ``bench:<name>`` markers with ``markdown``.

    Returns True when the README was updated. Without a README, or without both markers,
    the table is printed with a note and nothing is written (False).
    """
    path = Path(readme) if readme is not None else README
    start, end = _markers(name)
    if not path.is_file():
        print(f"note: {path} does not exist; README table for {name!r} not updated:\n")
        print(markdown)
        return False
    text = path.read_text()
    new = replace_between_markers(text, name, markdown)
    if new is None:
        print(f"note: {path} lacks the markers {start} / {end}; README table for {name!r} not updated:\n")
        print(markdown)
        return False
    if new != text:
        path.write_text(new)
    return True


def reprint_from_json(path: str | os.PathLike[str], name: str, table: Callable[[dict[str, Any]], str],
                      readme: bool = True) -> int:
    """``--from-json``: print the table of an earlier result file (and update the README); 0."""
    markdown = table(json.loads(Path(path).read_text()))
    print(markdown)
    if readme:
        update_readme_table(name, markdown)
    return 0


def write_result(name: str, result: dict[str, Any], directory: str | os.PathLike[str] | None = None) -> Path:
    """Write ``<directory>/<name>.json`` (default ``benchmarks/results``); return its path."""
    out_dir = Path(directory) if directory is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def fmt_rate(value: float | None) -> str:
    """``123456.7`` -> ``'123.5k'`` (events/s in tables)."""
    if value is None:
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


if __name__ == "__main__":  # pragma: no cover - manual check
    json.dump(machine_description(), sys.stdout, indent=2)
    print()


def publish(name: str, result: dict[str, Any], table: Callable[[dict[str, Any]], str],
            directory: str | os.PathLike[str] | None = None, readme: bool = True) -> Path:
    """A benchmark's last step: write ``<name>.json``, print its table, update the README block ``name``."""
    path = write_result(name, result, directory)
    markdown = table(result)
    print(markdown)
    if readme:
        update_readme_table(name, markdown)
    return path

