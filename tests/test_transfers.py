"""The transfer door: copy_to moves values between devices, every crossing is counted in each
active ledger and obeys transfer_guard, and nothing else in the package crosses a boundary."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import modelsync as ms
from modelsync import transfers
from modelsync.devices import HOST, device_of
from modelsync.transfers import copy_to, to_device_array

SIM1, SIM2 = ms.device("sim:1"), ms.device("sim:2")


def _host(shape=(2, 3), dtype="float32") -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


# -- copy_to --------------------------------------------------------------------------------
@pytest.mark.parametrize(("src", "dst", "kind"), [
    ("host", "sim:1", "h2d"), ("sim:1", "host", "d2h"), ("sim:1", "sim:2", "d2d"),
    ("sim:2", "sim:1", "d2d"), ("host", "sim:2", "h2d"),
])
def test_copy_between_devices_is_counted(src: str, dst: str, kind: str) -> None:
    values = _host()
    source = values if src == "host" else copy_to(values, ms.device(src), reason="setup")
    with ms.track_transfers() as t:
        result = copy_to(source, ms.device(dst), reason="unit test", what="state")
    assert device_of(result) == ms.device(dst)
    np.testing.assert_array_equal(to_numpy(result), values)
    assert t.count == 1 and t.bytes == values.nbytes == 24
    assert {"h2d": t.h2d_bytes, "d2h": t.d2h_bytes, "d2d": t.d2d_bytes} == {
        k: (24 if k == kind else 0) for k in ("h2d", "d2h", "d2d")}
    event = t.events[0]
    assert (event.kind, event.bytes, event.reason, event.what) == (kind, 24, "unit test", "state")
    assert (event.src, event.dst) == (src, dst)
    assert t.bytes_of("state") == 24 and t.bytes_of("param") == 0


def test_copy_accepts_a_spec_string() -> None:
    with ms.track_transfers() as t:
        result = copy_to(_host(), "sim:2", reason="spec")  # type: ignore[arg-type]
    assert device_of(result) == SIM2 and t.count == 1


@pytest.mark.parametrize("spec", ["host", "sim:1", "sim:2"])
def test_same_device_copy_records_nothing_and_is_independent(spec: str) -> None:
    dev = ms.device(spec)
    source = copy_to(_host(), dev, reason="setup")
    with ms.track_transfers() as t:
        result = copy_to(source, dev, reason="local")
    assert t.count == 0 and t.bytes == 0 and t.events == []
    assert result is not source and device_of(result) == dev
    result[...] = 0.0
    np.testing.assert_array_equal(to_numpy(source), _host())


@pytest.mark.parametrize(("src", "dst"), [("host", "sim:1"), ("sim:1", "host"),
                                          ("sim:1", "sim:2")])
def test_copy_is_independent_of_source(src: str, dst: str) -> None:
    source = copy_to(_host(), ms.device(src), reason="setup")
    result = copy_to(source, ms.device(dst), reason="copy")
    result[...] = -1.0
    np.testing.assert_array_equal(to_numpy(source), _host())
    source[...] = 7.0
    np.testing.assert_array_equal(to_numpy(result), np.full((2, 3), -1.0, np.float32))


@given(hnp.arrays(st.sampled_from(["float32", "float64", "int32", "int64", "bool"]),
                  hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
       st.sampled_from([("host", "sim:1"), ("sim:1", "sim:2"), ("sim:2", "host")]))
def test_round_trips_keep_values_dtype_shape_and_count_bytes(values: np.ndarray, route) -> None:
    src, dst = (ms.device(s) for s in route)
    source = values if src == HOST else copy_to(values, src, reason="setup")
    with ms.track_transfers() as t:
        result = copy_to(source, dst, reason="prop")
    back = to_numpy(result)
    assert back.dtype == values.dtype and back.shape == values.shape
    np.testing.assert_array_equal(back, values)
    assert t.bytes == values.nbytes and t.count == 1


def test_float16_cannot_go_to_sim_and_says_why() -> None:
    with ms.track_transfers() as t, pytest.raises(ms.ArgumentTypeError, match="float16.*sim:1"):
        copy_to(np.zeros(3, np.float16), SIM1, reason="half")
    assert t.count == 0


def test_copy_rejects_non_arrays_and_bad_what() -> None:
    with pytest.raises(ms.ArgumentTypeError):
        copy_to([1.0, 2.0], SIM1, reason="list")
    with pytest.raises(ms.ArgumentError, match="what='params'"):
        copy_to(_host(), SIM1, reason="typo", what="params")
    with pytest.raises(ms.DeviceError):
        copy_to(_host(), "sim:9", reason="bad")  # type: ignore[arg-type]


# -- ledgers --------------------------------------------------------------------------------
def test_ledger_totals_over_many_events() -> None:
    a = _host((4,), "float64")  # 32 bytes
    with ms.track_transfers() as t:
        s1 = copy_to(a, SIM1, reason="up")
        s2 = copy_to(s1, SIM2, reason="across", what="grad")
        copy_to(s2, HOST, reason="down", what="data")
    assert t.count == 3 and t.bytes == 96
    assert (t.h2d_bytes, t.d2d_bytes, t.d2h_bytes) == (32, 32, 32)
    assert [e.kind for e in t.events] == ["h2d", "d2d", "d2h"]
    assert [e.reason for e in t.events] == ["up", "across", "down"]
    assert (t.bytes_of("param"), t.bytes_of("grad"), t.bytes_of("data")) == (32, 32, 32)
    assert "count=3" in repr(t)


def test_nested_ledgers_both_see_inner_events() -> None:
    with ms.track_transfers() as outer:
        copy_to(_host(), SIM1, reason="outer only")
        with ms.track_transfers() as inner:
            copy_to(_host(), SIM2, reason="both")
        copy_to(_host(), SIM2, reason="outer again")
    assert [e.reason for e in inner.events] == ["both"]
    assert [e.reason for e in outer.events] == ["outer only", "both", "outer again"]


def test_ledger_stops_recording_after_block_even_after_exception() -> None:
    with pytest.raises(RuntimeError), ms.track_transfers() as t:
        copy_to(_host(), SIM1, reason="inside")
        raise RuntimeError("boom")
    copy_to(_host(), SIM1, reason="after")
    assert [e.reason for e in t.events] == ["inside"]
    assert transfers._ledgers.get() == ()


def test_ledger_exported_type() -> None:
    with ms.track_transfers() as t:
        pass
    assert isinstance(t, ms.TransferLedger)
    assert (t.count, t.bytes, t.h2d_bytes, t.d2h_bytes, t.d2d_bytes) == (0, 0, 0, 0, 0)


# -- transfer_guard -------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["param", "state", "grad"])
def test_guard_disallow_raises_for_model_transfers(what: str) -> None:
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        with pytest.raises(ms.TransferError) as info:
            copy_to(_host(), SIM1, reason="guarded step", what=what)
    message = str(info.value)
    assert "guarded step" in message and "host" in message and "sim:1" in message
    assert "h2d" in message and what in message
    assert t.count == 0  # a refused transfer moved nothing


def test_guard_disallow_lets_data_through_and_counts_it() -> None:
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        result = copy_to(_host(), SIM1, reason="batch", what="data")
        same = copy_to(result, SIM1, reason="local param copy")  # same device: no transfer
    assert device_of(result) == SIM1 and device_of(same) == SIM1
    assert t.count == 1 and t.bytes_of("data") == 24


def test_guard_log_prints_to_stderr_and_still_copies(capsys) -> None:
    with ms.track_transfers() as t, ms.transfer_guard("log"):
        result = copy_to(_host(), SIM2, reason="logged copy")
        copy_to(_host(), SIM2, reason="a batch", what="data")
    captured = capsys.readouterr()
    assert "logged copy" in captured.err and "sim:2" in captured.err and "24 bytes" in captured.err
    assert "a batch" not in captured.err
    assert captured.out == ""
    assert device_of(result) == SIM2 and t.count == 2


def test_guard_allow_is_default_and_silent(capsys) -> None:
    copy_to(_host(), SIM1, reason="quiet")
    with ms.transfer_guard("allow"):
        copy_to(_host(), SIM1, reason="quiet too")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", ["deny", "Disallow", "", None, 0])
def test_guard_bad_mode(mode: object) -> None:
    with pytest.raises(ms.ArgumentError) as info:
        with ms.transfer_guard(mode):  # type: ignore[arg-type]
            pass
    assert repr(mode) in str(info.value) and "disallow" in str(info.value)


def test_guard_restored_after_exception_and_nesting() -> None:
    with pytest.raises(KeyError), ms.transfer_guard("disallow"):
        raise KeyError("x")
    copy_to(_host(), SIM1, reason="allowed again")
    with ms.transfer_guard("disallow"):
        with ms.transfer_guard("allow"):
            copy_to(_host(), SIM1, reason="inner allow")
        with pytest.raises(ms.TransferError):
            copy_to(_host(), SIM1, reason="outer disallow again")
    assert transfers._guard.get() == "allow"


# -- to_device_array (ms.to_device for a plain array) ----------------------------------------
def test_to_device_array_same_device_returns_same_array() -> None:
    host = _host()
    sim = copy_to(host, SIM1, reason="setup")
    with ms.track_transfers() as t:
        assert to_device_array(host, "host") is host
        assert to_device_array(sim, SIM1) is sim
        assert to_device_array(sim, "sim:1") is sim
    assert t.count == 0


def test_to_device_array_counts_as_data() -> None:
    with ms.track_transfers() as t, ms.transfer_guard("disallow"):
        sim = to_device_array(_host(), "sim:2")
        back = to_device_array(sim, HOST)
    assert device_of(sim) == SIM2 and isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, _host())
    assert [(e.kind, e.what, e.reason) for e in t.events] == [
        ("h2d", "data", "to_device(array)"), ("d2h", "data", "to_device(array)")]


def test_to_device_array_takes_lists_and_rejects_bad_devices() -> None:
    result = to_device_array([[1.0, 2.0]], "sim:1")
    assert device_of(result) == SIM1 and tuple(result.shape) == (1, 2)
    with pytest.raises(ms.DeviceError):
        to_device_array(_host(), "sim:5")


# -- nothing else crosses a device boundary --------------------------------------------------
PACKAGE = pathlib.Path(ms.__file__).parent
THE_DOOR = PACKAGE / "transfers.py"
#: Calls that copy between devices: only transfers.py may make them.
CUPY_COPIES = {"asarray", "array"}  # as cupy.<name>(...)
#: ``ms.to_device(...)`` is the public conversion (it goes through copy_to), not a crossing.
PUBLIC_MODULES = {"ms", "modelsync", "convert"}
#: (file relative to the package, call) pairs that are not crossings, each with why.
ALLOWED: set[tuple[str, str]] = set()


def _crossings(text: str, label: str) -> list[str]:
    """Every call in ``text`` that copies between devices, as "label:line: call"."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value if isinstance(func, ast.Attribute) else None
        owner_name = owner.id if isinstance(owner, ast.Name) else ""
        hit = None
        if name == "to_device" and isinstance(func, ast.Attribute) \
                and owner_name not in PUBLIC_MODULES:
            hit = ".to_device()"  # the array API's copy (a bare to_device() is ms.to_device)
        elif name == "asnumpy":
            hit = name
        elif name == "get" and isinstance(func, ast.Attribute) and not node.args \
                and not node.keywords:
            hit = ".get()"  # cupy.ndarray.get(): a device-to-host copy
        elif name in CUPY_COPIES and owner_name in ("cupy", "cp"):
            hit = f"{owner_name}.{name}"
        elif name in ("asarray", "array") and any(k.arg == "device" for k in node.keywords):
            hit = f"{name}(..., device=)"
        if hit and (label, hit) not in ALLOWED:
            found.append(f"{label}:{node.lineno}: {hit}")
    return found


