"""Typed results: the /v1/check answer read back (wire.load) into the report's own
dataclasses (numerics/report.py, the one definition the service's schema is generated from),
with the arrays decoded into NumPy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.numerics.report import (
    Block,
    ChannelError,
    CheckReport,
    CrossCheck,
    FDBlock,
    Resolution,
    TensorReport,
    ToleranceUsed,
    VariantsBlock,
)
from bncheck.wire import load

from . import _codec

__all__ = ["Block", "ChannelError", "CheckResult", "CrossCheck", "FDBlock", "Resolution", "TensorReport", "Tolerance",
           "VariantsBlock"]

Tolerance = ToleranceUsed  # the client's name for it


@dataclass(repr=False, eq=False)
class CheckResult(CheckReport):
    """The report (CheckReport's fields: passed, variant, ..., checks, notes, timings_ms), with
    ``gradients`` and ``reference`` as NumPy arrays and the answer's JSON in ``raw``."""

    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckResult:
        def arrays(key: str) -> dict[str, np.ndarray] | None:
            return {k: _codec.decode(v) for k, v in d[key].items()} if key in d else None

        return load(cls, d, gradients=arrays("gradients"), reference=arrays("reference"), raw=d)

    @property
    def variants(self) -> VariantsBlock | None:
        """variant 'all': every formula's block and their spread (``checks.variants``)."""
        return self.checks.variants

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
        fd = self.checks.finite_difference
        cross = fd.cross_check if fd is not None else None
        if cross is not None and not cross.metrics.passed:
            out.append(("finite_difference.cross_check", "dx", cross.metrics))
        return out
