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
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    Row,
    Settings,
    fmt_bytes,
    fmt_seconds,
    in_turns,
    main,
    na_row,
    ratio_row,
)

RANKS = 2
FLAG = "MODELSYNC_BENCH_RANK"
OVERHEAD = "DataParallel overhead, {}"
AGREEMENT = "agreement vs in-place Allreduce of {}"


def cases(settings: Settings) -> list[tuple[str, object]]:
    """(label, a function building the model) for each DataParallel row."""
    from modelsync import layers

    if settings.tiny:
        return [("1e2 params (1 Dense 10x10)", lambda: layers.Chain(layers.Dense(10, 10))),
                ("2e2 params (2 Dense 10x10)",
                 lambda: layers.Chain(*[layers.Dense(10, 10, seed=i) for i in range(2)])),
                ("10 small Params (5 Dense 2x2)",
                 lambda: layers.Chain(*[layers.Dense(2, 2, seed=i) for i in range(5)]))]
    return [
        ("1e6 params (1 Dense 1000x1000)", lambda: layers.Chain(layers.Dense(1000, 1000, seed=0))),
        ("1e7 params (10 Dense 1000x1000)",
         lambda: layers.Chain(*[layers.Dense(1000, 1000, seed=i) for i in range(10)])),
        ("1,000 small Params (500 Dense 10x10)",
         lambda: layers.Chain(*[layers.Dense(10, 10, seed=i) for i in range(500)])),
    ]


def launch(argv: list[str]) -> int:
    """Start ``mpiexec -n 2`` on this file (rank 0 prints the rows); its exit status."""
    from modelsync.distributed.launch import launch_command

    # one thread per rank, as MPI jobs run: two ranks' numba pools would fight for 2 cores
    env = {**os.environ, FLAG: "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch_command(RANKS), sys.executable, __file__, *argv],
                          env=env, timeout=600)
    return done.returncode


def without_mpi(settings: Settings) -> Iterator[Row]:
    """The rows, unmeasured, where mpi4py or mpiexec is missing."""
    why = "n/a (mpi4py/mpiexec not installed: pip install 'modelsync[mpi]')"
    for label, _ in cases(settings):
        yield na_row(OVERHEAD.format(label), "≤ 1.1×", why)
    yield na_row(AGREEMENT.format("4 MiB"), "≤ 0.05×", why)


def rows(settings: Settings) -> Iterator[Row]:
    """Measure on every rank of this job (a world of one when not started by mpiexec, as in
    the smoke test); every rank yields the rows, and only rank 0's output is kept."""
    try:
        from mpi4py import MPI
    except ImportError:
        yield from without_mpi(settings)
        return
    import modelsync as ms
    from modelsync import optim
    from modelsync.distributed.agree import agree, digest_of

    comm = ms.distributed.init()
    mpi = comm.mpi
    world = "" if comm.size > 1 else " (world of one)"
    settings = replace(settings, target=0.0)  # every rank makes the same calls

    def aligned() -> None:
        mpi.Barrier()

    for name, build in cases(settings):
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
        t = in_turns({
            "local": (inner.step, reset), "step": (dp.step, reset),
            "raw": (lambda b=raw_buffer: mpi.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM), aligned),
            "copying": (lambda b=raw_buffer, s=source: mpi.Allreduce(s, b, op=MPI.SUM),
                        aligned)}, settings, calibrate=False)
        s = t.samples
        ratio = statistics.median((d - lo) / r for d, lo, r in zip(s["step"], s["local"],
                                                                     s["raw"], strict=True))
        row = ratio_row(OVERHEAD.format(name) + world, ratio, 1.1,
                        f"step {fmt_seconds(t.median('step'))} − local "
                        f"{fmt_seconds(t.median('local'))} vs raw in-place Allreduce of "
                        f"{fmt_bytes(nbytes)} {fmt_seconds(t.median('raw'))} (medians of "
                        f"{settings.rounds} turns); "
                        f"{sum(e.kind == 'collective' for e in ledger.events)} collective(s) "
                        f"per step; an out-of-place Allreduce (one copy more) is "
                        f"{t.ratio('copying', 'raw'):.2f}×")
        yield row
    digest = digest_of("bench")
    four = np.ones(256 if settings.tiny else 2**20, dtype=np.float32)
    t = in_turns({"allreduce": (lambda: mpi.Allreduce(MPI.IN_PLACE, four, op=MPI.SUM), aligned),
                  "agreement": (lambda: agree(comm, "bench", digest, describe=dict), aligned)},
                 replace(settings, rounds=2 if settings.tiny else 50), calibrate=False)
    row = ratio_row(AGREEMENT.format(fmt_bytes(four.nbytes)) + world,
                    t.ratio("agreement", "allreduce"), 0.05,
                    f"{fmt_seconds(t.median('agreement'))} vs "
                    f"{fmt_seconds(t.median('allreduce'))} (medians of "
                    f"{len(t.samples['agreement'])} turns)")
    yield row


if __name__ == "__main__":
    if FLAG in os.environ:  # a rank of the job: rank 0 speaks for all
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        main(rows, __doc__)
    elif not (Path(sys.executable).parent / "mpiexec").exists():
        main(without_mpi, __doc__)
    else:  # the launcher: start the job, relay rank 0's rows
        sys.exit(launch(sys.argv[1:]))
