"""A CheckResult as text for a terminal: verdicts first, numbers after."""

from __future__ import annotations

from bncheck.client import Block, CheckResult, FDBlock, TensorReport

__all__ = ["render"]


def _num(v: float | str | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.3g}"


def _tensor(name: str, t: TensorReport) -> list[str]:
    verdict = "ok  " if t.passed else "FAIL"
    line = (f"    {name:<7} {verdict} max abs {_num(t.max_abs_err)}  max rel {_num(t.max_rel_err)}  "
            f"ulp {_num(t.max_ulp)}  tol_ratio {_num(t.tol_ratio)}  worst {t.worst_index}")
    lines = [line]
    if not t.passed:
        lines.append(f"            {t.mismatched:,} of {t.total:,} mismatched, {t.nonfinite} non-finite; at worst "
                     f"candidate {t.worst_candidate!r} vs reference {t.worst_reference!r} "
                     f"(decided by {t.decided_by}{', cancellation' if t.cancellation else ''})")
        chans = ", ".join(f"{c.channel} ({c.mismatched})" for c in t.worst_channels if c.mismatched)
        lines.append(f"            {t.channels_failed} channels failed: {t.failed_channels}; "
                     f"worst (mismatched): {chans}")
    elif t.cancellation:
        lines.append("            cancellation: the values are far below their terms; relative error means nothing")
    if t.resolution is not None and t.tolerance.basis == "calibrated":
        res = t.resolution
        ulps = f", {_num(res.ulp)} ulps of {t.dtype} at its largest value" if res.ulp is not None else ""
        lines.append(f"            resolution: no error above {_num(res.max_abs)}{ulps}; envelope of "
                     f"{t.tolerance.members} correct kernels {_num(t.tolerance.envelope)} natural units, "
                     f"allowed {_num(t.tolerance.margin)}x that")
    if t.compared:
        lines.append(f"            compared: {t.compared}")
    return lines


def _block(title: str, b: Block) -> list[str]:
    info = ""
    if isinstance(b, FDBlock):
        info = (f" ({b.method}, {b.elements:,} values, step {_num(b.step)}, "
                f"est. error {_num(b.estimated_error)})")
    lines = [f"  {title:<18} {'passed' if b.passed else 'FAILED'}{info}"]
    for name, t in b.tensors.items():
        lines += _tensor(name, t)
    cross = b.cross_check if isinstance(b, FDBlock) else None
    if cross is not None:
        lines.append(f"    cross-check {cross.method} at {cross.positions} positions: "
                     f"{'ok' if cross.metrics.passed else 'FAIL'} (tol_ratio {_num(cross.metrics.tol_ratio)})")
    lines += [f"    note: {n}" for n in b.notes]
    return lines


def render(r: CheckResult) -> str:
    head = (f"bncheck: {'PASSED' if r.passed else 'FAILED'}  variant {r.variant} in {r.dtype} "
            f"(accumulating in {r.accum_dtype}) on the {r.device}; shape {r.shape}, channel axis {r.channel_axis}, "
            f"{r.reduce_size:,} elements per channel, {'training' if r.training else 'inference'}, eps {r.eps:g}")
    lines = [head]
    for name, block in r.checks.items():
        lines += _block(name, block)
    if r.variants is not None:
        lines.append(f"  {'variants':<18} {'passed' if r.variants.passed else 'FAILED'}")
        for name, block in r.variants.variants.items():
            lines += _block(f"  {name}", block)
        lines.append("    spread: " + ", ".join(f"{k} {_num(v)} ({' vs '.join(r.variants.spread_pair[k])})"
                                             for k, v in r.variants.spread.items()))
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"  time: {r.timings_ms.get('total', 0):.1f} ms")
    return "\n".join(lines)
