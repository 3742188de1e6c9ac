"""Devices: every spec form parses to the right immutable Device, and every bad spec raises a
DeviceError (or a TypeError for a non-string) that names the value and lists what is usable."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import modelsync as ms
from modelsync.devices import HOST, Device, cuda_status, device_of, dtype_name, is_array, nbytes_of
from modelsync.transfers import copy_to

GPU_COUNT, GPU_WHY = cuda_status()


@pytest.mark.parametrize(("spec", "kind", "index"), [
    ("host", "host", 0), ("cpu", "host", 0), ("host:0", "host", 0), ("cpu:0", "host", 0),
    ("sim", "sim", 1), ("sim:1", "sim", 1), ("sim:2", "sim", 2),
    ("  SIM:2 ", "sim", 2), ("Host", "host", 0), ("\tCPU\n", "host", 0), ("sim:01", "sim", 1),
])
def test_spec_forms(spec: str, kind: str, index: int) -> None:
    dev = ms.device(spec)
    assert isinstance(dev, Device)
    assert (dev.kind, dev.index) == (kind, index)
    assert ms.device(str(dev)) == dev


def test_host_is_the_one_host_device() -> None:
    assert ms.device("host") == ms.device("cpu") == HOST
    assert str(HOST) == "host"


def test_auto_picks_cuda_only_when_usable() -> None:
    expected = Device("cuda", 0) if GPU_COUNT > 0 else Device("sim", 1)
    assert ms.device("auto") == expected
    assert ms.device() == expected
    assert ms.device("  AUTO ") == expected


def test_device_passes_a_device_through() -> None:
    dev = ms.device("sim:2")
    assert ms.device(dev) is dev


def test_str_and_repr_are_the_spec() -> None:
    assert str(ms.device("sim:1")) == "sim:1"
    assert str(ms.device("sim")) == "sim:1"
    assert repr(ms.device("sim:2")) == "Device('sim:2')"
    assert repr(HOST) == "Device('host')"
    assert f"{ms.device('sim:2')}" == "sim:2"


def test_device_is_immutable() -> None:
    dev = ms.device("sim:1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        dev.index = 2  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        dev.kind = "host"  # type: ignore[misc]
    assert dev == Device("sim", 1)


def test_device_equality_and_hash() -> None:
    a, b = ms.device("sim:1"), ms.device("SIM:1")
    assert a == b and hash(a) == hash(b)
    assert a != ms.device("sim:2")
    assert a != HOST
    assert a != "sim:1"  # a Device is not its spec string
    table = {a: "one", ms.device("sim:2"): "two", HOST: "host"}
    assert table[Device("sim", 1)] == "one"
    assert len({ms.device(s) for s in ["host", "cpu", "sim", "sim:1", "sim:2"]}) == 3


def test_available_devices() -> None:
    found = ms.available_devices()
    assert found[:3] == [HOST, Device("sim", 1), Device("sim", 2)]
    assert found[3:] == [Device("cuda", i) for i in range(GPU_COUNT)]
    for dev in found:  # every listed device is accepted by device()
        assert ms.device(str(dev)) == dev


@pytest.mark.parametrize("spec", [
    "gpu", "sim:3", "sim:0", "host:1", "cpu:2", "", "sim:", "sim:-1", "sim 1", "cuda:x",
    "sim:1:2", "auto:0", "tpu:0",
])
def test_bad_specs_raise_device_error_listing_available(spec: str) -> None:
    with pytest.raises(ms.DeviceError) as info:
        ms.device(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "Available: host, sim:1, sim:2" in message


@pytest.mark.parametrize("spec", [3, None, 1.5, b"host", ["host"], True])
def test_non_string_specs_raise_type_error(spec: object) -> None:
    with pytest.raises(ms.ArgumentTypeError) as info:
        ms.device(spec)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, ms.ModelSyncError)
    message = str(info.value)
    assert repr(spec) in message and type(spec).__name__ in message
    assert "Available: host, sim:1, sim:2" in message


@pytest.mark.skipif(GPU_COUNT > 0, reason="a GPU is usable here; covered by test_gpu.py")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7", " CUDA:1 "])
def test_cuda_without_gpu_says_why(spec: str) -> None:
    with pytest.raises(ms.DeviceError) as info:
        ms.device(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert GPU_WHY and GPU_WHY in message
    assert "CuPy" in message
    assert "Available: host, sim:1, sim:2" in message


def test_cuda_status_without_gpu_explains() -> None:
    count, why = cuda_status()
    assert count >= 0
    assert (why == "") == (count > 0)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_COUNT == 0, reason=f"no GPU: {GPU_WHY}")
def test_cuda_index_out_of_range_says_so() -> None:
    with pytest.raises(ms.DeviceError, match="out of range"):
        ms.device(f"cuda:{GPU_COUNT}")


@given(st.text(max_size=12))
def test_random_strings_parse_or_raise_device_error(text: str) -> None:
    try:
        dev = ms.device(text)
    except ms.DeviceError as exc:
        assert repr(text) in str(exc)
        return
    assert isinstance(dev, Device)
    assert ms.device(str(dev)) == dev
    assert dev in ms.available_devices()


@given(st.sampled_from(["host", "cpu", "sim", "cuda", "gpu", "auto", "tpu"]),
       st.one_of(st.none(), st.integers(-2, 12)), st.sampled_from(["", " ", "\t"]),
       st.booleans())
def test_spec_like_strings_parse_or_raise_device_error(
        kind: str, index: int | None, pad: str, upper: bool) -> None:
    text = kind if index is None else f"{kind}:{index}"
    text = pad + (text.upper() if upper else text) + pad
    try:
        dev = ms.device(text)
    except ms.DeviceError as exc:
        assert "Available:" in str(exc)
        return
    assert ms.device(str(dev)) == dev
    assert dev in ms.available_devices()


# -- arrays and their devices --------------------------------------------------------------
def test_device_of_and_is_array() -> None:
    host = np.zeros(3, np.float32)
    sim = copy_to(host, ms.device("sim:2"), reason="test")
    assert device_of(host) == HOST
    assert device_of(sim) == ms.device("sim:2")
    assert is_array(host) and is_array(sim)
    for not_array in (3.0, [1.0], None, "x"):
        assert not is_array(not_array)
        with pytest.raises(ms.ArgumentTypeError):
            device_of(not_array)


def test_device_of_rejects_strict_arrays_off_the_sim_devices() -> None:
    import array_api_strict

    with pytest.raises(ms.ArgumentTypeError, match="not on a simulated device"):
        device_of(array_api_strict.asarray([1.0, 2.0]))


@pytest.mark.parametrize("name", ["float32", "float64", "int64", "int8", "bool"])
def test_dtype_name_and_nbytes_agree_across_devices(name: str) -> None:
    host = np.zeros((2, 3), dtype=name)
    sim = copy_to(host, ms.device("sim:1"), reason="test", what="data")
    assert dtype_name(host.dtype) == dtype_name(sim.dtype) == name
    assert nbytes_of(host) == nbytes_of(sim) == host.nbytes


def test_xp_and_native() -> None:
    import array_api_strict

    assert HOST.xp is np
    assert ms.device("sim:1").xp is array_api_strict
    natives = {ms.device("sim:1").native, ms.device("sim:2").native}
    assert natives == {array_api_strict.Device("device1"), array_api_strict.Device("device2")}


# -- sim arrays refuse to mix, as CuPy's do --------------------------------------------------
def _sim(spec: str, values: np.ndarray):
    return copy_to(values, ms.device(spec), reason="test", what="data")


def test_sim_array_refuses_host_array() -> None:
    a = _sim("sim:1", np.ones(3))
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        a + np.ones(3)
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        np.ones(3) + a
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        np.asarray(a)


def test_sim_array_refuses_other_sim_device() -> None:
    a, b = _sim("sim:1", np.ones(3)), _sim("sim:2", np.ones(3))
    with pytest.raises(ValueError, match="different devices"):
        a + b
    with pytest.raises(ValueError, match="different devices"):
        a @ b
    xp = ms.device("sim:1").xp
    with pytest.raises(ValueError, match="different devices"):
        xp.multiply(a, b)


def test_sim_array_computes_with_its_own_device_and_scalars() -> None:
    a = _sim("sim:1", np.arange(3.0))
    b = _sim("sim:1", np.ones(3))
    assert device_of(a + b) == ms.device("sim:1")
    assert device_of(a * 2.0) == ms.device("sim:1")


@pytest.mark.parametrize("made", [ms.Device("sim", 3), ms.Device("gpu", 0), ms.Device("host", 2)])
def test_a_hand_made_device_is_checked_like_its_spec(made):
    with pytest.raises(ms.DeviceError, match="Available"):
        ms.device(made)
    with pytest.raises(ms.DeviceError):
        ms.to_device(ms.layers.Dense(2, 2), made)
