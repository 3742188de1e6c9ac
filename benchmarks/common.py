"""The harness every benchmark shares: sides timed in turns, medians, rows with goals.

Absolute times on a shared machine are noise; a ratio of two things timed in the same moments
is not. So a case and its baseline are timed **in turns** (baseline, case, baseline, case,
...), and a row reports the **median of the per-turn ratios**: a busy moment of the machine
slows both sides of one turn alike and drops out of their ratio, and the median ignores the
turns it did not hit alike. (A baseline timed apart, best of 5, once made one row read 4.9×
on one run and 17× on the next.)

Each ``bench_*.py`` module has ``rows(settings) -> Iterator[Row]`` and ends with
``main(rows, __doc__)``: run alone it prints a markdown table; ``--json`` prints one JSON
row per line for ``run_all.py``; ``--tiny`` runs every case at toy sizes, once (the smoke
test ``tests/test_benchmarks.py`` does that, so the harness cannot rot).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

#: a side of a comparison: a function, or (function, setup) where ``setup`` runs, untimed,
#: before each timed call (and each timed call is then a single call)
Side = Callable[[], object] | tuple[Callable[[], object], Callable[[], object]]


@dataclass(frozen=True)
class Settings:
    """How hard to measure. ``rounds``: turns per side; ``target``: the least seconds one
    timing lasts (fast calls are repeated within it, so timer resolution is no issue);
    ``tiny``: toy problem sizes, for the smoke test."""

    rounds: int = 15
    target: float = 5e-3
    tiny: bool = False


FULL = Settings()
TINY = Settings(rounds=2, target=0.0, tiny=True)


# -- timing ------------------------------------------------------------------------------------
@dataclass
class Timings:
    """Seconds per call of each side, one sample per turn, in the order they ran."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratios(self, case: str, baseline: str) -> list[float]:
        """``case / baseline`` of each turn (the two sides timed next to each other)."""
        return [c / b for c, b in zip(self.samples[case], self.samples[baseline], strict=True)]

    def ratio(self, case: str, baseline: str) -> float:
        """The median of the per-turn ratios."""
        return statistics.median(self.ratios(case, baseline))

    def spread(self, case: str, baseline: str) -> str:
        """The middle half of the per-turn ratios, as text (how much the turns agreed)."""
        values = sorted(self.ratios(case, baseline))
        if len(values) < 4:
            return f"{fmt_ratio(values[0])}–{fmt_ratio(values[-1])}"
        q1, _, q3 = statistics.quantiles(values, n=4)
        return f"{fmt_ratio(q1)}–{fmt_ratio(q3)}"

    def describe(self, *names: str) -> str:
        """``name 1.234 ms`` for each side (medians), all sides if none are named."""
        return ", ".join(f"{n} {fmt_seconds(self.median(n))}" for n in names or self.samples)

    def fastest(self, prefix: str) -> str:
        """The side whose name starts with ``prefix`` that has the smallest median."""
        return min((n for n in self.samples if n.startswith(prefix)), key=self.median)


