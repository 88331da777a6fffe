"""Golden test vectors: stress-case inputs with float64 reference outputs, for offline replay.

For each case, ``<out>/<case>/`` holds

    <case>.npz                     every array by name
    x.bin dy.bin ... dbeta.bin     raw little-endian, row-major
    manifest.json                  (one for the whole run, at <out>/manifest.json)

The manifest gives, per case, the shapes, dtypes, channel axis, eps, seed and,
per output, a recommended ``allclose`` tolerance (rtol, atol) for a kernel in
the chosen dtype: bncheck's default tolerance with the natural scale folded
into one absolute number (its largest value), so any language can replay it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.numerics import CASES, make, reference_outputs
from bncheck.numerics.dtypes import default_accum, resolve, wire_name
from bncheck.numerics.layout import Layout
from bncheck.numerics.reference import stats_from_var
from bncheck.numerics.scales import Scales
from bncheck.numerics.tolerance import default_tolerance

__all__ = ["write_vectors"]

INPUTS = ("x", "dy", "gamma", "beta")
OUTPUTS = ("y", "mean", "invstd", "dx", "dgamma", "dbeta")


def _tolerances(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray, out: dict[str, np.ndarray],
                eps: float, axis: int, dtype: np.dtype[Any]) -> dict[str, dict[str, float]]:
    lay = Layout.of(x.shape, axis)
    st = stats_from_var(out["mean"], 1.0 / out["invstd"] ** 2 - eps, eps, np)
    scales = Scales(lay.view(x), lay.view(dy), gamma, beta, st, lay, np)
    accum = default_accum(dtype)
    tol: dict[str, dict[str, float]] = {}
    for name in OUTPUTS:
        out_dtype = dtype if name in ("y", "dx") else accum
        t = default_tolerance(dtype, accum, out_dtype, lay.R)
        tol[name] = {"rtol": t.rtol, "atol": t.atol * float(np.max(getattr(scales, name)))}
    return tol


def _write_case(name: str, root: Path, *, shape: tuple[int, ...] | None, axis: int, dtype: np.dtype[Any],
                seed: int) -> dict[str, Any]:
    case = make(name, shape=shape, channel_axis=axis, seed=seed)
    # Every tensor in the requested dtype: the inputs as a kernel of that dtype holds them, the
    # reference computed from exactly those values and rounded once to the dtype.
    x, dy, gamma, beta = (a.astype(dtype) for a in (case.x, case.dy, case.gamma, case.beta))
    out = reference_outputs(x, dy, gamma, beta, eps=case.eps, channel_axis=axis)
    arrays: dict[str, Any] = {"x": x, "dy": dy, "gamma": gamma, "beta": beta,
                              **{k: v.astype(dtype) for k, v in out.items()}}
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **arrays)
    files = {}
    for key, arr in arrays.items():
        little = arr if arr.dtype.name == "bfloat16" else arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        (folder / f"{key}.bin").write_bytes(np.ascontiguousarray(little).tobytes())
        files[key] = {"bin": f"{name}/{key}.bin", "dtype": arr.dtype.name, "datatype": wire_name(arr.dtype),
                      "shape": list(arr.shape)}
    return {
        "name": name, "description": case.description, "shape": list(x.shape), "channel_axis": axis % x.ndim,
        "eps": case.eps, "seed": seed, "dtype": dtype.name, "reduce_size": math.prod(x.shape) // x.shape[axis],
        "npz": f"{name}/{name}.npz", "files": files,
        "tolerance": _tolerances(x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64),
                                 beta.astype(np.float64), out, case.eps, axis, dtype),
    }


def write_vectors(out: Path, *, cases: list[str], shape: tuple[int, ...] | None = None, channel_axis: int = 1,
                  dtype: Any = "float32", seed: int = 0,
                  progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    dt = resolve(dtype)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, name in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), name)
        if not make(name).fits(dt):
            continue
        entries.append(_write_case(name, out, shape=shape, axis=channel_axis, dtype=dt, seed=seed))
    if progress is not None:
        progress(len(cases), len(cases), "done")
    manifest = {"generator": "bncheck vectors", "dtype": dt.name, "inputs": list(INPUTS), "outputs": list(OUTPUTS),
                "layout": "row-major, little-endian; per-channel arrays have shape [C]",
                "tolerance_rule": "|candidate - reference| <= atol + rtol * |reference|", "cases": entries,
                "skipped": [c for c in cases if c not in {e["name"] for e in entries}],
                "all_cases": list(CASES)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