def test_only_transfers_py_crosses_device_boundaries() -> None:
    sources = sorted(p for p in PACKAGE.rglob("*.py") if p != THE_DOOR)
    assert len(sources) > 5
    offenders = [hit for path in sources
                 for hit in _crossings(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert offenders == [], (
        "device crossings outside modelsync/transfers.py (use transfers.copy_to so the ledger "
        f"and transfer_guard see them): {offenders}")


def test_the_scanner_finds_crossings() -> None:
    text = ("import cupy\nx = a.to_device(d)\ny = cupy.asnumpy(a)\nz = a.get()\n"
            "w = cupy.asarray(a)\nv = xp.asarray(a, device=d)\nu = d.get('k')\n"
            "t = xp.zeros(3, device=d)\nmessage = 'use ms.to_device(x)'\n"
            "m = ms.to_device(x, d)\nn = to_device(model, d)\n")
    hits = _crossings(text, "sample.py")
    assert hits == ["sample.py:2: .to_device()", "sample.py:3: asnumpy", "sample.py:4: .get()",
                    "sample.py:5: cupy.asarray", "sample.py:6: asarray(..., device=)"]
    assert _crossings(THE_DOOR.read_text(), "transfers.py")  # the door itself does cross


def test_bytes_of_refuses_an_unknown_kind() -> None:
    with ms.track_transfers() as t:
        pass
    with pytest.raises(ms.ArgumentError, match="what='params'"):
        t.bytes_of("params")
