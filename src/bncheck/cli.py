"""The ``bncheck`` console script: serve | check | vectors.

Exit codes: 0 passed, 1 a check failed, 2 bad usage or input (or no answer).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.numerics.inputs import FULL_TENSORS
from bncheck.numerics.request import CANDIDATE_NAMES, INPUT_NAMES

__all__ = ["main"]

FULL = (*INPUT_NAMES[:2], *FULL_TENSORS)  # shaped like x; every other array is per channel


class UsageError(Exception):
    """Bad arguments or unreadable files: exit code 2."""


class Unreachable(Exception):
    """The server could not be reached, timed out, or failed: exit code 3 (not the input's fault)."""


EXIT_CODES = """exit codes:
  0  passed: every check passed
  1  failed: the report says which tensor, where and by how much
  2  bad input: a flag, a file or a field is wrong (the message names it)
  3  the server could not be reached, timed out or failed (--server only)"""


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from bncheck.server import Settings, create_app, heap
        from bncheck.server.logs import log_config
    except ImportError as exc:
        msg = f"bncheck serve needs the server's packages ({exc.name} is missing): pip install 'bncheck[server]'"
        raise UsageError(msg) from None

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("token", args.token)) if v}
    settings = Settings(**overrides)
    # uvicorn finishes in-flight requests on SIGTERM (or Ctrl-C), waiting up to one check's time
    # budget, then raises the signal again for whoever handled it before: a handler that does
    # nothing makes the stop quiet and the exit status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # The server process keeps its heap too: a large body arrives in chunks of a few hundred
    # kilobytes, and glibc's defaults grow and shrink the heap (brk) for each of them.
    heap.keep(settings.worker_heap_mb)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=log_config(settings.log_level, settings.log_format), access_log=False,
                timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
    return 0


# ------------------------------------------------------------------ files


def _dtype(name: str, where: str) -> np.dtype[Any]:
    """A dtype name in any spelling (float32, FP32, f32; bf16; half; double), or an error that
    names the flag or file that carried it."""
    from bncheck.numerics.dtypes import resolve
    from bncheck.numerics.errors import InputError

    try:
        return resolve(name)
    except InputError as exc:
        msg = f"{where}: {exc.message}"
        raise UsageError(msg) from None


def load_array(spec: str, *, shape: tuple[int, ...] | None, bin_dtype: str, flag: str = "--bin-dtype"
               ) -> np.ndarray:
    """.npy, or raw little-endian bytes (.bin and anything else) with --shape and --bin-dtype.
    ``file.bin:FP16`` (or ``:f16``, ``:half``, ...) overrides the dtype of one raw file; ``flag``
    names where ``bin_dtype`` came from, for errors."""
    path_text, _, override = spec.partition(":") if ":" in Path(spec).name else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        msg = f"{spec}: no such file"
        raise UsageError(msg)
    if path.suffix == ".npy":
        return np.asarray(np.load(path, allow_pickle=False))
    if shape is None:
        msg = f"{spec}: a raw file needs --shape (and --bin-dtype, default float32)"
        raise UsageError(msg)
    dt = _dtype(override, spec) if override else _dtype(bin_dtype, f"{flag} {bin_dtype}")
    little = dt if dt.name == "bfloat16" else dt.newbyteorder("<")
    want = int(np.prod(shape)) * dt.itemsize
    size = path.stat().st_size
    if size != want:
        hint = ""
        fits = [n for n, b in (("float16", 2), ("float32", 4), ("float64", 8)) if size == int(np.prod(shape)) * b]
        if fits:
            hint = f"; if it holds {fits[0]}, say so: {path_text}:{fits[0]}" + (
                " (or :bfloat16)" if fits[0] == "float16" else "")
        msg = f"{spec}: holds {size:,} bytes but shape {list(shape)} of {dt.name} needs {want:,}{hint}"
        raise UsageError(msg)
    return np.fromfile(path, dtype=little).reshape(shape).astype(dt, copy=False)


def _npz(path: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in names if k in data.files}
    except (OSError, ValueError) as exc:
        msg = f"{path}: not a readable .npz ({exc})"
        raise UsageError(msg) from None


def _shape(text: str | None) -> tuple[int, ...] | None:
    """8,32,14,14 or 8x32x14x14 or [8, 32, 14, 14] (Rust's debug format) or (8, 32, 14, 14)."""
    if text is None:
        return None
    inner = text.strip().strip("[]()").lower().replace("x", ",").replace("*", ",")
    try:
        shape = tuple(int(v) for v in inner.split(",") if v.strip())
    except ValueError:
        msg = f"--shape {text!r}: use integers such as 16,64,32,32, 16x64x32x32 or [16, 64, 32, 32]"
        raise UsageError(msg) from None
    if not shape or min(shape) < 1:
        msg = f"--shape {text!r}: every dimension must be at least 1"
        raise UsageError(msg)
    return shape


