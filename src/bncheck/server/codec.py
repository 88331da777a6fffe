"""Tensors on the wire: nested lists, KServe-style ``data``, and ``b64`` bytes.

Decoding checks everything it can before allocating: a ``b64`` payload's
length against ``prod(shape) * itemsize``, a shape's product against the
element limit (Python integers, so no overflow), a ``data`` list's length
against the shape.

Nested lists are parsed by orjson and turned into one array by NumPy (large
bodies: by simdjson, straight into arrays, see fastlists.py). NumPy quietly
turns booleans into numbers; only elements that came out as 0 or 1 can have
been booleans, and only those are looked up in the lists.
"""

from __future__ import annotations

import binascii
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64

from bncheck.numerics.dtypes import BFLOAT16, WIRE_NAMES, finfo_max, resolve, wire_name

__all__ = ["ENCODINGS", "Decoded", "Held", "Numbers", "TensorError", "check_datatype", "check_shape", "decode",
           "encode", "from_bytes", "lift_b64", "numbers", "to_bytes"]

ENCODINGS = ("list", "data", "b64")
TENSOR_KEYS = ("shape", "datatype", "data", "b64", "name", "parameters")  # name, parameters: as KServe v2 sends


class TensorError(ValueError):
    """A tensor that cannot be decoded; the message says why, never echoing the data."""


@dataclass(frozen=True)
class Decoded:
    array: np.ndarray
    encoding: str  # list | data | b64
    datatype: str | None  # the wire datatype, None for plain lists

    @property
    def dtype_name(self) -> str | None:
        return None if self.datatype is None else WIRE_NAMES[self.datatype]


@dataclass(frozen=True)
class Numbers:
    """JSON numbers already read into float64 (fastlists.py): a nested-list tensor, or the
    flat ``data`` of a tensor object."""

    array: np.ndarray


def decode(value: Any, *, max_elements: int, lifted: Mapping[str, Any] | None = None,
           field: str | None = None) -> Decoded:
    """One tensor from its parsed JSON. ``lifted`` maps the placeholders ``lift_b64`` left
    in the body to the base64 text it took out; ``field`` is the request field it came in
    (a v2 ``name`` must agree with it). A ``Decoded`` (read by the v2 protocol) passes."""
    if isinstance(value, Decoded):
        return Decoded(_within(value.array, max_elements), value.encoding, value.datatype)
    if isinstance(value, Numbers):
        return Decoded(_within(value.array, max_elements), "list", None)
    if isinstance(value, list):
        return Decoded(_from_lists(value, max_elements), "list", None)
    if isinstance(value, dict):
        return _from_object(value, max_elements, lifted or {}, field)
    msg = f"a tensor is a nested list of numbers or an object with shape, datatype and data or b64; got {_kind(value)}"
    raise TensorError(msg)


