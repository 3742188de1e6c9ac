"""The rank side of tests/test_distributed.py: run under ``mpiexec -n N`` as
``python distributed_ranks.py GROUP OUT_DIR``. Each scenario of GROUP runs on every rank and
returns what it saw (JSON); every rank writes ``OUT_DIR/rank<r>.json`` and pytest asserts on
them. Many scenarios per launch keep the number of (slow to start) MPI jobs small.

A scenario that expects an error catches it and reports its type and message, so the tests
can check that every rank raised, and the same thing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import modelsync as ms
from modelsync import layers, losses, optim

D = ms.distributed


def digest(model) -> str:
    """A hash of every Param's bytes (host copies, in model order): equal means bitwise equal."""
    h = hashlib.sha256()
    for p in ms.params(ms.to_host(model) if ms.params(model)[0].device != ms.device("host")
                       else model):
        h.update(np.ascontiguousarray(p.value).tobytes())
    return h.hexdigest()[:16]


def host_values(model) -> list[np.ndarray]:
    host = model if ms.params(model)[0].device == ms.device("host") else ms.to_host(model)
    return [np.array(p.value) for p in ms.params(host)]


def tied_model(seed: int = 0):
    shared = layers.Dense(4, 4, "tanh", seed=seed + 1)
    return layers.Chain(layers.Dense(6, 4, "relu", seed=seed), shared, shared,
                        layers.Dense(4, 3, seed=seed + 2))


def raised(fn) -> dict:
    """Run ``fn``; report the error it raised (type, message) or that it did not."""
    try:
        fn()
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc),
                "modelsync": isinstance(exc, ms.ModelSyncError)}
    return {"error": None}


def data(seed: int, n: int = 48):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6), dtype=np.float32), rng.integers(0, 3, n)


# -- scenarios --------------------------------------------------------------------------------
def s_replicate(comm):
    original = tied_model() if comm.rank == 0 else None
    replica = D.replicate(original, comm)
    out = {"graph": ms.graph_id(replica), "digest": digest(replica),
           "tied": replica.layers[1] is replica.layers[2], "params": len(ms.params(replica)),
           "device": str(ms.params(replica)[0].device)}
    if comm.rank == 0:
        out["original_graph"] = ms.graph_id(original)
        out["original_digest"] = digest(original)
        out["independent"] = ms.params(replica)[0] is not ms.params(original)[0]
    sim = D.replicate(original, comm, device="sim:1")
    out["sim_device"] = str(ms.params(sim)[0].device)
    out["sim_digest"] = digest(sim)
    out["sim_graph"] = ms.graph_id(sim)
    return out


def s_broadcast(comm):
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    for p in ms.params(model):
        p.assign(np.full(p.shape, comm.rank + 1.0, np.float32))
    root = comm.size - 1
    with ms.track_transfers() as t:
        D.broadcast(model, comm, root=root)
    on_sim = ms.to_device(model, "sim:1")
    for p in ms.params(on_sim):
        p.assign(np.full(p.shape, comm.rank + 7.0, np.float32))
    D.broadcast(on_sim, comm, root=0)
    return {"values": sorted({float(v) for a in host_values(model) for v in a.ravel()}),
            "sim_values": sorted({float(v) for a in host_values(on_sim) for v in a.ravel()}),
            "collective": t.collective_bytes, "param_bytes": sum(p.nbytes for p in
                                                                 ms.params(model)),
            "kinds": sorted({e.kind for e in t.events})}


def s_sync(comm):
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    for p in ms.params(model):
        p.assign(np.full(p.shape, float(comm.rank), np.float32))
    D.sync(model, comm)
    mean = sorted({float(v) for a in host_values(model) for v in a.ravel()})
    for p in ms.params(model):
        p.assign(np.full(p.shape, float(comm.rank), np.float32))
    D.sync(model, comm, tau=0.5)
    soft = sorted({float(v) for a in host_values(model) for v in a.ravel()})
    wrapper = ms.to_device(model, "sim:1", mode="wrap")  # sync into a wrapper: coherent
    for p in ms.params(wrapper):
        p.assign(ms.to_device(np.full(p.shape, 10.0 * comm.rank, np.float32), "sim:1"))
    D.sync(wrapper, comm)
    through = sorted({float(v) for a in host_values(model) for v in a.ravel()})
    return {"mean": mean, "soft": soft, "wrapped_original": through,
            "digest": digest(model)}


def _train(model, opt, batches, rank_slice):
    for x, y in batches:
        opt.zero_grad()
        ms.backprop(model, losses.cross_entropy, ms.to_device(x[rank_slice], _dev(model)),
                    ms.to_device(y[rank_slice], _dev(model)))
        opt.step()


def _dev(model):
    return ms.params(model)[0].device


def s_data_parallel(comm):
    out = {}
    for spec in ("host", "sim:1"):
        model = D.replicate(tied_model() if comm.rank == 0 else None, comm, device=spec)
        reference = ms.to_device(model, spec)  # one process, the global batch, same start
        x, y = data(5, 12 * comm.size * 4)
        per = 12  # per rank and step
        batches = [(x[i:i + per * comm.size], y[i:i + per * comm.size])
                   for i in range(0, len(x), per * comm.size)]
        opt = D.DataParallel(optim.Adam(ms.params(model), lr=1e-2), comm)
        with ms.track_transfers() as t:
            _train(model, opt, batches, slice(comm.rank * per, (comm.rank + 1) * per))
        _train(reference, optim.Adam(ms.params(reference), lr=1e-2), batches, slice(None))
        diff = max(float(np.max(np.abs(a - b))) for a, b in
                   zip(host_values(model), host_values(reference), strict=True))
        out[spec] = {"digest": digest(model), "diff": diff, "moved": digest(model) !=
                     digest(ms.to_device(ms.to_host(reference), spec)) or diff > 0,
                     "collective": t.collective_bytes, "steps": len(batches),
                     "grad_bytes": sum(p.nbytes for p in ms.params(model)),
                     "param_bytes_moved": t.bytes_of("param"),
                     "collectives": sum(e.kind == "collective" for e in t.events)}
    # moved to another device between steps (mode="move"): the plan follows
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    opt = D.DataParallel(optim.Adam(ms.params(model), lr=1e-2), comm)
    x, y = data(7 + comm.rank, 16)
    _train(model, opt, [(x, y)], slice(None))
    moved = ms.to_device(model, "sim:1", mode="move")
    _train(moved, opt, [(x, y)], slice(None))
    out["moved"] = {"digest": digest(moved), "device": str(_dev(moved))}
    # 1,000 small Params: still one collective per dtype per step
    many = layers.Chain(*[layers.Dense(2, 2, seed=i) for i in range(50)])
    many = D.replicate(many if comm.rank == 0 else None, comm)
    opt = D.DataParallel(optim.SGD(ms.params(many), lr=0.1), comm)
    for p in ms.params(many):
        p.grad = np.full(p.shape, float(comm.rank), np.float32)
    with ms.track_transfers() as t:
        opt.step()
    out["many"] = {"collectives": sum(e.kind == "collective" for e in t.events),
                   "params": len(ms.params(many)),
                   "grads": sorted({float(v) for p in ms.params(many) for v in
                                    np.asarray(p.grad).ravel()})}
    # flat gradients (as backprop leaves them): the store's gradient buffer is reduced in place
    opt.zero_grad()
    for p in ms.params(many):
        p.accumulate_grad(np.full(p.shape, float(comm.rank), np.float32))
    store = ms.params(many)[0].flat_store
    buffer = store.grads
    opt.step()
    out["in_place"] = {"same_buffer": store.grads is buffer and store.all_grads_set(),
                       "grads": sorted({float(v) for v in np.asarray(buffer)})}
    return out


def s_dtypes(comm):
    """Two dtypes: two buffers, two collectives; float16 is summed in float32 by MPI."""
    model = D.replicate(layers.Chain(layers.Dense(3, 4, dtype="float16", seed=0),
                                     layers.Dense(4, 2, dtype="float64", seed=1))
                        if comm.rank == 0 else None, comm)
    for p in ms.params(model):
        p.assign(np.full(p.shape, float(comm.rank + 1), dtype=str(p.dtype)))
    with ms.track_transfers() as t:
        D.sync(model, comm)
    means = {str(p.dtype): sorted({float(v) for v in np.asarray(p.value).ravel()})
             for p in ms.params(model)}
    opt = D.DataParallel(optim.SGD(ms.params(model), lr=1.0), comm)
    for p in ms.params(model):
        p.grad = np.full(p.shape, float(comm.rank), dtype=str(p.dtype))
    with ms.track_transfers() as t2:
        opt.average_gradients()
    grads = {str(p.dtype): sorted({float(v) for v in np.asarray(p.grad).ravel()})
             for p in ms.params(model)}
    return {"means": means, "grads": grads,
            "collectives": [sum(e.kind == "collective" for e in x.events) for x in (t, t2)]}


def s_wrap(comm):
    """DataParallel training a wrapper on sim:1: the host original sees every update, and
    the originals are bitwise equal on every rank."""
    original = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    wrapper = ms.to_device(original, "sim:1", mode="wrap")
    opt = D.DataParallel(optim.Adam(ms.params(wrapper), lr=1e-2), comm)
    x, y = data(comm.rank, 8)
    before = digest(original)
    with ms.track_transfers() as t:
        for _ in range(2):
            opt.zero_grad()
            ms.backprop(wrapper, losses.cross_entropy, ms.to_device(x, "sim:1"),
                        ms.to_device(y, "sim:1"))
            opt.step()
    return {"changed": digest(original) != before, "digest": digest(original),
            "param_bytes": t.bytes_of("param")}


def s_mismatches(comm):
    """Every mismatch raises on every rank, and nothing changes on any."""
    last = comm.rank == comm.size - 1
    out = {}
    base = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    before = digest(base)

    shape = layers.Chain(layers.Dense(6, 5 if last else 4, seed=0))
    out["shape"] = raised(lambda: D.sync(shape, comm, check="structure"))
    dtype = layers.Chain(layers.Dense(6, 4, dtype="float64" if last else "float32", seed=0))
    out["dtype"] = raised(lambda: D.broadcast(dtype, comm, check="structure"))
    # two equal-sized Params in a different order on one rank
    pair = D.replicate(layers.Chain(layers.Dense(4, 4, seed=1), layers.Dense(4, 4, seed=2))
                       if comm.rank == 0 else None, comm)
    swapped = layers.Chain(pair.layers[1], pair.layers[0]) if last else pair
    pair_before = digest(swapped)
    out["order"] = raised(lambda: D.sync(swapped, comm))
    out["order_unchanged"] = digest(swapped) == pair_before
    reordered = ms.params(pair)
    if last:
        reordered = [reordered[2], reordered[3], reordered[0], reordered[1]]
    out["order_optimizer"] = raised(lambda: _step(D.DataParallel(optim.SGD(reordered, lr=0.1),
                                                                 comm), pair, comm))
    # separately built models: different graphs (fine by structure)
    separate = tied_model(seed=comm.rank)
    out["graph"] = raised(lambda: D.sync(separate, comm))
    out["graph_structure_ok"] = raised(lambda: D.sync(separate, comm, check="structure"))
    # a missing gradient
    opt = D.DataParallel(optim.SGD(ms.params(base), lr=0.1), comm)
    for p in ms.params(base):
        p.grad = np.full(p.shape, 1.0 + comm.rank, np.float32)
    if last:
        ms.params(base)[-1].grad = None
    out["grad"] = raised(opt.step)
    out["grad_unchanged"] = float(np.asarray(ms.params(base)[0].grad).ravel()[0]) == \
        1.0 + comm.rank
    # arguments, operations, local failures
    out["tau"] = raised(lambda: D.sync(base, comm, tau=0.5 if last else 0.25))
    out["root"] = raised(lambda: D.broadcast(base, comm, root=1 if last else 0))
    out["op"] = raised(lambda: D.sync(base, comm) if last else D.broadcast(base, comm))
    out["local"] = raised(lambda: D.broadcast(None if last else base, comm))
    out["bad_tau"] = raised(lambda: D.sync(base, comm, tau=2.0 if last else 1.0))
    out["unchanged"] = digest(base) == before
    # and after all that the ranks still agree: the next collective works
    out["after"] = raised(lambda: D.sync(base, comm))
    return out


