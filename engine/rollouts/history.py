"""The rollout history of one model: ``ROOT/<model>/rollouts.jsonl``, one change a line.

Every routing change made by ``rtml rollout`` (or the Python functions in
:mod:`engine.rollouts.routing`) is appended here with the routing before and after it, so
that a rollback can restore the previous routing and an operator can see who changed what,
when and why. A line looks like::

    {"seq": 3, "time_ms": 1767225661000, "model": "ranker", "action": "canary", "version": "3",
     "before": {"primary": "2"}, "after": {"primary": "2", "canary": {"version": "3", ...}},
     "reason": "retrained on last week", "actor": "ana@host", "summary": "...", "undoes": null}

``before`` / ``after`` are the ``routing`` mapping of ``config.yaml`` (``null``: no routing).
``undoes`` is set on a plain ``rollback`` (it names the ``seq`` it reverted).

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "rollouts.jsonl"
>>> first = RolloutChange(1, 1000, "m", "shadow", "2", None, {"primary": "1", "shadow": {"version": "2"}})
>>> append_change(path, first)
>>> second = RolloutChange(2, 2000, "m", "rollback", None, first.after, None, undoes=1)
>>> append_change(path, second)
>>> [c.seq for c in read_history(path)], last_undoable(read_history(path))
([1, 2], None)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

HISTORY_FILENAME = "rollouts.jsonl"

RoutingDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """One routing change of a model, as logged in ``rollouts.jsonl``."""

    seq: int
    time_ms: int
    model: str
    action: str  # shadow, canary, ab, promote, pin, rollback
    version: str | None
    before: RoutingDict | None
    after: RoutingDict | None
    reason: str = ""
    actor: str = ""
    summary: str = ""
    undoes: int | None = None  # a plain rollback: the seq it reverted

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RolloutChange":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})


def read_history(path: Path) -> list[RolloutChange]:
    """Every change in the file, oldest first; ``[]`` when there is none.

    A line that cannot be read (a torn write after a crash) is skipped: the history is an
    audit trail, and one bad line must not block a rollback.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[RolloutChange] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(RolloutChange.from_dict(orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError):
            continue
    return out


def append_change(path: Path, change: RolloutChange) -> None:
    """Append one change and fsync, so that the record of a routing change survives a crash."""
    with open(path, "ab") as f:
        f.write(change.to_json() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def last_undoable(history: list[RolloutChange]) -> RolloutChange | None:
    """The newest change a plain rollback reverts: not itself a rollback that undid something,
    and not undone yet. Repeated rollbacks therefore walk back through the history."""
    undone = {c.undoes for c in history if c.undoes is not None}
    for change in reversed(history):
        if change.undoes is None and change.seq not in undone:
            return change
    return None
