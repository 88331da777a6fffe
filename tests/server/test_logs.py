"""One structured log format for bncheck's lines and uvicorn's; a request id on every request line;
a quiet stop with exit status 0 (a real `bncheck serve`)."""

import json
import signal
import time

import httpx
import pytest

from .serving import serve, wait_ready

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_json_lines_with_time_level_and_request_id_and_a_quiet_stop(tmp_path, stop):
    with open(tmp_path / "err", "wb") as err, open(tmp_path / "out", "wb") as out:
        proc, url = serve(stdout=out, stderr=err, log_format="json", max_concurrent="1")
        try:
            wait_ready(url, 60)
            r = httpx.post(f"{url}/v1/check", json={"x": [[1.0, 2.0], [3.0, 5.0]], "dy": [[1.0, 0.0], [0.0, 1.0]]},
                           headers={"x-request-id": "ci-job-42"}, timeout=60)
            assert r.headers["x-request-id"] == "ci-job-42"
            fresh = httpx.get(f"{url}/livez").headers["x-request-id"]
            assert len(fresh) == 16
            time.sleep(0.2)
            proc.send_signal(stop)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = [json.loads(line) for line in (tmp_path / "err").read_text().splitlines() if line.strip()]
    assert lines, "nothing was logged"
    for line in lines:  # every line, uvicorn's own too
        assert {"time", "level", "logger", "request_id", "message"} <= set(line), line
        assert "color_message" not in line
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.error" in loggers
    assert "bncheck.access" in loggers
    access = [line for line in lines if line["logger"] == "bncheck.access" and line.get("path") == "/v1/check"]
    assert access[0]["request_id"] == "ci-job-42"
    assert access[0]["status"] == 200
    assert "Traceback" not in (tmp_path / "err").read_text()