def _gather(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    inputs: dict[str, np.ndarray] = {}
    candidate: dict[str, np.ndarray] = {}
    if args.case:
        from bncheck.numerics import make

        case = make(args.case, shape=_shape(args.shape), channel_axis=args.channel_axis)
        inputs.update(x=case.x, dy=case.dy, gamma=case.gamma, beta=case.beta)
        args.eps = case.eps if args.eps is None else args.eps
    if args.npz:
        inputs.update(_npz(args.npz, INPUT_NAMES))
    if args.candidate_npz:
        candidate.update(_npz(args.candidate_npz, CANDIDATE_NAMES))
    shape = _shape(args.shape)
    for name in INPUT_NAMES + CANDIDATE_NAMES:
        spec = getattr(args, name)
        if spec is None:
            continue
        target = inputs if name in INPUT_NAMES else candidate
        per_channel = None
        if name not in FULL and shape is not None:
            per_channel = (shape[args.channel_axis],)
        own = name in CANDIDATE_NAMES and args.candidate_bin_dtype
        dtype, flag = (args.candidate_bin_dtype, "--candidate-bin-dtype") if own else (args.bin_dtype, "--bin-dtype")
        target[name] = load_array(spec, shape=shape if name in FULL else per_channel, bin_dtype=dtype, flag=flag)
    for need in ("x", "dy"):
        if need not in inputs:
            msg = f"missing {need}: give --{need} FILE, --npz FILE or --case NAME"
            raise UsageError(msg)
    return inputs, candidate


# ------------------------------------------------------------------ check


def _tolerance(args: argparse.Namespace) -> tuple[float, float] | dict[str, tuple[float, float]] | None:
    if args.tolerance and (args.rtol is not None or args.atol is not None):
        msg = "--tolerance: give --rtol/--atol for every tensor or --tolerance per tensor, not both"
        raise UsageError(msg)
    if args.tolerance:
        per: dict[str, tuple[float, float]] = {}
        for item in args.tolerance:
            name, _, terms = item.partition("=")
            try:
                rtol, atol = (float(v) for v in terms.split(","))
            except ValueError:
                msg = f"--tolerance: {item!r} is not TENSOR=RTOL,ATOL (e.g. dgamma=0,1e-4)"
                raise UsageError(msg) from None
            per[name.strip()] = (rtol, atol)
        return per
    if args.rtol is None and args.atol is None:
        return None
    return (args.rtol or 0.0, args.atol or 0.0)


def _run_check(args: argparse.Namespace) -> int:
    from bncheck.client import APIError, BNCheckClientError, RequestTimeout, TransportError

    inputs, candidate = _gather(args)
    options: dict[str, Any] = {
        "variant": args.variant, "dtype": args.dtype, "accum_dtype": args.accum_dtype,
        "eps": 1e-5 if args.eps is None else args.eps, "channel_axis": args.channel_axis,
        "training": not args.inference, "candidate": candidate or None, "reference": bool(args.out),
        "gradients": bool(args.out), "device": args.device,
        "finite_difference": {k: v for k, v in (("method", args.fd), ("samples", args.fd_samples),
                                                 ("directions", args.fd_directions), ("seed", args.seed),
                                                 ("step", args.fd_step)) if v is not None},
        "tolerance": _tolerance(args), "plots": bool(args.html),
    }
    x, dy = inputs.pop("x"), inputs.pop("dy")
    extra: dict[str, Any] = {k: v for k, v in inputs.items() if k not in ("gamma", "beta")}
    where = args.server or "in-process"
    print(f"bncheck: checking {list(x.shape)} {x.dtype} ({where}) ...", file=sys.stderr, flush=True)
    try:
        if args.server:
            from bncheck.client import Client

            with Client(base_url=args.server, token=args.token, timeout=args.timeout) as bn:
                result = bn.check(x, dy, inputs.get("gamma"), inputs.get("beta"), **options, **extra)
        else:
            result = _in_process(x, dy, inputs.get("gamma"), inputs.get("beta"), options, extra)
    except APIError as exc:
        fields = "; ".join(f"{f}: {m}" for f, m in exc.errors) or exc.detail
        msg = f"{exc.status} {exc.title}: {fields}"
        if exc.status >= 500:  # the server's trouble, not the input's
            raise Unreachable(msg) from None
        raise UsageError(msg) from None
    except (TransportError, RequestTimeout) as exc:
        msg = f"{exc} (is `bncheck serve` running at {args.server}?)"
        raise Unreachable(msg) from None
    except BNCheckClientError as exc:
        raise UsageError(str(exc)) from None
    if args.out:
        _write_outputs(Path(args.out), result)
    if args.html:
        from bncheck.htmlreport import render as render_html

        try:
            Path(args.html).write_text(render_html(result.raw), encoding="utf-8")
        except OSError as exc:
            msg = f"--html {args.html}: cannot write it ({exc.strerror})"
            raise UsageError(msg) from None
        print(f"bncheck: wrote the HTML report to {args.html}", file=sys.stderr)
    if args.json:
        doc = dict(result.raw)
        doc.pop("gradients", None)
        doc.pop("reference", None)
        print(json.dumps(doc, indent=2))
    else:
        from bncheck.textreport import render

        print(render(result))
    return 0 if result.passed else 1


def _in_process(x: Any, dy: Any, gamma: Any, beta: Any, options: dict[str, Any], extra: dict[str, Any]) -> Any:
    """The numerics, called directly (no JSON, no server packages); the report becomes the same
    document the service answers with (wire.document), read by the same client model."""
    from dataclasses import replace

    from bncheck import wire
    from bncheck.client import CheckResult
    from bncheck.numerics import FDOptions, check
    from bncheck.numerics.errors import InputError

    opts = dict(options)
    fd = opts.pop("finite_difference")
    opts.pop("reference")
    opts.pop("gradients")
    opts["device"] = opts["device"] or "cpu"
    try:
        report = check(x, dy, gamma, beta, **opts, **extra, finite_difference=FDOptions(**fd))
    except InputError as exc:
        raise UsageError(str(exc)) from None
    result = CheckResult.from_json(wire.document(report))
    return replace(result, gradients=report.gradients, reference=report.reference)


def _write_outputs(out: Path, result: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for prefix, arrays in (("", result.gradients or {}), ("reference_", result.reference or {})):
        for name, arr in arrays.items():
            np.save(out / f"{prefix}{name}.npy", arr)
    print(f"bncheck: wrote gradients and reference to {out}/", file=sys.stderr)


# ------------------------------------------------------------------ vectors


def _run_vectors(args: argparse.Namespace) -> int:
    from bncheck.numerics import CASES
    from bncheck.vectors import write_vectors

    names = list(CASES) if not args.case or "all" in args.case else args.case
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        msg = f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)} or all"
        raise UsageError(msg)
    start = time.perf_counter()

    def progress(i: int, n: int, name: str) -> None:
        if i < n:
            print(f"vectors: [{i + 1}/{n}] {name} ...", file=sys.stderr, flush=True)

    manifest = write_vectors(Path(args.out), cases=names, shape=_shape(args.shape), channel_axis=args.channel_axis,
                             dtype=args.dtype, seed=args.seed, progress=progress)
    skipped = f"; skipped (values beyond {args.dtype}): {', '.join(manifest['skipped'])}" if manifest["skipped"] else ""
    print(f"vectors: wrote {len(manifest['cases'])} cases to {args.out}/ in {time.perf_counter() - start:.1f} s"
          f"{skipped}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ parser


CHECK_EXAMPLES = """examples:
  # your kernel dumped raw little-endian buffers of an NCHW float16 tensor:
  bncheck check --x x.bin --dy dy.bin --shape 8,32,28,28 --bin-dtype f16 --dx dx.bin
  # mixed precision: 16-bit dx, float32 dgamma and dbeta (per file, FILE:dtype)
  bncheck check --x x.bin --dy dy.bin --shape 8,32,28,28 --bin-dtype bf16 \\
      --dx dx.bin --dgamma dgamma.bin:f32 --dbeta dbeta.bin:f32
  # .npy files, against a running service, the report as JSON
  bncheck check --x x.npy --dy dy.npy --gamma gamma.npy --dx dx.npy --server http://127.0.0.1:8000 --json
  # a built-in stress case, every formula
  bncheck check --case mean_offset --variant all
  # keep a picture of what failed, one HTML file (a CI artifact)
  bncheck check --x x.npy --dy dy.npy --dx dx.npy --html report.html

"""


def _check_parser(sub: Any) -> None:
    from bncheck.numerics import CASES, VARIANTS

    p = sub.add_parser("check", help="check a backward formula, and optionally your outputs, from files",
                       description="Inputs and candidates from .npy, .npz or raw little-endian files. "
                                   "Runs in-process unless --server is given.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CHECK_EXAMPLES + EXIT_CODES)
    src = p.add_argument_group("inputs (.npy; raw files need --shape and --bin-dtype)")
    for name in INPUT_NAMES:
        src.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="FILE")
    src.add_argument("--npz", metavar="FILE", help="named input arrays: x, dy, gamma, beta, ...")
    src.add_argument("--case", metavar="NAME", choices=list(CASES),
                     help=f"use a built-in stress case as the inputs: {', '.join(CASES)}")
    src.add_argument("--shape", help="shape of x for raw files: 16,64,32,32 or 16x64x32x32 or [16, 64, 32, 32]")
    src.add_argument("--bin-dtype", default="float32", help="element type of raw files: float32 (f32, FP32), "
                     "float16 (f16, half), bfloat16 (bf16), float64 (f64, double); default float32. "
                     "One file: FILE:f16")
    cand = p.add_argument_group("candidate outputs to verify")
    for name in CANDIDATE_NAMES:
        cand.add_argument(f"--{name}", dest=name, metavar="FILE")
    cand.add_argument("--candidate-npz", metavar="FILE", help="named arrays: y, mean, invstd, dx, dgamma, dbeta")
    cand.add_argument("--candidate-bin-dtype", help="element type of raw candidate files (default --bin-dtype); "
                      "mixed precision: --dx dx.bin:bf16 --dgamma dgamma.bin:f32")
    how = p.add_argument_group("what to check")
    how.add_argument("--variant", default="qianfeng", choices=[*VARIANTS, "all"],
                     help="the backward formula bncheck computes (default qianfeng); all: every one, and their spread")
    how.add_argument("--dtype", help="precision of the variant and of your kernel's storage (default x's dtype)")
    how.add_argument("--accum-dtype", help="your kernel's arithmetic (default float32 for 16-bit storage)")
    how.add_argument("--eps", type=float, help="epsilon added to the variance (default 1e-5)")
    how.add_argument("--channel-axis", type=int, default=1, help="1 for NCHW and (N, C); -1 for channels-last")
    how.add_argument("--inference", action="store_true", help="inference mode (needs running stats)")
    how.add_argument("--fd", choices=["auto", "stats", "brute", "directional", "none"],
                     help="finite-difference evidence for the reference (default auto; none skips it)")
    how.add_argument("--fd-samples", type=int, help="brute: positions per channel (default all that fit)")
    how.add_argument("--fd-directions", type=int, help="directional: how many random directions (default 4)")
    how.add_argument("--fd-step", type=float, help="finite-difference step, relative to sqrt(var + eps) "
                     "(default 1e-4)")
    how.add_argument("--seed", type=int, help="seed of the sampled positions and directions (default 0)")
    how.add_argument("--rtol", type=float, help="plain allclose tolerance for every candidate tensor, instead of "
                     "the calibrated verdict")
    how.add_argument("--atol", type=float)
    how.add_argument("--tolerance", metavar="TENSOR=RTOL,ATOL", action="append", default=[],
                     help="plain allclose tolerance for one candidate tensor (repeatable), e.g. dgamma=0,1e-4; "
                     "the others keep the calibrated verdict")
    how.add_argument("--device", choices=["cpu", "gpu", "auto"])
    run = p.add_argument_group("where and how")
    run.add_argument("--server", metavar="URL", help="a running bncheck service (default: in-process)")
    run.add_argument("--token", help="bearer token (default $BNCHECK_TOKEN)")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server (default 300)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--out", metavar="DIR", help="also write the gradients and reference as .npy")
    run.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML file with "
                     "per-channel plots, a heatmap of dx and histograms (opens offline; for CI artifacts)")
    p.set_defaults(func=_run_check)


