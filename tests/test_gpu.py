"""Real-GPU checks (CuPy on cuda:0): transfers through the one door are counted, and a Dense
forward on the GPU equals the host's. Without CuPy and a GPU every test here skips, saying why
(the reason comes from devices.cuda_status())."""

from __future__ import annotations

import numpy as np
import pytest

import modelsync as ms
from modelsync import layers
from modelsync.devices import HOST, cuda_status, device_of
from modelsync.params import Param
from modelsync.rebuild import rebuild
from modelsync.transfers import copy_to

GPU_COUNT, GPU_WHY = cuda_status()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPU_COUNT == 0, reason=f"no GPU: {GPU_WHY}")]


def _host_values() -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4)


def test_cuda_device_parses_and_is_available() -> None:
    cuda = ms.device("cuda")
    assert cuda == ms.device("cuda:0") == ms.device("auto")
    assert (cuda.kind, cuda.index, str(cuda)) == ("cuda", 0, "cuda:0")
    assert cuda in ms.available_devices()
    import array_api_compat.cupy

    assert cuda.xp is array_api_compat.cupy


def test_round_trip_host_cuda_host_is_counted() -> None:
    values = _host_values()
    cuda = ms.device("cuda:0")
    with ms.track_transfers() as t:
        on_gpu = copy_to(values, cuda, reason="up")
        back = copy_to(on_gpu, HOST, reason="down")
    assert device_of(on_gpu) == cuda and isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, values)
    assert (t.count, t.h2d_bytes, t.d2h_bytes, t.d2d_bytes) == (2, 48, 48, 0)
    assert [(e.kind, e.src, e.dst, e.reason) for e in t.events] == [
        ("h2d", "host", "cuda:0", "up"), ("d2h", "cuda:0", "host", "down")]


def test_cuda_same_device_copy_is_local_and_independent() -> None:
    cuda = ms.device("cuda:0")
    on_gpu = copy_to(_host_values(), cuda, reason="setup")
    with ms.track_transfers() as t:
        twin = copy_to(on_gpu, cuda, reason="local")
    assert t.count == 0 and device_of(twin) == cuda
    twin[...] = 0
    np.testing.assert_array_equal(copy_to(on_gpu, HOST, reason="check"), _host_values())


def test_cuda_and_sim_cross_through_host_counted_once() -> None:
    cuda, sim = ms.device("cuda:0"), ms.device("sim:1")
    on_gpu = copy_to(_host_values(), cuda, reason="setup")
    with ms.track_transfers() as t:
        on_sim = copy_to(on_gpu, sim, reason="to sim")
        again = copy_to(on_sim, cuda, reason="to gpu")
    assert device_of(on_sim) == sim and device_of(again) == cuda
    assert [(e.kind, e.bytes) for e in t.events] == [("d2d", 48), ("d2d", 48)]
    np.testing.assert_array_equal(copy_to(again, HOST, reason="check"), _host_values())


def test_guard_refuses_param_transfer_to_cuda() -> None:
    with ms.transfer_guard("disallow"), pytest.raises(ms.TransferError, match="cuda:0"):
        copy_to(_host_values(), ms.device("cuda:0"), reason="guarded")


def test_cuda_arrays_refuse_host_arrays() -> None:
    on_gpu = copy_to(_host_values(), ms.device("cuda:0"), reason="setup")
    with pytest.raises(TypeError):
        on_gpu + _host_values()


def test_dense_forward_on_cuda_equals_host() -> None:
    cuda = ms.device("cuda:0")
    model = layers.Chain(layers.Dense(4, 8, "relu", seed=0), layers.Dense(8, 3, seed=1))

    def to_cuda(p: Param) -> Param:
        q = Param(copy_to(p.value, cuda, reason="test model"), name=p.name)
        q.origin = p.origin
        return q

    gpu_model = rebuild(model, to_cuda)
    assert all(p.device == cuda for p in ms.params(gpu_model))
    assert ms.graph_id(gpu_model) == ms.graph_id(model)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    expected = model(x)
    x_gpu = copy_to(x, cuda, reason="batch", what="data")
    with ms.track_transfers() as t:
        y = gpu_model(x_gpu)
    assert t.count == 0 and device_of(y) == cuda
    np.testing.assert_allclose(copy_to(y, HOST, reason="check"), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ms.DeviceMismatchError, match="host.*cuda:0|cuda:0.*host"):
        gpu_model(x)
