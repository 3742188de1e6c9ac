"""Timing helpers shared by the benchmarks: best-of-N wall time, and one flat copy as the
yardstick every ratio is measured against (absolute times on a shared machine are noise)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def best_time(fn: Callable[[], object], *, repeat: int = 7, number: int = 1,
              setup: Callable[[], object] | None = None) -> float:
    """The best of ``repeat`` timings of ``number`` calls, in seconds per call."""
    fn()  # warm-up: first-call costs are reported separately where they matter
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def flat_copy_time(nbytes: int, **kwargs) -> float:
    """Seconds for one NumPy copy of ``nbytes`` into a preallocated buffer."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return best_time(lambda: np.copyto(dst, src), **kwargs)


def row(name: str, ratio: float, goal: str, detail: str = "") -> str:
    return f"| {name} | {ratio:.2f}× | {goal} | {detail} |"
