"""Faults from outside (issue 20): SIGKILLed and interrupted saves leave no temporary file for
longer than the next save into the folder; a load reads nothing its header refuses; a save
never replaces something that is not a regular file; a file changed after it was written is
a LoadError naming the tensor; a real Ctrl-C never tears a model; a rank lost inside the
gradient Allreduce is named. Every process launch runs under a timeout in its own process
group, killed whole."""

from __future__ import annotations

import inspect
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import modelsync as ms
from modelsync import interrupts, layers, optim
from modelsync.devices import HOST
from modelsync.io import atomic, load, load_into, load_optimizer, save
from modelsync.io.architecture import build
from modelsync.io.files import read
from modelsync.io.modelfile import CHECKSUMS_KEY, GRAPH_KEY, read_model_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def mlp(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.Dense(3, 5, "tanh", seed=seed), layers.Dense(5, 2, seed=seed + 1))


def temporaries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def spawn(code: str) -> subprocess.Popen:
    """A Python child in its own process group, talking on stdout."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 60.0) -> None:
    """Wait (bounded) for ``expected`` on the child's stdout; kill it whole if it is late."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or result[0].strip() != expected:
        os.killpg(proc.pid, signal.SIGKILL)
        errors = proc.stderr.read()
        kill(proc)
        raise AssertionError(f"the child did not say {expected!r} within {timeout} s: "
                             f"{result} {errors}")


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


# -- 1. no temporary file outlives the next save ------------------------------------------------
SAVER = """
    import sys
    import modelsync as ms
    from modelsync import layers
    model = layers.Chain(*[layers.Dense(1024, 1024, seed=i) for i in range(3)])  # 12.6 MB
    print("ready", flush=True)
    while True:
        ms.save(model, sys.argv[1] if len(sys.argv) > 1 else {path!r})
"""


def test_saves_sigkilled_at_random_moments_leave_nothing_after_the_next_save(tmp_path):
    path = tmp_path / "model.safetensors"
    save(mlp(seed=0), path)
    rng = random.Random(20)
    seen = 0
    deadline = time.monotonic() + 90  # the loop is bounded in time as well as in kills
    for kills in range(12):  # until a kill has landed inside a save, three kills at least
        if time.monotonic() > deadline or (kills >= 3 and seen):
            break
        proc = spawn(SAVER.format(path=str(path)))
        try:
            wait_for_line(proc, "ready")
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            kill(proc)
        seen += len(temporaries(tmp_path))
        load(path)  # the checkpoint is whole: the old one or a new one
    assert seen > 0, "no kill landed inside a save: the test did not test anything"
    save(mlp(seed=1), path)
    assert temporaries(tmp_path) == []
    assert os.listdir(tmp_path) == ["model.safetensors"]


ABANDON = """
    import os, signal, sys
    from pathlib import Path
    from modelsync.io import atomic
    handle, temp = atomic._create(Path(sys.argv[1]), "model.safetensors")
    handle.write(b"x" * 4096)
    handle.flush()
    print("ready", flush=True)
    {then}
"""


def _child_with_temporary(folder: Path, then: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ABANDON.format(then=then)), str(folder)],
        env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    wait_for_line(proc, "ready")
    return proc


