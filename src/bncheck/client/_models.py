"""Typed results: the response of /v1/check as frozen dataclasses and NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _codec

__all__ = ["Block", "ChannelError", "CheckResult", "Resolution", "TensorReport", "Tolerance", "VariantsBlock"]

TENSORS = ("dx", "dgamma", "dbeta", "y", "mean", "invstd")


def _known(cls: Any, d: dict[str, Any]) -> dict[str, Any]:
    """The fields this client knows: a newer server may send more."""
    names = cls.__dataclass_fields__
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    mode: str
    floor: float
    basis: str = "analytic"  # analytic | calibrated | user
    envelope: float | None = None  # calibrated: correct kernels' worst error on these inputs, natural units
    margin: float | None = None
    members: int | None = None
    abs_floor: float = 0.0


@dataclass(frozen=True)
class Resolution:
    """What a pass could not see: errors below these went unflagged."""

    natural: float | None  # allowance where the reference is 0, in natural-scale units
    max_abs: float  # the largest error any element was allowed
    ulp: float | None  # max_abs in ulps of the dtype at the tensor's largest |reference|


@dataclass(frozen=True)
class ChannelError:
    channel: int
    max_abs_err: float
    tol_ratio: float | None
    mismatched: int


@dataclass(frozen=True)
class TensorReport:
    passed: bool
    max_abs_err: float
    max_rel_err: float | None  # None: not applicable (cancellation) or not finite
    rms_err: float
    max_ulp: float | None
    tol_ratio: float | None
    worst_index: list[int]
    worst_candidate: float | str
    worst_reference: float
    worst_allowed: float
    mismatched: int
    total: int
    nonfinite: int
    channels_failed: int
    worst_channels: list[ChannelError]
    decided_by: str
    cancellation: bool
    dtype: str
    tolerance: Tolerance
    compared: str | None = None
    failed_channels: str = ""  # every failing channel, in order, as ranges: "16-23,30"
    resolution: Resolution | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorReport:
        res = d.get("resolution")
        return cls(**{**_known(cls, d), "worst_channels": [ChannelError(**_known(ChannelError, c))
                                                           for c in d["worst_channels"]],
                      "tolerance": Tolerance(**_known(Tolerance, d["tolerance"])),
                      "resolution": None if res is None else Resolution(**_known(Resolution, res))})


@dataclass(frozen=True)
class Block:
    passed: bool
    tensors: dict[str, TensorReport]
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # finite_difference: method, step, ...

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Block:
        tensors = {k: TensorReport.from_json(v) for k, v in d.items() if k in TENSORS}
        info = {k: v for k, v in d.items() if k not in TENSORS and k not in ("passed", "notes")}
        return cls(d["passed"], tensors, list(d.get("notes", [])), info)


@dataclass(frozen=True)
class VariantsBlock:
    passed: bool
    variants: dict[str, Block]
    spread: dict[str, float]
    spread_pair: dict[str, list[str]]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VariantsBlock:
        return cls(d["passed"], {k: Block.from_json(v) for k, v in d["variants"].items()}, d["spread"],
                   d["spread_pair"])


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    variant: str
    dtype: str
    accum_dtype: str
    shape: list[int]
    channel_axis: int
    reduce_size: int
    training: bool
    eps: float
    device: str
    gradients: dict[str, np.ndarray] | None
    reference: dict[str, np.ndarray] | None
    checks: dict[str, Block]
    variants: VariantsBlock | None
    timings_ms: dict[str, float]
    notes: list[str]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        checks = {k: Block.from_json(v) for k, v in d["checks"].items() if k != "variants"}
        variants = VariantsBlock.from_json(d["checks"]["variants"]) if "variants" in d["checks"] else None

        def arrays(key: str) -> dict[str, np.ndarray] | None:
            return {k: _codec.decode(v) for k, v in d[key].items()} if key in d else None

        return cls(d["passed"], d["variant"], d["dtype"], d["accum_dtype"], d["shape"], d["channel_axis"],
                   d["reduce_size"], d["training"], d["eps"], d["device"], arrays("gradients"),
                   arrays("reference"), checks, variants, d["timings_ms"], d["notes"], d)

    def __repr__(self) -> str:
        failed = [f"{b}.{t}" for b, t, _ in self.failures()]
        return (f"CheckResult(passed={self.passed}, variant={self.variant!r}, dtype={self.dtype!r}, "
                f"shape={self.shape}, failed={failed})")

    def summary(self) -> str:
        """The verdict, then one line per tensor of each block: what failed and where first."""
        lines = [f"{'PASSED' if self.passed else 'FAILED'}: {self.variant} in {self.dtype} "
                 f"(accumulating in {self.accum_dtype}), shape {self.shape}, {self.reduce_size:,} per channel"]
        blocks = dict(self.checks)
        if self.variants is not None:
            blocks.update({f"variants.{k}": b for k, b in self.variants.variants.items()})
        for name, block in blocks.items():
            for t, r in block.tensors.items():
                where = ""
                if not r.passed:
                    where = (f": {r.mismatched:,} of {r.total:,} wrong, worst at {r.worst_index} "
                             f"({r.worst_candidate!r} vs {r.worst_reference!r}), channels {r.failed_channels}")
                res = ""
                if r.resolution is not None and r.tolerance.basis == "calibrated":
                    res = f"; no error above {r.resolution.max_abs:.3g} would pass unseen"
                ratio = "n/a" if r.tol_ratio is None else f"{r.tol_ratio:.3g}"
                lines.append(f"  {name}.{t}: {'ok' if r.passed else 'FAIL'} (tol_ratio {ratio}){where}{res}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def failures(self) -> list[tuple[str, str, TensorReport]]:
        """(block, tensor, report) for every tensor that failed."""
        blocks = dict(self.checks)
        if self.variants is not None:
            blocks.update({f"variants.{k}": b for k, b in self.variants.variants.items()})
        out = [(b, t, r) for b, block in blocks.items() for t, r in block.tensors.items() if not r.passed]
        fd = self.checks.get("finite_difference")
        cross = fd.info.get("cross_check") if fd is not None else None
        if cross and not cross["metrics"]["passed"]:
            out.append(("finite_difference.cross_check", "dx", TensorReport.from_json(cross["metrics"])))
        return out
