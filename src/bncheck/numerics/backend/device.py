"""Which array module a check runs on, and moving arrays between host and device.
CuPy is imported here only, and only when the GPU is asked for or already in use."""

from __future__ import annotations

import sys
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from ..dtypes import BFLOAT16
from ..errors import DeviceUnavailableError, InputError

__all__ = ["DEVICES", "as_float64", "container", "device_name", "from_container", "gpu_available", "is_numpy",
           "namespace", "resolve_device", "to_numpy"]

DEVICES = ("cpu", "gpu", "auto")


def namespace(*arrays: Any) -> ModuleType:
    """CuPy when any argument is a CuPy array, else NumPy. Never imports CuPy."""
    cp = sys.modules.get("cupy")
    if cp is not None and any(isinstance(a, cp.ndarray) for a in arrays):
        return cp
    return np


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def device_name(xp: ModuleType) -> str:
    return "cpu" if is_numpy(xp) else "gpu"


def _import_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as exc:
        msg = "the GPU path needs CuPy; install bncheck[gpu] on a machine with CUDA"
        raise DeviceUnavailableError(msg, field="device") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises its own runtime errors when no driver is present
        msg = f"CuPy is installed but CUDA reports no usable device ({exc})"
        raise DeviceUnavailableError(msg, field="device") from exc
    if count < 1:
        msg = "CuPy is installed but CUDA sees 0 devices"
        raise DeviceUnavailableError(msg, field="device")
    return cupy


@cache
def gpu_available() -> bool:
    try:
        _import_cupy()
    except DeviceUnavailableError:
        return False
    return True


def resolve_device(device: str) -> ModuleType:
    """``cpu`` is NumPy, ``gpu`` is CuPy (or an error), ``auto`` is CuPy when a GPU is there."""
    if device == "cpu":
        return np
    if device == "gpu":
        return _import_cupy()
    if device == "auto":
        return _import_cupy() if gpu_available() else np
    msg = f"unknown device {device!r}; use one of {', '.join(DEVICES)}"
    raise InputError(msg, field="device")


def as_float64(a: np.ndarray, xp: ModuleType) -> Any:
    """A host array as float64 on ``xp``, in C order. For the GPU, float16 and float32 data
    travel as they are and are converted there: half or a quarter of the bytes over PCIe, and
    no host pass; bfloat16 (which CuPy cannot hold) travels as float32, exactly."""
    if is_numpy(xp) or a.dtype not in (np.float16, np.float32, BFLOAT16):
        return xp.asarray(np.ascontiguousarray(a, dtype=np.float64))
    small = np.ascontiguousarray(a, dtype=np.float32 if a.dtype == BFLOAT16 else a.dtype)
    return xp.asarray(small).astype(xp.float64)


def to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


def container(dtype: np.dtype[Any], xp: ModuleType) -> np.dtype[Any]:
    """The array dtype that holds values of ``dtype`` on this array module."""
    return np.dtype(np.float32) if (dtype == BFLOAT16 and not is_numpy(xp)) else dtype


def from_container(a: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Bring an array to the host in its logical dtype (float32-held bfloat16 included)."""
    return to_numpy(a).astype(dtype, copy=False)
