"""Worker processes keep their heap between checks and give it back when idle (heap.py).

Each case runs in a fresh interpreter, since malloc settings last for a process's life."""

import subprocess
import sys
import textwrap

import pytest

from bncheck.server import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's malloc only")

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from bncheck.server import heap

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def churn():  # a check's large temporaries: 12 arrays of 16 MB, touched, then freed
        arrays = [np.ones(1 << 22, np.float32) for _ in range(12)]
        del arrays

    kept = heap.keep(int(sys.argv[1]), idle_s=0.4)
    base = rss_mb()
    with heap.busy():
        churn()
        after = rss_mb() - base
        time.sleep(1.2)  # a trim is never due while a check runs
        busy = rss_mb() - base
    deadline = time.monotonic() + 20  # idle for longer than idle_s: the free heap goes back
    while rss_mb() - base > 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    idle = rss_mb() - base
    print(kept, round(after), round(busy), round(idle))
""")


def _run(keep_mb: int) -> tuple[bool, float, float, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(keep_mb)], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2]), float(out[3])


def test_a_worker_keeps_its_heap_between_checks_and_returns_it_when_idle():
    kept, after, busy, idle = _run(512)
    assert kept
    assert after > 150  # 192 MB freed, and kept: the next check faults none of it in
    assert busy > 150
    assert idle < 40


def test_without_it_glibc_returns_the_memory_at_once():
    kept, after, busy, idle = _run(0)
    assert not kept
    assert after < 40
    assert idle < 40


def test_bncheck_serve_keeps_the_server_process_heap_too(monkeypatch):
    """The server process reads large bodies in chunks of a few hundred kilobytes: ``bncheck
    serve`` tunes its malloc as a worker's, with the same setting, before uvicorn starts."""
    import uvicorn

    from bncheck import cli

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(heap, "keep", lambda mb: calls.append(("keep", mb)))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(("run", kw["port"])))
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # this process's handlers stay
    monkeypatch.setenv("BNCHECK_WORKER_HEAP_MB", "321")
    assert cli.main(["serve", "--port", "8765"]) == 0
    assert calls == [("keep", 321), ("run", 8765)]


def test_keeping_twice_starts_one_trimmer():
    script = textwrap.dedent("""
        import threading
        from bncheck.server import heap
        print(heap.keep(256), heap.keep(512),
              sum(t.name == "bncheck-heap-trim" for t in threading.enumerate()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out == ["True", "True", "1"]
