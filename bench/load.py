"""A bounded load test against a real `bncheck serve`: mixed checks at a fixed concurrency.

    python -m bench.load [--checks 2000] [--concurrency 16] [--large-every 10]

Every `large-every`-th check is large (256 x 64 x 16 = 262,144 elements, FD auto);
the rest are small (64 x 16, with a candidate). 503 answers are the server
saying it is busy: the client waits a little and retries, and they are counted
apart. Anything else that is not a 200 is an error. It stops by itself.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from client import build_request

from ._server import Server
from ._timing import machine, table


def _bodies() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((64, 16)), rng.standard_normal((64, 16))
    small = orjson.dumps(build_request(x, dy, candidate={"dbeta": dy.sum(0)}))
    X, DY = rng.standard_normal((256, 64, 16)).astype(np.float32), rng.standard_normal((256, 64, 16)).astype(np.float32)
    return small, orjson.dumps(build_request(X, DY))


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the worker processes)."""
    total = 0.0
    pids = [pid] + [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def run(checks: int, concurrency: int, large_every: int) -> None:
    small, large = _bodies()
    latencies: list[float] = []
    counts = {"ok": 0, "busy": 0, "error": 0, "passed": 0}
    lock = threading.Lock()
    next_index = [0]
    with Server(max_concurrent=str(os.cpu_count() or 2)) as server:
        assert server.proc is not None
        with httpx.Client(base_url=server.url) as warm:
            warm.post("/v1/check", content=small, headers={"content-type": "application/json"})
        rss_before = _rss_mb(server.proc.pid)

        def worker() -> None:
            with httpx.Client(base_url=server.url, timeout=300) as http:
                while True:
                    with lock:
                        i = next_index[0]
                        next_index[0] += 1
                    if i >= checks:
                        return
                    body = large if i % large_every == 0 else small
                    start = time.perf_counter()
                    while True:
                        r = http.post("/v1/check", content=body, headers={"content-type": "application/json"})
                        if r.status_code != 503:
                            break
                        with lock:
                            counts["busy"] += 1
                        time.sleep(0.02)
                    with lock:
                        latencies.append((time.perf_counter() - start) * 1e3)
                        if r.status_code == 200:
                            counts["ok"] += 1
                            counts["passed"] += bool(r.json()["passed"])
                        else:
                            counts["error"] += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        rss_after = _rss_mb(server.proc.pid)
    lat = np.array(latencies)
    print(f"# bncheck load test ({machine()})\n")
    print(table(
        ["checks", "concurrency", "large", "seconds", "checks/s", "p50 ms", "p99 ms", "errors", "503 retries",
         "RSS before MB", "RSS after MB"],
        [[f"{checks}", f"{concurrency}", f"1 in {large_every}", f"{elapsed:.1f}", f"{checks / elapsed:.1f}",
          f"{np.percentile(lat, 50):.1f}", f"{np.percentile(lat, 99):.1f}", f"{counts['error']}",
          f"{counts['busy']}", f"{rss_before:.0f}", f"{rss_after:.0f}"]]))
    print(f"\n{counts['ok']} answered 200 ({counts['passed']} passed); server and workers measured together.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--large-every", type=int, default=10)
    args = parser.parse_args()
    run(args.checks, args.concurrency, args.large_every)


if __name__ == "__main__":
    main()
