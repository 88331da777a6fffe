"""The web page and the HTML report in a real headless Chromium (Debian's chromium package,
driven by Playwright). `make test` installs Chromium when it is missing (tools/ensure-chromium);
under CI a missing browser fails these tests rather than skipping them.

Oracles: the planted bug (a tile of sample 2 x channels 8-15 never written), the JSON report
of the same check (/v1/check), and an independent correct kernel (tests/numerics/kernels.py).
"""

import base64
import io
import os
import pathlib
import shutil
import zipfile

import numpy as np
import pytest

from bncheck.client import Client
from tests.conftest import LiveServer
from tests.numerics.kernels import backward

playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = pathlib.Path(os.environ.get("BNCHECK_ARTIFACTS", ROOT / "test-artifacts"))
SHAPE = (4, 32, 8, 8)
TILE_SAMPLE, TILE_CHANNELS = 2, range(8, 16)


def _chromium() -> str:
    for name in (os.environ.get("BNCHECK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("no Chromium: CI must run the browser tests (make test installs Debian's chromium)")
    pytest.skip("no Chromium on this machine (apt-get install chromium, or set BNCHECK_CHROMIUM)")
    raise AssertionError  # unreachable


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    with LiveServer() as s:
        yield s


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def _case():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(SHAPE) * 1.5 + 0.3).astype(np.float32)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    good = backward(x, dy, np.ones(SHAPE[1], np.float32), np.zeros(SHAPE[1], np.float32), eps=1e-5)
    bad = good["dx"].copy()
    bad[TILE_SAMPLE, TILE_CHANNELS.start:TILE_CHANNELS.stop] = 0  # one tile never written
    return x, dy, good, bad


def _npy(path, arr):
    np.save(path, arr)
    return str(path)


def _open(page, server, tmp_path, **arrays):
    """The page, with each array saved as NAME.npy and chosen in its file input."""
    page.goto(server.url + "/")
    for name, arr in arrays.items():
        page.set_input_files(f"#f-{name}", _npy(tmp_path / f"{name}.npy", arr))


def _report(page):
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    frame = page.frame_locator("#report")
    frame.locator("h1").wait_for(timeout=30_000)
    return frame


def test_the_page_loads_offline_with_no_console_errors(page, server):
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
               else route.abort())  # nothing but this server
    page.goto(server.url + "/")
    assert page.title().startswith("bncheck")
    assert page.get_by_label("x (required)").count() == 1
    assert page.get_by_label("backward formula (variant)").count() == 1
    page.wait_for_load_state("networkidle")
    assert page.errors == []


def test_a_one_tile_bug_is_drawn_where_it_is(page, server, tmp_path):
    x, dy, good, bad = _case()
    _open(page, server, tmp_path, x=x, dy=dy, dx=bad, dgamma=good["dgamma"], dbeta=good["dbeta"])
    page.select_option("#fd", "stats")
    page.click("#run")
    report = _report(page)
    assert "FAILED" in report.locator("h1").inner_text()
    assert "FAILED" in page.locator("#status").inner_text()

    with Client(base_url=server.url) as bn:
        json_report = bn.check(x, dy, candidate={"dx": bad, "dgamma": good["dgamma"], "dbeta": good["dbeta"]},
                               finite_difference="stats").raw
    dx = json_report["checks"]["candidate"]["dx"]
    assert dx["failed_channels"] == "8-15"

    marks = report.locator("svg.channels[data-tensor='dx'] g.mark")
    assert marks.count() == SHAPE[1]  # one mark per channel
    failing = {int(c) for c in report.locator("svg.channels[data-tensor='dx'] g.mark.fail").evaluate_all(
        "els => els.map(e => e.dataset.channel)")}
    assert failing == set(TILE_CHANNELS)
    assert report.locator("svg.channels[data-tensor='dgamma'] g.mark.fail").count() == 0

    cells = report.locator("svg.heatmap rect.cell")
    assert cells.count() == SHAPE[0] * SHAPE[1]
    hot = report.locator("svg.heatmap rect.cell.fail").evaluate_all(
        "els => els.map(e => [Number(e.dataset.sample), Number(e.dataset.channel)])")
    assert sorted(map(tuple, hot)) == [(TILE_SAMPLE, c) for c in TILE_CHANNELS]  # the tile, and only it

    spatial = report.locator("svg.spatial rect.cell")
    assert spatial.count() == SHAPE[2] * SHAPE[3]
    assert page.errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#report").screenshot(path=str(ARTIFACTS / "failing-report.png"))
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


def _npz(path, **arrays):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:  # what np.savez_compressed writes
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            z.writestr(f"{name}.npy", buf.getvalue())
    return str(path)


def test_npz_inputs_and_a_raw_bin_output(page, server, tmp_path):
    x, dy, good, _ = _case()
    page.goto(server.url + "/")
    page.set_input_files("#f-inputs-npz", _npz(tmp_path / "inputs.npz", x=x, dy=dy))
    (tmp_path / "dx.bin").write_bytes(good["dx"].astype("<f4").tobytes())
    page.set_input_files("#f-dx", str(tmp_path / "dx.bin"))
    page.fill("#bin-shape", "4,32,8,8")
    page.select_option("#fd", "none")
    page.click("#run")
    report = _report(page)
    assert "PASSED" in report.locator("h1").inner_text()
    assert report.locator("svg.channels[data-tensor='dx'] g.mark.fail").count() == 0
    assert report.locator("svg.heatmap rect.cell.fail").count() == 0
    assert page.errors == []


def test_a_raw_bin_of_the_wrong_size_is_explained(page, server, tmp_path):
    x, dy, _, _ = _case()
    _open(page, server, tmp_path, x=x, dy=dy)
    (tmp_path / "dx.bin").write_bytes(b"\0" * 100)
    page.set_input_files("#f-dx", str(tmp_path / "dx.bin"))
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "dx.bin: a raw file of 100 bytes" in page.locator("#error").inner_text()


def test_dropped_files_go_by_name_and_the_keyboard_runs_the_check(page, server):
    x, dy, _, _ = _case()
    page.goto(server.url + "/")
    files = {}
    for name, arr in (("x.npy", x), ("dy.npy", dy)):
        buf = io.BytesIO()
        np.save(buf, arr)
        files[name] = base64.b64encode(buf.getvalue()).decode()
    page.evaluate("""files => {
        const dt = new DataTransfer();
        for (const [name, b64] of Object.entries(files)) {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], name));
        }
        document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", files)
    assert page.locator("#dropped li").all_inner_texts() == ["x.npy → x", "dy.npy → dy"]
    page.select_option("#fd", "none")
    page.focus("#token")
    page.keyboard.press("Tab")  # the next stop is the Check button
    assert page.evaluate("document.activeElement.id") == "run"
    page.keyboard.press("Enter")
    report = _report(page)
    assert "PASSED" in report.locator("h1").inner_text()


def test_the_page_works_behind_the_token(browser, tmp_path):
    x, dy, _, _ = _case()
    with LiveServer(token="s3cret") as server:
        page = browser.new_page()
        _open(page, server, tmp_path, x=x, dy=dy)  # the page and its assets need no token, like /docs
        page.select_option("#fd", "none")
        page.click("#run")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "401" in page.locator("#error").inner_text()
        page.fill("#token", "s3cret")
        page.click("#run")
        assert "PASSED" in _report(page).locator("h1").inner_text()
        page.close()