def _step(opt, model, comm):
    for p in ms.params(model):
        p.grad = np.ones(p.shape, np.float32)
    opt.step()


def s_guard(comm):
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    before = digest(model)
    out = {}

    def guarded_everywhere():
        with ms.transfer_guard("disallow"):
            D.sync(model, comm)

    def guarded_on_rank0():
        if comm.rank == 0:
            with ms.transfer_guard("disallow"):
                D.sync(model, comm)
        else:
            D.sync(model, comm)

    with ms.track_transfers() as t:
        out["everywhere"] = raised(guarded_everywhere)
        out["rank0"] = raised(guarded_on_rank0)
    out["recorded"] = t.count
    out["unchanged"] = digest(model) == before
    opt = D.DataParallel(optim.SGD(ms.params(model), lr=0.1), comm)
    for p in ms.params(model):
        p.grad = np.ones(p.shape, np.float32)

    def step_guarded():
        with ms.transfer_guard("disallow"):
            opt.step()

    out["step"] = raised(step_guarded)
    return out


def s_steady(comm):
    """Mismatches after steps that found the ranks agreeing (the step made ready once, see
    DataParallel's steady path) still raise on every rank and change nothing."""
    last = comm.rank == comm.size - 1
    model = D.replicate(layers.Chain(layers.Dense(6, 5, seed=0), layers.Dense(5, 3, seed=1))
                        if comm.rank == 0 else None, comm)
    params = ms.params(model)
    inner = optim.Adam(params, lr=1e-2)
    opt = D.DataParallel(inner, comm)

    def backprop(missing: bool = False) -> None:
        inner.zero_grad()  # (gradients land in the flat store's buffer, as backprop's do)
        for i, p in enumerate(params):
            if not (missing and i == len(params) - 1):
                p.accumulate_grad(np.full(p.shape, 1.0 + comm.rank, np.float32))

    out = {}
    with ms.track_transfers() as ledger:
        for _ in range(3):
            backprop()
            opt.step()
    out["collectives"] = sum(e.kind == "collective" for e in ledger.events)
    out["mean"] = float(np.asarray(params[0].grad).ravel()[0])
    before = digest(model)
    backprop(missing=last)
    out["grad"] = raised(opt.step)
    backprop()

    def guarded_on_rank0():
        if comm.rank == 0:
            with ms.transfer_guard("disallow"):
                opt.step()
        else:
            opt.step()

    out["guard"] = raised(guarded_on_rank0)
    out["op"] = raised(lambda: D.sync(model, comm) if last else opt.step())
    out["grads_unchanged"] = float(np.asarray(params[0].grad).ravel()[0]) == 1.0 + comm.rank
    out["unchanged"] = digest(model) == before
    out["after"] = raised(opt.step)
    out["digest"] = digest(model)
    # a store over FUSE_MIN_BYTES: the optimizer divides the sum in its own pass
    big = D.replicate(layers.Chain(layers.Dense(1024, 2048, seed=3)) if comm.rank == 0
                      else None, comm)
    weights = ms.params(big)
    start = [np.array(p.value) for p in weights]
    big_inner = optim.SGD(weights, lr=0.5)
    big_opt = D.DataParallel(big_inner, comm)
    out["big_bytes"] = sum(p.nbytes for p in weights)
    for _ in range(2):  # (the second step takes the steady path)
        big_inner.zero_grad()
        for p in weights:
            p.accumulate_grad(np.full(p.shape, 1.0 + comm.rank, np.float32))
        big_opt.step()
    mean = sum(1.0 + r for r in range(comm.size)) / comm.size
    out["big_grads_mean"] = all(bool(np.all(np.asarray(p.grad) == np.float32(mean)))
                                for p in weights)
    out["big_values"] = all(
        bool(np.allclose(np.asarray(p.value), s0 - 2 * 0.5 * np.float32(mean), atol=1e-5))
        for p, s0 in zip(weights, start, strict=True))
    out["big_digest"] = digest(big)
    return out