def in_turns(sides: dict[str, Side], settings: Settings = FULL, *,
             calibrate: bool = True) -> Timings:
    """Time every side ``settings.rounds`` times, in turns, in the order given (put the
    baseline first: baseline, case, baseline, case, ...).

    Each timing of a side without setup starts with one untimed call: it warms the caches for
    that side, and lets the thread pool of the side before it (torch's and numba's OpenMP
    pools keep spinning a while after their last parallel loop) go quiet. ``calibrate=False``
    makes each timing one call (needed where ranks must run the same calls: MPI).
    """
    plan = {name: side if isinstance(side, tuple) else (side, None)
            for name, side in sides.items()}
    number = {}
    for name, (fn, setup) in plan.items():  # warm-up, and how many calls fill a timing
        if setup is not None:
            setup()
        fn()
        if setup is not None or not calibrate or settings.target <= 0:
            number[name] = 1
            continue
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        number[name] = max(1, min(10_000, math.ceil(settings.target / once)))
    samples: dict[str, list[float]] = {name: [] for name in plan}
    for _ in range(settings.rounds):
        for name, (fn, setup) in plan.items():
            if setup is None:
                fn()
            else:
                setup()
            n = number[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return Timings(samples)


def flat_copy(nbytes: int, src: str = "host", dst: str = "host") -> Callable[[], object]:
    """The yardstick of conversions and syncs: one copy of a single float32 buffer of
    ``nbytes`` from device ``src`` to ``dst`` through the library's transfer door
    (``copy_to``, allocation included)."""
    import modelsync as ms
    from modelsync.transfers import copy_to

    buffer = copy_to(np.ones(nbytes // 4, dtype=np.float32), ms.device(src), reason="bench")
    target = ms.device(dst)
    return lambda: copy_to(buffer, target, reason="bench")


def memcpy(nbytes: int) -> Callable[[], object]:
    """One NumPy copy of ``nbytes`` into an existing, warm buffer (no allocation)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def optional_torch() -> Any:
    """torch with two threads (the machine's cores), or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


NO_TORCH = "n/a (torch not installed: pip install torch==2.13.0)"
NO_FLATTEN = "n/a (no ms.flatten yet)"


# -- rows --------------------------------------------------------------------------------------
def fmt_ratio(value: float) -> str:
    """Three decimals under 0.1 (so ``≤ 0.05×`` is judged fairly), else two."""
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def fmt_seconds(value: float) -> str:
    if value >= 0.1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def fmt_bytes(value: int) -> str:
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


@dataclass(frozen=True)
class Row:
    """One result. ``value`` is a ratio (unit ``×``), seconds (``s``) or bytes (``B``), or
    None when the row could not be measured here (``measured`` then says why); ``met`` is
    ``yes``, ``NO``, or ``—`` for a number reported without a goal."""

    what: str
    value: float | None
    unit: str
    goal: str
    met: str
    details: str = ""
    measured: str = ""

    def shown(self) -> str:
        """The measured value as the table shows it."""
        if self.measured:
            return self.measured
        if self.unit == "×":
            return f"{fmt_ratio(self.value)}×"
        if self.unit == "s":
            return fmt_seconds(self.value)
        return f"{self.value:g} {self.unit}"

    def markdown(self, *first: str) -> str:
        cells = [*first, self.what, self.goal, self.shown(), self.met, self.details]
        return "| " + " | ".join(cells) + " |"

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Row:
        return cls(**json.loads(line))


def ratio_row(what: str, ratio: float, at_most: float | None, details: str = "", *,
              stretch: float | None = None) -> Row:
    """A ratio against a goal ``≤ at_most×`` (``None``: reported for information). The goal
    is judged on the ratio as the table shows it, so a row never reads "1.00×, NO"."""
    if at_most is None:
        return Row(what, ratio, "×", "info", "—", details)
    goal = f"≤ {at_most:g}×" + (f" (stretch {stretch:g}×)" if stretch is not None else "")
    shown = float(fmt_ratio(ratio))
    met = "yes" if shown <= at_most else "NO"
    if stretch is not None and shown <= stretch:
        met = "yes, stretch too"
    return Row(what, ratio, "×", goal, met, details)


def compared(what: str, timings: Timings, case: str, baseline: str, at_most: float | None,
             details: str = "", *, stretch: float | None = None) -> Row:
    """The row of ``case`` against ``baseline`` from one ``in_turns`` run: the median
    per-turn ratio, with the median times and the middle half of the ratios."""
    rounds = len(timings.samples[case])
    text = (f"{fmt_seconds(timings.median(case))} vs {baseline} "
            f"{fmt_seconds(timings.median(baseline))}; middle half of {rounds} turns "
            f"{timings.spread(case, baseline)}")
    return ratio_row(what, timings.ratio(case, baseline), at_most,
                     f"{text}; {details}" if details else text, stretch=stretch)


def na_row(what: str, goal: str, why: str) -> Row:
    """A row that cannot be measured here (torch missing, a feature not there yet)."""
    return Row(what, None, "×", goal, "n/a", "", why)


def goal_of(at_most: float | None, stretch: float | None = None) -> str:
    """The goal text of a ratio row, for a row that could not be measured."""
    return ratio_row("", 0.0, at_most, stretch=stretch).goal


# -- running a module --------------------------------------------------------------------------
HEADER = "| what | goal | measured | met? | details |\n| --- | --- | --- | --- | --- |"


def main(rows: Callable[[Settings], Iterable[Row]], doc: str | None) -> None:
    """The command line every ``bench_*.py`` shares."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON row per line")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, one quick pass")
    parser.add_argument("--rounds", type=int, help=f"turns per side (default {FULL.rounds})")
    args = parser.parse_args()
    settings = TINY if args.tiny else FULL
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    np.seterr(all="ignore")
    if not args.json:
        print(HEADER)
    for found in rows(settings):
        print(found.to_json() if args.json else found.markdown(), flush=True)
