"""NumPy arrays to and from the wire. The client sends b64: exact bits, NaN-safe."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

__all__ = ["decode", "encode"]

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
    raw = np.ascontiguousarray(arr).tobytes()
    return {"shape": list(arr.shape), "datatype": _WIRE[arr.dtype.name], "b64": base64.b64encode(raw).decode()}


def decode(payload: Any) -> np.ndarray:
    if isinstance(payload, list):
        return np.asarray(payload, dtype=np.float64)
    dt = _dtype(payload["datatype"])
    if "b64" in payload:
        arr = np.frombuffer(base64.b64decode(payload["b64"]), dtype=dt)
    else:
        arr = np.asarray(payload["data"], dtype=np.float64).astype(dt)
    return arr.reshape(payload["shape"]).astype(dt.newbyteorder("="), copy=False)
