"""ms.distributed across 2 processes (it starts ``mpiexec -n 2`` itself; rank 0 prints rows).

- DataParallel overhead: ``dp.step()`` minus the inner optimizer's own ``step()`` (same
  gradients, accumulated as backprop leaves them, into the flat store's gradient buffer,
  which DataParallel reduces in place; same Params), divided by one raw buffer-based,
  in-place ``comm.Allreduce`` of the
  same bytes measured in the same run: at 1e6 and 1e7 float32 parameters and for a model of
  1,000 small Params. Goal ≤ 1.1×: the library adds at most a tenth to the collective itself.
- The agreement every collective starts with (a 50-byte record to rank 0 and its verdict)
  against an in-place Allreduce of 4 MB. Goal ≤ 5 %.

    python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import row

RANKS = 2
FLAG = "MODELSYNC_BENCH_RANK"


def main() -> None:
    if FLAG not in os.environ:  # the launcher: start the job, relay rank 0's rows
        mpiexec = Path(sys.executable).parent / "mpiexec"
        if not mpiexec.exists():
            sys.exit(f"{mpiexec} is missing: pip install 'modelsync[mpi]' (mpi4py and mpich)")
        # one thread per rank, as MPI jobs run: two ranks' numba pools would fight for 2 cores
        env = {**os.environ, FLAG: "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([str(mpiexec), "-n", str(RANKS), sys.executable, __file__],
                              env=env, timeout=600)
        sys.exit(done.returncode)
    measure()


def interleaved(sides, *, repeat: int) -> list[float]:
    """Best time of each (function, setup) pair, the sides timed in turns so that a busy
    moment of a shared machine hits them alike."""
    best = [float("inf")] * len(sides)
    for fn, setup in sides:  # warm-up
        setup()
        fn()
    for _ in range(repeat):
        for i, (fn, setup) in enumerate(sides):
            setup()
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure() -> None:
    from mpi4py import MPI

    import modelsync as ms
    from modelsync import layers, optim
    from modelsync.distributed.agree import agree, digest_of

    comm = ms.distributed.init()
    mpi = comm.mpi
    lines = []

    def aligned() -> None:
        mpi.Barrier()

    cases = [
        ("1e6 params (1 Dense 1000x1000)", lambda: layers.Chain(layers.Dense(1000, 1000, seed=0))),
        ("1e7 params (10 Dense 1000x1000)",
         lambda: layers.Chain(*[layers.Dense(1000, 1000, seed=i) for i in range(10)])),
        ("1,000 small Params (500 Dense 10x10)",
         lambda: layers.Chain(*[layers.Dense(10, 10, seed=i) for i in range(500)])),
    ]
    for name, build in cases:
        model = ms.distributed.replicate(build() if comm.rank == 0 else None, comm)
        params = ms.params(model)
        rng = np.random.default_rng(comm.rank)
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        inner = optim.SGD(params, lr=1e-6)
        dp = ms.distributed.DataParallel(inner, comm)

        def reset(params=params, grads=grads, inner=inner) -> None:
            inner.zero_grad()  # then the gradients land as backprop leaves them: in the
            for p, g in zip(params, grads, strict=True):  # flat store's gradient buffer
                p.accumulate_grad(g)
            aligned()

        nbytes = sum(p.nbytes for p in params)
        raw_buffer = np.ones(nbytes // 4, dtype=np.float32)
        with ms.track_transfers() as ledger:
            reset()
            dp.step()
        source = np.ones_like(raw_buffer)
        local, step, raw, copying = interleaved([
            (inner.step, reset), (dp.step, reset),
            (lambda b=raw_buffer: mpi.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM), aligned),
            (lambda b=raw_buffer, s=source: mpi.Allreduce(s, b, op=MPI.SUM), aligned)],
            repeat=15)
        overhead = step - local
        lines.append(row(f"DataParallel overhead, {name}", overhead / raw, "≤ 1.1×",
                         f"step {step * 1e3:.2f} ms − local {local * 1e3:.2f} ms vs raw "
                         f"in-place Allreduce of {nbytes / 2**20:.1f} MiB {raw * 1e3:.2f} ms; "
                         f"{sum(e.kind == 'collective' for e in ledger.events)} collective(s) "
                         f"per step; an out-of-place Allreduce (one copy more) is "
                         f"{copying / raw:.2f}×"))
    digest = digest_of("bench")
    four = np.ones(2**20, dtype=np.float32)
    agreement, allreduce = interleaved([
        (lambda: agree(comm, "bench", digest, describe=dict), aligned),
        (lambda: mpi.Allreduce(MPI.IN_PLACE, four, op=MPI.SUM), aligned)], repeat=50)
    lines.append(row("agreement vs in-place Allreduce of 4 MiB", agreement / allreduce,
                     "≤ 0.05×", f"{agreement * 1e6:.1f} µs vs {allreduce * 1e3:.2f} ms"))
    if comm.rank == 0:
        print("| what | ratio | goal | details |\n| --- | --- | --- | --- |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
