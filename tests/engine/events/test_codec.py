"""Wire formats: JSON / protobuf round trips, header-based and sniffed format choice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.events.codec import (
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    PROTO_CONTENT_TYPE,
    DecodeError,
    decode,
    encode,
    encode_json,
    encode_proto,
    sniff_format,
    wire_format,
)
from engine.events.schemas import EventType, Interaction, ItemUpdate, Label
from engine.events.validation import (
    UNDECODABLE,
    Invalid,
    validate_interaction,
    validate_item_update,
    validate_label,
)

NOW = 1_700_000_100_000
T = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[3]

EVENTS = [
    Interaction("u1", "i1", "impression", T, {"device": "ios", "pos": 3, "score": 0.5, "new": True}, "r1"),
    Interaction("u2", "i2", EventType.CLICK, T + 1, {}, None),
    Interaction("ü-用户", "i" * 256, "view", T, {"k": -(2**63), "z": 2**63 - 1}),
    Label("r1", 1.0, T + 10_000, "u1", "i1"),
    Label("r2", 0.25, T, None, None),
    ItemUpdate("i1", T, "shoes", [0.1, -0.2, 3.0], True, {"price": 9.99, "brand": "x"}),
    ItemUpdate("i2", T, None, None, False, {}),
]
VALIDATORS = {Interaction: validate_interaction, Label: validate_label, ItemUpdate: validate_item_update}


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("wire", ["json", "proto"])
@pytest.mark.parametrize("with_header", [True, False])
def test_round_trip(event: Interaction | Label | ItemUpdate, wire: str, with_header: bool) -> None:
    value, headers = encode(event, wire)  # type: ignore[arg-type]
    got = VALIDATORS[type(event)](value, headers if with_header else None, NOW, 300_000)
    assert got == event
    assert type(got) is type(event)


def test_event_type_enum_is_stored_as_plain_string() -> None:
    ev = Interaction("u", "i", EventType.CONVERSION, T)
    assert type(ev.event_type) is str and ev.event_type == "conversion"
    assert b'"event_type":"conversion"' in encode_json(ev)


def test_to_dict_matches_json() -> None:
    import orjson

    for event in EVENTS:
        assert orjson.loads(encode_json(event)) == event.to_dict()


def test_header_selects_format_case_insensitively() -> None:
    assert wire_format(b"{}", [("Content-Type", b"application/x-protobuf")]) == "proto"
    assert wire_format(b"\x0a\x01u", [(CONTENT_TYPE_HEADER, b"application/json; charset=utf-8")]) == "json"
    assert wire_format(b"\x0a\x01u", [("other", b"x")]) == "proto"  # no content-type: sniff
    with pytest.raises(DecodeError, match="content-type: expected"):
        wire_format(b"{}", [(CONTENT_TYPE_HEADER, b"text/plain")])


def test_header_is_trusted_over_sniffing() -> None:
    ev = EVENTS[0]
    # JSON bytes declared as protobuf: parsed as protobuf, which fails -> undecodable.
    got = validate_interaction(encode_json(ev), [(CONTENT_TYPE_HEADER, PROTO_CONTENT_TYPE.encode())], NOW, 0)
    assert isinstance(got, Invalid) and got.reason == UNDECODABLE
    # Protobuf declared as JSON: undecodable, no fallback to protobuf.
    got = validate_interaction(encode_proto(ev), [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())], NOW, 0)
    assert isinstance(got, Invalid) and got.reason == UNDECODABLE


def test_sniffing() -> None:
    assert sniff_format(b' \n\t{"a":1}') == "json"
    assert sniff_format(b"{") == "json"
    assert sniff_format(encode_proto(EVENTS[0])) == "proto"
    assert validate_label(b'  \r\n {"request_id":"r","label":0,"event_time":%d}' % T, None, NOW, 0) == Label(
        "r", 0.0, T
    )


def test_protobuf_led_by_whitespace_bytes_falls_back_to_protobuf() -> None:
    # Field 1 (user_id) has tag 0x0a = '\n'; a 123-character id has length byte 0x7b = '{',
    # so the message "looks like" whitespace + '{'. It must still decode as protobuf.
    ev = Interaction("u" * 123, "i1", "click", T, {"a": 1})
    raw = encode_proto(ev)
    assert raw[:2] == b"\x0a{"
    assert validate_interaction(raw, None, NOW, 0) == ev


def test_protobuf_absent_fields_are_missing_not_defaults() -> None:
    from proto.rtml.v1 import events_pb2 as pb

    raw = pb.Interaction(item_id="i", event_type="click", event_time=T).SerializeToString()
    assert decode(raw, None, Interaction) == {"item_id": "i", "event_type": "click", "event_time": T}
    got = validate_interaction(raw, None, NOW, 0)
    assert isinstance(got, Invalid) and got.reason == "missing_field" and got.detail.startswith("user_id")


def test_empty_and_unknown_protobuf_is_undecodable() -> None:
    for raw in (b"", b"\xf8\x07\x01"):  # empty; only an unknown field 127
        with pytest.raises(DecodeError):
            decode(raw, None, Label)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = encode_json(EVENTS[3])
    assert validate_label(bytearray(raw), None, NOW, 0) == EVENTS[3]
    assert validate_label(memoryview(raw), None, NOW, 0) == EVENTS[3]


def test_encode_rejects_unknown_wire() -> None:
    with pytest.raises(ValueError):
        encode(EVENTS[0], "xml")  # type: ignore[arg-type]


def test_generated_module_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    out = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}", "proto/rtml/v1/events.proto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    fresh = (tmp_path / "proto/rtml/v1/events_pb2.py").read_text()
    committed = (ROOT / "proto/rtml/v1/events_pb2.py").read_text()
    assert fresh == committed, "regenerate: python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/rtml/v1/events.proto"
