"""The one place a numerics report becomes the wire's JSON document (docs/design.md, "The wire
contract"): the /v1/check answer, the v2 ``report`` output, ``bncheck check --json`` and the
HTML report all come from ``document``. Pure Python and NumPy: the CLI uses it without the
server's packages, and the client reads the same document back (client/_models.py).

Rules: every float that is not finite becomes null (JSON has no NaN or Inf); a tensor report's
``compared`` and ``plots`` appear only when they say something; a finite-difference block
carries its method, step and cross-check beside its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from bncheck.numerics.report import Block, CheckReport, FDBlock, TensorMetrics, VariantsBlock

__all__ = ["document", "json_safe"]

HEAD = ("passed", "variant", "dtype", "accum_dtype", "shape", "channel_axis", "reduce_size", "training", "eps",
        "device")


def json_safe(value: Any) -> Any:
    """Non-finite floats have no JSON number: inf becomes null (documented per field)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _tensor(m: TensorMetrics) -> dict[str, Any]:
    doc = json_safe(asdict(m))
    for key in ("compared", "plots"):  # said only where there is something to say
        if doc[key] is None:
            del doc[key]
    return dict(doc)


def _block(b: Block) -> dict[str, Any]:
    out: dict[str, Any] = {"passed": b.passed, "notes": list(b.notes)}
    out.update({name: _tensor(m) for name, m in b.tensors.items()})
    if isinstance(b, FDBlock):
        extra = asdict(b)
        for key in ("passed", "notes", "tensors"):
            extra.pop(key)
        if b.cross_check is None:
            extra.pop("cross_check")
        for key in ("samples", "directions"):
            if extra[key] is None:
                extra.pop(key)
        out.update(json_safe(extra))
    return out


def _variants(v: VariantsBlock) -> dict[str, Any]:
    return {"passed": v.passed, "variants": {k: _block(b) for k, b in v.variants.items()},
            "spread": json_safe(v.spread), "spread_pair": v.spread_pair}


def document(report: CheckReport, arrays: Mapping[str, Any] | None = None, notes: list[str] | None = None
             ) -> dict[str, Any]:
    """The report as JSON-ready values. ``arrays`` (gradients, reference: already encoded by the
    caller, who knows the transport) go after the header; ``notes`` are added to the report's."""
    doc: dict[str, Any] = {key: getattr(report, key) for key in HEAD}
    doc.update(arrays or {})
    checks: dict[str, Any] = {}
    c = report.checks
    for name, block in (("variant", c.variant), ("finite_difference", c.finite_difference),
                        ("candidate", c.candidate), ("saved_statistics", c.saved_statistics)):
        if block is not None:
            checks[name] = _block(block)
    if c.variants is not None:
        checks["variants"] = _variants(c.variants)
    doc["checks"] = checks
    doc["notes"] = list(report.notes) + list(notes or [])
    doc["timings_ms"] = json_safe(dict(report.timings_ms))
    return doc
