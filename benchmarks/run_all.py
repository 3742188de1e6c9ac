"""Run every benchmark (bench_*.py in this folder) and print one markdown table of all their
rows, with whether each goal is met, under the facts of the machine it ran on.

    python benchmarks/run_all.py > results.md

Each benchmark prints markdown rows ``| what | value | goal | details |``; a goal
``≤ 1.0×`` is met when the value (a ratio measured in that one run) is at most 1.0, a goal
``0 B`` when the value is ``0 B``; "reported" and "info" rows carry a number and no goal.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_RATIO = re.compile(r"^\s*([0-9.]+)\s*×\s*$")
_BOUND = re.compile(r"^\s*≤\s*([0-9.]+)\s*×\s*$")


def machine_facts() -> list[str]:
    """CPU, cores, library versions and thread counts, as markdown bullet lines."""
    import numpy as np

    facts = [f"- CPU: {_cpu_model()}; {os.cpu_count()} logical cores "
             f"({len(os.sched_getaffinity(0))} usable by this process)",
             f"- Python {platform.python_version()}, NumPy {np.__version__}"]
    try:
        import torch

        torch.set_num_threads(2)
        facts.append(f"- torch {torch.__version__} (CPU), torch.set_num_threads(2): "
                     f"{torch.get_num_threads()} threads")
    except ImportError:
        facts.append("- torch: not installed (pip install 'modelsync[bench]')")
    try:
        import numba

        facts.append(f"- numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads")
    except ImportError:
        facts.append("- numba: not installed (the optimizers use their NumPy path)")
    from modelsync import kernels

    facts.append(f"- modelsync host kernels: {kernels.backend()} "
                 f"({kernels.ENV}={os.environ.get(kernels.ENV, 'auto')}); "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    facts.append(f"- measured {time.strftime('%Y-%m-%d %H:%M')}; ratios are from one run, "
                 "each side timed in turns, best of N (absolute times on a shared machine "
                 "are noise)")
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rows_of(script: Path, extra: list[str]) -> tuple[list[list[str]], str]:
    """The table rows ``script`` prints (header and rule lines dropped), and its stderr."""
    done = subprocess.run([sys.executable, str(script), *extra], cwd=HERE, text=True,
                          capture_output=True, timeout=1800)
    if done.returncode != 0:
        return [[f"{script.name} FAILED (exit {done.returncode})", "—", "—",
                 done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""]], \
            done.stderr
    rows = []
    header_seen = False
    for line in done.stdout.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header_seen:
            header_seen = True  # the first table line is the header
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        rows.append((cells + ["", "", "", ""])[:4])
    return rows, done.stderr


def met(value: str, goal: str, details: str) -> str:
    """"yes" / "NO" for a goal this script knows how to check, "—" for reported numbers."""
    bound, ratio = _BOUND.match(goal), _RATIO.match(value)
    if bound and ratio:
        return "yes" if float(ratio.group(1)) <= float(bound.group(1)) else "NO"
    if goal == "0 B":
        return "yes" if value == "0 B" else "NO"
    if goal == "no compiling at import":
        return "yes" if "numba imported: False" in details else "NO"
    return "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. bench_optim")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    print("## Machine\n")
    print("\n".join(machine_facts()))
    print("\n## Results\n")
    print("| benchmark | what | ratio or value | goal | met? | details |")
    print("| --- | --- | --- | --- | --- | --- |")
    for script in scripts:
        rows, _ = rows_of(script, [])
        for what, value, goal, details in rows:
            print(f"| {script.stem} | {what} | {value} | {goal} | {met(value, goal, details)} | "
                  f"{details} |", flush=True)


if __name__ == "__main__":
    main()
