"""The Kafka batch source's bookkeeping, against a stand-in for the client (no broker needed)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import pytest

import operators.sources as sources
from operators.sources import RawBatch


@dataclass
class _Msg:
    _offset: int
    _value: bytes | None = b"{}"
    _error: Any = None

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def error(self) -> Any:
        return self._error


@dataclass
class _Position:
    offset: int


class _Client:
    """Hands out scripted polls; the high watermark and position are what a client reports."""

    def __init__(self, polls: list[list[_Msg]], high: int, position: int) -> None:
        self.polls, self.high, self.pos = polls, high, position

    def assign(self, _: Any) -> None: ...

    def consume(self, *_: Any) -> list[_Msg]:
        return self.polls.pop(0) if self.polls else []

    def get_watermark_offsets(self, *_: Any, **__: Any) -> tuple[int, int]:
        return 0, self.high

    def position(self, _: Any) -> list[_Position]:
        return [_Position(self.pos)]

    def close(self) -> None: ...


def _partition(monkeypatch: pytest.MonkeyPatch, client: _Client) -> Any:
    monkeypatch.setattr(sources, "Consumer", lambda config: client)
    return sources._KafkaPartition({}, "t", 0, sources.OFFSET_BEGINNING, 100, None, bounded=True)


def _drain(part: Any, limit: int = 20) -> list[int]:
    got: list[int] = []
    for _ in range(limit):
        try:
            for batch in part.next_batch():
                got += batch.offsets
        except StopIteration:
            return got
    raise AssertionError(f"the bounded source never ended (read {got})")


def test_a_bounded_read_ends_when_the_offset_before_the_end_never_arrives(monkeypatch) -> None:
    # High watermark 9, but offset 8 is a compacted gap: 9 and 10 arrive, past the end.
    client = _Client([[_Msg(i) for i in range(8)], [_Msg(9), _Msg(10)]], high=9, position=11)
    assert _drain(_partition(monkeypatch, client)) == list(range(8))


def test_a_bounded_read_ends_when_the_last_record_is_a_transaction_marker(monkeypatch) -> None:
    # Offsets 0..4 are data, 5 is a commit marker the client never hands out; its position moves on.
    client = _Client([[_Msg(i) for i in range(5)]], high=6, position=6)
    assert _drain(_partition(monkeypatch, client)) == list(range(5))


def test_error_entries_are_skipped_logged_and_batches_are_columns(monkeypatch, caplog) -> None:
    errors = [_Msg(-1, None, "broker down"), _Msg(-1, None, "broker down")]
    client = _Client([[_Msg(0), *errors, _Msg(1, b'{"a":1}')]], high=2, position=2)
    part = _partition(monkeypatch, client)
    with caplog.at_level("WARNING", logger="operators.sources"):
        (batch,) = part.next_batch()
    assert [r.getMessage() for r in caplog.records] == ["t[0]: consumer transient error: broker down"]
    assert (batch.offsets, batch.values, batch.headers) == ([0, 1], [b"{}", b'{"a":1}'], [None, None])
    assert batch.messages == [(0, b"{}", None), (1, b'{"a":1}', None)]


def test_a_batch_pickles_packed_and_comes_back_equal() -> None:
    import pickle

    batches = [
        RawBatch("t", 1, list(range(100, 300)), [b"x" * (i % 7) for i in range(200)], [None] * 200, 42),
        RawBatch("t", 2, [5, 6], [b"a", b"b"], [[("content-type", b"application/json")], None], 0),
        RawBatch("t", 3, [5, 6], [None, b"b"], [None, None], 1),  # a tombstone: sent as it is
        RawBatch("t", 4, [], [], [], 0),
    ]
    for batch in batches:
        assert pickle.loads(pickle.dumps(batch)) == batch
    from engine.features._kernels import unpack_bytes

    with pytest.raises(ValueError):
        unpack_bytes(b"ab", array("q", [3]).tobytes())
