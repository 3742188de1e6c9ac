"""The CuPy paths (issue 22), tested where they can be without a GPU: the fused kernels'
arithmetic by a NumPy emulation of how CUDA runs their bodies (float16 through float32, each
assignment rounded to the array's dtype, float32 subnormals flushed), the device-current
rule with fakes and on sim:2 (array_api_strict puts an array made without ``device=`` on
its default device, so a forgotten ``device=`` shows up as a mixing error), the per-step
host round trips on sim:1, NCCL with a fake ``cupy.cuda.nccl``, and the ``gpu`` marker.
The cases that need CUDA carry ``@pytest.mark.gpu`` and skip saying why."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import DEVICE_SPECS, GPU_COUNT, GPU_WHY, NEEDS_GPU, to_numpy

import modelsync as ms
from modelsync import blend as blend_module
from modelsync import devices, layers, optim
from modelsync.devices import device_of, on_array_device, on_device
from modelsync.kernels.cuda import Elementwise
from modelsync.optim import kernel as kernel_module
from modelsync.optim.rules import adam as adam_rules
from modelsync.optim.rules import sgd as sgd_rules
from modelsync.params import Param
from modelsync.rebuild import rebuild
from modelsync.transfers import copy_to

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY32 = np.finfo(np.float32).tiny  # the smallest normal float32


# -- a NumPy emulation of a CuPy ElementwiseKernel's body -------------------------------------
class Num:
    """One value as CUDA computes it: float16 and float32 arithmetic in float32 (CuPy's
    float16 has none of its own), float64 in float64; with ``ftz``, float32 subnormal inputs
    and results are flushed to (signed) zero, as ``-ftz=true`` compiles them."""

    __slots__ = ("v", "ftz")

    def __init__(self, v, ftz: bool) -> None:
        self.v, self.ftz = v, ftz  # (a load or a cast flushes nothing: arithmetic does)

    def _flush(self, v):
        if self.ftz and v.dtype == np.float32 and v != 0 and abs(v) < TINY32:
            return np.copysign(np.float32(0), v)
        return v

    def _op(self, other, fn):
        b = other.v if isinstance(other, Num) else other
        with np.errstate(all="ignore"):
            return Num(self._flush(fn(self._flush(self.v), self._flush(b))), self.ftz)

    def __add__(self, o):
        return self._op(o, lambda a, b: a + b)

    def __sub__(self, o):
        return self._op(o, lambda a, b: a - b)

    def __mul__(self, o):
        return self._op(o, lambda a, b: a * b)

    def __truediv__(self, o):
        return self._op(o, lambda a, b: a / b)

    def __ne__(self, o):
        b = o.v if isinstance(o, Num) else o
        return bool(self._flush(self.v) != self._flush(b))


def emulate(kernel: Elementwise, *args, ftz: bool = True) -> None:
    """Run ``kernel``'s body element by element on host arrays (outputs written in place):
    every variable is of the arrays' type ``T``, so each assignment rounds to it, and ``T(x)``
    rounds ``x``; Python scalars become ``T`` as CuPy casts them."""
    names = [p.split()[-1] for p in (kernel.in_params + ", " + kernel.out_params).split(",")]
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    dtype = arrays[0].dtype
    compute = np.float64 if dtype == np.float64 else np.float32
    lines = []
    for statement in re.split(r"[;\n]", kernel.body):
        statement = statement.strip()
        if not statement:
            continue
        assert "?" not in statement, "the emulation has no ternary"
        statement = re.sub(r"^T (\w+) =", r"\1 =", statement)
        statement = statement.replace("||", " or ").replace("&&", " and ")
        cond = re.match(r"^if \((.*)\)\s+(\w+\s*[-+*/]?=.*)$", statement)
        target = re.match(r"^(\w+)\s*[-+*/]?=", cond.group(2) if cond else statement).group(1)
        body = f"{statement if not cond else cond.group(2)}; {target} = T({target})"
        lines.append(f"if {cond.group(1)}: {body}" if cond else body)
    code = compile("\n".join(lines), kernel.name, "exec")

    def T(x):  # noqa: N802 (the kernel's type name)
        value = x.v if isinstance(x, Num) else x
        return Num(compute(dtype.type(value)), ftz)

    env_base = {"T": T, "sqrt": lambda x: x._op(x, lambda a, _: np.sqrt(a)),
                "signbit": lambda x: bool(np.signbit(x.v))}
    for i in range(arrays[0].size):
        env = dict(env_base)
        for name, a in zip(names, args, strict=True):
            env[name] = T(a.reshape(-1)[i] if isinstance(a, np.ndarray) else a)
        exec(code, env)
        for name, a in zip(names, args, strict=True):
            if isinstance(a, np.ndarray):
                a.reshape(-1)[i] = dtype.type(env[name].v)


def bits_differ(a: np.ndarray, b: np.ndarray) -> int:
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return int(np.count_nonzero(a.view(width) != b.view(width)))


# -- item 1: float16 soft sync bit for bit ------------------------------------------------------
@pytest.mark.parametrize("tau", [0.05, 0.5, 0.9])
def test_the_float16_blend_kernel_rounds_as_the_host_does(tau):
    rng = np.random.default_rng(0)
    d = rng.normal(size=3000).astype(np.float16)
    s = rng.normal(size=3000).astype(np.float16)
    want = d.copy()
    blend_module.Blend(tau)(want, s)  # the host path: NumPy rounds after every operation
    t, c = blend_module.Blend(tau)._in(d.dtype)
    got = d.copy()
    emulate(blend_module._CUDA, s, t, c, got)
    assert bits_differ(got, want) == 0
    once = d.copy()  # the body without the casts rounds once: the defect this fixes
    emulate(Elementwise("old", "T s, T t, T c", "T d", "d = t * s + c * d"), s, t, c, once)
    if tau != 0.5:  # (halving is exact: one rounding or three give the same bits)
        assert bits_differ(once, want) > 300  # (27-30% of elements, as the audit found)


def test_the_float32_blend_kernel_is_unchanged_by_the_casts():
    rng = np.random.default_rng(1)
    d, s = rng.normal(size=500).astype(np.float32), rng.normal(size=500).astype(np.float32)
    want = d.copy()
    blend_module.Blend(0.05)(want, s)
    got = d.copy()
    emulate(blend_module._CUDA, s, *blend_module.Blend(0.05)._in(d.dtype), got)
    assert bits_differ(got, want) == 0


# -- item 2: flushed float32 subnormals ------------------------------------------------------------
def _adam_scalars(lr: float) -> tuple:
    return optim.Adam([Param(np.zeros(1, np.float32))], lr=lr).scalars(1)


def test_adam_kernel_at_lr0_leaves_subnormal_params_alone_under_ftz():
    params = np.full(64, 1e-40, np.float32)
    grad = np.ones(64, np.float32)
    got = params.copy()
    emulate(adam_rules._ADAM, grad, *_adam_scalars(0.0), got, np.zeros(64, np.float32),
            np.zeros(64, np.float32))
    assert bits_differ(got, params) == 0
    old = Elementwise("old", adam_rules._ADAM.in_params, adam_rules._ADAM.out_params, """
