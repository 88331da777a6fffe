"""Tensors on the wire: nested lists, KServe-style ``data``, and ``b64`` bytes.

Decoding checks everything it can before allocating: a ``b64`` payload's
length against ``prod(shape) * itemsize``, a shape's product against the
element limit (Python integers, so no overflow), a ``data`` list's length
against the shape.

Nested lists are parsed by orjson and turned into one array by NumPy. NumPy
quietly turns booleans into numbers, so the body is scanned once for a
``true``/``false`` token inside a list (cheap); only then are the lists
walked element by element.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.numerics.dtypes import BFLOAT16, WIRE_NAMES, finfo_max, resolve, wire_name

__all__ = ["ENCODINGS", "Decoded", "TensorError", "body_may_hold_list_bools", "decode", "encode"]

ENCODINGS = ("list", "data", "b64")
TENSOR_KEYS = ("shape", "datatype", "data", "b64")
_LIST_BOOL = re.compile(rb"[\[,]\s*(?:true|false)\s*[,\]]")


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


def body_may_hold_list_bools(body: bytes) -> bool:
    """True when a ``true``/``false`` token sits inside a JSON list somewhere in the body.
    A sound over-approximation: strings that merely look like one make it say True."""
    return _LIST_BOOL.search(body) is not None


def decode(value: Any, *, max_elements: int, check_bools: bool = True) -> Decoded:
    if isinstance(value, list):
        return Decoded(_from_lists(value, max_elements, check_bools), "list", None)
    if isinstance(value, dict):
        return _from_object(value, max_elements, check_bools)
    msg = f"a tensor is a nested list of numbers or an object with shape, datatype and data or b64; got {_kind(value)}"
    raise TensorError(msg)


_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "an object"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _from_lists(value: list[Any], max_elements: int, check_bools: bool) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        msg = f"nested lists are ragged or too deep ({str(exc).split('. The requested')[0]})"
        raise TensorError(msg) from None
    except (TypeError, RecursionError) as exc:
        msg = f"nested lists cannot be read as numbers ({exc})"
        raise TensorError(msg) from None
    _check_number_array(arr, "the nested lists")
    if arr.size > max_elements:
        msg = f"has {arr.size:,} elements, over the limit of {max_elements:,}"
        raise TensorError(msg)
    if check_bools and _has_bool(value, arr.ndim):
        msg = "the nested lists hold booleans; send numbers"
        raise TensorError(msg)
    return arr.astype(np.float64, copy=False)


def _check_number_array(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind in "fiu":
        return
    kinds = {"b": "booleans", "U": "strings", "S": "strings", "O": "nulls, objects or numbers too large"}
    msg = f"{what} hold {kinds.get(arr.dtype.kind, str(arr.dtype))}; send numbers"
    raise TensorError(msg)


def _has_bool(value: list[Any], depth: int) -> bool:
    if depth <= 1:
        return any(type(v) is bool for v in value)
    return any(_has_bool(v, depth - 1) for v in value)


def _shape(value: Any, max_elements: int) -> tuple[int, ...]:
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


def _datatype(value: Any) -> np.dtype[Any]:
    if not isinstance(value, str) or value not in WIRE_NAMES:
        msg = f"datatype must be one of {', '.join(WIRE_NAMES)}; got {value!r}"[:200]
        raise TensorError(msg)
    return resolve(value)


def _from_object(value: dict[str, Any], max_elements: int, check_bools: bool) -> Decoded:
    extra = sorted(set(value) - set(TENSOR_KEYS))
    if extra:
        msg = f"unknown tensor keys {extra[:5]}; use shape, datatype and data or b64"
        raise TensorError(msg)
    for key in ("shape", "datatype"):
        if key not in value:
            msg = f"a tensor object needs '{key}'"
            raise TensorError(msg)
    if ("data" in value) == ("b64" in value):
        msg = "a tensor object needs exactly one of 'data' and 'b64'"
        raise TensorError(msg)
    shape = _shape(value["shape"], max_elements)
    dt = _datatype(value["datatype"])
    if "b64" in value:
        return Decoded(_from_b64(value["b64"], shape, dt), "b64", value["datatype"])
    return Decoded(_from_data(value["data"], shape, dt, check_bools), "data", value["datatype"])


def _from_data(data: Any, shape: tuple[int, ...], dt: np.dtype[Any], check_bools: bool) -> np.ndarray:
    want = math.prod(shape)
    if not isinstance(data, list):
        msg = f"data must be a flat list of numbers; got {_kind(data)}"
        raise TensorError(msg)
    if len(data) != want:
        msg = f"data has {len(data):,} values but shape {list(shape)} needs {want:,}"
        raise TensorError(msg)
    arr = np.asarray(data)
    if arr.ndim != 1:
        msg = "data must be a flat list of numbers (row-major), not nested lists"
        raise TensorError(msg)
    _check_number_array(arr, "data")
    if check_bools and _has_bool(data, 1):
        msg = "data holds booleans; send numbers"
        raise TensorError(msg)
    f64 = arr.astype(np.float64)
    top = finfo_max(dt)
    over = np.abs(f64) > top
    if over.any():
        msg = f"data has {int(over.sum())} values beyond {wire_name(dt)}'s largest value {top:g}"
        raise TensorError(msg)
    return f64.astype(dt).reshape(shape)


def _from_b64(text: Any, shape: tuple[int, ...], dt: np.dtype[Any]) -> np.ndarray:
    if not isinstance(text, str):
        msg = f"b64 must be a base64 string; got {_kind(text)}"
        raise TensorError(msg)
    want = math.prod(shape) * dt.itemsize
    padding = len(text) - len(text.rstrip("="))
    if len(text) % 4 or padding > 2:
        msg = f"b64 has length {len(text):,}, which is not valid base64 (a multiple of 4)"
        raise TensorError(msg)
    got = len(text) // 4 * 3 - padding
    if got != want:
        msg = (f"b64 holds {got:,} bytes but shape {list(shape)} of {wire_name(dt)} needs {want:,} "
               f"({math.prod(shape):,} x {dt.itemsize})")
        raise TensorError(msg)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        msg = "b64 is not valid base64 (characters outside A-Z a-z 0-9 + / =)"
        raise TensorError(msg) from None
    little = BFLOAT16 if dt == BFLOAT16 else dt.newbyteorder("<")
    return np.frombuffer(raw, dtype=little).reshape(shape)


def encode(arr: np.ndarray, encoding: str) -> tuple[Any, str]:
    """An array on the wire, and the encoding used: JSON numbers cannot carry NaN or Inf,
    so an array holding them goes as b64 whatever was asked."""
    if encoding != "b64" and not bool(np.isfinite(arr.astype(np.float64, copy=False)).all()):
        encoding = "b64"
    if encoding == "list":
        return arr.astype(np.float64, copy=False).tolist(), encoding
    header = {"shape": list(arr.shape), "datatype": wire_name(arr.dtype)}
    if encoding == "data":
        return {**header, "data": arr.astype(np.float64, copy=False).reshape(-1).tolist()}, encoding
    little = arr if arr.dtype == BFLOAT16 else arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return {**header, "b64": base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii")}, encoding