def test_the_next_save_removes_a_dead_processs_temporary_and_keeps_a_live_ones(tmp_path):
    dead = _child_with_temporary(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    dead.wait(timeout=30)
    kill(dead)
    (left,) = temporaries(tmp_path)
    alive = _child_with_temporary(tmp_path, "import time; time.sleep(60)")
    try:
        (_, live) = sorted(temporaries(tmp_path), key=lambda n: n != left)
        save(mlp(), tmp_path / "other.safetensors")  # any save into the folder reclaims
        assert temporaries(tmp_path) == [live]  # a save in progress elsewhere keeps its file
    finally:
        kill(alive)
    save(mlp(), tmp_path / "other.safetensors")
    assert temporaries(tmp_path) == []


def test_a_temporary_of_another_machine_is_removed_only_once_it_is_old(tmp_path):
    young = tmp_path / ".m.safetensors.12345-678-0badf00d.0123abcd.tmp"
    old = tmp_path / ".m.safetensors.12345-678-0badf00d.4567abcd.tmp"
    foreign = tmp_path / ".notes.tmp"  # not ours: never touched
    for f in (young, old, foreign):
        f.write_bytes(b"x")
    ancient = time.time() - atomic.FOREIGN_AGE - 60
    os.utime(old, (ancient, ancient))
    os.utime(foreign, (ancient, ancient))
    save(mlp(), tmp_path / "m.safetensors")
    assert temporaries(tmp_path) == sorted([foreign.name, young.name])


def test_a_keyboard_interrupt_at_any_line_of_a_save_leaves_the_old_file_and_nothing_else(
        tmp_path):
    path = tmp_path / "model.safetensors"
    save(mlp(seed=0), path)
    old = path.read_bytes()
    new_model = mlp(seed=1)
    new = _values(ms.params(new_model))
    folder = tmp_path / "saves"
    folder.mkdir()
    path = folder / "model.safetensors"
    path.write_bytes(old)
    source = atomic.__file__
    interrupted = 0
    for at in range(10_000):
        count = [0]

        def tracer(frame, event, arg, at=at, count=count):
            if frame.f_code.co_filename != source:
                return None
            if event == "line":
                count[0] += 1
                if count[0] > at:
                    raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            save(new_model, path)
        except KeyboardInterrupt:
            interrupted += 1
        else:
            break
        finally:
            sys.settrace(None)
        assert os.listdir(folder) == ["model.safetensors"], f"line {at}"
        now = path.read_bytes()
        assert now == old or _same(_values(ms.params(load(path))), new), f"line {at}"
    assert interrupted > 20  # (every line of the save was tried)
    assert os.listdir(folder) == ["model.safetensors"]
    assert _same(_values(ms.params(load(path))), new)


# -- 2. a load reads nothing its header refuses -------------------------------------------------
def _sparse_safetensors(path: Path, header: dict, data_bytes: int) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little") + blob)
        try:
            fh.truncate(8 + len(blob) + data_bytes)  # sparse: no disk, no memory
        except OSError as exc:
            pytest.skip(f"this file system cannot hold a sparse file of {data_bytes} bytes: {exc}")


def test_a_foreign_256_mb_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "foreign.safetensors"
    n = 64 * 1024 * 1024
    _sparse_safetensors(path, {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}},
                        4 * n)
    tracemalloc.start()
    try:
        with pytest.raises(ms.LoadError, match="not a modelsync file"):
            load(path)
        with pytest.raises(ms.LoadError, match="not a modelsync file"):
            load_into(mlp(), path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated to refuse a file by its header"


def test_a_tensor_larger_than_memory_is_a_load_error_naming_it_and_its_size(tmp_path):
    """A modelsync file whose header is consistent (architecture, table, graph id) and which
    is as long as it says (sparse), with a Dense weight of 1e11 float32s."""
    small = tmp_path / "small.safetensors"
    save(layers.Chain(layers.Dense(3, 5, seed=0)), small)
    blob = small.read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    meta = header["__metadata__"]
    out_f, in_f = 1_000_000, 100_000
    arch = json.loads(meta["modelsync.architecture"])
    arch["children"]["layers"]["list"][0]["config"].update(in_features=in_f, out_features=out_f)
    table = json.loads(meta["modelsync.params"])
    table["layers.0.weight"]["shape"] = [out_f, in_f]
    table["layers.0.bias"]["shape"] = [out_f]
    meta["modelsync.architecture"], meta["modelsync.params"] = json.dumps(arch), json.dumps(table)
    del meta[CHECKSUMS_KEY]
    weight = 4 * out_f * in_f
    header["layers.0.bias"] = {"dtype": "F32", "shape": [out_f], "data_offsets": [0, 4 * out_f]}
    header["layers.0.weight"] = {"dtype": "F32", "shape": [out_f, in_f],
                                 "data_offsets": [4 * out_f, 4 * out_f + weight]}
    path = tmp_path / "huge.safetensors"
    _sparse_safetensors(path, header, 4 * out_f + weight)
    mf = read_model_file(read(path))
    model = build(mf.plan, lambda p: ms.Param.in_store(
        np.broadcast_to(np.zeros((), "float32"), mf.params[p].shape), HOST,
        name=mf.params[p].name, origin=mf.params[p].origin, store=None))
    meta[GRAPH_KEY] = ms.graph_id(model)  # (consistent, so only the size can refuse it)
    _sparse_safetensors(path, header, 4 * out_f + weight)
    with pytest.raises(ms.LoadError) as info:
        load(path)
    message = str(info.value)
    assert "'layers.0.weight'" in message and f"{weight:,} bytes" in message
    assert "does not fit" in message


# -- 3. save writes only over a regular file ----------------------------------------------------
def _node_kinds(tmp_path):
    yield "directory", lambda p: p.mkdir(), stat.S_ISDIR
    yield "FIFO", lambda p: os.mkfifo(p), stat.S_ISFIFO
    yield "character device", lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)), \
        stat.S_ISCHR


