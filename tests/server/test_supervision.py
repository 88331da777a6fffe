"""A worker that dies (kill -9, the OOM killer) is replaced; the service heals (a real `bncheck serve`)."""

import os
import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from bncheck.client import build_request

from .serving import children, cmdline, serve, still_alive, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    with open(tmp_path / "server.log", "wb") as log:
        proc, url = serve(stderr=log, log_level="warning", max_concurrent="1")
        try:
            wait_ready(url, 60)
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert b"Traceback" not in (tmp_path / "server.log").read_bytes()  # every death was handled


def _metrics(url):
    return httpx.get(f"{url}/metrics", timeout=5).text


def _worker_pids(url):
    return [int(p) for p in re.findall(r'bncheck_worker_resident_memory_bytes\{pid="(\d+)"\}', _metrics(url))]


def _gauge(text, name):
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def _slow_body():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64, 16))
    return build_request(x, rng.standard_normal(x.shape), finite_difference={"method": "brute", "samples": 256})


def _post_and_kill(url, body):
    """Post a slow check and kill its worker while it runs; returns the response."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/v1/check", json=body, timeout=120)))
    pids = _worker_pids(url)
    assert len(pids) == 1
    thread.start()
    while _gauge(_metrics(url), "bncheck_checks_in_flight") < 1:
        assert thread.is_alive(), "the check finished before its worker could be killed"
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the request hung after its worker died"
    return result["r"], pids[0]


def test_a_worker_killed_mid_check_gets_503_and_the_service_heals(server):
    small = build_request(np.ones((4, 3)) + np.arange(12).reshape(4, 3), np.ones((4, 3)))
    r, killed = _post_and_kill(server, _slow_body())
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/worker-died"
    assert int(r.headers["retry-after"]) > 0
    died = time.monotonic()
    ready = wait_ready(server, 15)  # a new worker within 15 s
    assert ready - died < 15
    assert httpx.post(f"{server}/v1/check", json=small, timeout=60).status_code == 200
    text = _metrics(server)
    assert _gauge(text, "bncheck_checks_in_flight") == 0
    assert _gauge(text, "bncheck_worker_deaths_total") == 1
    assert killed not in _worker_pids(server)
    assert _gauge(text, "process_resident_memory_bytes") > 0


def test_readyz_says_so_while_the_workers_restart(server):
    pid = _worker_pids(server)[0]
    os.kill(pid, signal.SIGKILL)
    statuses = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        statuses.add(httpx.get(f"{server}/readyz", timeout=5).status_code)
        if 503 in statuses and statuses >= {503, 200} and pid not in _worker_pids(server):
            break
        time.sleep(0.02)
    assert 503 in statuses  # while no check could run
    wait_ready(server, 15)
    small = build_request(np.arange(12.0).reshape(4, 3), np.ones((4, 3)))
    assert httpx.post(f"{server}/v1/check", json=small, timeout=60).status_code == 200


def test_a_worker_killed_while_idle_costs_the_next_check_nothing(server):
    os.kill(_worker_pids(server)[0], signal.SIGKILL)
    time.sleep(0.5)  # the executor notices the death
    small = build_request(np.arange(12.0).reshape(4, 3), np.ones((4, 3)))
    r = httpx.post(f"{server}/v1/check", json=small, timeout=60)
    assert r.status_code in (200, 503), r.text  # 503 only if the check raced the executor's notice
    if r.status_code == 503:
        assert r.json()["type"] == "/problems/worker-died"
    wait_ready(server, 15)
    assert httpx.post(f"{server}/v1/check", json=small, timeout=60).status_code == 200


def test_a_body_that_kills_its_worker_twice_is_refused_not_retried_forever(server):
    body = _slow_body()
    first, _ = _post_and_kill(server, body)
    assert first.status_code == 503
    wait_ready(server, 15)
    second, _ = _post_and_kill(server, body)
    assert second.status_code == 413, second.text
    assert second.json()["type"] == "/problems/too-big-for-memory"
    wait_ready(server, 15)


def test_a_worker_memory_limit_turns_a_too_big_check_into_a_clean_413(tmp_path):
    """BNCHECK_WORKER_MEMORY_MB (RLIMIT_AS): a check that needs more is refused, the worker lives on."""
    proc, url = serve(log_level="warning", max_concurrent="1", worker_memory_mb="400")
    try:
        wait_ready(url, 60)
        pids = _worker_pids(url)
        x = np.random.default_rng(0).standard_normal((256, 64, 64)).astype(np.float32)
        r = httpx.post(f"{url}/v1/check", json=build_request(x, x, variant="all", candidate={"dx": x}), timeout=120)
        assert r.status_code == 413, r.text[:300]
        assert r.json()["type"] == "/problems/too-big-for-memory"
        assert "BNCHECK_WORKER_MEMORY_MB=400" in r.json()["detail"]
        small = build_request(np.arange(12.0).reshape(4, 3), np.ones((4, 3)))
        assert httpx.post(f"{url}/v1/check", json=small, timeout=60).status_code == 200
        assert _worker_pids(url) == pids  # no worker died
        assert _gauge(_metrics(url), "bncheck_worker_deaths_total") == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_workers_leave_with_a_killed_server():
    """SIGKILL gives the server no chance to stop its workers; they notice within a second or
    two and exit, instead of keeping their memory for ever."""
    proc, url = serve(log_level="warning", max_concurrent="2")
    try:
        wait_ready(url, 60)
        small = build_request(np.arange(12.0).reshape(4, 3), np.ones((4, 3)))
        assert httpx.post(f"{url}/v1/check", json=small, timeout=60).status_code == 200
        pids = _worker_pids(url)
        assert len(pids) == 2, pids
        assert still_alive(pids, 0) == pids
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert still_alive(pids, 15) == []


def test_workers_still_starting_leave_with_a_killed_server():
    """The server dies while its workers are still starting (importing NumPy): each must know
    its server from the server, not take its new parent (init) for it."""
    proc, _ = serve(log_level="warning", max_concurrent="2")
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:  # the pool spawns its workers at startup
            workers = [p for p in children(proc.pid) if b"spawn_main" in cmdline(p)]
            time.sleep(0.01)
        assert len(workers) == 2, workers
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert still_alive(workers, 15) == []
