"""Large bodies of nested-list tensors read straight into arrays (simdjson), with no Python
float per number.

orjson builds a Python float for every number and NumPy then reads them back; simdjson
(pysimdjson) parses the same text several times faster and copies a homogeneous array into
a buffer of doubles in C++ (bench/service.py prints the ratio; README, Benchmarks).

That copy flattens nested arrays whatever their shape, so the shape is proven here:
every array on the way down must have the lengths that the path through first elements
shows, and the number of '[' in the whole body must equal the number of arrays found.
A '[' outside a string always opens an array, no string in the document may hold '[',
and the rows' elements are numbers (the copy refuses anything else), so no array is
left over anywhere, and [1, [2]] cannot pass for [1, 2].

It is only a faster way to the same result. A body it is not sure of goes to orjson and
the usual validation, with the usual messages: not an object, a duplicate key, a byte
order mark, booleans, nulls or strings among the numbers, ragged, deep or empty lists,
integers that NumPy would not read as int64, a string holding '[', a parse error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import simdjson

from . import codec

__all__ = ["FAST_MIN", "parse"]

FAST_MIN = 1 << 20  # bytes; smaller bodies are parsed by orjson alone
_BOM = b"\xef\xbb\xbf"  # simdjson skips one; orjson (and RFC 8259 parsers) refuse it
_PLAIN_MAX = 4096  # elements of a list that is not a tensor; longer ones go to orjson
_INT_LIMIT = 2.0**63  # NumPy reads larger integers as uint64 or objects: left to the usual path


class _Unsure(Exception):
    """This body is for orjson."""


def parse(text: Any, tensors: frozenset[str], groups: Mapping[str, frozenset[str]], min_bytes: int = FAST_MIN
          ) -> dict[str, Any] | None:
    """The body as orjson would read it, except that nested-list tensors (the fields named in
    ``tensors``, and in the objects ``groups`` names) are ``codec.Numbers``; or None when the
    body is under ``min_bytes`` or this module is not sure of it. ``text`` is bytes or an mmap."""
    if len(text) < min_bytes or bytes(text[:3]) == _BOM:
        return None
    try:
        return _Reader(text).document(tensors, groups)
    except Exception:  # noqa: BLE001 (simdjson's errors, or _Unsure: in every case orjson decides)
        return None


class _Reader:
    def __init__(self, text: Any) -> None:
        self.text = text
        self.parser = simdjson.Parser()  # one per body: a parser cannot be reused while its values live
        self.arrays = 0  # arrays found, to be matched against the '[' in the text

    def document(self, tensors: frozenset[str], groups: Mapping[str, frozenset[str]]) -> dict[str, Any]:
        doc = self.parser.parse(self.text)
        if not isinstance(doc, simdjson.Object):
            raise _Unsure
        out: dict[str, Any] = {}
        for key in self.keys(doc):
            value = doc[key]
            if key in tensors:
                out[key] = self.tensor(value)
            elif key in groups and isinstance(value, simdjson.Object):
                out[key] = {k: self.tensor(value[k]) if k in groups[key] else self.plain(value[k])
                            for k in self.keys(value)}
            else:
                out[key] = self.plain(value)
        if _count_open(self.text) != self.arrays:
            raise _Unsure
        return out

    def keys(self, obj: Any) -> list[str]:
        keys = list(obj.keys())
        if len(set(keys)) != len(keys) or any("[" in k for k in keys):
            raise _Unsure
        return keys

    def tensor(self, value: Any) -> Any:
        if isinstance(value, simdjson.Array):
            return codec.Numbers(self.lists(value))
        if isinstance(value, simdjson.Object):  # {"shape", "datatype", "data" | "b64"}
            out = {}
            for k in self.keys(value):
                member = value[k]
                # data: flat, or nested to the shape (codec.decode holds it to the shape)
                out[k] = codec.Numbers(self.lists(member)) if k == "data" and isinstance(member, simdjson.Array) \
                    else self.plain(member)
            return out
        return self.plain(value)

    def lists(self, arr: Any) -> np.ndarray:
        shape = []
        probe = arr
        while isinstance(probe, simdjson.Array):
            if len(probe) == 0:
                raise _Unsure
            shape.append(len(probe))
            probe = probe[0]
        self.arrays += self.regular(arr, shape, 0)
        return self.numbers(arr, shape)

    def regular(self, arr: Any, shape: list[int], depth: int) -> int:
        """How many arrays ``arr`` holds (itself included), after checking that each array
        above the rows holds arrays of the lengths ``shape`` gives."""
        if depth == len(shape) - 1:
            return 1
        found = 1
        for row in arr:
            if not isinstance(row, simdjson.Array) or len(row) != shape[depth + 1]:
                raise _Unsure
            found += self.regular(row, shape, depth + 1)
        return found

    def numbers(self, arr: Any, shape: list[int]) -> np.ndarray:
        values = np.frombuffer(arr.as_buffer(of_type="d"), np.float64)  # TypeError: not all numbers
        if values.size != math.prod(shape) or max(values.max(), -values.min()) >= _INT_LIMIT:
            raise _Unsure
        out = values.reshape(shape)
        return out if out.flags.writeable else out.copy()

    def plain(self, value: Any) -> Any:
        """A value that is not a tensor, as orjson reads it."""
        if isinstance(value, simdjson.Object):
            return {k: self.plain(value[k]) for k in self.keys(value)}
        if isinstance(value, simdjson.Array):
            if len(value) > _PLAIN_MAX:
                raise _Unsure
            self.arrays += 1
            return [self.plain(v) for v in value]
        if isinstance(value, str) and "[" in value:
            raise _Unsure
        return value


def _count_open(text: Any, chunk: int = 1 << 20) -> int:
    """How many '[' ``text`` holds (bytes.count, a piece at a time for an mmap)."""
    if isinstance(text, bytes):
        return text.count(b"[")
    view = memoryview(text)
    return sum(bytes(view[i:i + chunk]).count(b"[") for i in range(0, len(view), chunk))
