"""What a check is asked, defined once: the tensors it takes and its options.

``check()`` reads its options into ``CheckOptions``; the service's request model
(server/schemas.py), the v2 protocol's parameters (server/kserve.py), the client's
``build_request`` and the CLI are built from these definitions, so none of them lists the
fields again. A field's metadata holds its description (``doc``) and its bounds (``ge``,
``gt``, ``le``), which the numerics check here and the service's schema states.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InputError

__all__ = ["CANDIDATE_NAMES", "FD_METHODS", "INPUT_NAMES", "WIRE_OUTPUT", "CheckOptions", "FDOptions", "Tolerances",
           "option", "options_from"]

# The tensors a check takes: x and dy, then the optional ones, in the order check() takes them.
INPUT_NAMES = ("x", "dy", "gamma", "beta", "running_mean", "running_var", "saved_mean", "saved_invstd")
# A kernel's outputs a check verifies (``candidate``).
CANDIDATE_NAMES = ("y", "mean", "invstd", "dx", "dgamma", "dbeta")
FD_METHODS = ("auto", "stats", "brute", "directional", "none")
WIRE_OUTPUT = ("plots",)  # options that the JSON request (/v1/check) carries inside "output"
Tolerances = tuple[float, float] | Mapping[str, tuple[float, float]] | None


def option(default: Any = None, *, doc: str, factory: Any = None, **bounds: float) -> Any:
    """A field of the request: its default, what it means, and its bounds."""
    meta = {"doc": doc, **bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FDOptions:
    """How the float64 reference is checked by finite differences of the forward definition."""

    method: Literal["auto", "stats", "brute", "directional", "none"] = option(
        "auto", doc="auto = stats on every element plus a brute cross-check where affordable; none skips.")
    samples: int | None = option(None, doc="brute: positions per channel (default all)", ge=1, le=1 << 20)
    directions: int = option(4, doc="directional: seeded random directions", ge=1, le=256)
    seed: int = option(0, doc="seed of the sampled positions (brute) and directions (directional)", ge=0,
                       le=2**32 - 1)
    step: float = option(1e-4, doc="step relative to sqrt(var + eps), per channel", gt=0, le=0.1)


@dataclass(frozen=True)
class CheckOptions:
    """Everything a check is asked besides its tensors."""

    variant: str = option("qianfeng", doc="the backward formula: staged, kevin, rocking, qianfeng, or all")
    dtype: str | None = option(None, doc="precision of the variant; default x's datatype, FP32 for lists")
    accum_dtype: str | None = option(None, doc="accumulation precision; default float32 for 16-bit dtypes")
    eps: float = option(1e-5, doc="the epsilon added to the variance", gt=0)
    channel_axis: int = option(1, doc="1 for NCHW and (N, D); -1 for channels-last", ge=-32, le=31)
    training: bool = option(True, doc="training mode (batch statistics); false: inference, which needs "
                                      "running_mean and running_var")
    finite_difference: FDOptions = option(doc="finite-difference evidence that the float64 reference is right",
                                          factory=FDOptions)
    tolerance: Tolerances = option(None, doc="omit for the calibrated verdict; (rtol, atol) for every candidate "
                                             "tensor, or per tensor")
    device: Literal["cpu", "gpu", "auto"] | None = option(None, doc="default: cpu (the service: BNCHECK_DEVICE)")
    plots: bool = option(False, doc="keep what the HTML report draws: per-channel tol_ratio, the worst ratio "
                                    "over (sample, channel), the worst cell's positions, histograms")


def options_from(given: Mapping[str, Any]) -> CheckOptions:
    """``check()``'s keyword options as a CheckOptions, refusing unknown names and values out of
    their bounds with the field named."""
    names = [f.name for f in dataclasses.fields(CheckOptions)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        msg = f"unknown option; check() takes {', '.join(names)} (and the tensors {', '.join(INPUT_NAMES)})"
        raise InputError(msg, field=unknown[0])
    values = {k: v for k, v in given.items() if not (v is None and k == "finite_difference")}
    opts = CheckOptions(**values)
    _bounded(opts, "")
    fd = opts.finite_difference
    if not isinstance(fd, FDOptions):
        msg = f"is {type(fd).__name__}; give FDOptions(method=..., ...)"
        raise InputError(msg, field="finite_difference")
    if fd.method not in FD_METHODS:
        msg = f"unknown method {fd.method!r}; choose from {', '.join(FD_METHODS)}"
        raise InputError(msg, field="finite_difference.method")
    _bounded(fd, "finite_difference.")
    return opts


def _bounded(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        lo, hi, above = f.metadata.get("ge"), f.metadata.get("le"), f.metadata.get("gt")
        bad = (not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi)
               or (above is not None and value <= above))
        if bad:
            low = f"> {_n(above)}" if above is not None else (f">= {_n(lo)}" if lo is not None else "")
            high = f"<= {_n(hi)}" if hi is not None else ""
            msg = f"is {value!r}; it must be a finite number {' and '.join(p for p in (low, high) if p)}".rstrip()
            raise InputError(msg, field=prefix + f.name)


def _n(bound: float) -> str:
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:g}"