def s_save(comm, out_dir: Path):
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    opt = D.DataParallel(optim.Adam(ms.params(model)), comm)
    _step(opt, model, comm)
    module = sys.modules["modelsync.distributed.save"]
    calls = []
    real = module.save_file

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    module.save_file = counting
    path = out_dir / "model.safetensors"
    root = comm.size - 1
    try:
        D.save(model, path, comm, root=root, optimizer=opt)
        exists = path.exists()  # on every rank, as soon as save returns
        bad = raised(lambda: D.save(model, out_dir / "no" / "such" / "dir" / "m.safetensors",
                                    comm, root=root))
    finally:
        module.save_file = real
    again = ms.load(path)
    opt2 = optim.Adam(ms.params(again))
    ms.load_optimizer(path, opt2)
    return {"calls": len(calls), "exists": exists, "graph": ms.graph_id(again) ==
            ms.graph_id(model), "digest": digest(again) == digest(model), "bad": bad,
            "state": sorted(opt2.state_dict()["state"])[:1]}


def s_barrier(comm):
    if comm.rank == 0:
        time.sleep(0.3)
    start = time.monotonic()
    D.barrier(comm)
    return {"waited": time.monotonic() - start}


# -- buffers (issue 18): the "buffers" group -----------------------------------------------------
def bn_model(seed: int = 0, tracking: bool = True):
    return layers.Chain(layers.Dense(6, 4, seed=seed),
                        layers.BatchNorm(4, track_running_stats=tracking), layers.ReLU(),
                        layers.Dense(4, 3, seed=seed + 1))


def buffer_values(model) -> dict:
    """Each Buffer's values as host lists (uncounted reads are fine here: tests only)."""
    out = {}
    for path, b in ms.named_buffers(model).items():
        v = b.value
        if b.device != ms.device("host"):
            v = ms.to_device(v, "host")
        out[path] = np.asarray(v).tolist()
    return out


def _bn_train(model, opt, seed: int, steps: int) -> None:
    for i in range(steps):
        x, y = data(seed + i, 8)
        dev = ms.params(model)[0].device
        opt.zero_grad()
        ms.backprop(model, losses.cross_entropy, ms.to_device(x, dev), ms.to_device(y, dev))
        opt.step()


def s_buffers(comm, out_dir):
    out = {spec: _buffers_on(comm, out_dir, spec) for spec in ("host", "sim:1")}
    # agreement covers Buffers: one rank's BatchNorm tracks no statistics
    odd = bn_model(tracking=comm.rank != comm.size - 1)
    out["structure"] = raised(lambda: D.broadcast(odd, comm, check="structure"))
    return out


