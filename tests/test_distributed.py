"""ms.distributed with real processes: ``mpiexec -n 2`` and ``-n 3`` jobs started from pytest
(tests/distributed_ranks.py is what each rank runs), with a timeout (a hang is a failure).

One launch per job size runs every scenario, and the tests below read what each rank saw:
replicas are one graph and bitwise equal; DataParallel equals one process on the global
batch; every mismatch raises on every rank and changes nothing; the ledger and the guard see
collective bytes; save writes once, from the root. Separate launches show that a crashing
rank ends the job and that a rank that never arrives is named. The world of one (no
mpiexec) is tested in tests/test_distributed_single.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_launch import run_mpi

from modelsync.distributed.board import BOGUS

pytest.importorskip("mpi4py", reason="the distributed tests need the test extra (mpi4py, mpich)")

RANKS = str(Path(__file__).with_name("distributed_ranks.py"))
LAUNCH_TIMEOUT = 120  # seconds; a launch normally takes 3-8 s on two busy cores


#: An MPI started without THREAD_MULTIPLE has no watchdog thread: every collective is then a
#: polled non-blocking one and the agreement goes through rank 0 (the fallback path).
NO_THREADS = {"MPI4PY_RC_THREAD_LEVEL": "serialized"}


@pytest.fixture(scope="module", params=[(2, False), (3, False), (2, True)],
                ids=["n2", "n3", "n2-no-threads"])
def job(request, tmp_path_factory):
    """Every rank's results of one ``main`` launch of 2 or 3 ranks (blocking collectives
    under the watchdog), and of 2 ranks whose MPI has no threads for it."""
    n, polled = request.param
    out = tmp_path_factory.mktemp(f"mpi{n}")
    done = run_mpi(n, [RANKS, "main", str(out)], timeout=LAUNCH_TIMEOUT, out=out,
                   env=NO_THREADS if polled else None)
    assert done.returncode == 0, f"the job failed:\n{done.stdout}\n{done.stderr}"
    assert [r.get("rank") for r in done.results] == list(range(n)), done.stderr
    assert BOGUS not in done.stderr  # (Open MPI's, for the arrival board's window)
    assert [r["watched"] for r in done.results] == [not polled] * n  # which path ran
    for rank, result in enumerate(done.results):
        broken = {k: v["crashed"] for k, v in result.items()
                  if isinstance(v, dict) and "crashed" in v}
        assert not broken, f"rank {rank}: scenarios crashed: {broken}"
    return done.results


def each(results, name):
    return [r[name] for r in results]


def test_replicate_makes_one_graph_with_the_roots_values_and_ties(job):
    seen = each(job, "replicate")
    root = seen[0]
    assert root["independent"]  # the root's replica is a copy, not its model
    for rank in seen:
        assert rank["graph"] == rank["sim_graph"] == root["original_graph"]
        assert rank["digest"] == rank["sim_digest"] == root["original_digest"]
        assert rank["tied"] and rank["params"] == 6
        assert rank["device"] == "host" and rank["sim_device"] == "sim:1"


def test_broadcast_writes_the_roots_values_in_place(job):
    size = len(job)
    for rank in each(job, "broadcast"):
        assert rank["values"] == [float(size)]  # the last rank (root) held rank + 1
        assert rank["sim_values"] == [7.0]  # root 0 held 0 + 7, through the host
        assert rank["collective"] == rank["param_bytes"] and rank["kinds"] == ["collective"]


def test_sync_averages_and_soft_steps(job):
    size = len(job)
    mean = sum(range(size)) / size
    seen = each(job, "sync")
    assert len({r["digest"] for r in seen}) == 1  # bitwise equal replicas
    for rank, r in enumerate(seen):
        assert r["mean"] == [mean]
        assert r["soft"] == [pytest.approx(0.5 * mean + 0.5 * rank)]
        assert r["wrapped_original"] == [10.0 * mean]  # a sync into a wrapper reaches its original


def test_each_dtype_is_one_collective_and_float16_is_summed(job):
    mean = sum(range(1, len(job) + 1)) / len(job)
    grad = sum(range(len(job))) / len(job)
    for r in each(job, "dtypes"):
        assert r["collectives"] == [2, 2]
        assert r["means"] == {"float16": [pytest.approx(mean, rel=1e-3)],
                              "float64": [pytest.approx(mean, rel=1e-12)]}
        assert r["grads"] == {"float16": [pytest.approx(grad, rel=1e-3)],
                              "float64": [pytest.approx(grad, rel=1e-12)]}


def test_data_parallel_trains_a_wrapper_and_its_original_follows(job):
    seen = each(job, "wrap")
    assert len({r["digest"] for r in seen}) == 1
    for r in seen:
        assert r["changed"] and r["param_bytes"] == 0


@pytest.mark.parametrize("spec", ["host", "sim:1"])
def test_data_parallel_equals_one_process_on_the_global_batch(job, spec):
    seen = [r[spec] for r in each(job, "data_parallel")]
    assert len({r["digest"] for r in seen}) == 1  # every rank bitwise equal
    for r in seen:
        assert r["diff"] < 1e-5  # one process on the global batch, to float tolerance
        assert r["collectives"] == r["steps"]  # one buffer collective per step (one dtype)
        assert r["collective"] == r["steps"] * r["grad_bytes"]
        assert r["param_bytes_moved"] == 0  # gradients cross, Params never do


def test_data_parallel_follows_params_moved_between_steps(job):
    seen = [r["moved"] for r in each(job, "data_parallel")]
    assert len({r["digest"] for r in seen}) == 1 and seen[0]["device"] == "sim:1"


def test_data_parallel_sends_one_collective_for_many_small_params(job):
    size = len(job)
    for r in each(job, "data_parallel"):
        assert r["many"]["params"] == 100 and r["many"]["collectives"] == 1
        assert r["many"]["grads"] == [pytest.approx(sum(range(size)) / size)]
        assert r["in_place"]["same_buffer"]  # reduced where backprop left them, handed back
        assert r["in_place"]["grads"] == [pytest.approx(sum(range(size)) / size)]


MISMATCH = [("shape", "GraphMismatchError", "layers.0.weight"),
            ("dtype", "GraphMismatchError", "float64"),
            ("order", "GraphMismatchError", "different originals"),
            ("order_optimizer", "GraphMismatchError", "layers.0.weight"),
            ("graph", "GraphMismatchError", "replicate"),
            ("grad", "GraphMismatchError", "layers.3.bias"),
            ("tau", "ArgumentError", "tau differs"),
            ("root", "ArgumentError", "root differs"),
            ("op", "CollectiveError", "different collective operations")]


@pytest.mark.parametrize(("case", "error", "words"), MISMATCH, ids=[m[0] for m in MISMATCH])
def test_every_mismatch_raises_the_same_error_on_every_rank(job, case, error, words):
    seen = [r[case] for r in each(job, "mismatches")]
    last = len(job) - 1
    for r in seen:
        assert r["error"] == error and r["modelsync"], r
        assert words in r["message"]
    assert len({r["message"] for r in seen}) == 1
    if case not in ("op", "order", "graph"):
        assert f"rank {last}" in seen[0]["message"]  # names the rank that differs


def test_mismatches_change_nothing_and_the_ranks_go_on(job):
    for r in each(job, "mismatches"):
        assert r["unchanged"] and r["order_unchanged"] and r["grad_unchanged"]
        assert r["graph_structure_ok"]["error"] is None  # separate models sync by structure
        assert r["after"]["error"] is None


@pytest.mark.parametrize("case", ["local", "bad_tau"])
def test_a_local_failure_raises_there_and_a_collective_error_elsewhere(job, case):
    seen = [r[case] for r in each(job, "mismatches")]
    last = len(job) - 1
    assert seen[last]["error"] in ("ArgumentTypeError", "ArgumentError")
    for r in seen[:last]:
        assert r["error"] == "CollectiveError"
        assert f"rank {last} could not take part: {seen[last]['error']}" in r["message"]


def test_the_guard_refuses_collectives_on_every_rank(job):
    seen = each(job, "guard")
    for r in seen:
        assert r["everywhere"]["error"] == "TransferError"
        assert r["step"]["error"] == "TransferError"
        assert r["unchanged"]
        assert r["recorded"] == 0  # nothing moved
    assert seen[0]["rank0"]["error"] == "TransferError"
    assert "collective transfer" in seen[0]["rank0"]["message"]
    for r in seen[1:]:
        assert r["rank0"]["error"] == "CollectiveError"


def test_mismatches_after_agreeing_steps_still_raise_everywhere(job):
    seen = each(job, "steady")
    size, last = len(seen), len(seen) - 1
    mean = sum(1.0 + r for r in range(size)) / size
    for r in seen:
        assert r["collectives"] == 3  # one Allreduce a step, however many Params
        assert r["mean"] == mean  # the gradients left are the mean over the ranks
        assert r["grad"]["error"] == "GraphMismatchError"
        assert "has a gradient" in r["grad"]["message"]
        assert r["op"]["error"] == "CollectiveError"
        assert "different collective operations" in r["op"]["message"]
        assert r["grads_unchanged"] and r["unchanged"]
        assert r["after"]["error"] is None
        assert r["digest"] == seen[0]["digest"]  # the replicas are still bitwise equal
    assert seen[0]["guard"]["error"] == "TransferError"
    for r in seen[1:]:
        assert r["guard"]["error"] == "CollectiveError"
        assert "rank 0 could not take part" in r["guard"]["message"]
    assert last > 0


def test_a_large_store_is_divided_by_the_optimizer_and_still_leaves_the_mean(job):
    from modelsync.distributed.data_parallel import FUSE_MIN_BYTES

    seen = each(job, "steady")
    assert seen[0]["big_bytes"] >= FUSE_MIN_BYTES  # (the size that takes that path)
    for r in seen:
        assert r["big_grads_mean"] and r["big_values"]
        assert r["big_digest"] == seen[0]["big_digest"]


def test_save_writes_once_from_the_root(job):
    seen = each(job, "save")
    root = len(job) - 1
    assert [r["calls"] for r in seen] == [0] * root + [2]  # a good save and a failed one
    for r in seen:
        assert r["exists"] and r["graph"] and r["digest"]
        assert r["state"] == ["layers.0.bias"]  # the DataParallel's inner optimizer's state
    assert seen[root]["bad"]["error"] == "SaveError"
    for r in seen[:root]:
        assert r["bad"]["error"] == "CollectiveError" and "SaveError" in r["bad"]["message"]


def test_barrier_waits_for_every_rank(job):
    seen = each(job, "barrier")
    for r in seen[1:]:
        assert r["waited"] > 0.2  # rank 0 came 0.3 s late


# -- failures that end the job ---------------------------------------------------------------
def test_a_crashing_rank_ends_the_job(tmp_path):
    done = run_mpi(3, [RANKS, "crash", str(tmp_path)], timeout=60)
    assert done.returncode != 0
    assert "this rank fails on purpose" in done.stderr
    assert "rank 2 of 3 raised RuntimeError and did not catch it" in done.stderr
    assert done.seconds < 30  # not a hang until the launch timeout


def test_a_rank_that_never_arrives_is_named_after_the_timeout(tmp_path):
    done = run_mpi(3, [RANKS, "stuck2", str(tmp_path), "2"], timeout=60)
    assert done.returncode != 0
    assert "rank 0 of 3: sync (operation #2): ranks [2] did not arrive within 2 s (ranks " \
           "[0, 1] are waiting for them); ending the job" in done.stderr
    assert done.seconds < 30


def test_a_rank_that_agreed_but_never_joins_the_blocking_collective_is_caught(tmp_path):
    """The bytes move by the MPI's blocking call; the watchdog thread ends the job at the
    timeout, naming the operation, although the collective itself never returns."""
    done = run_mpi(2, [RANKS, "silent0", str(tmp_path), "2"], timeout=60)
    assert done.returncode != 0
    assert "rank 1 of 2: distributed.broadcast: Bcast of 252 bytes from rank 0: it did not " \
           "complete within 2 s although every rank had agreed to it" in done.stderr, done.stderr
    assert "ending the job (MPI Abort)" in done.stderr
    assert done.seconds < 30


def test_when_rank_0_never_arrives_the_others_say_so(tmp_path):
    done = run_mpi(2, [RANKS, "stuck0", str(tmp_path), "1"], timeout=60)
    assert done.returncode != 0
    assert "rank 1 of 2: sync (operation #2): rank 0, which coordinates every agreement, " \
           "did not arrive within 1 s" in done.stderr
    assert done.seconds < 30


def test_aborted_jobs_leave_no_shared_memory_behind(tmp_path):
    """MPICH leaves /dev/shm/mpich_shm_* after an Abort; run_mpi removes them."""
    done = run_mpi(2, [RANKS, "crash", str(tmp_path)], timeout=60)
    assert done.returncode != 0
    from distributed_launch import _shm_files

    assert not (set(done.leftovers) & _shm_files())


def test_the_launcher_is_the_one_of_the_mpi_mpi4py_loads():
    from distributed_launch import library

    from modelsync.distributed.launch import find_mpiexec, launcher_family

    lib = library()
    assert lib.family in ("MPICH", "Open MPI") and lib.path, lib  # the two wheels CI runs
    mpiexec = Path(find_mpiexec(lib))
    assert mpiexec.parent == Path(lib.path).resolve().parent.parent / "bin"
    assert launcher_family(str(mpiexec)) == lib.family
