"""The HTML report, without a browser: self-contained, and its pictures are the JSON report's
numbers. Oracles: the planted bug's place, the JSON report of the same check (tol_ratio,
failed_channels, totals), and invariants (every element is in the histogram once)."""

import re
from html.parser import HTMLParser

import numpy as np
import orjson
import pytest

from bncheck import htmlreport
from bncheck.client import build_request
from bncheck.server import Settings, runner
from tests.numerics.kernels import backward

SETTINGS = Settings(executor="thread")


class Elements(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag, cls=None, **attrs):
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _case(bug: bool, shape=(3, 16, 5, 4), channel_axis=1):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[channel_axis]
    good = backward(x, dy, np.ones(C, np.float32), np.zeros(C, np.float32), eps=1e-5, channel_axis=channel_axis)
    dx = good["dx"].copy()
    if bug:
        index = [slice(None)] * len(shape)
        index[0], index[channel_axis] = 1, slice(4, 7)  # sample 1, channels 4-6
        dx[tuple(index)] = 0
    body = build_request(x, dy, candidate={"dx": dx, "dgamma": good["dgamma"]}, channel_axis=channel_axis,
                         finite_difference="none")
    return orjson.dumps(body)


def _both(body: bytes):
    page = runner.run(body, SETTINGS, html=True)
    plots = {**orjson.loads(body), "output": {"plots": True}}
    doc = orjson.loads(runner.run(orjson.dumps(plots), SETTINGS).body)
    parser = Elements()
    parser.feed(page.body.decode())
    return page, doc, parser


def _channels(ranges: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, ranges.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


@pytest.mark.parametrize("bug", [False, True])
def test_the_pictures_are_the_json_reports_numbers(bug):
    page, doc, html = _both(_case(bug))
    assert page.media_type.startswith("text/html")
    assert page.passed is (not bug)
    assert doc["passed"] is (not bug)
    dx = doc["checks"]["candidate"]["dx"]
    marks = html.find("g", "mark")
    dx_svg = html.find("svg", "channels", data_tensor="dx")
    assert len(dx_svg) == 1
    C = 16
    dx_marks = marks[:C]  # the dx plot comes first
    assert [int(m["data-channel"]) for m in dx_marks] == list(range(C))
    ratios = [float(m["data-ratio"]) for m in dx_marks]
    assert max(ratios) == pytest.approx(dx["tol_ratio"], rel=1e-5)
    failing = {int(m["data-channel"]) for m in dx_marks if "fail" in m["class"].split()}
    assert failing == _channels(dx["failed_channels"])
    assert failing == ({4, 5, 6} if bug else set())
    cells = html.find("rect", "cell")
    heat = [c for c in cells if "data-sample" in c]
    assert len(heat) == 3 * C
    hot = {(int(c["data-sample"]), int(c["data-channel"])) for c in heat if "fail" in c["class"].split()}
    assert hot == ({(1, 4), (1, 5), (1, 6)} if bug else set())
    hist = dx["plots"]["histogram"]
    assert sum(hist["counts"]) + hist["zero"] + hist["nonfinite"] == dx["total"]
    over = sum(n for edge, n in zip(hist["edges"], hist["counts"], strict=False) if edge >= 0)
    assert over == dx["mismatched"]
    natural = dx["plots"]["natural"]
    assert sum(natural["counts"]) + natural["zero"] == dx["total"] - dx["nonfinite"]
    assert natural["allowed"] == dx["tolerance"]["atol"]
    assert natural["envelope"] == dx["tolerance"]["envelope"]
    # every element past the allowance at reference 0 plus the largest rtol term is a mismatch, and
    # the planted zeros are errors of the order of the values themselves: near 1 natural unit
    big = sum(n for edge, n in zip(natural["edges"], natural["counts"], strict=False) if edge >= -1)
    assert (big > 0) is bug
    assert len(html.find("svg", "natural")) == 2  # dx and dgamma


def test_channels_last_heatmap_and_spatial_map():
    """NHWC: rows are samples, the spatial map is H x W of the worst (sample, channel)."""
    _, doc, html = _both(_case(True, shape=(3, 5, 4, 16), channel_axis=-1))
    plots = doc["checks"]["candidate"]["dx"]["plots"]
    assert len(plots["heatmap"]["values"]) == 3
    assert len(plots["heatmap"]["values"][0]) == 16
    assert plots["spatial"]["sample"] == 1
    assert plots["spatial"]["channel"] in (4, 5, 6)
    assert plots["spatial"]["shape"] == [5, 4]
    assert len([c for c in html.find("rect", "cell") if "data-row" in c]) == 20


def test_the_report_is_self_contained():
    page, _, html = _both(_case(True))
    text = page.body.decode()
    assert html.find("script") == []
    assert html.find("link") == []
    assert html.find("img") == []
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)
    assert "url(http" not in text
    assert "@import" not in text
    for svg in html.find("svg"):  # every picture has a text alternative
        assert svg.get("role") == "img"
        assert svg.get("aria-label")


def test_render_marks_non_finite_candidates():
    x = np.zeros((4, 3))
    x[:, 0] = [1, 2, 3, 5]
    x[:, 1] = [0.5, -1, 2, 0]
    x[:, 2] = [3, 3.5, -2, 1]
    dx = np.zeros((4, 3))
    dx[2, 1] = np.nan  # the client sends it as b64
    body = build_request(x, x * 0.1, candidate={"dx": dx}, finite_difference="none")
    page, doc, html = _both(orjson.dumps(body))
    assert doc["checks"]["candidate"]["dx"]["plots"]["channel_ratio"][1] is None
    mark = html.find("g", "mark", data_channel="1")[0]
    assert "fail" in mark["class"]
    assert mark["data-ratio"] == ""


@pytest.mark.anyio
async def test_accept_text_html_on_v1_and_v2(client):
    body = _case(True)
    r = await client.post("/v1/check", content=body, headers={"content-type": "application/json",
                                                               "accept": "text/html"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "FAILED" in r.text
    j = await client.post("/v1/check", content=body, headers={"content-type": "application/json",
                                                               "accept": "application/json, text/html"})
    assert j.headers["content-type"] == "application/json"
    assert "plots" not in j.json()["checks"]["candidate"]["dx"]
    x = np.ones((4, 2), np.float32).cumsum(0)
    header = orjson.dumps({"inputs": [
        {"name": "x", "shape": [4, 2], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
        {"name": "dy", "shape": [4, 2], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]})
    v2 = await client.post("/v2/models/qianfeng/infer", content=header + x.tobytes() + (x * 0.5).tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header)), "accept": "text/html"})
    assert v2.status_code == 200
    assert v2.headers["content-type"].startswith("text/html")
    assert "PASSED" in v2.text


def test_htmlreport_escapes_what_it_shows():
    doc = orjson.loads(runner.run(_case(False), SETTINGS).body)
    doc["notes"] = ["<script>alert(1)</script>"]
    text = htmlreport.render(doc)
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


@pytest.mark.anyio
async def test_the_page_and_its_assets(client):
    page = await client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        r = await client.get(asset)
        assert r.status_code == 200, asset
    assert (await client.get("/")).json()["v2"] == "POST /v2/models/{variant}/infer"


@pytest.mark.anyio
async def test_an_answer_with_plots_follows_the_openapi_document(client, openapi):
    body = {**orjson.loads(_case(True)), "output": {"plots": True}}
    r = await client.post("/v1/check", json=body)
    assert r.status_code == 200
    assert "plots" in r.json()["checks"]["candidate"]["dx"]
    openapi.validate("/v1/check", "post", r)
