"""ms.distributed in one process: without mpiexec it is a world of one where every call works
and checks its arguments; and the pieces that need no second process (the error a
disagreement becomes, gradient packing, the ledger's collective events)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.distributed import agree, data_parallel, nccl
from modelsync.transfers import guard_collective, record_collective

D = ms.distributed


def tied_model(seed: int = 0):
    shared = layers.Dense(4, 4, "tanh", seed=seed + 1)
    return layers.Chain(layers.Dense(6, 4, "relu", seed=seed), shared, shared,
                        layers.Dense(4, 3, seed=seed + 2))


@pytest.fixture(scope="module")
def comm():
    return D.init()


def values(model):
    return [np.array(p.value) for p in ms.params(ms.to_host(model))]


# -- init ---------------------------------------------------------------------------------------
def test_init_is_a_world_of_one_without_mpiexec(comm):
    assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    assert comm.timeout == 600.0 and "size=1" in repr(comm)
    D.barrier(comm)  # nothing to wait for


def test_init_duplicates_a_given_communicator():
    mpi = pytest.importorskip("mpi4py.MPI")
    comm = D.init(mpi.COMM_SELF, timeout=5)
    assert comm.size == 1 and comm.timeout == 5.0
    assert comm.mpi != mpi.COMM_SELF  # a duplicate: our messages never match the user's


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"timeout": 0}, ms.ArgumentError, "timeout=0 is outside (0, ∞)"),
    ({"timeout": float("inf")}, ms.ArgumentError, "timeout=inf"),
    ({"timeout": "10"}, ms.ArgumentTypeError, "timeout='10' is a str"),
    ({"abort_on_error": 1}, ms.ArgumentTypeError, "abort_on_error=1"),
    ({"comm": "world"}, ms.ArgumentTypeError, "comm is a str"),
])
def test_init_checks_its_arguments(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        D.init(**kwargs)


# -- replicate, broadcast, sync, save -------------------------------------------------------------
def test_replicate_is_a_copy_of_one_graph(comm):
    model = tied_model()
    replica = D.replicate(model, comm)
    assert ms.graph_id(replica) == ms.graph_id(model)
    assert replica.layers[1] is replica.layers[2]  # ties kept
    assert all(p is not q for p, q in zip(ms.params(replica), ms.params(model), strict=True))
    for a, b in zip(values(replica), values(model), strict=True):
        np.testing.assert_array_equal(a, b)
    on_sim = D.replicate(model, comm, device="sim:1")
    assert {str(p.device) for p in ms.params(on_sim)} == {"sim:1"}


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"root": 1}, ms.ArgumentError, r"root=1 is outside \[0, 0\]"),
    ({"root": True}, ms.ArgumentTypeError, "root=True is a bool"),
    ({"device": "sim:9"}, ms.DeviceError, "sim:9"),
])
def test_replicate_checks_its_arguments(comm, kwargs, error, words):
    with pytest.raises(error, match=words):
        D.replicate(tied_model(), comm, **kwargs)


def test_replicate_needs_a_model_on_the_root(comm):
    with pytest.raises(ms.ArgumentTypeError, match="model is a NoneType"):
        D.replicate(None, comm)


@pytest.mark.parametrize("op", ["broadcast", "sync"])
def test_a_world_of_one_keeps_the_values(comm, op):
    model = tied_model()
    before = values(model)
    kwargs = {"tau": 0.5} if op == "sync" else {}
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        assert getattr(D, op)(model, comm, **kwargs) is model
    assert t.count == 0  # nothing crosses a process boundary in a world of one
    for a, b in zip(values(model), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda c, m: D.sync(m, c, tau=0), ms.ArgumentError, r"tau=0 is outside \(0, 1\]"),
    (lambda c, m: D.sync(m, c, tau="1"), ms.ArgumentTypeError, "tau='1' is a str"),
    (lambda c, m: D.sync(m, c, check="names"), ms.ArgumentError, "check='names'"),
    (lambda c, m: D.broadcast(m, c, root=-1), ms.ArgumentError, "root=-1"),
    (lambda c, m: D.broadcast([m], c), ms.ArgumentTypeError, "model is a list"),
    (lambda c, m: D.sync(m, "world"), ms.ArgumentTypeError, "comm is a str"),
    (lambda c, m: D.save(m, "x.safetensors", None), ms.ArgumentTypeError, "comm is a NoneType"),
])
def test_bad_arguments_raise_naming_them(comm, call, error, words):
    with pytest.raises(error, match=words):
        call(comm, tied_model())


def test_save_writes_the_file(comm, tmp_path):
    model = tied_model()
    opt = D.DataParallel(optim.Adam(ms.params(model)), comm)
    ms.backprop(model, losses.cross_entropy, np.ones((2, 6), np.float32), np.array([0, 1]))
    opt.step()
    D.save(model, tmp_path / "m.safetensors", comm, optimizer=opt)
    again = ms.load(tmp_path / "m.safetensors")
    assert ms.graph_id(again) == ms.graph_id(model)
    ms.load_optimizer(tmp_path / "m.safetensors", optim.Adam(ms.params(again)))
    with pytest.raises(ms.SaveError):
        D.save(model, tmp_path / "missing" / "m.safetensors", comm)


# -- DataParallel -------------------------------------------------------------------------------
def test_data_parallel_in_a_world_of_one_is_the_optimizer(comm):
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 6), dtype=np.float32), rng.integers(0, 3, 16)
    a, b = tied_model(), None
    b = ms.to_host(a)  # same graph, same values
    dp = D.DataParallel(optim.Adam(ms.params(a), lr=1e-2), comm)
    plain = optim.Adam(ms.params(b), lr=1e-2)
    ms.train(a, [(x, y)] * 3, losses.cross_entropy, dp, progress=False)
    ms.train(b, [(x, y)] * 3, losses.cross_entropy, plain, progress=False)
    for p, q in zip(values(a), values(b), strict=True):
        np.testing.assert_array_equal(p, q)
    assert dp.params == tuple(ms.params(a)) and dp.optimizer.params == dp.params
    assert dp.paths == tuple(ms.named_params(a))
    assert dp.state_dict()["type"] == "Adam"
    dp.load_state_dict(dp.state_dict())
    assert "DataParallel(Adam" in repr(dp)


def test_data_parallel_remakes_its_plans_only_when_its_own_params_move(comm):
    model, other = layers.Chain(layers.Dense(3, 2, seed=0)), layers.Chain(layers.Dense(3, 2))
    dp = D.DataParallel(optim.SGD(ms.params(model), lr=0.1), comm)
    for p in ms.params(model):
        p.grad = np.ones(p.shape, np.float32)
    dp.average_gradients()
    (plan,) = dp._plans.values()
    ms.to_device(other, "sim:1", mode="move")  # another model's Params: nothing to remake
    ms.flatten(layers.Chain(layers.Dense(2, 2)))
    dp.average_gradients()
    assert list(dp._plans.values()) == [plan]
    weight = model.layers[0].weight  # one of its own moves: its gradient is on sim:1 now
    weight.rehome(ms.to_device(weight.value, "sim:1"), ms.to_device(weight.grad, "sim:1"))
    dp.average_gradients()
    (remade,) = dp._plans.values()
    assert remade is not plan and remade.groups[0].device is None  # (host and sim:1)


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda m, c: D.DataParallel(ms.params(m), c), ms.ArgumentTypeError, "optimizer is a"),
    (lambda m, c: D.DataParallel(D.DataParallel(optim.SGD(ms.params(m), lr=0.1), c), c),
     ms.ArgumentTypeError, "already a DataParallel"),
    (lambda m, c: D.DataParallel(optim.SGD(ms.params(m), lr=0.1), c, check="x"),
     ms.ArgumentError, "check='x'"),
    (lambda m, c: D.DataParallel(optim.SGD(ms.params(m), lr=0.1), object()),
     ms.ArgumentTypeError, "comm is a object"),
])
def test_data_parallel_checks_its_arguments(comm, make, error, words):
    with pytest.raises(error, match=words):
        make(tied_model(), comm)


def test_gradients_pack_into_one_buffer_and_come_back_as_views():
    big = ms.Param(np.zeros((80, 64), np.float32))  # >= LARGE: scaled straight into place
    small = [ms.Param(np.zeros((3,), np.float32)) for _ in range(4)]
    params = [small[0], small[1], big, small[2], small[3]]
    for i, p in enumerate(params):
        p.grad = np.full(p.shape, float(i + 1), np.float32)
    group = data_parallel._GradGroup(params)
    assert group.segments == [(0, 2, 0, 6), (2, 3, 6, 5126), (3, 5, 5126, 5132)]
    buffer = group.pack(0.5)
    assert buffer is group.buffer and buffer.shape == (5132,)
    group.unpack(buffer)
    for i, p in enumerate(params):
        assert np.shares_memory(p.grad, buffer)
        np.testing.assert_array_equal(p.grad, np.full(p.shape, (i + 1) / 2, np.float32))
    group.pack(0.5)  # packing the views again (no new backprop) is exact
    np.testing.assert_array_equal(params[2].grad, np.full((80, 64), 0.75, np.float32))


def test_gradients_on_a_device_pack_by_concatenation():
    model_params = ms.params(ms.to_device(layers.Chain(layers.Dense(2, 3)), "sim:1"))
    for p in model_params:
        p.grad = ms.to_device(np.ones(p.shape, np.float32), "sim:1")
    group = data_parallel._GradGroup(model_params)
    packed = group.pack(0.25)
    assert group.buffer is None and tuple(packed.shape) == (9,)
    group.unpack(packed)
    for p in model_params:
        assert str(p.grad.device) == str(ms.device("sim:1").native)
        np.testing.assert_array_equal(to_numpy(p.grad), np.full(p.shape, 0.25, np.float32))


# -- agreement: the error a disagreement becomes ------------------------------------------------
def describe(rows, *, graph=None, grads=None, args=None, op="sync", seq=1, error=None):
    return {"op": op, "seq": seq, "error": error, "args": args or {}, "params": rows,
            "graph": graph, "grads": grads}


ROW_A = ["layers.0.weight", [4, 6], "float32", "o1", "layers.0.weight"]
ROW_B = ["layers.0.bias", [4], "float32", "o2", "layers.0.bias"]


def test_explain_names_ranks_and_the_first_differing_path():
    other = ["layers.0.weight", [5, 6], "float32", "o1", "layers.0.weight"]
    error = agree.explain([describe([ROW_A, ROW_B]), describe([ROW_A, ROW_B]),
                           describe([other, ROW_B])])
    assert isinstance(error, ms.GraphMismatchError)
    assert str(error).startswith(
        "sync: layers.0.weight: ranks 0, 1 (4, 6) float32 vs rank 2 (5, 6) float32")


def test_explain_a_missing_param_and_a_tie():
    error = agree.explain([describe([ROW_A, ROW_B]), describe([ROW_A])])
    assert "layers.0.bias: rank 0 (4,) float32 vs rank 1 has no Param there" in str(error)
    tied = ["layers.0.bias", [4], "float32", "o2", "layers.9.bias"]
    error = agree.explain([describe([ROW_A, ROW_B]), describe([ROW_A, tied])])
    assert "tied to layers.9.bias" in str(error)


def test_explain_a_graph_difference_names_the_first_other_origin():
    other = ["layers.0.bias", [4], "float32", "zz", "layers.0.bias"]
    error = agree.explain([describe([ROW_A, ROW_B], graph="g1"),
                           describe([ROW_A, other], graph="g2")])
    assert "layers.0.bias: the ranks hold Params made as different originals" in str(error)
    error = agree.explain([describe([ROW_A], graph="g1" * 8), describe([ROW_A], graph="g2" * 8)])
    assert "graph ids differ" in str(error)
    assert agree.explain([describe([ROW_A, ROW_B]), describe([ROW_A, other])]).__class__ is \
        ms.distributed.CollectiveError  # check="structure": origins are not compared


def test_explain_gradients_arguments_operations_and_failures():
    error = agree.explain([describe([ROW_A, ROW_B], grads=["layers.0.weight", "layers.0.bias"]),
                           describe([ROW_A, ROW_B], grads=["layers.0.weight"])])
    assert "layers.0.bias: rank 0 has a gradient vs rank 1 has none" in str(error)
    error = agree.explain([describe([], args={"tau": 0.5}), describe([], args={"tau": 1.0})])
    assert isinstance(error, ms.ArgumentError) and "tau differs" in str(error)
    error = agree.explain([describe([]), describe([], op="broadcast")])
    assert isinstance(error, D.CollectiveError)
    assert "rank 0 at sync (operation #1), rank 1 at broadcast (operation #1)" in str(error)
    error = agree.explain([describe([]), describe([], error="OSError: disk")])
    assert "rank 1 could not take part: OSError: disk" in str(error)


def test_a_description_that_fails_is_reported_as_text():
    def broken():
        raise ValueError("no")

    assert agree._describe(broken, "sync", 3, None)["error"] == "ValueError: no"
    assert agree._describe(dict, "sync", 3, KeyError("k"))["error"] == "KeyError: 'k'"


# -- the ledger and the guard -------------------------------------------------------------------
def test_collectives_are_recorded_and_guarded(capsys):
    with ms.track_transfers() as t:
        record_collective(64, reason="test", what="grad", src="rank 0 (host)", dst="2 ranks")
    assert t.collective_bytes == 64 and t.bytes == 64 and t.h2d_bytes == 0
    assert t.events[0].kind == "collective" and "collective=64" in repr(t)
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError,
                                                     match="collective transfer of 64 bytes"):
        guard_collective(64, reason="test", what="param", src="rank 0", dst="2 ranks")
    with ms.transfer_guard("log"):
        guard_collective(8, reason="test", what="param", src="rank 0", dst="2 ranks")
    assert "collective transfer of 8 bytes" in capsys.readouterr().err
    with pytest.raises(ms.ArgumentError, match="what='x'"):
        guard_collective(8, reason="test", what="x", src="a", dst="b")


def test_nccl_is_only_a_candidate_for_gpus(comm):
    assert not nccl.candidate(comm, ms.device("host"))
    assert not nccl.candidate(comm, ms.device("sim:1"))


def test_without_nccl_the_ranks_decide_for_the_host_path_once():
    mpi = pytest.importorskip("mpi4py.MPI")
    comm = D.init(mpi.COMM_SELF)
    gpu = ms.Device("cuda", 0)  # (not checked: nothing below touches a GPU)
    assert nccl.candidate(comm, gpu)  # undecided: this rank could
    if nccl.usable(comm, gpu):  # pragma: no cover (a machine with CuPy, NCCL and a GPU)
        assert nccl.candidate(comm, gpu)
        return
    assert comm.nccl == {nccl.KEY: None}  # decided together, remembered
    assert not nccl.candidate(comm, gpu) and not nccl.usable(comm, gpu)


# -- docs/distributed.md runs ---------------------------------------------------------------------
def test_the_distributed_guide_runs_in_a_world_of_one(tmp_path, monkeypatch):
    from test_docs import python_blocks

    blocks = python_blocks("docs/distributed.md")
    assert blocks
    monkeypatch.chdir(tmp_path)
    for line, code in blocks:
        exec(compile(code, f"docs/distributed.md:{line}", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "model.safetensors").exists()


def test_a_world_of_one_limits_open_mpi_to_its_self_transport_while_mpi_starts():
    """Open MPI's singleton leaves its shared-memory file in /dev/shm at every run; a
    process no launcher started gets btl=self while MPI starts (unless the user chose), and
    not afterwards (its own mpiexec jobs must not inherit it); a launched one never."""
    from modelsync.distributed.launch import singleton_transport

    alone: dict[str, str] = {}
    with singleton_transport(alone):
        assert alone == {"OMPI_MCA_btl": "self"}
    assert alone == {}
    chosen = {"OMPI_MCA_btl": "self,tcp"}
    with singleton_transport(chosen):
        assert chosen == {"OMPI_MCA_btl": "self,tcp"}
    assert chosen == {"OMPI_MCA_btl": "self,tcp"}
    for launched in ({"OMPI_COMM_WORLD_SIZE": "2"}, {"PMI_SIZE": "2"}, {"PMIX_RANK": "0"},
                     {"SLURM_STEP_NUM_TASKS": "4"}):
        before = dict(launched)
        with singleton_transport(launched):
            assert launched == before
        assert launched == before
