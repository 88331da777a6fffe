"""Shared helpers: best-of-n timings and a markdown table."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import date


def best_ms(fn: Callable[[], object], *, repeat: int = 7, warmup: int = 1) -> float:
    """The minimum over ``repeat`` runs: the least noisy estimate on a shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def interleaved_ms(fns: dict[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 1
                   ) -> dict[str, tuple[float, float]]:
    """Best and median of each function over ``rounds`` rounds that run them in turn, so that
    the machine's slow and fast spells fall on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (min(t), sorted(t)[len(t) // 2]) for name, t in times.items()}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def torch_or_none():  # type: ignore[no-untyped-def]
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch
