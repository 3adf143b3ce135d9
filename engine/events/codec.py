"""Wire formats of input events: JSON (default) and protobuf.

JSON objects are encoded with orjson; protobuf uses ``proto/rtml/v1/events.proto``
(package ``rtml.v1``). A producer says which one it used with the Kafka header
``content-type`` (:data:`CONTENT_TYPE_HEADER`) set to ``application/json`` or
``application/x-protobuf``; without the header the decoder sniffs: a JSON object
starts with optional whitespace then ``{``, anything else is tried as protobuf.

Decoding yields a plain ``dict`` of the fields that were present, the same
for both formats, which :mod:`engine.events.validation` then checks and turns
into :mod:`engine.events.schemas` objects.

>>> from engine.events.schemas import Interaction
>>> ev = Interaction("u1", "i2", "click", 1_700_000_000_000, {"pos": 3})
>>> raw = encode_json(ev)
>>> raw
b'{"user_id":"u1","item_id":"i2","event_type":"click","event_time":1700000000000,"context":{"pos":3},"request_id":null}'
>>> decode(raw, None, Interaction)["context"]
{'pos': 3}
>>> pb = encode_proto(ev)
>>> decode(pb, [(CONTENT_TYPE_HEADER, PROTO_CONTENT_TYPE.encode())], Interaction)["event_type"]
'click'
>>> decode(pb, None, Interaction)  # sniffed; protobuf omits the absent request_id
{'user_id': 'u1', 'item_id': 'i2', 'event_type': 'click', 'event_time': 1700000000000, 'context': {'pos': 3}}

Regenerating the protobuf module
--------------------------------
``proto/rtml/v1/events_pb2.py`` (and ``.pyi``) are generated and committed. After
editing ``proto/rtml/v1/events.proto`` run, from the repository root::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/rtml/v1/events.proto

(``grpcio-tools`` is in the ``dev`` extra). ``-I.`` matters: it makes the module
importable as ``proto.rtml.v1.events_pb2``. ``tests/engine/events/test_codec.py``
fails when the committed module is stale.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, TypeAlias

import orjson
from google.protobuf.message import Message

from engine.events.schemas import Event, Interaction, ItemUpdate, Label, Scalar
from proto.rtml.v1 import events_pb2 as pb

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
PROTO_CONTENT_TYPE = "application/x-protobuf"

#: The wire formats by short name, as the producer and CLI spell them.
WireFormat: TypeAlias = Literal["json", "proto"]
#: Kafka headers as confluent-kafka hands them over (values may be None).
Headers: TypeAlias = list[tuple[str, bytes | None]] | None
#: An event class used to pick the protobuf message when decoding.
EventKind: TypeAlias = type[Interaction] | type[Label] | type[ItemUpdate]

# Header values we accept, after dropping parameters (";charset=...") and lowercasing.
_JSON_TYPES = frozenset({b"application/json", b"text/json"})
_PROTO_TYPES = frozenset({b"application/x-protobuf", b"application/protobuf", b"application/vnd.google.protobuf"})
_HEADER_VALUES: dict[str, list[tuple[str, bytes]]] = {
    "json": [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())],
    "proto": [(CONTENT_TYPE_HEADER, PROTO_CONTENT_TYPE.encode())],
}
# JSON insignificant whitespace (RFC 8259), the only bytes allowed before '{'.
_JSON_WS = b" \t\n\r"
_REPR_MAX = 60


class DecodeError(ValueError):
    """The bytes are neither a JSON object nor a protobuf event message."""


def short_repr(value: Any, limit: int = _REPR_MAX) -> str:
    """``repr`` cut to ``limit`` characters, for error details that end up in Kafka headers.

    >>> short_repr("x" * 100, 10)
    "'xxxxxx..."
    """
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not break error reporting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- encoding


def encode_json(event: Event) -> bytes:
    """The JSON bytes of an event (all fields, absent optionals as ``null``).

    orjson serialises slotted dataclasses natively, which is several times faster
    than going through ``to_dict()``; numpy scalars/arrays are accepted too.

    >>> encode_json(Label("r1", 1.0, 1_700_000_000_000))
    b'{"request_id":"r1","label":1.0,"event_time":1700000000000,"user_id":null,"item_id":null}'
    """
    return orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


def _set_scalar_map(target: Any, values: dict[str, Scalar]) -> None:
    for key, value in values.items():
        cv = target[key]
        # bool before int: bool is a subclass of int.
        if isinstance(value, bool):
            cv.bool_value = value
        elif isinstance(value, int):
            cv.int_value = value
        elif isinstance(value, float):
            cv.double_value = value
        elif isinstance(value, str):
            cv.string_value = value
        else:
            raise TypeError(f"{key}: expected str, int, float or bool; got {short_repr(value)}")


def to_proto(event: Event) -> Message:
    """The ``rtml.v1`` protobuf message of an event.

    >>> to_proto(Label("r1", 1.0, 1_700_000_000_000)).label
    1.0
    """
    if isinstance(event, Interaction):
        m = pb.Interaction(
            user_id=event.user_id,
            item_id=event.item_id,
            event_type=str(event.event_type),
            event_time=event.event_time,
        )
        if event.request_id is not None:
            m.request_id = event.request_id
        _set_scalar_map(m.context, event.context)
        return m
    if isinstance(event, Label):
        m = pb.Label(request_id=event.request_id, label=float(event.label), event_time=event.event_time)
        if event.user_id is not None:
            m.user_id = event.user_id
        if event.item_id is not None:
            m.item_id = event.item_id
        return m
    if isinstance(event, ItemUpdate):
        m = pb.ItemUpdate(item_id=event.item_id, event_time=event.event_time, active=bool(event.active))
        if event.category is not None:
            m.category = event.category
        if event.embedding is not None:
            m.embedding.SetInParent()  # presence even for an empty vector
            m.embedding.values.extend(float(x) for x in event.embedding)
        _set_scalar_map(m.attributes, event.attributes)
        return m
    raise TypeError(f"not an event: {short_repr(event)}")


def encode_proto(event: Event) -> bytes:
    """The protobuf bytes of an event.

    >>> len(encode_proto(Label("r1", 1.0, 1_700_000_000_000))) > 0
    True
    """
    return to_proto(event).SerializeToString()


def encode(event: Event, wire: WireFormat = "json") -> tuple[bytes, list[tuple[str, bytes]]]:
    """Value bytes and the ``content-type`` header for ``wire``.

    >>> encode(Label("r1", 0.0, 1_700_000_000_000), "proto")[1]
    [('content-type', b'application/x-protobuf')]
    """
    if wire == "json":
        return encode_json(event), list(_HEADER_VALUES["json"])
    if wire == "proto":
        return encode_proto(event), list(_HEADER_VALUES["proto"])
    raise ValueError(f"wire: expected 'json' or 'proto'; got {short_repr(wire)}")


# --------------------------------------------------------------------------- format choice


def content_type(headers: Headers) -> bytes | None:
    """The raw ``content-type`` header value, or None when absent.

    Header names are matched case-insensitively: Kafka itself does not
    normalise them and producers in other languages write ``Content-Type``.
    """
    if not headers:
        return None
    for key, value in headers:
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if key == CONTENT_TYPE_HEADER or (isinstance(key, str) and key.lower() == CONTENT_TYPE_HEADER):
            if isinstance(value, str):
                return value.encode("utf-8", "replace")
            return value if isinstance(value, bytes) else b""
    return None


def sniff_format(raw: bytes) -> WireFormat:
    """``"json"`` when ``raw`` looks like a JSON object (optional whitespace, then ``{``).

    >>> sniff_format(b'  {"a": 1}'), sniff_format(b"\\x0a\\x02u1")
    ('json', 'proto')
    """
    return "json" if raw.lstrip(_JSON_WS)[:1] == b"{" else "proto"


def wire_format(raw: bytes, headers: Headers) -> WireFormat:
    """The wire format: from the ``content-type`` header if present, else sniffed.

    An unknown content type raises :class:`DecodeError` rather than guessing: the
    producer told us it speaks something else.

    >>> wire_format(b"{}", [("Content-Type", b"application/x-protobuf")])
    'proto'
    """
    ctype = content_type(headers)
    if ctype is None:
        return sniff_format(raw)
    base = ctype.split(b";", 1)[0].strip().lower()
    if base in _JSON_TYPES:
        return "json"
    if base in _PROTO_TYPES:
        return "proto"
    raise DecodeError(
        f"{CONTENT_TYPE_HEADER}: expected {JSON_CONTENT_TYPE} or {PROTO_CONTENT_TYPE}; got {short_repr(ctype)}"
    )


# --------------------------------------------------------------------------- decoding


def decode_json(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object; anything else (bad JSON, array, number...) raises :class:`DecodeError`.

    >>> decode_json(b'{"a": [1]}')
    {'a': [1]}
    """
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise DecodeError(f"value: expected a JSON object; {exc}") from None
    if obj.__class__ is not dict:
        raise DecodeError(f"value: expected a JSON object; got {type(obj).__name__} {short_repr(obj)}")
    return obj


def _scalar_map(entries: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, cv in entries.items():
        which = cv.WhichOneof("kind")
        # An empty ContextValue becomes None, which the validator rejects like a JSON null.
        out[key] = None if which is None else getattr(cv, which)
    return out


def _interaction_fields(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name in ("user_id", "item_id", "event_type", "event_time", "request_id"):
        if m.HasField(name):
            d[name] = getattr(m, name)
    if m.context:
        d["context"] = _scalar_map(m.context)
    return d


def _label_fields(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name in ("request_id", "label", "event_time", "user_id", "item_id"):
        if m.HasField(name):
            d[name] = getattr(m, name)
    return d


def _item_fields(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name in ("item_id", "event_time", "category", "active"):
        if m.HasField(name):
            d[name] = getattr(m, name)
    if m.HasField("embedding"):
        d["embedding"] = list(m.embedding.values)
    if m.attributes:
        d["attributes"] = _scalar_map(m.attributes)
    return d


_PROTO: dict[type, tuple[type[Message], Callable[[Any], dict[str, Any]]]] = {
    Interaction: (pb.Interaction, _interaction_fields),
    Label: (pb.Label, _label_fields),
    ItemUpdate: (pb.ItemUpdate, _item_fields),
}


def decode_proto(raw: bytes, kind: EventKind) -> dict[str, Any]:
    """Parse the ``rtml.v1`` message for ``kind`` into a dict of the fields present.

    Protobuf is permissive (unknown fields are skipped, b"" is a valid empty
    message), so a message with none of the known fields set is treated as
    undecodable rather than as an event with every field missing.

    >>> decode_proto(encode_proto(Label("r1", 1.0, 1_700_000_000_000)), Label)
    {'request_id': 'r1', 'label': 1.0, 'event_time': 1700000000000}
    """
    try:
        message_cls, to_fields = _PROTO[kind]
    except (KeyError, TypeError):
        raise TypeError(f"kind: expected Interaction, Label or ItemUpdate; got {short_repr(kind)}") from None
    message = message_cls()
    try:
        message.ParseFromString(raw)
    except Exception as exc:  # upb raises DecodeError; odd inputs may raise TypeError
        raise DecodeError(f"value: not JSON and not a protobuf {message_cls.DESCRIPTOR.full_name} ({exc})") from None
    fields = to_fields(message)
    if not fields:
        raise DecodeError(f"value: not JSON and no known {message_cls.DESCRIPTOR.full_name} field in protobuf")
    return fields


def decode(raw: bytes, headers: Headers, kind: EventKind) -> dict[str, Any]:
    """Decode one Kafka value to a dict of fields; raises :class:`DecodeError` on failure.

    The ``content-type`` header wins; without it a value starting (after
    whitespace) with ``{`` is JSON. Because the protobuf tag of field 1 (``0x0a``)
    is also JSON whitespace, a whitespace-led value that fails as JSON is retried
    as protobuf before giving up.

    >>> decode(b'[1, 2]', None, Label)
    Traceback (most recent call last):
    ...
    engine.events.codec.DecodeError: value: expected a JSON object; got list [1, 2]
    """
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    elif not isinstance(raw, bytes):
        raise DecodeError(f"value: expected bytes; got {type(raw).__name__} {short_repr(raw)}")
    if not raw:
        raise DecodeError("value: expected a JSON object or protobuf message; got empty bytes")
    declared = content_type(headers) is not None
    fmt = wire_format(raw, headers)
    if fmt == "proto":
        try:
            return decode_proto(raw, kind)
        except DecodeError as proto_error:
            if declared:
                raise
            # Sniffed as "not an object": if it is some other JSON value, say so.
            try:
                obj = orjson.loads(raw)
            except Exception:
                raise proto_error from None
            raise DecodeError(
                f"value: expected a JSON object; got {type(obj).__name__} {short_repr(obj)}"
            ) from None
    try:
        return decode_json(raw)
    except DecodeError as json_error:
        if declared or raw[:1] == b"{":
            raise
        try:
            return decode_proto(raw, kind)
        except DecodeError:
            raise json_error from None