@pytest.mark.parametrize("kind", ["directory", "FIFO", "character device"])
@pytest.mark.parametrize("through_link", [False, True], ids=["direct", "symlink"])
def test_saving_onto_what_is_not_a_regular_file_is_refused_and_replaces_nothing(
        tmp_path, kind, through_link):
    make, is_kind = {k: (m, t) for k, m, t in _node_kinds(tmp_path)}[kind]
    node = tmp_path / "node"
    try:
        make(node)
    except PermissionError as exc:
        pytest.skip(f"making a {kind} is not permitted here ({exc}); run as root to test it")
    path = node
    if through_link:
        path = tmp_path / "link.safetensors"
        path.symlink_to(node)
    with pytest.raises(ms.SaveError, match="not a regular file|is a directory"):
        save(mlp(), path)
    assert is_kind(os.stat(path).st_mode) and is_kind(os.lstat(node).st_mode)
    assert through_link == path.is_symlink()
    assert temporaries(tmp_path) == []


def test_saving_through_a_symlink_to_a_regular_file_works(tmp_path):
    target = tmp_path / "real.safetensors"
    save(mlp(seed=0), target)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target)
    save(mlp(seed=1), link)
    assert np.array_equal(ms.params(load(link))[0].value, ms.params(mlp(seed=1))[0].value)


