#!/usr/bin/env bash
# One device session: versions, a smoke check, the GPU tests, the GPU benchmark.
# Writes everything under ${OUT:-./gpu-out}. The device image has CuPy, PyTorch and pytest, no FastAPI.
set -u
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
  nvidia-smi -L
  $PY -c "import sys, numpy, cupy, torch, ml_dtypes; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'ml_dtypes', ml_dtypes.__version__)"
} 2>&1 | tee "$OUT/versions.txt"
$PY - <<'PY' 2>&1 | tee "$OUT/smoke.txt"
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
timeout 120 $PY -m pytest -q -p no:cacheprovider -x tests/numerics/test_gpu.py -k generated_kernels 2>&1 \
    | tee "$OUT/gpu_kernel_tests.txt" | tail -30
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider -W default --maxfail=25 \
    tests/numerics/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" | tail -40
timeout "${BENCH_TIMEOUT:-170}" $PY -m bench.gpu 2>&1 | tee "$OUT/bench_gpu.txt"
