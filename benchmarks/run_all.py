"""Run every benchmark (bench_*.py in this folder), each in a fresh process, and print the
markdown that docs/performance.md's "The latest run" holds: the machine, the rows that
have a goal (goal, measured, met?), then the rows reported for information.

    python benchmarks/run_all.py > results.md       # about 2-3 minutes on 2 busy cores
    python benchmarks/run_all.py --only bench_convert
    python benchmarks/run_all.py --tiny             # toy sizes: checks that it all runs

Every ratio is measured in this one run: each case timed in turns with its baseline, the
median of the per-turn ratios (see common.py). A row that cannot be measured here (torch
or mpiexec missing, a feature not there yet) says n/a and why.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FULL, Row  # noqa: E402

#: the order of the tables; any other bench_*.py follows, by name
ORDER = ["bench_optim", "bench_convert", "bench_train", "bench_import", "bench_distributed"]
TIMEOUT = 300  # seconds for one benchmark: the whole run must stay well under 6 minutes


def machine_facts() -> list[str]:
    """CPU, cores, library versions and thread counts, as markdown bullet lines."""
    import numpy as np

    facts = [f"- CPU: {_cpu_model()}; {os.cpu_count()} logical cores "
             f"({len(os.sched_getaffinity(0))} usable by this process); load average "
             f"{os.getloadavg()[0]:.1f} at the start",
             f"- Python {platform.python_version()}, NumPy {np.__version__}"]
    try:
        import torch

        facts.append(f"- torch {torch.__version__} (CPU), torch.set_num_threads(2)")
    except ImportError:
        facts.append("- torch: not installed, its rows say n/a (pip install torch==2.13.0)")
    try:
        import numba

        facts.append(f"- numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads")
    except ImportError:
        facts.append("- numba: not installed (the optimizers use their NumPy path)")
    import modelsync as ms
    from modelsync import kernels

    facts.append(f"- modelsync host kernels: {kernels.backend()} "
                 f"({kernels.ENV}={os.environ.get(kernels.ENV, 'auto')}); "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
                 f"ms.flatten: {'yes' if hasattr(ms, 'flatten') else 'not yet'}")
    facts.append(f"- measured {time.strftime('%Y-%m-%d %H:%M')}; each case timed in turns "
                 f"with its baseline ({FULL.rounds} turns, each at least "
                 f"{FULL.target * 1e3:g} ms of calls after one untimed call), the median of "
                 "the per-turn ratios; absolute times on a shared machine are noise")
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rows_of(script: Path, extra: list[str]) -> list[Row]:
    """The rows ``script`` measures (run with ``--json`` in a fresh process); one FAILED row
    saying why if it fails or takes longer than TIMEOUT."""
    try:
        done = subprocess.run([sys.executable, str(script), "--json", *extra], cwd=HERE,
                              text=True, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return [Row(f"{script.stem} FAILED", None, "×", "—", "NO", "",
                    f"took more than {TIMEOUT} s")]
    found = [Row.from_json(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        found.append(Row(f"{script.stem} FAILED (exit {done.returncode})", None, "×", "—",
                         "NO", last, "failed"))
    return found


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"), key=lambda p: (
        ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    return [s for s in found if not only or s.stem in only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. bench_optim")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, one quick pass")
    args = parser.parse_args()
    start = time.perf_counter()
    print("### Machine\n")
    print("\n".join(machine_facts()), flush=True)
    results = [(script.stem, r) for script in scripts(args.only)
               for r in rows_of(script, ["--tiny"] if args.tiny else [])]
    goals = [(b, r) for b, r in results if r.met != "—"]
    reported = [(b, r) for b, r in results if r.met == "—"]
    met = sum(r.met.startswith("yes") for _, r in goals)
    measured = sum(r.met != "n/a" for _, r in goals)
    print(f"\n### Against the goals ({met} of {measured} measured goals met)\n")
    print("| benchmark | what | goal | measured | met? | details |")
    print("| --- | --- | --- | --- | --- | --- |")
    for bench, r in goals:
        print(r.markdown(bench.removeprefix("bench_")))
    print("\n### Reported (no goal)\n")
    print("| benchmark | what | goal | measured | met? | details |")
    print("| --- | --- | --- | --- | --- | --- |")
    for bench, r in reported:
        print(r.markdown(bench.removeprefix("bench_")))
    print(f"\n(run_all.py took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