m = beta1 * m + one_minus_beta1 * grad;
v = beta2 * v + one_minus_beta2 * grad * grad;
param *= decay;
param -= step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps));""")
    flushed = params.copy()
    emulate(old, grad, *_adam_scalars(0.0), flushed, np.zeros(64, np.float32),
            np.zeros(64, np.float32))
    assert np.all(flushed == 0)  # what param *= 1 did under -ftz=true


@pytest.mark.parametrize("lr", [0.0, 0.01])
def test_adam_kernel_keeps_the_host_arithmetic(lr):
    rng = np.random.default_rng(2)
    start = rng.uniform(0.5, 2.0, 200).astype(np.float32)
    start[:4] = [0.0, -0.0, 1.5, -1.5]
    grad = rng.normal(size=200).astype(np.float32)
    host = Param(start.copy())
    opt = optim.Adam([host], lr=lr)
    host.grad = grad.copy()
    opt.step()
    got, m, v = start.copy(), np.zeros(200, np.float32), np.zeros(200, np.float32)
    emulate(adam_rules._ADAM, grad, *_adam_scalars(lr), got, m, v)
    assert bits_differ(got, to_numpy(host.value)) == 0


def test_sgd_kernel_skips_subtracting_plus_zero_and_keeps_the_host_arithmetic():
    params = np.array([1e-40, -1e-40, 0.0, -0.0, -0.0, 1.0, 1e-40], np.float32)
    grads = np.array([0.0, 0.0, 1.0, -1.0, 1.0, -2.0, -0.0], np.float32)
    for lr in (0.0, 0.5):
        host = Param(params.copy())
        opt = optim.SGD([host], lr=lr)
        host.grad = grads.copy()
        opt.step()
        got = params.copy()
        emulate(sgd_rules._SGD, grads, lr, got)
        want = to_numpy(host.value)
        if lr == 0.0:  # nothing changes, so nothing is flushed: the host's bits, -0 - -0 too
            assert bits_differ(got, want) == 0
        else:  # a changed value may be flushed (documented): here 1e-40 - 0.5*(-0)
            assert bits_differ(got[:6], want[:6]) == 0


def test_design_doc_states_the_flush_rule():
    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    assert "-ftz=true" in text and "subnormal" in text


# -- item 3: every CUDA case carries the gpu marker ----------------------------------------------
def test_the_cuda_case_of_dev_is_gpu_marked_and_skips_saying_why():
    cuda = [p for p in DEVICE_SPECS if not isinstance(p, str)]
    assert [p.values for p in cuda] == [("cuda:0",)]
    names = [m.name for m in cuda[0].marks]
    assert "gpu" in names and "skipif" in names
    if GPU_COUNT == 0:
        skip = next(m for m in cuda[0].marks if m.name == "skipif")
        assert skip.kwargs["reason"].startswith("no GPU: ")


def test_pytest_m_gpu_selects_the_cuda_cases():
    files = ["tests/test_layers.py", "tests/test_optim.py", "tests/test_devices.py",
             "tests/test_gpu.py", "tests/test_cupy_paths.py"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                          "-p", "no:cacheprovider", *files], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert any(i.startswith("tests/test_layers.py::") and "cuda:0" in i for i in ids), ids
    assert any("test_cuda_kernels_follow_the_host_arithmetic" in i for i in ids)
    assert any("test_cuda_index_out_of_range_says_so" in i for i in ids)
    assert any(i.startswith("tests/test_gpu.py::") for i in ids)
    assert any(i.startswith("tests/test_cupy_paths.py::test_gpu_") for i in ids)
    assert not [i for i in ids if "[host" in i or "sim:1" in i], ids


# -- item 4: every CuPy allocation and launch with its device current ---------------------------
class FakeCudaDevice:
    """What ``cupy.cuda.Device(i)`` is: a context manager making GPU ``i`` current."""

    current: list[int] = [0]

    def __init__(self, index: int) -> None:
        self.id = index

    def __enter__(self):
        self.current.append(self.id)
        return self

    def __exit__(self, *exc):
        self.current.pop()


@pytest.fixture
def fake_cupy(monkeypatch):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeCudaDevice))
    monkeypatch.setattr(devices, "_cupy", lambda: fake)
    FakeCudaDevice.current = [0]
    return fake


def test_on_device_makes_a_cuda_device_current_and_nothing_else(fake_cupy):
    for dev in (None, ms.device("host"), ms.device("sim:1"), ms.device("sim:2")):
        with on_device(dev):
            pass
    with on_device(ms.Device("cuda", 1)) as ctx:
        assert isinstance(ctx, FakeCudaDevice) and FakeCudaDevice.current[-1] == 1
    assert FakeCudaDevice.current == [0]
    with on_array_device(np.zeros(2)), on_array_device(copy_to(np.zeros(2), "sim:2",
                                                                reason="test")):
        assert FakeCudaDevice.current == [0]


def test_an_elementwise_kernel_launches_on_its_first_arrays_gpu(fake_cupy):
    seen = []
    kernel = Elementwise("probe", "T x", "T y", "y = x")
    kernel._kernel = lambda *args: seen.append(FakeCudaDevice.current[-1])
    arg = types.SimpleNamespace(device=FakeCudaDevice(1))
    kernel(arg, arg)
    assert seen == [1] and FakeCudaDevice.current == [0]


def test_the_array_api_kernel_of_a_cuda_float16_state_runs_on_its_gpu(fake_cupy, monkeypatch):
    seen = []

    class Rule:
        def update_xp(self, *args):
            seen.append(FakeCudaDevice.current[-1])

    monkeypatch.setattr(ms.Device, "xp", property(lambda self: np))  # (no CuPy here)
    made = kernel_module.choose(Rule(), kernel_module.Scalars(lambda step: ()),
                                ms.Device("cuda", 1), [], (3,), np.dtype("float16"),
                                contiguous=True)
    assert isinstance(made, kernel_module.ArrayApiKernel)
    made(None, None, 1)
    assert seen == [1]


def _on_sim2(model):
    return ms.to_device(model, "sim:2")


def _all_on(model, spec: str) -> None:
    want = ms.device(spec)
    for p in ms.params(model):
        assert p.device == want and device_of(p.storage()) == want
        if p.grad is not None:
            assert device_of(p.grad) == want


def _mlp(seed: int):
    return layers.Chain(layers.Dense(6, 8, "tanh", seed=seed), layers.Dense(8, 3, seed=seed + 1))


def test_soft_sync_on_sim2_stays_there_and_follows_the_formula():
    a, b = _on_sim2(_mlp(0)), _on_sim2(_mlp(5))
    va = [to_numpy(p.value) for p in ms.params(a)]
    vb = [to_numpy(p.value) for p in ms.params(b)]
    ms.sync(b, a, tau=0.25, check="structure")
    _all_on(b, "sim:2")
    for p, x, y in zip(ms.params(b), va, vb, strict=True):
        np.testing.assert_array_equal(to_numpy(p.value), 0.25 * x + 0.75 * y)


def _loose_on(model, spec: str):
    def make(p):
        q = Param(copy_to(p.value, spec, reason="test"), name=p.name)
        q.origin = p.origin
        return q
    return rebuild(model, make)


def test_a_loose_sim2_model_gets_its_flat_buffer_on_sim2():
    loose = _loose_on(_mlp(0), "sim:2")
    want = [to_numpy(p.value) for p in ms.params(loose)]
    for made in (ms.to_device(loose, "sim:2"), ms.flatten(loose)):
        _all_on(made, "sim:2")
        for p, w in zip(ms.params(made), want, strict=True):
            np.testing.assert_array_equal(to_numpy(p.value), w)
    target = _loose_on(_mlp(3), "sim:2")
    ms.sync(target, loose, tau=0.5, check="structure")  # (a soft sync of loose Params)
    _all_on(target, "sim:2")


def test_deepcopy_of_a_sim2_model_stays_on_sim2():
    model = _on_sim2(_mlp(0))
    x = copy_to(np.ones((4, 6), np.float32), "sim:2", reason="test")
    y = copy_to(np.array([0, 1, 2, 0]), "sim:2", reason="test")
    ms.backprop(model, ms.losses.cross_entropy, x, y)
    twin = copy.deepcopy(model)
    _all_on(twin, "sim:2")
    for p, q in zip(ms.params(model), ms.params(twin), strict=True):
        np.testing.assert_array_equal(to_numpy(p.grad), to_numpy(q.grad))


def test_clip_norm_over_sim1_and_sim2_keeps_each_gradient_home():
    ps = [Param(copy_to(np.ones(8, np.float32), spec, reason="test")) for spec in
          ("sim:2", "sim:1", "sim:2")]
    for p in ps:
        p.grad = copy_to(np.full(8, 3.0, np.float32), p.device, reason="test", what="grad")
    optim.ClipNorm(ps, 1.0).step()
    total = np.sqrt(sum(float(np.sum(to_numpy(p.grad) ** 2)) for p in ps))
    assert abs(total - 1.0) < 1e-5
    assert [str(device_of(p.grad)) for p in ps] == ["sim:2", "sim:1", "sim:2"]


def test_embedding_and_dropout_on_sim2_stay_on_sim2():
    model = _on_sim2(layers.Chain(layers.Embedding(300, 4, seed=0), layers.Dropout(0.5)))
    idx = copy_to(np.array([[0, 299, 5], [7, 7, 1]]), "sim:2", reason="test")
    ms.backprop(model, ms.losses.mse, idx,
                copy_to(np.zeros((2, 3, 4), np.float32), "sim:2", reason="test"), rng=0)
    _all_on(model, "sim:2")


# -- item 6: per-step host round trips -----------------------------------------------------------
@pytest.fixture
def scalar_reads(monkeypatch):
    """How many times a sim array was read back to a Python scalar (bool, int, float)."""
    import array_api_strict

    count = [0]
    cls = type(array_api_strict.asarray(0))
    for name in ("__bool__", "__int__", "__float__", "__index__"):
        original = getattr(cls, name)

        def counted(self, _original=original):
            count[0] += 1
            return _original(self)
        monkeypatch.setattr(cls, name, counted)
    return count


def test_an_embedding_forward_reads_one_scalar_and_moves_nothing(scalar_reads):
    emb = ms.to_device(layers.Embedding(50, 4, seed=0), "sim:1")
    idx = copy_to(np.arange(12).reshape(3, 4) % 50, "sim:1", reason="test")
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        out = emb(idx)
    assert t.count == 0 and t.bytes == 0
    assert scalar_reads[0] == 1  # (it was two: the min and the max)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(emb.weight.value)[np.arange(12)
                                                                             .reshape(3, 4)])


@pytest.mark.parametrize(("values", "dtype", "bad"), [
    ([3, -2, 5], np.int64, -2), ([3, 50, 5], np.int32, 50), ([255, 0], np.uint8, 255)])
def test_embedding_on_a_device_still_names_a_bad_index(values, dtype, bad):
    emb = ms.to_device(layers.Embedding(50, 4, seed=0), "sim:1")
    idx = copy_to(np.array(values, dtype), "sim:1", reason="test")
    with pytest.raises(ms.ArgumentError, match=rf"index {bad} is outside \[0, 50\)"):
        emb(idx)


def test_embedding_takes_narrow_indices_when_num_exceeds_their_range():
    emb = ms.to_device(layers.Embedding(300, 2, seed=0), "sim:1")
    idx = copy_to(np.array([0, 255, 9], np.uint8), "sim:1", reason="test")
    np.testing.assert_array_equal(to_numpy(emb(idx)), to_numpy(emb.weight.value)[[0, 255, 9]])


@pytest.mark.parametrize("spec", ["host", "sim:1", "sim:2"])
def test_dropout_draws_on_the_device_the_same_mask_everywhere(spec):
    x = np.ones((64, 64), np.float32)
    host = layers.Dropout(0.3)(x, train=True, rng=np.random.default_rng(9))
    moved = copy_to(x, spec, reason="test")
    with ms.track_transfers() as t:
        there = layers.Dropout(0.3)(moved, train=True, rng=np.random.default_rng(9))
    assert t.count == 0 and device_of(there) == ms.device(spec)
    np.testing.assert_array_equal(to_numpy(there), host)
    kept = np.count_nonzero(host) / host.size
    assert 0.66 < kept < 0.74  # (1 - p, within 4 standard deviations)
    np.testing.assert_allclose(host[host != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_host_loop_and_array_api_form_give_the_same_mask(monkeypatch):
    x = np.ones((33, 17), np.float64)
    loop = layers.Dropout(0.6)(x, train=True, rng=np.random.default_rng(4))
    monkeypatch.setenv("MODELSYNC_KERNELS", "numpy")  # (the array-API form, on NumPy)
    plain = layers.Dropout(0.6)(x, train=True, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(loop, plain)
    half = layers.Dropout(0.6)(x.astype(np.float16), train=True, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(half != 0, plain != 0)


def test_dropout_masks_of_successive_steps_differ_and_look_independent():
    gen = np.random.default_rng(3)
    x = np.ones(4096, np.float32)
    a = layers.Dropout(0.5)(x, train=True, rng=gen) != 0
    b = layers.Dropout(0.5)(x, train=True, rng=gen) != 0
    assert 0.45 < np.mean(a == b) < 0.55  # (two independent fair masks agree half the time)
    assert 0.45 < np.mean(a[1:] == a[:-1]) < 0.55  # (neighbours too)


# -- item 5: NCCL, with a fake cupy.cuda.nccl ------------------------------------------------------
class FakeStream:
    ptr = 1234

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeBuffer:
    """A 1-D CuPy-like array over a NumPy one (``data.ptr`` is the NumPy array itself)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.data = types.SimpleNamespace(ptr=values)

    dtype = property(lambda self: self.values.dtype)
    size = property(lambda self: self.values.size)

    def astype(self, dtype):
        return FakeBuffer(self.values.astype(dtype))

    def __setitem__(self, key, other):
        self.values[key] = other.values


