"""The report's one definition (numerics/report.py) on the wire and back (wire.py): what the
service writes is what the client reads, field for field."""

import dataclasses
import math

import numpy as np
import orjson
import pytest

from bncheck import wire
from bncheck.client import CheckResult
from bncheck.numerics import FDOptions, check
from bncheck.numerics.report import OMIT, CheckReport


def _same(a, b, path="report"):
    """Equal, with the wire's one loss: a float that is not finite comes back as None."""
    if dataclasses.is_dataclass(a):
        assert isinstance(b, type(a)), path
        for f in dataclasses.fields(a):
            if f.name in ("gradients", "reference", "raw"):
                continue
            _same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not math.isfinite(a):
        assert b is None, path
    else:
        assert a == b, path


def _reports():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5, 3, 2)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    good = check(x, dy, finite_difference=FDOptions("none")).gradients["dx"]
    bad = good.copy()
    bad[1, 2, 0, 0] = np.nan
    yield check(x, dy, candidate={"dx": bad}, finite_difference=FDOptions("auto"), plots=True)
    yield check(x, dy, variant="all", finite_difference=FDOptions("brute"))
    yield check(x, dy, finite_difference=FDOptions("directional", directions=3))
    stats = check(x.astype(np.float64), dy.astype(np.float64), dtype="float64")
    mean = x.astype(np.float64).mean(axis=(0, 2, 3))
    invstd = 1 / np.sqrt(x.astype(np.float64).var(axis=(0, 2, 3)) + 1e-5)
    yield check(x, dy, saved_mean=mean, saved_invstd=invstd, tolerance=(1e-3, 1e-4), candidate={"dx": good})
    yield stats


@pytest.mark.parametrize("report", list(_reports()), ids=["nan-plots", "all-brute", "directional", "saved", "f64"])
def test_a_report_survives_the_wire(report):
    doc = orjson.loads(orjson.dumps(wire.document(report)))  # through real JSON text
    back = CheckResult.from_json(doc)
    assert isinstance(back, CheckReport)
    _same(report, back)
    assert wire.document(back) == doc  # and writes the same document again


def test_omitted_fields_are_left_out_and_the_rest_always_sent():
    report = next(_reports())
    doc = wire.document(report)
    block = doc["checks"]["variant"]
    assert "y" not in block
    assert "mean" not in block
    assert "compared" not in block["dx"]
    assert "plots" in doc["checks"]["candidate"]["dx"]
    for f in dataclasses.fields(CheckReport):
        if not f.metadata.get(OMIT):
            assert f.name in doc, f.name
    assert doc["checks"]["candidate"]["dx"]["worst_candidate"] == "nan"


def test_a_document_that_is_not_a_report_is_refused_by_name():
    with pytest.raises(KeyError, match="lacks passed, variant"):
        CheckResult.from_json({"checks": {}})
