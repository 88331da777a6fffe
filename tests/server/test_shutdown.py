"""SIGTERM lets in-flight checks finish (a real `bncheck serve`, worker processes)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from bncheck.client import build_request


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_lets_an_in_flight_check_finish():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BNCHECK_PORT": str(port), "BNCHECK_LOG_LEVEL": "warning", "BNCHECK_MAX_CONCURRENT": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
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
