#!/usr/bin/env bash
# One device session: versions, a smoke check, the GPU tests, the GPU benchmark, the other numerics tests.
# Writes everything under ${OUT:-./gpu-out}. The device image has CuPy, PyTorch, Numba and pytest (with
# xdist), no FastAPI: the numerics and the benchmarks need none of the web stack. Each step has its own
# time limit, so that one step that hangs leaves the others their time (all of it fits in 11 minutes;
# on an H200 on 2026-11-28 all but the last step took under 2).
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
  nvidia-smi -L
  nproc
  $PY -c "import sys, numpy, cupy, torch, ml_dtypes; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'ml_dtypes', ml_dtypes.__version__)"
  $PY -c "import numba; from bncheck.numerics import fused; print('numba', numba.__version__, 'compiled CPU passes:', fused.available())"
} 2>&1 | tee "$OUT/versions.txt"
timeout "${SMOKE_TIMEOUT:-90}" $PY - <<'PY' 2>&1 | tee "$OUT/smoke.txt"
import time, traceback
from bncheck.numerics import VARIANTS, check, make, FDOptions
case = make("normal")
for dtype in ("float16", "bfloat16", "float32", "float64"):
    for v in VARIANTS:
        t = time.perf_counter()
        try:
            r = check(case.x, case.dy, **case.kwargs(), variant=v, dtype=dtype, device="gpu")
            print(f"smoke {dtype:9s} {v:9s} passed={r.passed} device={r.device} {time.perf_counter() - t:.2f}s")
        except Exception:
            print(f"smoke {dtype} {v} FAILED"); traceback.print_exc()
from bncheck.numerics import backend
print("generated kernels ok:", backend.STATE.raw_kernels_ok, "built:", len(backend.STATE.raw_kernels), backend.STATE.raw_kernel_errors[:2])
PY
# The GPU tests in parallel (xdist): most of their time is NVRTC compiling kernels, on 16 cores.
timeout "${TEST_TIMEOUT:-200}" $PY -m pytest -q -p no:cacheprovider -W default --maxfail=25 -n "${TEST_PROCS:-8}" \
    tests/numerics/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" | tail -40
timeout "${BENCH_TIMEOUT:-200}" $PY -m bench.gpu 2>&1 | tee "$OUT/bench_gpu.txt"
# Last, the rest of the numerics' tests under the device image's NumPy, Numba and Python (newer
# than CI's): what a GPU user's environment would meet. Warnings stay errors, as in CI. One test
# imports the web stack, which the device has not.
timeout "${NUMERICS_TIMEOUT:-150}" $PY -m pytest -q -p no:cacheprovider -p no:benchmark -n "${TEST_PROCS:-8}" \
    --maxfail=25 tests/numerics tests/test_layers.py -m "not gpu" \
    --deselect tests/numerics/test_backend.py::test_cpu_path_never_imports_cupy 2>&1 \
    | tee "$OUT/numerics_tests.txt" | tail -30
