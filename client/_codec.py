"""NumPy arrays to and from the wire. The client sends b64: exact bits, NaN-safe."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

_b64: Any
_orjson: Any
try:  # 43 MB of b64 JSON written in ~15 ms, where the standard library's json takes ~110
    import orjson as _orjson
except ImportError:
    _orjson = None
try:  # SIMD base64 where it is installed (bncheck's own install has it): 16 MB in ~2 ms, stdlib ~30-50
    import pybase64 as _b64
except ImportError:  # a client copied on its own needs only the standard library's
    _b64 = None

__all__ = ["decode", "dumps", "encode", "loads"]

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


def _bytes(text: str) -> bytearray:
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


def loads(text: bytes) -> Any:
    return _orjson.loads(text) if _orjson is not None else json.loads(text)