@pytest.fixture
def fake_nccl(monkeypatch):
    """A fake ``cupy`` with ``cupy.cuda.nccl``, recording what NCCL is asked to do; a world of
    one where every rank sums twice its own buffer (so a sum can be checked)."""
    calls: list[tuple] = []
    stream = FakeStream()

    class Communicator:
        delay = 0.0

        def __init__(self, size, uid, rank) -> None:
            time.sleep(self.delay)
            calls.append(("init", size, uid, rank, FakeCudaDevice.current[-1]))

        def allReduce(self, send, recv, count, dtype, op, stream_ptr):  # noqa: N802
            calls.append(("allReduce", count, dtype, stream_ptr, FakeCudaDevice.current[-1]))
            recv[...] = send * 2

        def bcast(self, buf, count, dtype, root, stream_ptr):
            calls.append(("bcast", count, dtype, root, stream_ptr))

        def destroy(self) -> None:
            calls.append(("destroy",))

    nccl_mod = types.SimpleNamespace(
        available=True, NcclCommunicator=Communicator, get_unique_id=lambda: (7,) * 128,
        NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0)
    cuda = types.SimpleNamespace(Device=FakeCudaDevice, nccl=nccl_mod,
                                 get_current_stream=lambda: stream)
    FakeCudaDevice.pci_bus_id = "0000:01:00.0"
    cupy = types.SimpleNamespace(cuda=cuda, float32=np.float32)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl_mod)
    FakeCudaDevice.current = [0]
    return types.SimpleNamespace(calls=calls, stream=stream, communicator=Communicator)


