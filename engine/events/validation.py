"""Validate raw Kafka values into events, or say exactly why not.

Each ``validate_*`` function takes the raw value and headers of one Kafka
message and returns either the event (:mod:`engine.events.schemas`) or an
:class:`Invalid` with a machine-readable ``reason`` (one of :data:`REASONS`)
and a human ``detail`` naming the field and what was expected. They never
raise, whatever the input: invalid events go to the dead-letter topic
(:mod:`engine.events.dlq`), they must not take the dataflow down.

>>> now = 1_700_000_000_000
>>> validate_interaction(b'{"user_id":"u1","item_id":"i1","event_type":"click","event_time":1700000000000}',
...                      None, now, 300_000)
Interaction(user_id='u1', item_id='i1', event_type='click', event_time=1700000000000, context={}, request_id=None)
>>> validate_interaction(b'{"user_id":"u1","item_id":"i1","event_type":"clik","event_time":1700000000000}',
...                      None, now, 300_000)
Invalid(reason='bad_enum', detail="event_type: expected one of click, conversion, impression, view; got 'clik'")

Rules (the same for JSON and protobuf, which decode to the same dict):

* ids (``user_id``, ``item_id``, ``request_id``, ``category``, map keys) are
  strings of 1..256 characters;
* ``event_time`` is an ``int`` of epoch milliseconds, not before 2000-01-01 and
  not after ``now_ms + max_future_ms``. ``bool`` is not an int, and neither is
  a float, even an integral one such as ``1.7e12``: a producer that sends
  floats for timestamps loses precision past 2**53 and usually has a unit bug
  (seconds vs ms), so it is rejected as ``wrong_type`` rather than guessed at;
* ``context`` / ``attributes`` are flat maps of at most 64 scalars (str, int
  within int64, finite float, bool). ``null`` or absence means ``{}``. A value
  that is not a map is ``wrong_type``; a map holding non-scalars (lists, maps,
  null) or too many keys is ``out_of_range``;
* numbers (``label``, embedding values) are int or float, never bool, and finite;
  ints are converted to float;
* optional fields accept ``null``; required fields report ``missing_field`` when
  absent and ``wrong_type`` when ``null``;
* unknown fields are ignored (forward compatibility: producers may add fields
  before consumers know them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Sequence

import orjson

from engine.events._batch_check import interaction_columns, limits as batch_limits
from engine.events.codec import JSON_CONTENT_TYPE, DecodeError, Headers, content_type, decode, short_repr
from engine.events.columns import InteractionColumns
from engine.events.schemas import EVENT_TYPES, Interaction, ItemUpdate, Label

# ---------------------------------------------------------------- reason codes
UNDECODABLE: Final = "undecodable"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
BAD_ENUM: Final = "bad_enum"
OUT_OF_RANGE: Final = "out_of_range"
FUTURE_EVENT_TIME: Final = "future_event_time"
#: Every reason a validator can give.
REASONS: Final = (UNDECODABLE, MISSING_FIELD, WRONG_TYPE, BAD_ENUM, OUT_OF_RANGE, FUTURE_EVENT_TIME)

# ---------------------------------------------------------------- limits
MAX_ID_LEN: Final = 256
MAX_MAP_KEYS: Final = 64
MAX_EMBEDDING_DIM: Final = 4096
#: 2000-01-01T00:00:00Z in epoch ms; anything earlier is a unit bug (seconds) or a default 0.
MIN_EVENT_TIME_MS: Final = 946_684_800_000
#: Default of ``pipeline.max_future_ms``.
DEFAULT_MAX_FUTURE_MS: Final = 300_000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_ENUM_TEXT: Final = ", ".join(sorted(EVENT_TYPES))
_JSON_HEADER_VALUE: Final = JSON_CONTENT_TYPE.encode()


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message was rejected: ``reason`` is one of :data:`REASONS`.

    >>> Invalid(MISSING_FIELD, "user_id: required").reason
    'missing_field'
    """

    reason: str
    detail: str


# ---------------------------------------------------------------- slow-path diagnosis
# The validators check the happy path inline with exact-type tests; only when a
# check fails do these helpers work out which reason applies and phrase it.


def _missing_or_null(d: dict[str, Any], name: str, expected: str) -> Invalid | None:
    if name not in d:
        return Invalid(MISSING_FIELD, f"{name}: required, expected {expected}")
    if d[name] is None:
        return Invalid(WRONG_TYPE, f"{name}: expected {expected}; got null")
    return None


def _bad_id(d: dict[str, Any], name: str, required: bool = True) -> Invalid:
    if required:
        found = _missing_or_null(d, name, "a string")
        if found is not None:
            return found
    value = d.get(name)
    if not isinstance(value, str):
        return Invalid(WRONG_TYPE, f"{name}: expected a string; got {_type_and_value(value)}")
    return Invalid(OUT_OF_RANGE, f"{name}: expected 1..{MAX_ID_LEN} characters; got {len(value)}")


def _type_and_value(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {short_repr(value)}"


def _bad_event_time(d: dict[str, Any], now_ms: int, max_future_ms: int) -> Invalid:
    found = _missing_or_null(d, "event_time", "an int of epoch ms")
    if found is not None:
        return found
    value = d["event_time"]
    if value.__class__ is not int:
        hint = " (floats are not accepted, even integral ones)" if isinstance(value, float) else ""
        return Invalid(WRONG_TYPE, f"event_time: expected an int of epoch ms{hint}; got {_type_and_value(value)}")
    if value < MIN_EVENT_TIME_MS:
        return Invalid(OUT_OF_RANGE, f"event_time: expected epoch ms >= {MIN_EVENT_TIME_MS} (2000-01-01); got {value}")
    return Invalid(
        FUTURE_EVENT_TIME,
        f"event_time: expected <= now + {max_future_ms} ms = {now_ms + max_future_ms}; got {value} "
        f"({value - now_ms} ms ahead)",
    )


def _bad_number(d: dict[str, Any], name: str) -> Invalid:
    found = _missing_or_null(d, name, "a number")
    if found is not None:
        return found
    value = d[name]
    if value.__class__ is not int and value.__class__ is not float:
        return Invalid(WRONG_TYPE, f"{name}: expected a number; got {_type_and_value(value)}")
    return Invalid(OUT_OF_RANGE, f"{name}: expected a finite number; got {value!r}")


def _check_flat_map(name: str, value: Any) -> Invalid | None:
    """None when ``value`` is a valid flat scalar map, else why not."""
    if value.__class__ is not dict:
        return Invalid(WRONG_TYPE, f"{name}: expected a map of scalars; got {_type_and_value(value)}")
    if len(value) > MAX_MAP_KEYS:
        return Invalid(OUT_OF_RANGE, f"{name}: expected at most {MAX_MAP_KEYS} keys; got {len(value)}")
    for key, item in value.items():
        if key.__class__ is not str or not 0 < len(key) <= MAX_ID_LEN:
            return Invalid(OUT_OF_RANGE, f"{name}: expected keys of 1..{MAX_ID_LEN} characters; got {short_repr(key)}")
        cls = item.__class__
        if cls is str or cls is bool:
            continue
        if cls is int:
            if _INT64_MIN <= item <= _INT64_MAX:
                continue
            return Invalid(OUT_OF_RANGE, f"{name}[{key!r}]: expected an int64; got {short_repr(item)}")
        if cls is float:
            # x - x is 0.0 for every finite float and NaN for inf/NaN; cheaper than math.isfinite.
            if item - item == 0.0:
                continue
            return Invalid(OUT_OF_RANGE, f"{name}[{key!r}]: expected a finite number; got {item!r}")
        return Invalid(
            OUT_OF_RANGE,
            f"{name}[{key!r}]: expected a flat map of scalars (str, int, float, bool); got {_type_and_value(item)}",
        )
    return None


def _json_or_undeclared(headers: Headers) -> bool:
    ctype = content_type(headers)
    return ctype is None or ctype == _JSON_HEADER_VALUE


def _load(raw: Any, headers: Headers, kind: type) -> dict[str, Any] | Invalid:
    """Decode to a dict; the common case (header-less JSON object) skips the codec's dispatch."""
    if raw.__class__ is bytes and raw[:1] == b"{" and (not headers or _json_or_undeclared(headers)):
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Invalid(UNDECODABLE, f"value: expected a JSON object; {exc}")
        if d.__class__ is dict:  # always true for '{...}', kept as a guard
            return d
    try:
        return decode(raw, headers, kind)
    except DecodeError as exc:
        return Invalid(UNDECODABLE, str(exc))


def _internal(exc: BaseException) -> Invalid:
    # Reaching this is a validator bug; still never raise into the dataflow.
    return Invalid(UNDECODABLE, f"value: validator error {type(exc).__name__}: {short_repr(str(exc))}")


# ---------------------------------------------------------------- validators


def validate_interaction(
    raw: bytes,
    headers: Headers,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Interaction | Invalid:
    """An :class:`~engine.events.schemas.Interaction`, or :class:`Invalid` with the reason.

    >>> validate_interaction(b'{"user_id":"u","item_id":"i","event_type":"view","event_time":5}', None, 0, 0).reason
    'out_of_range'
    """
    try:
        d = _load(raw, headers, Interaction)
        if d.__class__ is Invalid:
            return d  # type: ignore[return-value]
        get = d.get  # type: ignore[union-attr]
        user_id = get("user_id")
        if user_id.__class__ is not str or not 0 < len(user_id) <= MAX_ID_LEN:
            return _bad_id(d, "user_id")  # type: ignore[arg-type]
        item_id = get("item_id")
        if item_id.__class__ is not str or not 0 < len(item_id) <= MAX_ID_LEN:
            return _bad_id(d, "item_id")  # type: ignore[arg-type]
        event_type = get("event_type")
        if event_type.__class__ is not str or event_type not in EVENT_TYPES:
            found = _missing_or_null(d, "event_type", "a string")  # type: ignore[arg-type]
            if found is not None:
                return found
            if not isinstance(event_type, str):
                return Invalid(WRONG_TYPE, f"event_type: expected a string; got {_type_and_value(event_type)}")
            return Invalid(BAD_ENUM, f"event_type: expected one of {_ENUM_TEXT}; got {short_repr(event_type)}")
        event_time = get("event_time")
        if event_time.__class__ is not int or not MIN_EVENT_TIME_MS <= event_time <= now_ms + max_future_ms:
            return _bad_event_time(d, now_ms, max_future_ms)  # type: ignore[arg-type]
        context = get("context")
        if context is None:
            context = {}
        elif context:
            bad = _check_flat_map("context", context)
            if bad is not None:
                return bad
        elif context.__class__ is not dict:  # falsy non-dicts: "", 0, [], false
            return _check_flat_map("context", context)  # type: ignore[return-value]
        request_id = get("request_id")
        if request_id is not None and (request_id.__class__ is not str or not 0 < len(request_id) <= MAX_ID_LEN):
            return _bad_id(d, "request_id", required=False)  # type: ignore[arg-type]
        return Interaction(user_id, item_id, event_type, event_time, context, request_id)
    except Exception as exc:
        return _internal(exc)


# Each accepted event type mapped to one interned object, stored in the batch's column.
_CANONICAL_TYPES: Final = {t: t for t in EVENT_TYPES}
# The compiled check hard-codes the limits (it runs per field of every event): same values.
if batch_limits() != (MAX_ID_LEN, MAX_MAP_KEYS):
    raise ImportError("engine/events/_batch_check.c was compiled with other limits; reinstall rtml")


def validate_interaction_batch(
    raws: Sequence[Any],
    headers: Sequence[Headers],
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> InteractionColumns | None:
    """Every message of a batch as columns when all are valid JSON objects, else None.

    JSON here means no content-type header or a JSON one (other headers are ignored).

    The same rules as :func:`validate_interaction`, checked by compiled code
    (engine/events/_batch_check.c) in one pass that parses with orjson and fills the columns:
    the common case costs a parse and a few checks per event. None means some message needs
    :func:`validate_interaction` (to find which, and why).

    >>> ok = [b'{"user_id":"u","item_id":"i","event_type":"view","event_time":1700000000000}']
    >>> validate_interaction_batch(ok, [None], 1_700_000_000_000, 0).user_id
    ['u']
    >>> validate_interaction_batch(ok + [b'{"user_id":"u"}'], [None, None], 1_700_000_000_000, 0) is None
    True
    """
    if any(headers) and not all(not h or _json_or_undeclared(h) for h in headers):
        return None
    found = interaction_columns(raws if raws.__class__ is list else list(raws), orjson.loads, _CANONICAL_TYPES,
                                MIN_EVENT_TIME_MS, now_ms + max_future_ms)
    return None if found is None else InteractionColumns(*found)


def validate_label(
    raw: bytes,
    headers: Headers,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Label | Invalid:
    """A :class:`~engine.events.schemas.Label`, or :class:`Invalid` with the reason.

    >>> validate_label(b'{"request_id":"r1","label":1,"event_time":1700000000000}', None, 1_700_000_000_000, 0)
    Label(request_id='r1', label=1.0, event_time=1700000000000, user_id=None, item_id=None)
    """
    try:
        d = _load(raw, headers, Label)
        if d.__class__ is Invalid:
            return d  # type: ignore[return-value]
        get = d.get  # type: ignore[union-attr]
        request_id = get("request_id")
        if request_id.__class__ is not str or not 0 < len(request_id) <= MAX_ID_LEN:
            return _bad_id(d, "request_id")  # type: ignore[arg-type]
        label = get("label")
        cls = label.__class__
        if cls is int:
            label = float(label)
        elif cls is not float or label - label != 0.0:
            return _bad_number(d, "label")  # type: ignore[arg-type]
        event_time = get("event_time")
        if event_time.__class__ is not int or not MIN_EVENT_TIME_MS <= event_time <= now_ms + max_future_ms:
            return _bad_event_time(d, now_ms, max_future_ms)  # type: ignore[arg-type]
        user_id = get("user_id")
        if user_id is not None and (user_id.__class__ is not str or not 0 < len(user_id) <= MAX_ID_LEN):
            return _bad_id(d, "user_id", required=False)  # type: ignore[arg-type]
        item_id = get("item_id")
        if item_id is not None and (item_id.__class__ is not str or not 0 < len(item_id) <= MAX_ID_LEN):
            return _bad_id(d, "item_id", required=False)  # type: ignore[arg-type]
        return Label(request_id, label, event_time, user_id, item_id)
    except Exception as exc:
        return _internal(exc)


def _check_embedding(value: Any) -> list[float] | Invalid:
    if value.__class__ is not list:
        return Invalid(WRONG_TYPE, f"embedding: expected a list of numbers; got {_type_and_value(value)}")
    if not 0 < len(value) <= MAX_EMBEDDING_DIM:
        return Invalid(OUT_OF_RANGE, f"embedding: expected 1..{MAX_EMBEDDING_DIM} values; got {len(value)}")
    needs_cast = False
    for i, x in enumerate(value):
        cls = x.__class__
        if cls is float:
            if x - x != 0.0:
                return Invalid(OUT_OF_RANGE, f"embedding[{i}]: expected a finite number; got {x!r}")
        elif cls is int:
            needs_cast = True
        else:
            return Invalid(WRONG_TYPE, f"embedding[{i}]: expected a number; got {_type_and_value(x)}")
    if needs_cast:
        # Huge JSON ints overflow float(); report instead of raising.
        try:
            return [float(x) for x in value]
        except OverflowError:
            return Invalid(OUT_OF_RANGE, "embedding: expected finite numbers; got an int too large for a float")
    return value


def validate_item_update(
    raw: bytes,
    headers: Headers,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> ItemUpdate | Invalid:
    """An :class:`~engine.events.schemas.ItemUpdate`, or :class:`Invalid` with the reason.

    >>> validate_item_update(b'{"item_id":"i1","event_time":1700000000000,"embedding":[1, 0.5]}', None,
    ...               1_700_000_000_000, 0).embedding
    [1.0, 0.5]
    """
    try:
        d = _load(raw, headers, ItemUpdate)
        if d.__class__ is Invalid:
            return d  # type: ignore[return-value]
        get = d.get  # type: ignore[union-attr]
        item_id = get("item_id")
        if item_id.__class__ is not str or not 0 < len(item_id) <= MAX_ID_LEN:
            return _bad_id(d, "item_id")  # type: ignore[arg-type]
        event_time = get("event_time")
        if event_time.__class__ is not int or not MIN_EVENT_TIME_MS <= event_time <= now_ms + max_future_ms:
            return _bad_event_time(d, now_ms, max_future_ms)  # type: ignore[arg-type]
        category = get("category")
        if category is not None and (category.__class__ is not str or not 0 < len(category) <= MAX_ID_LEN):
            return _bad_id(d, "category", required=False)  # type: ignore[arg-type]
        embedding = get("embedding")
        if embedding is not None:
            embedding = _check_embedding(embedding)
            if embedding.__class__ is Invalid:
                return embedding  # type: ignore[return-value]
        active = get("active", True)
        if active is None:
            active = True
        elif active.__class__ is not bool:
            return Invalid(WRONG_TYPE, f"active: expected a bool; got {_type_and_value(active)}")
        attributes = get("attributes")
        if attributes is None:
            attributes = {}
        else:
            bad = _check_flat_map("attributes", attributes)
            if bad is not None:
                return bad
        return ItemUpdate(item_id, event_time, category, embedding, active, attributes)  # type: ignore[arg-type]
    except Exception as exc:
        return _internal(exc)


#: Short alias of :func:`validate_item_update`.
validate_item = validate_item_update

#: The validator for each event class, for code that dispatches on topic.
VALIDATORS: Final = {
    Interaction: validate_interaction,
    Label: validate_label,
    ItemUpdate: validate_item_update,
}
