"""The bad-input catalogue: the right 4xx, a problem document naming the field, never a 500,
never a hang, never an echo of the input."""

import pathlib

import numpy as np
import pytest

from bncheck.numerics.backend import gpu_available

from .catalogue import CASES, SPECIAL, b64, body

pytestmark = pytest.mark.anyio
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


def test_the_catalogue_is_large_and_distinct():
    ids = [c[0] for c in CASES] + [c[0] for c in SPECIAL]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


def test_every_case_is_documented():
    doc = DOC.read_text()
    for case_id, _what, *_ in CASES:
        assert f"| `{case_id}` |" in doc, case_id
    for case_id, _what, _status, _ in SPECIAL:
        assert f"| `{case_id}` |" in doc, case_id


def _check_problem(r, status, field, words):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == status
    assert problem["type"].startswith("/problems/")
    assert problem["title"]
    assert problem["detail"]
    assert len(r.content) < 4000  # never an echo of a big input
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem
    text = problem["detail"] + " ".join(e["message"] for e in problem.get("errors", []))
    assert words in text, text


@pytest.mark.parametrize(("case_id", "what", "kind", "payload", "status", "field", "words"), CASES,
                         ids=[c[0] for c in CASES])
async def test_bad_input(client, case_id, what, kind, payload, status, field, words):
    if kind == "raw":
        content, headers = payload
        r = await client.post("/v1/check", content=content, headers=headers)
    else:
        r = await client.post("/v1/check", json=payload)
    _check_problem(r, status, field, words)


async def test_body_too_large(make_client):
    async with make_client(max_body_bytes=4096) as c:
        r = await c.post("/v1/check", json=body(x=np.ones((300, 2)).tolist(), dy=np.ones((300, 2)).tolist()))
    _check_problem(r, 413, None, "4,096 bytes")


async def test_too_much_work(make_client):
    async with make_client(fd_work=10) as c:
        r = await c.post("/v1/check", json=body(finite_difference={"method": "directional"}))
    _check_problem(r, 422, "finite_difference", "over the limit")
    assert r.json()["type"] == "/problems/too-much-work"


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
async def test_gpu_missing(client):
    r = await client.post("/v1/check", json=body(device="gpu"))
    _check_problem(r, 422, "device", "CuPy")
    assert r.json()["type"] == "/problems/device-unavailable"


async def test_nan_in_candidate_is_reported_not_refused(client):
    dx = [[0.0, float("nan")], [0.0, 0.0], [0.0, 0.0]]
    r = await client.post("/v1/check", json=body(candidate={"dx": b64(dx)}))
    assert r.status_code == 200
    m = r.json()["checks"]["candidate"]["dx"]
    assert m["nonfinite"] == 1
    assert m["worst_index"] == [0, 1]
    assert not m["passed"]


def test_the_problem_kinds_in_the_doc_are_the_table():
    from bncheck.server.problems import markdown_table

    doc = DOC.read_text()
    table = doc.split("<!-- problem kinds -->\n")[1].split("\n<!-- /problem kinds -->")[0]
    assert table == markdown_table()