@pytest.fixture
def one_rank():
    mpi = pytest.importorskip("mpi4py.MPI")
    from modelsync import distributed as D

    return D.init(mpi.COMM_SELF, timeout=5)


def test_nccl_collectives_queue_on_the_stream_without_synchronising(fake_nccl, one_rank):
    from modelsync.distributed import nccl

    gpu = ms.Device("cuda", 1)
    assert nccl.usable(one_rank, gpu)
    assert fake_nccl.calls[0][0] == "init" and fake_nccl.calls[0][-1] == 1  # on cuda:1
    buffer = FakeBuffer(np.arange(4, dtype=np.float32))
    nccl.allreduce(one_rank, buffer)
    nccl.bcast(one_rank, buffer, 0)
    assert fake_nccl.stream.synchronized == 0  # ordered on the stream, the host not blocked
    assert fake_nccl.calls[1] == ("allReduce", 4, 7, FakeStream.ptr, 1)
    assert fake_nccl.calls[2] == ("bcast", 4, 7, 0, FakeStream.ptr)
    np.testing.assert_array_equal(buffer.values, [0, 2, 4, 6])
    nccl.close(one_rank)
    assert fake_nccl.calls[-1] == ("destroy",) and nccl.KEY not in one_rank.nccl
    nccl.close(one_rank)  # (nothing left: no second destroy)
    assert [c for c in fake_nccl.calls if c == ("destroy",)] == [("destroy",)]


