"""Compile bncheck's CUDA kernels with the host C++ compiler and run them on the CPU.

A block runs as real threads (one std::thread per CUDA thread) with a std::barrier
for __syncthreads, so shared memory, barriers, the atomic counter and the last-block
hand-off are exercised as written; blocks run one after another. The intrinsics
round like the GPU's (IEEE, no contraction: -ffp-contract=off). This proves the
kernels' indexing and reductions without a GPU; the GPU tests prove the rest.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.numerics.kernels import Launch, Source

SHIM = r"""
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
struct bn_dim3 { unsigned int x, y, z; };
static thread_local bn_dim3 threadIdx, blockIdx;
static bn_dim3 gridDim, blockDim;
static std::barrier<>* bn_barrier;
#define __global__
#define __shared__ static
#define __syncthreads() bn_barrier->arrive_and_wait()
#define __threadfence() std::atomic_thread_fence(std::memory_order_seq_cst)
static inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <class T> static inline T __ldcg(const T* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline float __ldcg(const float* p) { float v; __atomic_load(p, &v, __ATOMIC_SEQ_CST); return v; }
static inline double __ldcg(const double* p) { double v; __atomic_load(p, &v, __ATOMIC_SEQ_CST); return v; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
"""


def _launcher(src: Source) -> str:
    casts = []
    for i, (ctype, _) in enumerate(src.params):
        plain = ctype.replace("__restrict__", "").strip()
        casts.append(f"*({plain}*)a[{i}]")
    call = f"{src.name}({', '.join(casts)})"
    return f"""
extern "C" void launch_{src.name}(void** a, unsigned gx, unsigned gy, unsigned bx, unsigned by) {{
    gridDim = {{gx, gy, 1}}; blockDim = {{bx, by, 1}};
    for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {{
        std::barrier<> bar(bx * by);
        bn_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned ty = 0; ty < by; ++ty) for (unsigned tx = 0; tx < bx; ++tx)
            threads.emplace_back([=] {{ blockIdx = {{x, y, 0}}; threadIdx = {{tx, ty, 0}}; {call}; }});
        for (auto& th : threads) th.join();
    }}
}}
"""


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


class Emulator:
    """Every kernel in ``sources`` compiled into one shared library."""

    def __init__(self, sources: Sequence[Source], workdir: Path) -> None:
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler")
        unique = {s.name: s for s in sources}
        text = SHIM + "\n".join(s.code + _launcher(s) for s in unique.values())
        cpp, lib = workdir / "kernels.cpp", workdir / "kernels.so"
        cpp.write_text(text)
        cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
               "-Wno-unknown-pragmas", "-o", str(lib), str(cpp)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        self._lib = ctypes.CDLL(str(lib))

    def run(self, src: Source, launch: Launch, args: Sequence[Any]) -> None:
        """Launch ``src`` with ``args`` in its parameter order (NumPy arrays are passed by pointer)."""
        keep: list[Any] = []
        ptrs = (ctypes.c_void_p * len(args))()
        for i, ((ctype, _), value) in enumerate(zip(src.params, args, strict=True)):
            if isinstance(value, np.ndarray):
                assert value.flags.c_contiguous
                cell: Any = ctypes.c_void_p(value.ctypes.data)
            elif ctype == "int":
                cell = ctypes.c_int(int(value))
            elif ctype == "float":
                cell = ctypes.c_float(float(value))
            elif ctype == "double":
                cell = ctypes.c_double(float(value))
            else:
                raise TypeError(f"parameter {i} ({ctype}) got {type(value).__name__}")
            keep.append(cell)
            ptrs[i] = ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p)
        fn = getattr(self._lib, f"launch_{src.name}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint]
        fn(ptrs, *launch.grid, *launch.block)
