"""The GPU path's state, in one object: caches of compiled kernels and constant vectors, and
what it has learnt about the device (a fusion or a generated kernel that failed to build).
The CPU path keeps none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["STATE", "GpuState"]


@dataclass
class GpuState:
    ones: dict[tuple[int, str, int], Any] = field(default_factory=dict)  # (n, dtype, device) -> ones
    fused: dict[tuple[Callable[..., Any], int], Callable[..., Any]] = field(default_factory=dict)
    reducers: dict[tuple[Callable[..., Any], int, int], Any] = field(default_factory=dict)
    fused_reduction_ok: bool = True  # False once CuPy refused to fuse a reduction
    row_chunks: int = 1024  # slices of the rows a fused reduction over P uses (S == 1)
    raw_kernels: dict[Any, Any] = field(default_factory=dict)  # generated kernels, compiled
    raw_kernels_ok: bool = True  # False once a generated kernel failed to build: CuPy's own kernels serve
    raw_kernel_errors: list[str] = field(default_factory=list)
    counters: dict[tuple[int, int, int], Any] = field(default_factory=dict)  # (device, stream, thread)
    sm_count: dict[int, int] = field(default_factory=dict)  # device -> multiprocessors

    def reset(self) -> None:
        """Forget everything (tests and benchmarks that compare paths)."""
        fresh = GpuState()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


STATE = GpuState()
