"""Hostile and broken files: each raises LoadError saying what is wrong (never another
exception type), from load, load_into, load_optimizer and inspect, and load_into leaves the
model untouched."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy as stnp

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.inspect_file import inspect_text
from modelsync.io import load, load_into, load_optimizer, save


def model_and_opt():
    model = layers.Chain(layers.Dense(3, 5, "relu", seed=0), layers.Dropout(0.25),
                         layers.Dense(5, 2, seed=1))
    opt = optim.Adam(ms.params(model), lr=0.01)
    opt.zero_grad()
    ms.backprop(model, losses.mse, np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))
    opt.step()
    return model, opt


@pytest.fixture
def saved(tmp_path):
    """A real file with optimizer state, and the model it was saved from."""
    model, opt = model_and_opt()
    path = tmp_path / "m.safetensors"
    save(model, path, optimizer=opt)
    return model, path


# -- ways to break a file --------------------------------------------------------------------------
def split(blob: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def join(header: dict | str | bytes, data: bytes) -> bytes:
    text = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def edit_header(fn):
    def mutate(blob):
        header, data = split(blob)
        fn(header)
        return join(header, data)
    return mutate


def edit_meta(key, fn):
    """Rewrite one metadata entry (JSON-decoded for fn, unless it is plain text)."""
    def change(header):
        meta = header["__metadata__"]
        try:
            value = json.loads(meta[key])
            meta[key] = json.dumps(fn(value))
        except json.JSONDecodeError:
            meta[key] = fn(meta[key])
    return edit_header(change)


def resave(tensors_fn=None, meta_fn=None):
    """A valid safetensors file with edited tensors and/or metadata."""
    def mutate(blob):
        header, _ = split(blob)
        tensors = stnp.load(blob)
        meta = header["__metadata__"]
        if tensors_fn:
            tensors_fn(tensors)
        if meta_fn:
            meta_fn(meta)
        return stnp.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, meta)
    return mutate


def arch(fn):
    return edit_meta("modelsync.architecture", lambda a: (fn(a), a)[1])


def params_table(fn):
    return edit_meta("modelsync.params", lambda t: (fn(t), t)[1])


def set_tensor(name, **fields):
    def change(header):
        header[name].update(fields)
    return edit_header(change)


def dense0(a):
    return a["children"]["layers"]["list"][0]


def offsets_of(header, name):
    return header[name]["data_offsets"]


def overlap(header):
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    header[names[1]]["data_offsets"] = list(header[names[0]]["data_offsets"])


def hole(blob):
    """Four bytes before the first tensor that no tensor owns."""
    header, data = split(blob)
    for entry in header.values():
        if "data_offsets" in entry:
            entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    return join(header, b"\0" * 4 + data)


def nested(depth):
    return lambda blob: join("[" * depth + "]" * depth, b"")


CASES = {
    # name: (mutation of the saved bytes, what the message must say, does inspect see it)
    "empty": (lambda b: b"", "empty", True),
    "five bytes": (lambda b: b[:5], "truncated", True),
    "random bytes": (lambda b: np.random.default_rng(0).bytes(2000), "header length", True),
    "length past the end": (lambda b: struct.pack("<Q", 10_000) + b"{}", "larger than", True),
    "absurd length": (lambda b: struct.pack("<Q", 2**40) + b"{}", "exceeds", True),
    "length zero": (lambda b: struct.pack("<Q", 0) + b"{}", "too small", True),
    "header not json": (lambda b: join("this is not json!", b""), "not JSON", True),
    "header not utf8": (lambda b: join(b'{"\xff\xfe": 1}', b""), "UTF-8", True),
    "header is a list": (lambda b: join("[1, 2]", b""), "JSON list", True),
    "deeply nested header": (nested(100_000), "nested too deeply", True),
    "duplicate key": (lambda b: join('{"a": 1, "a": 2}', b""), "appears twice", True),
    "NaN in header": (lambda b: join('{"__metadata__": {}, "x": NaN}', b""), "not valid JSON",
                      True),
    "truncated data": (lambda b: b[:-3], "truncated", True),
    "trailing bytes": (lambda b: b + b"\0" * 8, "trailing bytes", True),
    "metadata not text": (edit_header(lambda h: h["__metadata__"].update({"x": 1})),
                          "__metadata__ must map str to str", True),
    "tensor entry without offsets": (set_tensor("layers.0.bias", data_offsets=None),
                                     "data_offsets", True),
    "tensor entry with extra key": (edit_header(lambda h: h["layers.0.bias"].update(x=1)),
                                    "expected exactly", True),
    "unknown dtype": (set_tensor("layers.0.bias", dtype="F8_E4M3"), "not one of", True),
    "negative shape": (set_tensor("layers.0.bias", shape=[-5]), "non-negative", True),
    "bool in shape": (set_tensor("layers.0.bias", shape=[True]), "non-negative", True),
    "size disagrees with offsets": (set_tensor("layers.0.bias", shape=[6]), "needs 24 bytes",
                                    True),
    "offsets out of range": (edit_header(lambda h: offsets_of(h, "layers.0.bias").__setitem__(
        1, 10**12)), "out of range", True),
    "offsets reversed": (edit_header(lambda h: h["layers.0.bias"].update(
        data_offsets=[8, 4])), "begin <= end", True),
    "overlapping offsets": (edit_header(overlap), "overlaps", True),
    "hole in the data": (hole, "hole", True),
    "format version 2": (edit_header(lambda h: h["__metadata__"].update(
        {"modelsync.format": "2"})), "format version '2'", True),
    "architecture missing": (edit_header(lambda h: h["__metadata__"].pop(
        "modelsync.architecture")), "no 'modelsync.architecture'", True),
    "architecture not json": (edit_header(lambda h: h["__metadata__"].update(
        {"modelsync.architecture": "{oops"})), "not JSON", True),
    "unregistered layer type": (arch(lambda a: dense0(a).update(layer="os.system")),
                                "not registered", False),
    "unknown field": (arch(lambda a: dense0(a)["config"].update(evil=1)),
                      "do not match the class", True),
    "missing field": (arch(lambda a: dense0(a)["config"].pop("dtype")),
                      "do not match the class", True),
    "bad activation": (arch(lambda a: dense0(a)["config"].update(activation="rm -rf")),
                       "activation", False),
    "dropout p refused": (arch(lambda a: a["children"]["layers"]["list"][1]["config"].update(
        p=5.0)), "refused by the class", False),
    "config with unknown tag": (arch(lambda a: dense0(a)["config"].update(
        dtype={"__pickle__": "x"})), "not a known stored value", True),
    "unknown param reference": (arch(lambda a: dense0(a)["children"].update(
        weight={"param": "nope"})), "does not list", True),
    "unknown node kind": (arch(lambda a: dense0(a)["children"].update(weight={"eval": "x"})),
                          "is not a layer, param", True),
    "shared layer not built before": (arch(lambda a: a["children"]["layers"]["list"].__setitem__(
        0, {"same": "layers.2"})), "not a layer built before it", False),
    "shape disagrees with the architecture": (set_tensor("layers.0.weight", shape=[3, 5]),
                                              "architecture says", True),
    "dtype disagrees with the architecture": (set_tensor("layers.0.weight", dtype="I32"),
                                              "architecture says", True),
    "shape disagrees with the layer config": (
        lambda b: set_tensor("layers.0.weight", shape=[3, 5])(params_table(
            lambda t: t["layers.0.weight"].update(shape=[3, 5]))(b)),
        "configuration needs", False),
    "param table with an integer dtype": (params_table(
        lambda t: t["layers.0.bias"].update(dtype="int32")), "not one of", True),
    "param table without origin": (params_table(lambda t: t["layers.0.bias"].pop("origin")),
                                   "expected keys", True),
    "missing tensor": (resave(tensors_fn=lambda t: t.pop("layers.2.bias")), "has no tensor",
                       True),
    "extra tensor": (resave(tensors_fn=lambda t: t.update(evil=np.zeros(3, np.float32))),
                     "neither a Param", True),
    "edited graph id": (edit_header(lambda h: h["__metadata__"].update(
        {"modelsync.graph_id": "0" * 32})), "graph_id", False),
    "edited origin": (params_table(lambda t: t["layers.0.bias"].update(origin="x")),
                      "graph_id", False),
    "edited aliases": (edit_meta("modelsync.aliases", lambda a: {"layers.2.bias":
                                                                 "layers.0.bias"}),
                       "aliases", False),
    "optimizer refers to a param tensor": (edit_meta("modelsync.optimizer", lambda o: {
        "__tensor__": "layers.0.bias"}), "not an optimizer tensor", True),
    "optimizer not json": (edit_header(lambda h: h["__metadata__"].update(
        {"modelsync.optimizer": "[["})), "not JSON", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_raises_load_error_everywhere(saved, case):
    model, path = saved
    mutate, message, seen_by_inspect = CASES[case]
    path.write_bytes(mutate(path.read_bytes()))
    before = {k: p.value.copy() for k, p in ms.named_params(model).items()}
    with pytest.raises(ms.LoadError, match=message):
        load(path)
    for check in ("graph", "structure"):
        with pytest.raises(ms.LoadError):
            load_into(model, path, check=check)
    assert all(np.array_equal(before[k], p.value) for k, p in ms.named_params(model).items())
    with pytest.raises(ms.LoadError):
        load_optimizer(path, optim.Adam(ms.params(model)))
    if seen_by_inspect:
        with pytest.raises(ms.LoadError):
            inspect_text(path)
    else:
        assert "graph id" in inspect_text(path)


def test_every_truncation_of_a_real_file_is_a_load_error(saved):
    model, path = saved
    blob = path.read_bytes()
    for size in range(len(blob)):
        path.write_bytes(blob[:size])
        with pytest.raises(ms.LoadError):
            load(path)


def test_a_load_error_is_one_readable_line_naming_the_file(saved):
    _, path = saved
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(ms.LoadError) as info:
        inspect_text(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