_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "an object"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _from_lists(value: list[Any], max_elements: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        msg = f"nested lists are ragged or too deep ({str(exc).split('. The requested')[0]})"
        raise TensorError(msg) from None
    except (TypeError, RecursionError) as exc:
        msg = f"nested lists cannot be read as numbers ({exc})"
        raise TensorError(msg) from None
    _check_number_array(arr, "the nested lists")
    _within(arr, max_elements)
    _refuse_bools(value, arr, "the nested lists")
    return arr.astype(np.float64, copy=False)


def _within(arr: np.ndarray, max_elements: int) -> np.ndarray:
    if arr.size > max_elements:
        msg = f"has {arr.size:,} elements, over the limit of {max_elements:,}"
        raise TensorError(msg)
    return arr


def _check_number_array(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind in "fiu":
        return
    kinds = {"b": "booleans", "U": "strings", "S": "strings", "O": "nulls, objects or numbers too large"}
    msg = f"{what} hold {kinds.get(arr.dtype.kind, str(arr.dtype))}; send numbers"
    raise TensorError(msg)


def _refuse_bools(value: list[Any], arr: np.ndarray, what: str) -> None:
    """NumPy reads true as 1.0 and false as 0.0, so only elements equal to 0 or 1 can have
    been booleans: look those up in the lists (all of them, if there are many)."""
    suspects = np.flatnonzero((arr == 0) | (arr == 1))
    if suspects.size == 0:
        return
    if suspects.size > max(64, arr.size // 64):
        found = _has_bool(value, arr.ndim)
    else:
        found = any(type(_at(value, np.unravel_index(i, arr.shape))) is bool for i in suspects.tolist())
    if found:
        msg = f"{what} hold booleans; send numbers"
        raise TensorError(msg)


def _at(value: Any, index: tuple[Any, ...]) -> Any:
    for i in index:
        value = value[int(i)]
    return value


def _has_bool(value: list[Any], depth: int) -> bool:
    if depth <= 1:
        return any(type(v) is bool for v in value)
    return any(_has_bool(v, depth - 1) for v in value)


def check_shape(value: Any, max_elements: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        msg = "shape must be a non-empty list of dimensions"
        raise TensorError(msg)
    if len(value) > 32:
        msg = f"shape has {len(value)} dimensions; at most 32 are supported"
        raise TensorError(msg)
    for i, n in enumerate(value):
        if type(n) is not int:
            msg = f"shape[{i}] is {_kind(n)}; dimensions are integers"
            raise TensorError(msg)
        if n < 1:
            msg = f"shape[{i}] is {n}; every dimension must be at least 1"
            raise TensorError(msg)
    total = math.prod(value)
    if total > max_elements:
        msg = f"shape {value} has {total:,} elements, over the limit of {max_elements:,}"
        raise TensorError(msg)
    return tuple(value)


def check_datatype(value: Any) -> np.dtype[Any]:
    if not isinstance(value, str) or value not in WIRE_NAMES:
        msg = f"datatype must be one of {', '.join(WIRE_NAMES)}; got {value!r}"[:200]
        raise TensorError(msg)
    return resolve(value)


def _from_object(value: dict[str, Any], max_elements: int, lifted: Mapping[str, Any], field: str | None
                 ) -> Decoded:
    extra = sorted(set(value) - set(TENSOR_KEYS))
    if extra:
        msg = f"unknown tensor keys {extra[:5]}; use shape, datatype and data or b64 (name and parameters optional)"
        raise TensorError(msg)
    _v2_fields(value, field)
    for key in ("shape", "datatype"):
        if key not in value:
            msg = f"a tensor object needs '{key}'"
            raise TensorError(msg)
    if ("data" in value) == ("b64" in value):
        msg = "a tensor object needs exactly one of 'data' and 'b64'"
        raise TensorError(msg)
    shape = check_shape(value["shape"], max_elements)
    dt = check_datatype(value["datatype"])
    if "b64" in value:
        text = value["b64"]
        text = lifted.get(text, text) if isinstance(text, str) else text
        return Decoded(_from_b64(text, shape, dt), "b64", value["datatype"])
    return Decoded(_from_data(value["data"], shape, dt), "data", value["datatype"])


def _v2_fields(value: dict[str, Any], field: str | None) -> None:
    """KServe v2's ``name`` and ``parameters`` on a /v1 tensor: the name must be the field's
    (``dx`` or ``candidate_dx`` for a candidate's dx), and binary data has no place here."""
    name = value.get("name")
    if name is not None:
        if not isinstance(name, str):
            msg = f"name must be a string; got {_kind(name)}"
            raise TensorError(msg)
        if field is not None and name not in (field, f"candidate_{field}"):
            msg = f"name is {name[:40]!r} but the tensor is sent as {field!r}; the field decides, so they must agree"
            raise TensorError(msg)
    params = value.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            msg = f"parameters must be an object; got {_kind(params)}"
            raise TensorError(msg)
        if "binary_data_size" in params:
            msg = ("binary_data_size: binary tensor data goes to POST /v2/models/{variant}/infer; "
                   "on /v1 send the bytes as b64")
            raise TensorError(msg)


def _from_data(data: Any, shape: tuple[int, ...], dt: np.dtype[Any]) -> np.ndarray:
    """``data``: flat (row-major) or nested to exactly ``shape``, as KServe v2 allows."""
    want = math.prod(shape)
    if not isinstance(data, list | Numbers):
        msg = f"data must be a list of numbers, flat or nested to the shape; got {_kind(data)}"
        raise TensorError(msg)
    if isinstance(data, Numbers):
        arr = data.array
    else:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, RecursionError):
            msg = "data is ragged nested lists; send it flat (row-major) or nested to the shape"
            raise TensorError(msg) from None
    if arr.ndim > 1 and arr.shape != shape:
        msg = f"data is nested as {list(arr.shape)} but shape is {list(shape)}; nest it to the shape, or send it flat"
        raise TensorError(msg)
    if arr.size != want:
        msg = f"data has {arr.size:,} values but shape {list(shape)} needs {want:,}"
        raise TensorError(msg)
    if isinstance(data, Numbers):
        f64 = arr.reshape(-1)
    else:
        _check_number_array(arr, "data")
        _refuse_bools(data, arr, "data")
        f64 = arr.astype(np.float64).reshape(-1)
    top = finfo_max(dt)
    over = np.abs(f64) > top
    if over.any():
        msg = f"data has {int(over.sum())} values beyond {wire_name(dt)}'s largest value {top:g}"
        raise TensorError(msg)
    return f64.astype(dt).reshape(shape)


def _from_b64(text: Any, shape: tuple[int, ...], dt: np.dtype[Any]) -> np.ndarray:
    """``text`` is a str, or the lifted bytes of one (see ``lift_b64``)."""
    if not isinstance(text, str | memoryview | bytes):
        msg = f"b64 must be a base64 string; got {_kind(text)}"
        raise TensorError(msg)
    want = math.prod(shape) * dt.itemsize
    tail = text[-2:] if isinstance(text, str) else bytes(text[-2:]).decode("latin-1")
    padding = len(tail) - len(tail.rstrip("="))
    if len(text) % 4 or padding > 2:
        msg = f"b64 has length {len(text):,}, which is not valid base64 (a multiple of 4)"
        raise TensorError(msg)
    got = len(text) // 4 * 3 - padding
    if got != want:
        msg = (f"b64 holds {got:,} bytes but shape {list(shape)} of {wire_name(dt)} needs {want:,} "
               f"({math.prod(shape):,} x {dt.itemsize})")
        raise TensorError(msg)
    try:
        # A bytearray is malloc'ed, so aligned; a bytes object's data sits at an odd offset,
        # and NumPy runs unaligned arrays through slower loops.
        raw = pybase64.b64decode_as_bytearray(text, validate=True)
    except (binascii.Error, ValueError):
        msg = "b64 is not valid base64 (characters outside A-Z a-z 0-9 + / =)"
        raise TensorError(msg) from None
    return from_bytes(raw, dt, shape)


def from_bytes(raw: Any, dt: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The wire's little-endian row-major bytes as an array of ``dt`` (a view of ``raw``)."""
    little = BFLOAT16 if dt == BFLOAT16 else dt.newbyteorder("<")
    return np.frombuffer(raw, dtype=little).reshape(shape)


def to_bytes(arr: np.ndarray) -> np.ndarray:
    """An array as the wire's little-endian row-major bytes (bfloat16 has no buffer format)."""
    little = arr if arr.dtype == BFLOAT16 else arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).view(np.uint8).reshape(-1)


def numbers(arr: np.ndarray, *, flat: bool, held: Held | None = None) -> Any:
    """An array as JSON numbers (nested lists, or ``flat``), or None when it holds NaN or Inf,
    which JSON numbers cannot carry. With ``held``, a long array's JSON stays out of the
    document (a placeholder takes its place; ``Held.splice`` puts it in)."""
    f64 = np.ascontiguousarray(arr, dtype=np.float64)
    if not bool(np.isfinite(f64).all()):
        return None
    values = f64.reshape(-1) if flat else f64
    if held is not None and f64.nbytes >= LIFT_MIN:
        # orjson writes a float64 array as the very text it writes for the list of its
        # floats (tested), three times as fast and with no Python float per number.
        return held.hold(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY), quoted=False)
    return values.tolist()


def encode(arr: np.ndarray, encoding: str, held: Held | None = None) -> tuple[Any, str]:
    """An array on the wire, and the encoding used: JSON numbers cannot carry NaN or Inf,
    so an array holding them goes as b64 whatever was asked. With ``held``, a long array's
    b64 text, or its numbers' JSON, stays out of the document."""
    header = {"shape": list(arr.shape), "datatype": wire_name(arr.dtype)}
    if encoding != "b64":
        values = numbers(arr, flat=encoding == "data", held=held)
        if values is not None:
            return (values, encoding) if encoding == "list" else ({**header, "data": values}, encoding)
        encoding = "b64"
    raw = to_bytes(arr)
    if held is not None and raw.nbytes >= LIFT_MIN:
        return {**header, "b64": held.hold(pybase64.b64encode(raw.data))}, encoding
    return {**header, "b64": pybase64.b64encode_as_string(raw.data)}, encoding


class Held:
    """Long text kept out of a JSON document until it is serialised: b64 strings, or the
    JSON text of long arrays of numbers. Neither pydantic nor orjson then copies or scans
    it (orjson scanning megabytes of b64 is measurable: README, Benchmarks)."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.texts: dict[bytes, tuple[bytes, bool]] = {}

    def hold(self, text: bytes, *, quoted: bool = True) -> str:
        """A placeholder string for ``text``: the characters of a string (``quoted``), or
        JSON of its own, which replaces the placeholder's quotes too."""
        name = f"{self.nonce}{len(self.texts)}"
        self.texts[f'"{name}"'.encode()] = (text, quoted)
        return name

    def pieces(self, doc: bytes) -> list[bytes | memoryview]:
        """``doc`` (JSON) with each placeholder replaced by its text, as the pieces to write
        one after another (a writer that needs no single copy of the whole)."""
        if not self.texts:
            return [doc]
        pieces: list[bytes | memoryview] = []
        view, done = memoryview(doc), 0
        for at, key in sorted((doc.index(key), key) for key in self.texts):
            text, quoted = self.texts[key]
            keep = 1 if quoted else 0  # a string keeps the placeholder's quotes
            pieces += [view[done:at + keep], text]
            done = at + len(key) - keep
        pieces.append(view[done:])
        return pieces

    def splice(self, doc: bytes) -> bytes:
        """``pieces`` joined."""
        return doc if not self.texts else b"".join(self.pieces(doc))


LIFT_MIN = 1 << 16  # bytes; shorter b64 strings are left to orjson
_WHITESPACE = (b" ", b"\t", b"\r", b"\n")


def lift_b64(body: Any, min_len: int = LIFT_MIN) -> tuple[Any, dict[str, memoryview]]:
    """Take long ``"b64": "..."`` strings out of a JSON body before it is parsed.

    orjson reads a long string far below memory speed (docs/design.md, section 9, and
    bench/service.py measure it); ``find`` skips over one at memory speed. The walk goes from string to string
    (``find`` of the next quote, so the numbers of a nested-list body cost nothing). Each
    long b64 value is replaced by a short placeholder of base64 characters (a per-request
    random nonce), and its text is returned by reference, as a view of ``body``.

    Only the characters between the two quotes of a ``"b64"`` key's string value change,
    for other characters that are plain in a JSON string, and a value holding a backslash
    is left alone; so orjson sees the same tokens it would have seen. A lifted value is
    validated as base64 when it is decoded (a value with other characters is refused
    there, 422, rather than as malformed JSON). ``body`` is bytes or an mmap (anything
    with ``find`` and the buffer protocol).
    """
    find = body.find
    view = memoryview(body)
    nonce = secrets.token_hex(8)
    lifted: dict[str, memoryview] = {}
    pieces: list[Any] = []
    done = 0
    at = find(b'"')
    while at >= 0:
        end = _string_end(body, at)
        if end < 0:
            break
        if end == at + 4 and body[at + 1:end] == b"b64":
            j = _skip_space(body, end + 1)
            if body[j:j + 1] == b":":
                j = _skip_space(body, j + 1)
                if body[j:j + 1] == b'"':
                    end = _string_end(body, j)
                    if end < 0:
                        break
                    if end - j - 1 >= min_len and find(b"\\", j + 1, end) < 0:
                        name = f"{nonce}{len(lifted)}"
                        lifted[name] = view[j + 1:end]
                        pieces += [view[done:j + 1], name.encode()]
                        done = end
        at = find(b'"', end + 1)
    if not lifted:
        return body, lifted
    pieces.append(view[done:])
    return b"".join(pieces), lifted


def _string_end(body: Any, start: int) -> int:
    """The closing quote of the JSON string opening at ``start``; -1 if it never closes."""
    end = body.find(b'"', start + 1)
    while end >= 0:
        backslashes = 0
        while body[end - 1 - backslashes:end - backslashes] == b"\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return end
        end = body.find(b'"', end + 1)
    return -1


def _skip_space(body: Any, j: int) -> int:
    while body[j:j + 1] in _WHITESPACE:
        j += 1
    return j
