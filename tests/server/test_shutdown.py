"""SIGTERM lets in-flight checks finish (a real `bncheck serve`, worker processes)."""

import signal
import threading
import time

import httpx
import numpy as np

from bncheck.client import build_request

from .serving import serve, wait_ready


def test_sigterm_lets_an_in_flight_check_finish():
    proc, url = serve(log_level="warning", max_concurrent="1")
    try:
        wait_ready(url, 60)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 64, 16))
        body = build_request(x, rng.standard_normal(x.shape), finite_difference={"method": "brute", "samples": 64})
        result = {}

        def post():
            result["response"] = httpx.post(f"{url}/v1/check", json=body, timeout=120)

        worker = threading.Thread(target=post)
        worker.start()
        while "bncheck_checks_in_flight 1.0" not in httpx.get(f"{url}/metrics").text:
            assert worker.is_alive(), "the check finished before SIGTERM could be sent"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        assert result["response"].status_code == 200
        assert result["response"].json()["checks"]["finite_difference"]["samples"] == 64
        # uvicorn shuts down gracefully, then re-raises SIGTERM so that the exit status says why.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