def build_parser() -> argparse.ArgumentParser:
    import os

    from bncheck import __version__

    parser = argparse.ArgumentParser(prog="bncheck", description="Check batch-norm backward passes.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CHECK_EXAMPLES + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"bncheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (settings from BNCHECK_* variables)")
    serve.add_argument("--host", help="address to listen on (BNCHECK_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (BNCHECK_PORT, default 8000)")
    serve.add_argument("--token", help="require this bearer token (BNCHECK_TOKEN)")
    serve.set_defaults(func=_serve)
    _check_parser(sub)
    v = sub.add_parser("vectors", help="write golden test vectors (.npz, raw .bin, manifest.json)")
    v.add_argument("--case", action="append", help="a stress case (repeatable) or 'all' (default all)")
    v.add_argument("--shape", help="override the cases' shapes, e.g. 8,16,4,4")
    v.add_argument("--channel-axis", type=int, default=1)
    v.add_argument("--dtype", default="float32", help="dtype of x and dy in the vectors (default float32)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default="vectors", metavar="DIR")
    v.set_defaults(func=_run_vectors)
    parser.set_defaults(token_env=os.environ.get("BNCHECK_TOKEN"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version (0), or argparse's own usage error (2, already printed)
        return int(exc.code or 0)
    if getattr(args, "token", None) is None:
        args.token = args.token_env
    from bncheck.numerics.errors import InputError

    try:
        return int(args.func(args))
    except (UsageError, InputError) as exc:
        print(f"bncheck: error: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"bncheck: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
