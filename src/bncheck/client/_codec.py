"""NumPy arrays to and from the wire. The client sends b64: exact bits, NaN-safe."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import numpy as np

_b64: Any
_orjson: Any
try:  # writes long b64 JSON many times faster than the standard library's json
    import orjson as _orjson
except ImportError:
    _orjson = None
try:  # SIMD base64 where it is installed (bncheck's own install has it), far faster than the stdlib's
    import pybase64 as _b64
except ImportError:  # a client copied on its own needs only the standard library's
    _b64 = None

__all__ = ["decode", "dumps", "dumps_pieces", "encode", "loads"]

_WIRE = {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32", "float64": "FP64"}


def _bfloat16() -> Any:
    import ml_dtypes  # only where bfloat16 is in play

    return ml_dtypes.bfloat16


def _dtype(wire: str) -> np.dtype[Any]:
    names = {v: k for k, v in _WIRE.items()}
    name = names[wire]
    return np.dtype(_bfloat16()) if name == "bfloat16" else np.dtype(name).newbyteorder("<")


def encode(value: Any) -> dict[str, Any]:
    arr = np.asarray(value)
    if arr.dtype.name not in _WIRE:
        arr = arr.astype(np.float64)
    if arr.dtype.name != "bfloat16":
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)  # bytes, not copied (bfloat16 has no buffer)
    text = _b64.b64encode_as_string(raw.data) if _b64 is not None else base64.b64encode(raw.data).decode()
    return {"shape": list(arr.shape), "datatype": _WIRE[arr.dtype.name], "b64": text}


def _bytes(text: str | memoryview) -> bytearray:
    """Decoded base64, writable (arrays over it are as well)."""
    return _b64.b64decode_as_bytearray(text) if _b64 is not None else bytearray(base64.b64decode(text))


def decode(payload: Any) -> np.ndarray:
    if isinstance(payload, list):
        return np.asarray(payload, dtype=np.float64)
    dt = _dtype(payload["datatype"])
    if "b64" in payload:
        arr = np.frombuffer(_bytes(payload["b64"]), dtype=dt)
    else:
        arr = np.asarray(payload["data"], dtype=np.float64).astype(dt)
    return arr.reshape(payload["shape"]).astype(dt.newbyteorder("="), copy=False)


def dumps(body: Any) -> bytes:
    """A request body as JSON (NumPy scalars are numbers)."""
    if _orjson is not None:
        text: bytes = _orjson.dumps(body, option=_orjson.OPT_SERIALIZE_NUMPY)
        return text
    return json.dumps(body).encode()


def _loads(text: Any) -> Any:
    return _orjson.loads(text) if _orjson is not None else json.loads(text)


LONG = 1 << 16  # characters of b64; shorter strings stay in the JSON text
_KEY = b'"b64":"'


def dumps_pieces(body: dict[str, Any]) -> list[bytes]:
    """``dumps(body)`` as pieces to send one after another: a long b64 string is a piece of
    its own, not copied into (and scanned by) the JSON writer. Tensors are ``body``'s values
    and those of its ``candidate``."""
    nonce = secrets.token_hex(8)
    texts: dict[bytes, bytes] = {}

    def hold(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("b64"), str) and len(value["b64"]) >= LONG:
            name = f"{nonce}{len(texts)}"
            texts[f'"{name}"'.encode()] = value["b64"].encode("ascii")
            return {**value, "b64": name}
        return value

    doc = {k: {c: hold(t) for c, t in v.items()} if k == "candidate" and isinstance(v, dict) else hold(v)
           for k, v in body.items()}
    text = dumps(doc)
    pieces, done = [], 0
    for at, key in sorted((text.index(key), key) for key in texts):
        pieces += [text[done:at + 1], texts[key]]  # the placeholder's quotes stay
        done = at + len(key) - 1
    pieces.append(text[done:])
    return pieces


def loads(text: bytes) -> Any:
    """An answer's JSON. Long b64 strings (after ``"b64":"``: the server writes compact JSON,
    in which that cannot occur inside a string) are cut out first and decoded later from
    views of ``text``: a JSON parser reads a long string far below memory speed."""
    nonce = secrets.token_hex(8)
    lifted: dict[str, memoryview] = {}
    view, done = memoryview(text), 0
    small: list[bytes | memoryview] = []
    at = text.find(_KEY)
    while at >= 0:
        begin = at + len(_KEY)
        end = text.find(b'"', begin)
        if end < 0:
            break
        if end - begin >= LONG and text.find(b"\\", begin, end) < 0:
            name = f"{nonce}{len(lifted)}"
            lifted[name] = view[begin:end]
            small += [view[done:begin], name.encode()]
            done = end
        at = text.find(_KEY, end)
    if not lifted:
        return _loads(text)
    small.append(view[done:])
    return _restore(_loads(b"".join(small)), lifted)


def _restore(value: Any, lifted: dict[str, memoryview]) -> Any:
    if isinstance(value, dict):
        if isinstance(value.get("b64"), str) and value["b64"] in lifted:
            return {**value, "b64": lifted[value["b64"]]}
        return {k: _restore(v, lifted) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, lifted) for v in value]
    return value
