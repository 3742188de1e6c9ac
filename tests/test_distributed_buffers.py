"""Buffers across processes (issue 18): one ``mpiexec -n 2`` launch of the "buffers" group of
tests/distributed_ranks.py, on host and sim:1. replicate and broadcast carry the root's
running statistics; DataParallel leaves them local; sync_buffers averages them (or copies
the root's) and refuses counters that differ on every rank; distributed.save refuses
replicas whose buffers differ until they agree; agreement covers buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from distributed_launch import run_mpi

pytest.importorskip("mpi4py", reason="the distributed tests need the test extra (mpi4py, mpich)")

RANKS = str(Path(__file__).with_name("distributed_ranks.py"))
SPECS = ["host", "sim:1"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpibuffers")
    done = run_mpi(2, [RANKS, "buffers", str(out)], timeout=120, out=out)
    assert done.returncode == 0, f"the job failed:\n{done.stdout}\n{done.stderr}"
    for rank, result in enumerate(done.results):
        assert "crashed" not in result["buffers"], f"rank {rank}: {result['buffers']}"
    return [r["buffers"] for r in done.results], out


@pytest.mark.parametrize("spec", SPECS)
def test_replicate_carries_the_roots_buffers(job, spec):
    ranks, _ = job
    root = ranks[0][spec]["root"]
    assert root["layers.1.num_batches_tracked"] == 3
    for seen in ranks:
        assert seen[spec]["replicated"] == root
        assert seen[spec]["device"] == spec
        assert seen[spec]["graph"] == ranks[0][spec]["graph"]


@pytest.mark.parametrize("spec", SPECS)
def test_data_parallel_leaves_buffers_local_while_params_stay_replicas(job, spec):
    ranks, _ = job
    a, b = (r[spec]["after_steps"] for r in ranks)
    assert a["layers.1.running_mean"] != b["layers.1.running_mean"]
    assert a["layers.1.num_batches_tracked"] == b["layers.1.num_batches_tracked"] == 5
    assert ranks[0][spec]["params"] == ranks[1][spec]["params"]


@pytest.mark.parametrize("spec", SPECS)
def test_save_refuses_replicas_whose_buffers_differ_on_every_rank(job, spec):
    ranks, out = job
    for seen in ranks:
        refused = seen[spec]["save_refused"]
        assert refused["error"] == "CollectiveError"
        assert "layers.1.running_mean" in refused["message"]
        assert "rank 0" in refused["message"] and "rank 1" in refused["message"]
        assert "sync_buffers" in refused["message"]
        assert not seen[spec]["refused_file"]
    assert not (out / f"refused-{spec}.safetensors").exists()


@pytest.mark.parametrize("spec", SPECS)
def test_sync_buffers_mean_averages_statistics_then_save_works(job, spec):
    ranks, _ = job
    before = [r[spec]["after_steps"] for r in ranks]
    for key in ("layers.1.running_mean", "layers.1.running_var"):
        want = (np.array(before[0][key]) + np.array(before[1][key])) / 2
        for seen in ranks:
            np.testing.assert_allclose(seen[spec]["mean"][key], want, rtol=1e-6)
    assert ranks[0][spec]["mean"] == ranks[1][spec]["mean"]  # bitwise: the same sum
    assert ranks[0][spec]["mean"]["layers.1.num_batches_tracked"] == 5
    for seen in ranks:
        assert seen[spec]["saved"] == ranks[0][spec]["mean"]


@pytest.mark.parametrize("spec", SPECS)
def test_broadcast_and_sync_buffers_root_copy_the_roots_buffers(job, spec):
    ranks, _ = job
    assert ranks[0][spec]["before_broadcast"] != ranks[1][spec]["before_broadcast"]
    assert ranks[1][spec]["broadcast"] == ranks[0][spec]["before_broadcast"]
    assert ranks[0][spec]["before_root"] != ranks[1][spec]["before_root"]
    assert ranks[1][spec]["root_sync"] == ranks[0][spec]["before_root"]
    assert ranks[0][spec]["root_sync"] == ranks[0][spec]["before_root"]


@pytest.mark.parametrize("spec", SPECS)
def test_counters_that_differ_raise_on_every_rank_and_change_nothing(job, spec):
    ranks, _ = job
    for seen in ranks:
        error = seen[spec]["counters"]
        assert error["error"] == "CollectiveError"
        assert "layers.1.num_batches_tracked" in error["message"]
        assert "rank 0 [8] vs rank 1 [9]" in error["message"]
        assert seen[spec]["after_counters"] == seen[spec]["before_counters"]
        assert seen[spec]["bad_how"]["error"] == "ArgumentError"
        assert "how='median'" in seen[spec]["bad_how"]["message"]


def test_agreement_covers_buffers(job):
    ranks, _ = job
    for seen in ranks:
        assert seen["structure"]["error"] == "GraphMismatchError"
        assert "layers.1.running_mean" in seen["structure"]["message"]
        assert "rank 1 has no Param there" in seen["structure"]["message"]


# -- the world of one (no mpiexec) ---------------------------------------------------------------
def test_sync_buffers_and_save_in_a_world_of_one(tmp_path):
    import modelsync as ms
    from modelsync import layers

    comm = ms.distributed.init()
    model = layers.Chain(layers.Dense(3, 3, seed=0), layers.BatchNorm(3))
    model(np.ones((4, 3), np.float32) * np.arange(4, dtype=np.float32)[:, None], train=True)
    before = {k: np.array(b.value) for k, b in ms.named_buffers(model).items()}
    assert ms.distributed.sync_buffers(model, comm) is model
    assert ms.distributed.sync_buffers(model, comm, "root") is model
    for k, b in ms.named_buffers(model).items():
        assert np.array_equal(b.value, before[k])
    with pytest.raises(ms.ArgumentError, match="how='max'"):
        ms.distributed.sync_buffers(model, comm, how="max")
    with pytest.raises(ms.ArgumentError, match="root=3"):
        ms.distributed.sync_buffers(model, comm, root=3)
    ms.distributed.save(model, tmp_path / "m.safetensors", comm)
    loaded = ms.load(tmp_path / "m.safetensors")
    assert int(ms.named_buffers(loaded)["layers.1.num_batches_tracked"].value) == 1