def test_nccl_sums_float16_in_float32_and_rounds_once(fake_nccl, one_rank):
    from modelsync.distributed import nccl

    assert nccl.usable(one_rank, ms.Device("cuda", 0))
    values = np.array([2049, 1.0005, -3.25], np.float16)
    buffer = FakeBuffer(values.copy())
    nccl.allreduce(one_rank, buffer)
    assert fake_nccl.calls[-1][2] == 7  # summed as NCCL_FLOAT32
    assert buffer.dtype == np.float16
    np.testing.assert_array_equal(buffer.values, (values.astype(np.float32) * 2)
                                  .astype(np.float16))
    nccl.close(one_rank)


def test_nccl_creation_runs_under_the_watchdog(fake_nccl, one_rank, monkeypatch):
    from modelsync.distributed import nccl

    stuck = []
    monkeypatch.setattr(nccl, "fail_stuck", lambda comm, message: stuck.append(message))
    one_rank.timeout = 0.2
    fake_nccl.communicator.delay = 1.0  # a peer that never arrives: NCCL's init waits
    assert nccl.usable(one_rank, ms.Device("cuda", 0))
    assert len(stuck) == 1
    assert "NCCL communicator creation on cuda:0 by ranks 0-0" in stuck[0]
    assert "did not complete within 0.2 s" in stuck[0]
    nccl.close(one_rank)


def test_a_rank_whose_nccl_creation_fails_ends_the_job_naming_itself(fake_nccl, one_rank,
                                                                     monkeypatch):
    from modelsync.distributed import nccl

    stuck = []
    monkeypatch.setattr(nccl, "fail_stuck", lambda comm, message: stuck.append(message))

    def broken(*args):
        raise RuntimeError("NCCL error: unhandled system error")
    monkeypatch.setattr(sys.modules["cupy.cuda.nccl"], "NcclCommunicator", broken)
    with pytest.raises(RuntimeError):
        nccl.usable(one_rank, ms.Device("cuda", 0))
    assert len(stuck) == 1 and "this is rank 0" in stuck[0] and "unhandled system" in stuck[0]


# -- the CUDA cases ------------------------------------------------------------------------------
def needs_gpu(test):
    """The marks every CUDA case carries (conftest's NEEDS_GPU)."""
    for mark in reversed(NEEDS_GPU):
        test = mark(test)
    return test


@pytest.mark.parametrize("tau", [0.05, 0.9])
@needs_gpu
def test_gpu_float16_blend_is_bit_for_bit(tau):
    rng = np.random.default_rng(0)
    d = rng.normal(size=100_000).astype(np.float16)
    s = rng.normal(size=100_000).astype(np.float16)
    want = d.copy()
    blend_module.blend(want, s, tau)
    dst = copy_to(d, "cuda:0", reason="test")
    blend_module.blend(dst, copy_to(s, "cuda:0", reason="test"), tau)
    assert bits_differ(to_numpy(dst), want) == 0


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.0),
                                  lambda ps: optim.SGD(ps, lr=0.1)])
@needs_gpu
def test_gpu_kernels_leave_unchanged_subnormals_alone(make):
    start = np.full(256, 1e-40, np.float32)
    p = Param(copy_to(start, "cuda:0", reason="test"))
    opt = make([p])
    grad = np.ones(256, np.float32) if isinstance(opt, optim.Adam) else np.zeros(256, np.float32)
    p.grad = copy_to(grad, "cuda:0", reason="test", what="grad")
    opt.step()
    assert bits_differ(to_numpy(p.value), start) == 0


@needs_gpu
def test_gpu_clip_value_on_float16_clips_in_place():
    g = np.linspace(-3, 3, 101).astype(np.float16)
    p = Param(copy_to(np.zeros(101, np.float16), "cuda:0", reason="test"))
    p.grad = copy_to(g, "cuda:0", reason="test", what="grad")
    optim.ClipValue([p], 0.5).step()
    np.testing.assert_array_equal(to_numpy(p.grad), np.clip(g, -0.5, 0.5))


@pytest.mark.gpu
@pytest.mark.skipif(GPU_COUNT < 2, reason=f"needs 2 GPUs: {GPU_WHY or f'{GPU_COUNT} here'}")
def test_gpu_work_for_cuda1_lands_on_cuda1_with_cuda0_current():
    import cupy

    def on(model):
        return [int(p.storage().device.id) for p in ms.params(model)]

    with cupy.cuda.Device(0):
        a, b = ms.to_device(_mlp(0), "cuda:1"), ms.to_device(_mlp(1), "cuda:1")
        ms.sync(b, a, tau=0.5)
        twin = copy.deepcopy(b)
        loose = ms.to_device(_loose_on(_mlp(2), "cuda:1"), "cuda:1")
        emb = ms.to_device(layers.Embedding(10, 4, seed=0), "cuda:1")
        ms.backprop(emb, ms.losses.mse, copy_to(np.arange(6) % 10, "cuda:1", reason="test"),
                    copy_to(np.zeros((6, 4), np.float32), "cuda:1", reason="test"))
        assert on(b) == on(twin) == on(loose) == [1] * 4
        assert int(emb.weight.grad.device.id) == 1
        p = Param(copy_to(np.ones(8, np.float16), "cuda:1", reason="test"))
        p.grad = copy_to(np.ones(8, np.float16), "cuda:1", reason="test", what="grad")
        opt = optim.Adam([p])  # (float16: the array-API kernel, under its state's device)
        opt.step()
        opt.step()
        where = {int(p.storage().device.id)} | {int(a.device.id) for a in opt.state[p].values()
                                                if hasattr(a, "device")}
        assert where == {1}
    with cupy.cuda.Device(1):  # ClipNorm over both GPUs, the other one current
        ps = [Param(copy_to(np.ones(8, np.float32), f"cuda:{i}", reason="test")) for i in (0, 1)]
        for q in ps:
            q.grad = copy_to(np.ones(8, np.float32), q.device, reason="test", what="grad")
        optim.ClipNorm(ps, 1.0).step()
        total = np.sqrt(sum(float(np.sum(to_numpy(q.grad) ** 2)) for q in ps))
        assert abs(total - 1.0) < 1e-5
        assert [int(q.grad.device.id) for q in ps] == [0, 1]



@needs_gpu
def test_gpu_nccl_in_a_world_of_one_sums_float16_in_float32_and_closes():
    pytest.importorskip("cupy.cuda.nccl", reason="no GPU: CuPy has no NCCL here")
    mpi = pytest.importorskip("mpi4py.MPI", reason="no GPU test without mpi4py")
    from modelsync import distributed as D
    from modelsync.distributed import nccl

    comm = D.init(mpi.COMM_SELF, timeout=60)
    gpu = ms.device("cuda:0")
    if not nccl.usable(comm, gpu):
        pytest.skip("no GPU: NCCL is not available to CuPy here")
    values = np.array([2049, 1.0005, -3.25, 0.1], np.float16)
    buffer = copy_to(values, gpu, reason="test")
    nccl.allreduce(comm, buffer)  # (a sum over one rank: the values themselves)
    nccl.bcast(comm, buffer, 0)
    assert buffer.dtype == np.float16 and bits_differ(to_numpy(buffer), values) == 0
    nccl.close(comm)
    assert nccl.KEY not in comm.nccl
