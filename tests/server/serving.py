"""A real `bncheck serve` in a subprocess for the tests that need one: started on a free port,
waited for, and its processes watched (supervision, shutdown, logs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import IO, Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(stdout: IO[Any] | int = subprocess.DEVNULL, stderr: IO[Any] | int = subprocess.DEVNULL,
          **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """`bncheck serve` with BNCHECK_<NAME> for each setting, on a free port; the process and its URL."""
    port = free_port()
    env = {**os.environ, "BNCHECK_PORT": str(port), **{f"BNCHECK_{k.upper()}": v for k, v in settings.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "serve"], env=env, stdout=stdout, stderr=stderr)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, seconds: float) -> float:
    """Wait until /readyz answers 200; returns when (time.monotonic())."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server is not ready"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def still_alive(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still running after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    if any(line.split() == ["PPid:", str(pid)] for line in f):
                        out.append(int(entry))
            except OSError:
                continue
    return out


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
