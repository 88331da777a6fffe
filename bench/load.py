"""A bounded load test against a real `bncheck serve` on its defaults: mixed checks at a fixed concurrency.

    python -m bench.load [--checks 400] [--concurrency 16] [--large-every 5]

Every `large-every`-th check is large (256 x 64 x 64 = 1,048,576 float32 elements, FD auto);
the rest are small (64 x 16, with a candidate). A 503 is the server saying it is full:
the client waits as Retry-After says and sends it again, and 503s are counted apart (the
target: at most 5% of requests). Any other answer that is not a 200 is an error. While
it runs, a thread asks /livez every 20 ms. Memory (server and workers) is read before,
right after, and 15 s later (workers give back their heap after 10 s idle). It stops
by itself.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from bncheck.client import build_request

from ._server import Server
from ._timing import machine, table


def _bodies() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((64, 16)), rng.standard_normal((64, 16))
    small = orjson.dumps(build_request(x, dy, candidate={"dbeta": dy.sum(0)}))
    X, DY = (rng.standard_normal((256, 64, 64)).astype(np.float32) for _ in range(2))
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


def _livez(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            start = time.perf_counter()
            http.get("/livez")
            out.append((time.perf_counter() - start) * 1e3)
            time.sleep(0.02)


def run(checks: int, concurrency: int, large_every: int) -> None:
    small, large = _bodies()
    latencies: list[float] = []
    counts = {"ok": 0, "busy": 0, "error": 0, "passed": 0, "requests": 0}
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    next_index = [0]
    livez: list[float] = []
    with Server() as server:
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
                        with lock:
                            counts["requests"] += 1
                            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code != 503:
                            break
                        with lock:
                            counts["busy"] += 1
                        time.sleep(float(r.headers.get("retry-after", "1")))
                    with lock:
                        latencies.append((time.perf_counter() - start) * 1e3)
                        if r.status_code == 200:
                            counts["ok"] += 1
                            counts["passed"] += bool(r.json()["passed"])
                        else:
                            counts["error"] += 1

        stop = threading.Event()
        probe = threading.Thread(target=_livez, args=(server.url, stop, livez))
        probe.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        stop.set()
        probe.join()
        rss_after = _rss_mb(server.proc.pid)
        time.sleep(15)
        rss_rested = _rss_mb(server.proc.pid)
    lat, live = np.array(latencies), np.array(livez)
    print(f"# bncheck load test ({machine()}; server on its defaults)\n")
    print(table(
        ["checks", "concurrency", "large (1M elements)", "seconds", "checks/s", "p50 ms", "p99 ms", "5xx but 503",
         "503 (of requests)", "/livez p99 ms", "RSS before / after / 15 s later MB"],
        [[f"{checks}", f"{concurrency}", f"1 in {large_every}", f"{elapsed:.1f}", f"{checks / elapsed:.1f}",
          f"{np.percentile(lat, 50):.0f}", f"{np.percentile(lat, 99):.0f}",
          f"{sum(n for s, n in statuses.items() if s >= 500 and s != 503)}",
          f"{counts['busy']} ({100 * counts['busy'] / max(counts['requests'], 1):.1f}%)",
          f"{np.percentile(live, 99):.1f}", f"{rss_before:.0f} / {rss_after:.0f} / {rss_rested:.0f}"]]))
    print(f"\n{counts['ok']} answered 200 ({counts['passed']} passed), {counts['error']} errors; statuses {statuses}; "
          "server and workers measured together.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--large-every", type=int, default=5)
    args = parser.parse_args()
    run(args.checks, args.concurrency, args.large_every)


if __name__ == "__main__":
    main()
