"""Shared fixtures: every device-touching test runs on host and sim:1, and on cuda:0 when a
GPU is usable (otherwise that case skips, saying why)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import modelsync as ms
from modelsync.devices import cuda_status

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("ci")

GPU_COUNT, GPU_WHY = cuda_status()
#: What every test that needs CUDA carries: selected by ``pytest -m gpu``, skipped (saying
#: why) where no GPU is usable.
NEEDS_GPU = [pytest.mark.gpu, pytest.mark.skipif(GPU_COUNT == 0, reason=f"no GPU: {GPU_WHY}")]
DEVICE_SPECS = ["host", "sim:1", pytest.param("cuda:0", marks=NEEDS_GPU)]


@pytest.fixture(params=DEVICE_SPECS)
def dev(request) -> ms.Device:
    """A device to run on: host, sim:1 and (with a GPU) cuda:0."""
    return ms.device(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def to_numpy(array) -> np.ndarray:
    """Test helper: a host copy of any array, *not* counted (reads test expectations only)."""
    if isinstance(array, np.ndarray):
        return array.copy()
    if type(array).__module__.startswith("cupy"):
        return array.get()
    import array_api_strict

    return np.array(array.to_device(array_api_strict.__array_namespace_info__().default_device()))


def sgd_step(model, x, y, lr: float = 0.1) -> None:
    """One training step through the API, as an optimizer makes it: backprop, then an
    in-place write per Param through ``writable()``."""
    for p in ms.params(model):
        p.grad = None
    ms.backprop(model, ms.losses.cross_entropy, x, y)
    for p in ms.params(model):
        data = p.writable()
        data[...] = data - lr * p.grad