# -- 4. integrity: a checksum per tensor --------------------------------------------------------
def _data_start(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


def _tensor_at(blob: bytes, name: str) -> tuple[int, int]:
    start = _data_start(blob)
    begin, end = json.loads(blob[8:start])[name]["data_offsets"]
    return start + begin, start + end


def test_load_verb_signatures_take_verify_keyword_only_default_true():
    for fn in (ms.load, ms.load_into, ms.load_optimizer):
        parameter = inspect.signature(fn).parameters["verify"]
        assert parameter.default is True and parameter.kind is parameter.KEYWORD_ONLY


def test_a_flipped_bit_is_a_load_error_naming_the_tensor_unless_verify_is_false(tmp_path):
    path = tmp_path / "m.safetensors"
    model = mlp(seed=0)
    opt = optim.Adam(ms.params(model))
    for p in ms.params(model):
        p.grad = np.ones_like(p.value)
    opt.step()
    save(model, path, optimizer=opt)
    good = path.read_bytes()
    begin, _ = _tensor_at(good, "layers.1.weight")
    bad = bytearray(good)
    bad[begin + 2] ^= 0x10
    path.write_bytes(bytes(bad))
    for call in (lambda **kw: load(path, **kw),
                 lambda **kw: load_into(mlp(), path, check="structure", **kw)):
        with pytest.raises(ms.LoadError, match="'layers.1.weight' does not match its checksum"):
            call()
    assert ms.params(load(path, verify=False))[2].value.ravel()[0] != \
        ms.params(model)[2].value.ravel()[0]
    # an optimizer tensor: load_optimizer checks its own tensors
    name = next(n for n in json.loads(good[8:_data_start(good)]) if n.startswith("__optim__"))
    begin, _ = _tensor_at(good, name)
    bad = bytearray(good)
    bad[begin] ^= 0x01
    path.write_bytes(bytes(bad))
    with pytest.raises(ms.LoadError, match="does not match its checksum"):
        load_optimizer(path, optim.Adam(ms.params(model)))
    load_optimizer(path, optim.Adam(ms.params(model)), verify=False)


def test_a_file_rewritten_in_place_while_loading_is_refused(tmp_path):
    """What a reader sees when another process rewrites the file in place under it: the
    header of one save with some of the data of another (same layout)."""
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    first = path.read_bytes()
    save(mlp(seed=1), path)
    second = path.read_bytes()
    assert len(first) == len(second) and _data_start(first) == _data_start(second)
    middle = (_data_start(first) + len(first)) // 2
    path.write_bytes(first[:middle] + second[middle:])
    with pytest.raises(ms.LoadError, match="does not match its checksum"):
        load(path)


def test_loads_while_another_writer_rewrites_the_file_in_place_are_whole_or_refused(tmp_path):
    """A writer overwrites the file in place (same size, no rename), alternating two saves of
    one layout, while loads run: every load is one of the two models, or a LoadError."""
    path = tmp_path / "m.safetensors"
    models = [layers.Chain(*[layers.Dense(64, 64, seed=10 * k + i) for i in range(8)])
              for k in range(2)]
    blobs = []
    for model in models:
        save(model, path)
        blobs.append(path.read_bytes())
    assert len(blobs[0]) == len(blobs[1])
    expected = [_values(ms.params(m)) for m in models]
    stop = threading.Event()

    def rewrite():
        k = 0
        with open(path, "r+b") as fh:
            while not stop.is_set():
                for at in range(0, len(blobs[k]), 4096):  # page by page, as a copy does
                    fh.seek(at)
                    fh.write(blobs[k][at:at + 4096])
                    fh.flush()
                k = 1 - k

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    outcomes = {"whole": 0, "refused": 0}
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                now = _values(ms.params(load(path)))
            except ms.LoadError:
                outcomes["refused"] += 1
                continue
            assert _same(now, expected[0]) or _same(now, expected[1]), "a mixed model loaded"
            outcomes["whole"] += 1
    finally:
        stop.set()
        writer.join(timeout=30)
    assert outcomes["refused"] + outcomes["whole"] > 10, outcomes


def test_a_save_replacing_the_file_between_header_and_data_is_no_error(tmp_path, monkeypatch):
    """The header and the data are two reads; a concurrent save may replace the file between
    them. The load then reads the new file whole instead of failing."""
    from modelsync.io import api

    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    real_read, replaced = api.read, []

    def read_then_replace(where):
        raw = real_read(where)
        if not replaced:
            replaced.append(True)
            save(mlp(seed=1), path)  # a new inode, a new header
        return raw

    monkeypatch.setattr(api, "read", read_then_replace)
    assert _same(_values(ms.params(load(path))), _values(ms.params(mlp(seed=1))))
    replaced.clear()
    assert _same(_values(ms.params(load_into(mlp(), path, check="structure"))),
                 _values(ms.params(mlp(seed=1))))


def test_loads_during_atomic_saves_to_the_same_path_always_succeed(tmp_path):
    path = tmp_path / "m.safetensors"
    models = [layers.Chain(*[layers.Dense(32, 32, seed=10 * k + i) for i in range(6)])
              for k in range(2)]
    expected = [_values(ms.params(m)) for m in models]
    save(models[0], path)
    stop = threading.Event()

    def keep_saving():
        k = 0
        while not stop.is_set():
            k = 1 - k
            save(models[k], path)
            time.sleep(0.005)

    saver = threading.Thread(target=keep_saving, daemon=True)
    saver.start()
    loads = 0
    try:
        end = time.monotonic() + 2
        while time.monotonic() < end:
            now = _values(ms.params(load(path)))
            assert _same(now, expected[0]) or _same(now, expected[1])
            loads += 1
    finally:
        stop.set()
        saver.join(timeout=30)
    assert loads > 5 and temporaries(tmp_path) == []


def test_a_file_written_before_checksums_still_loads(tmp_path):
    import safetensors.numpy as stnp

    path = tmp_path / "m.safetensors"
    model = mlp(seed=3)
    save(model, path)
    blob = path.read_bytes()
    meta = json.loads(blob[8:_data_start(blob)])["__metadata__"]
    del meta[CHECKSUMS_KEY]
    path.write_bytes(stnp.save(stnp.load(blob), meta))
    loaded = load(path)
    assert all(np.array_equal(a.value, b.value)
               for a, b in zip(ms.params(loaded), ms.params(model), strict=True))
    load_into(mlp(seed=3), path, check="structure")


def test_a_malformed_checksum_table_is_a_load_error(tmp_path):
    import safetensors.numpy as stnp

    path = tmp_path / "m.safetensors"
    save(mlp(), path)
    blob = path.read_bytes()
    meta = json.loads(blob[8:_data_start(blob)])["__metadata__"]
    meta[CHECKSUMS_KEY] = json.dumps({"layers.0.weight": "zz"})
    path.write_bytes(stnp.save(stnp.load(blob), meta))
    with pytest.raises(ms.LoadError, match=CHECKSUMS_KEY):
        load(path)


# -- 5. Ctrl-C never tears a model --------------------------------------------------------------
def _interrupt_at(seconds: float, operation) -> bool:
    """Run ``operation`` with a real SIGINT sent to this process ``seconds`` after it starts;
    True if a KeyboardInterrupt came (during it, or right after it)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        operation()
        timer.join()
        time.sleep(0.05)  # (the signal has landed by now, whenever it was sent)
    except KeyboardInterrupt:
        timer.join()
        return True
    return False


def _moments(operation, count: int) -> list[float]:
    start = time.perf_counter()
    operation()
    took = time.perf_counter() - start
    return [took * 1.2 * i / count for i in range(count)]


def _values(ps) -> list[np.ndarray]:
    return [np.array(p.value, copy=True) for p in ps]


def _same(now, expected) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(now, expected, strict=True))


def _all_old_or_all_new(now, old, new) -> str:
    is_old = [np.array_equal(a, b) for a, b in zip(now, old, strict=True)]
    is_new = [np.array_equal(a, b) for a, b in zip(now, new, strict=True)]
    if all(is_old):
        return "old"
    if all(is_new):
        return "new"
    return f"torn: {sum(is_new)} new, {sum(is_old)} old of {len(now)}"


@pytest.mark.parametrize("loose", [True, False], ids=["loose", "flat"])
def test_a_real_ctrl_c_during_an_adam_step_leaves_it_all_old_or_all_new(loose):
    def setup():
        if loose:  # 1,000 Params the library does not own: stepped one by one
            ps = [ms.Param(np.ones(3)) for _ in range(1000)]
        else:
            ps = ms.params(layers.Chain(*[layers.Dense(32, 32, seed=i) for i in range(40)]))
        for i, p in enumerate(ps):
            p.grad = np.full(p.shape, 0.5 + i % 7, dtype=p.dtype)
        opt = optim.Adam(ps, lr=0.1)
        opt.step()  # (the first step sets up state; the one interrupted is the second)
        return ps, opt

    ps, opt = setup()
    old = _values(ps)
    opt.step()
    new = _values(ps)
    seen = set()
    for moment in _moments(lambda: setup()[1].step(), 24):
        ps, opt = setup()
        assert _interrupt_at(moment, opt.step), f"the Ctrl-C at {moment:.4f} s was lost"
        outcome = _all_old_or_all_new(_values(ps), old, new)
        assert outcome in ("old", "new"), f"Ctrl-C at {moment:.4f} s: {outcome}"
        steps = {s["step"] for s in opt.state.values()}
        assert steps == ({1} if outcome == "old" else {2}), steps
        seen.add(outcome)
    assert "new" in seen


def _loose_chain(seed: int) -> layers.Chain:
    return layers.Chain(*[layers.Dense(8, 8, seed=seed + i) for i in range(300)])


@pytest.mark.parametrize("verb", ["sync", "load_into"])
def test_a_real_ctrl_c_during_sync_or_load_into_leaves_the_model_all_old_or_all_new(verb):
    src = _loose_chain(1000)
    new = _values(ms.params(src))
    state = ms.state_dict(src)

    def setup():
        dst = _loose_chain(0)
        if verb == "sync":
            return dst, lambda: ms.sync(dst, src, check="structure", tau=0.5)
        return dst, lambda: ms.load_into(dst, state, check="structure")

    old = _values(ms.params(setup()[0]))
    if verb == "sync":
        new = [0.5 * a + 0.5 * b for a, b in zip(new, old, strict=True)]
    for moment in _moments(lambda: setup()[1](), 16):
        dst, operation = setup()
        assert _interrupt_at(moment, operation), f"the Ctrl-C at {moment:.4f} s was lost"
        now = _values(ms.params(dst))
        if verb == "sync":  # (a soft update is rounded: compare closely)
            is_new = all(np.allclose(a, b, rtol=0, atol=1e-6)
                         for a, b in zip(now, new, strict=True))
            is_old = all(np.array_equal(a, b) for a, b in zip(now, old, strict=True))
            assert is_new or is_old, f"torn at {moment:.4f} s"
        else:
            outcome = _all_old_or_all_new(now, old, new)
            assert outcome in ("old", "new"), f"Ctrl-C at {moment:.4f} s: {outcome}"


def test_a_real_ctrl_c_during_a_move_leaves_every_param_on_one_side():
    def setup():
        model = layers.Chain(*[layers.Dense(16, 16, seed=i, dtype=("float32", "float64")[i % 2])
                               for i in range(200)])
        return model, ms.params(model)

    for moment in _moments(lambda: ms.to_device(setup()[0], "sim:1", mode="move"), 12):
        model, ps = setup()
        assert _interrupt_at(moment, lambda m=model: ms.to_device(m, "sim:1", mode="move"))
        assert len({str(p.device) for p in ps}) == 1


def test_held_interrupts_are_delivered_to_the_handler_that_was_installed():
    called = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: called.append(signum))
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert called == []  # held
            with interrupts.held():  # nested: the outer one holds
                pass
            assert called == []
        assert called == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
    # off the main thread it changes nothing (no signal handler can be set there)
    errors = []

    def off_main():
        try:
            with interrupts.held():
                pass
        except Exception as exc:  # pragma: no cover (a failure)
            errors.append(exc)

    worker = threading.Thread(target=off_main)
    worker.start()
    worker.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is previous


def test_a_held_interrupt_is_raised_even_when_the_block_fails():
    with pytest.raises(KeyboardInterrupt) as info, interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        raise ValueError("the block's own error")
    assert isinstance(info.value.__context__, ValueError)


# -- 6. a rank lost inside the gradient Allreduce is named ---------------------------------------
def test_a_rank_lost_inside_the_gradient_allreduce_is_named(tmp_path):
    pytest.importorskip("mpi4py", reason="the distributed tests need the test extra (mpi4py)")
    from distributed_launch import run_mpi

    ranks = str(Path(__file__).with_name("distributed_ranks.py"))
    done = run_mpi(3, [ranks, "lost1", str(tmp_path), "2"], timeout=90)
    assert done.returncode != 0
    assert ("DataParallel.step: Allreduce of 252 bytes: it did not complete within 2 s although "
            "every rank had agreed to it: ranks [1] stopped answering (ranks [0, 2] are waiting "
            "for them); ending the job") in done.stderr, done.stderr
    assert done.seconds < 60
