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
                   ) -> dict[str, list[float]]:
    """The times of each function over ``rounds`` rounds that run them in turn, so that the
    machine's slow and fast spells fall on all of them alike (``times[name][i]`` is round i)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def round_ratio(times: dict[str, list[float]], key: str, base: str) -> float:
    """The median over rounds of ``key``'s time over ``base``'s in the same round: a slow
    spell that falls on one round moves both, and one round cannot move the median."""
    return median([a / b for a, b in zip(times[key], times[base], strict=True)])


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