def _buffers_on(comm, out_dir, spec):
    """Every Buffer rule across ranks, on ``spec``: replicate, DataParallel, save refused,
    sync_buffers (mean, bad how), save, broadcast, sync_buffers root, counters differing."""
    root_model = None
    if comm.rank == 0:
        root_model = bn_model()
        _bn_train(root_model, optim.SGD(ms.params(root_model), lr=0.1), 100, 3)
    replica = D.replicate(root_model, comm, device=spec)
    seen = {"replicated": buffer_values(replica), "graph": ms.graph_id(replica),
            "device": str(ms.buffers(replica)[0].device)}
    if comm.rank == 0:
        seen["root"] = buffer_values(root_model)
    # DataParallel: each rank's batches, its own statistics; Params stay replicas
    opt = D.DataParallel(optim.SGD(ms.params(replica), lr=0.1), comm)
    _bn_train(replica, opt, 10 * (comm.rank + 1), 2)
    seen["after_steps"] = buffer_values(replica)
    seen["params"] = digest(replica)
    seen["save_refused"] = raised(lambda: D.save(
        replica, out_dir / f"refused-{spec}.safetensors", comm))
    seen["refused_file"] = (out_dir / f"refused-{spec}.safetensors").exists()
    seen["bad_how"] = raised(lambda: D.sync_buffers(replica, comm, how="median"))
    D.sync_buffers(replica, comm)  # how="mean"
    seen["mean"] = buffer_values(replica)
    D.save(replica, out_dir / f"agreed-{spec}.safetensors", comm)
    seen["saved"] = buffer_values(ms.load(out_dir / f"agreed-{spec}.safetensors"))
    # broadcast carries the root's Buffers
    _bn_train(replica, optim.SGD(ms.params(replica), lr=0.1), 50 + comm.rank, 1)
    seen["before_broadcast"] = buffer_values(replica)
    D.broadcast(replica, comm)
    seen["broadcast"] = buffer_values(replica)
    # how="root"
    _bn_train(replica, optim.SGD(ms.params(replica), lr=0.1), 70 + comm.rank, 1)
    seen["before_root"] = buffer_values(replica)
    D.sync_buffers(replica, comm, how="root")
    seen["root_sync"] = buffer_values(replica)
    # counters that differ: every rank raises, nothing changes
    _bn_train(replica, optim.SGD(ms.params(replica), lr=0.1), 90, 1 + comm.rank)
    seen["before_counters"] = buffer_values(replica)
    seen["counters"] = raised(lambda: D.sync_buffers(replica, comm))
    seen["after_counters"] = buffer_values(replica)
    return seen


GROUPS = {
    "main": [s_replicate, s_broadcast, s_sync, s_dtypes, s_data_parallel, s_wrap, s_mismatches,
             s_guard, s_steady, s_save, s_barrier],
    "buffers": [s_buffers],
}


def crash(comm):
    """An uncaught exception on the last rank while the others wait in a collective."""
    if comm.rank == comm.size - 1:
        raise RuntimeError("this rank fails on purpose")
    D.barrier(comm)


def stuck(comm, late: int):
    """Rank ``late`` never arrives at the sync the others wait in."""
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    if comm.rank == late:
        time.sleep(60)
    D.sync(model, comm)


def silent(comm, late: int):
    """Rank ``late`` (the root: a root's small Bcast returns at once) agrees to a broadcast
    with the others, then never joins its (blocking, watched) Bcast."""
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    if comm.rank == late:
        from modelsync.distributed import transport

        transport._host_bcast = lambda *args: time.sleep(60)
    D.broadcast(model, comm)


def lost(comm, late: int):
    """Rank ``late`` agrees to a DataParallel step with the others, then stops inside its
    gradient Allreduce."""
    model = D.replicate(tied_model() if comm.rank == 0 else None, comm)
    for p in ms.params(model):
        p.grad = np.ones_like(p.value)
    opt = D.DataParallel(optim.SGD(ms.params(model), lr=0.1), comm)
    if comm.rank == late:
        from modelsync.distributed import transport

        transport._host_sum = lambda *args: time.sleep(60)
    opt.step()


def main(argv: list[str]) -> None:
    group, out_dir = argv[1], Path(argv[2])
    timeout = float(argv[3]) if len(argv) > 3 else 30.0
    comm = D.init(timeout=timeout)
    if group == "crash":
        crash(comm)
        return
    if group.startswith("stuck"):
        stuck(comm, int(group[len("stuck"):]))
        return
    if group.startswith("silent"):
        silent(comm, int(group[len("silent"):]))
        return
    if group.startswith("lost"):
        lost(comm, int(group[len("lost"):]))
        return
    results = {"size": comm.size, "rank": comm.rank, "watched": comm.watchdog is not None}
    for scenario in GROUPS[group]:
        name = scenario.__name__[2:]
        try:
            if scenario in (s_save, s_buffers):
                results[name] = scenario(comm, out_dir)
            else:
                results[name] = scenario(comm)
        except Exception:  # a scenario that broke: report it, and let the others run
            results[name] = {"crashed": traceback.format_exc()}
    (out_dir / f"rank{comm.rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv)
