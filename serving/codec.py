"""KServe v2 tensor codec: ``ModelInferRequest`` inputs -> numpy, numpy -> ``ModelInferResponse``.

Decoding takes either layout the protocol allows:

* ``raw_input_contents`` -- one bytes entry per input, flattened row-major little-endian
  elements; BYTES elements each carry a 4-byte little-endian length prefix. Fixed-size types
  are wrapped with :func:`numpy.frombuffer` (no copy, no per-element Python work): this is the
  layout tritonclient sends and the one that is fast.
* typed ``contents`` (``fp32_contents``, ``int_contents``, ...) -- accepted for completeness;
  it costs a Python-level conversion per element, 5-250x the raw path (FIELD-NOTES). FP16 has
  no typed field and must come raw, as the spec says.

Outputs are always encoded as ``raw_output_contents`` because tritonclient's ``as_numpy()``
reads only that field, and raw bytes are the cheapest thing to build.

Every malformed input raises :class:`~serving.errors.InvalidInput` with a message that names
the input and says what was expected, so the client can fix its request.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from serving.errors import InvalidInput
from serving.tensors import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, TensorSpec

__all__ = [
    "decode_inputs",
    "decode_tensor",
    "encode_outputs",
    "encode_raw",
    "datatype_of",
    "split_bytes",
    "join_bytes",
    "bytes_to_text",
]

# Little-endian wire dtypes for the fixed-size datatypes. On a little-endian host these are
# the native dtypes, so frombuffer results go to ONNX Runtime as they are.
_WIRE_DTYPE: dict[str, np.dtype] = {
    dt: np.dtype(npdt).newbyteorder("<")
    for dt, npdt in DATATYPE_TO_NUMPY.items()
    if dt != "BYTES"
}
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"

# Typed-contents field for each datatype, and the numpy type protobuf's repeated field holds.
# INT8/INT16 travel in int_contents (int32) and UINT8/16 in uint_contents (uint32): narrowed
# after a range check.
_TYPED_FIELD: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}

_U32 = struct.Struct("<I")


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _element_count(name: str, shape: Sequence[int]) -> int:
    for d in shape:
        if d < 0:
            raise InvalidInput(
                f"input '{name}': shape {_fmt_shape(shape)} has a negative dimension; "
                "requests must give concrete sizes"
            )
    return math.prod(shape)


def split_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Split length-prefixed BYTES elements into a 1-D object array of ``bytes``.

    One Python step per element is unavoidable here: elements have varying lengths.
    """
    out = np.empty(count, dtype=np.object_)
    size = len(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > size:
            raise InvalidInput(
                f"input '{name}': raw BYTES contents end after {i} of {count} elements "
                "(each element needs a 4-byte little-endian length prefix)"
            )
        (length,) = _U32.unpack_from(raw, offset)
        offset += 4
        end = offset + length
        if end > size:
            raise InvalidInput(
                f"input '{name}': raw BYTES element {i} declares {length} bytes but only "
                f"{size - offset} remain"
            )
        out[i] = raw[offset:end]
        offset = end
    if offset != size:
        raise InvalidInput(
            f"input '{name}': raw BYTES contents have {size - offset} trailing bytes after "
            f"{count} elements"
        )
    return out


def join_bytes(values: Iterable[Any]) -> bytes:
    """Encode elements as length-prefixed BYTES (``str`` as UTF-8, anything else via bytes())."""
    parts: list[bytes] = []
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def bytes_to_text(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements (``bytes``) as UTF-8 ``str``, same shape.

    ONNX string tensors hold text, and ONNX Runtime turns a ``bytes`` object into its
    ``repr`` ("b'...'") rather than decoding it, so BYTES inputs are decoded before they
    reach a session. Invalid UTF-8 is the client's error.
    """
    flat = array.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.object_)
    for i, value in enumerate(flat.tolist()):
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{name}': BYTES element {i} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); the model's string input holds text"
                ) from None
        out[i] = value
    return out.reshape(array.shape)


def _decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    count = _element_count(name, shape)
    if datatype == "BYTES":
        return split_bytes(name, raw, count).reshape(shape)
    wire = _WIRE_DTYPE[datatype]
    expected = count * wire.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw_input_contents holds {len(raw)} bytes but shape "
            f"{_fmt_shape(shape)} of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        flat = np.frombuffer(raw, dtype=np.uint8)
        # One byte per element; anything but 0/1 is not a valid numpy bool, so normalise
        # (rare) instead of handing ONNX Runtime an out-of-range bool.
        arr = flat.view(np.bool_) if count == 0 or int(flat.max()) <= 1 else flat != 0
        return arr.reshape(shape)
    arr = np.frombuffer(raw, dtype=wire)
    if not _LITTLE_ENDIAN_HOST:
        arr = arr.astype(wire.newbyteorder("="))
    return arr.reshape(shape)


def _decode_typed(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    count = _element_count(name, shape)
    if datatype in ("FP16", "BF16"):
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send it in "
            "raw_input_contents"
        )
    field, base = _TYPED_FIELD[datatype]
    present = [fd.name for fd, _ in contents.ListFields()]
    others = [f for f in present if f != field]
    if others:
        raise InvalidInput(
            f"input '{name}': {datatype} contents belong in {field}, got {', '.join(others)}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': {field} holds {len(values)} elements but shape "
            f"{_fmt_shape(shape)} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
        return arr.reshape(shape)
    arr = np.fromiter(values, dtype=base, count=count)
    target = DATATYPE_TO_NUMPY[datatype]
    if target != base:
        info = np.iinfo(target)
        if count and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise InvalidInput(
                f"input '{name}': {field} has values outside the {datatype} range "
                f"[{info.min}, {info.max}]"
            )
        arr = arr.astype(target)
    return arr.reshape(shape)


def decode_tensor(tensor: Any, raw: bytes | None) -> np.ndarray:
    """Decode one ``InferInputTensor``; ``raw`` is its ``raw_input_contents`` entry, if any."""
    name = tensor.name
    datatype = tensor.datatype
    if datatype not in _WIRE_DTYPE and datatype != "BYTES":
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}' (expected one of "
            f"{', '.join(sorted(DATATYPE_TO_NUMPY))})"
        )
    shape = tuple(tensor.shape)
    if raw is not None:
        return _decode_raw(name, datatype, shape, raw)
    return _decode_typed(name, datatype, shape, tensor.contents)


def decode_inputs(
    request: Any, specs: Mapping[str, TensorSpec] | None = None, model: str = ""
) -> dict[str, np.ndarray]:
    """Decode every input of a ``ModelInferRequest`` into numpy arrays keyed by input name.

    With ``specs`` (the model's inputs by name) the names and datatypes are checked against the
    model too: unknown, duplicate and missing inputs and datatype mismatches are rejected here,
    with messages naming the input. Shape checks against the model are left to the model
    (``ServedModel.validate``), which knows the batch axis.
    """
    inputs = request.inputs
    raws = request.raw_input_contents
    n_raw = len(raws)
    if n_raw:
        if n_raw != len(inputs):
            raise InvalidInput(
                f"raw_input_contents has {n_raw} entries for {len(inputs)} inputs; "
                "there must be exactly one per input, in input order"
            )
        for tensor in inputs:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}': typed contents given together with "
                    "raw_input_contents; use one or the other"
                )
    where = f" of model '{model}'" if model else ""
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(inputs):
        name = tensor.name
        if specs is not None:
            spec = specs.get(name)
            if spec is None:
                raise InvalidInput(
                    f"unknown input '{name}'{where} (expected {', '.join(sorted(specs))})"
                )
            if tensor.datatype != spec.datatype and tensor.datatype in DATATYPE_TO_NUMPY:
                # (an unknown datatype is reported by decode_tensor, listing the valid ones)
                raise InvalidInput(
                    f"input '{name}'{where}: datatype {tensor.datatype or '(empty)'} but the "
                    f"model expects {spec.datatype}"
                )
        if name in out:
            raise InvalidInput(f"input '{name}' appears more than once")
        out[name] = decode_tensor(tensor, raws[i] if n_raw else None)
    if specs is not None and len(out) != len(specs):
        missing = [n for n in specs if n not in out]
        raise InvalidInput(
            f"missing input{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}{where}"
        )
    return out


def datatype_of(array: np.ndarray) -> str:
    """KServe datatype of a numpy array (``str``/``bytes`` object arrays are BYTES)."""
    dt = NUMPY_TO_DATATYPE.get(array.dtype)
    if dt is not None:
        return dt
    if array.dtype.kind in "USO":
        return "BYTES"
    if array.dtype.kind in "iufb":
        # Non-native byte order or an unusual width: fall back to the same kind and size.
        native = NUMPY_TO_DATATYPE.get(array.dtype.newbyteorder("="))
        if native is not None:
            return native
    raise ValueError(f"no KServe datatype for numpy dtype {array.dtype}")


def encode_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian bytes of an array in KServe layout."""
    if datatype == "BYTES":
        return join_bytes(array.reshape(-1).tolist())
    wire = _WIRE_DTYPE[datatype]
    if array.dtype != wire:
        array = array.astype(wire)
    # tobytes() is one memcpy (and makes the array C-contiguous when it is not).
    return array.tobytes()


def encode_outputs(
    response: Any,
    outputs: Mapping[str, np.ndarray],
    names: Iterable[str],
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Append ``names`` from ``outputs`` to a ``ModelInferResponse`` as raw output contents.

    ``datatypes`` gives the model's declared datatype per output (so an FP16 model answers
    FP16 even if a runner upcast); otherwise the array's dtype decides.
    """
    tensors = response.outputs
    raws = response.raw_output_contents
    for name in names:
        array = np.asarray(outputs[name])
        datatype = (datatypes.get(name) if datatypes else None) or datatype_of(array)
        tensors.add(name=name, datatype=datatype, shape=array.shape)
        raws.append(encode_raw(array, datatype))
