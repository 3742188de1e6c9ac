"""Fuzzing the reader: hypothesis mutates real saved files (flips bytes, truncates, splices,
edits header and metadata JSON) and every outcome must be a clean load or a LoadError, with
load_into leaving the model exactly as it was whenever it fails."""

from __future__ import annotations

import functools
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers, losses, optim
from modelsync.inspect_file import inspect_text
from modelsync.io import load, load_into, load_optimizer, save

EXAMPLES = 1100


@functools.cache
def originals() -> tuple[bytes, bytes]:
    """Two real files: a model with ties and optimizer state, and a different small model."""
    first = layers.Chain(layers.Dense(3, 4, "relu", seed=0), layers.Dense(4, 4, seed=1),
                         layers.Dropout(0.1), layers.Dense(4, 2, seed=2))
    first.layers[1].bias = first.layers[0].bias
    opt = optim.Adam(ms.params(first), lr=0.01)
    ms.backprop(first, losses.mse, np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32))
    opt.step()
    second = layers.Chain(layers.Dense(2, 3, "tanh", seed=5))
    with tempfile.TemporaryDirectory() as folder:
        save(first, Path(folder) / "a.safetensors", optimizer=opt, metadata={"k": "v"})
        save(second, Path(folder) / "b.safetensors")
        return ((Path(folder) / "a.safetensors").read_bytes(),
                (Path(folder) / "b.safetensors").read_bytes())


def split(blob: bytes) -> tuple[object, bytes]:
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def join(header: object, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# -- mutations ---------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**66, 2**66) | st.floats(allow_nan=False,
                                                                    allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(
        ["Dense", "Chain", "Activation", "F32", "I64", "BOOL", "float32", "int8", "__tensor__",
         "layers.0.weight", "__optim__/layers.0.weight/m", "relu", -1, 0, 1, 2**63]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["layer", "config", "children", "param", "same", "list", "tuple",
                         "value", "__tuple__", "__tensor__", "__scalar__", "shape", "dtype",
                         "data_offsets", "origin", "name", "x"]), inner, max_size=3),
    max_leaves=6)


def json_paths(tree: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += json_paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += json_paths(v, (*prefix, i))
    return out


def get(tree: object, path: tuple) -> object:
    for key in path:
        tree = tree[key]
    return tree


@st.composite
def edited_json(draw, tree: object) -> object:
    """``tree`` with one node replaced by a drawn value, a node from elsewhere, or deleted."""
    paths = json_paths(tree)
    path = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["replace", "swap", "delete"]))
    if not path:
        return draw(JSON_VALUES) if how != "delete" else {}
    parent = get(tree, path[:-1])
    if how == "delete":
        del parent[path[-1]]
    elif how == "swap":
        parent[path[-1]] = json.loads(json.dumps(get(tree, draw(st.sampled_from(paths)))))
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return tree


@st.composite
def flips(draw, blob: bytes) -> bytes:
    data = bytearray(blob)
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(draw(st.integers(1, 6))):
        end = header_end if draw(st.booleans()) else len(data)
        data[draw(st.integers(0, end - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def splices(draw, blob: bytes, other: bytes) -> bytes:
    source = draw(st.sampled_from([blob, other, bytes(64), b"\xff" * 64]))
    a = draw(st.integers(0, len(source)))
    piece = source[a:a + draw(st.integers(0, 256))]
    at = draw(st.integers(0, len(blob)))
    cut = draw(st.integers(0, 64))
    return blob[:at] + piece + blob[at + cut:]


@st.composite
def header_edits(draw, blob: bytes) -> bytes:
    header, data = split(blob)
    return join(draw(edited_json(header)), data)


@st.composite
def metadata_edits(draw, blob: bytes) -> bytes:
    header, data = split(blob)
    meta = header["__metadata__"]
    key = draw(st.sampled_from(sorted(meta)))
    try:
        meta[key] = json.dumps(draw(edited_json(json.loads(meta[key]))))
    except json.JSONDecodeError:
        meta[key] = draw(st.text(max_size=12))
    return join(header, data)


@st.composite
def mutated_files(draw) -> bytes:
    blob, other = draw(st.sampled_from([originals(), originals()[::-1]]))
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "header", "metadata",
                                 "metadata"]))
    if kind == "flip":
        return draw(flips(blob))
    if kind == "truncate":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    if kind == "splice":
        return draw(splices(blob, other))
    if kind == "header":
        return draw(header_edits(blob))
    return draw(metadata_edits(blob))


# -- the property ------------------------------------------------------------------------------
def snapshot(model) -> dict[str, bytes]:
    return {k: p.value.tobytes() for k, p in ms.named_params(model).items()}


@settings(max_examples=EXAMPLES)
@given(blob=mutated_files(), check=st.sampled_from(["graph", "structure"]))
def test_mutated_files_load_cleanly_or_raise_load_error(blob, check):
    with tempfile.TemporaryDirectory() as folder:
        good = Path(folder) / "good.safetensors"
        bad = Path(folder) / "bad.safetensors"
        good.write_bytes(originals()[0])
        bad.write_bytes(blob)
        try:
            load(bad)
            event("load: loaded")
        except ms.LoadError as exc:
            event(f"load: LoadError {str(exc).split(': ', 1)[-1][:40]}")
        model = load(good)
        before = snapshot(model)
        try:
            load_into(model, bad, check=check)
        except (ms.LoadError, ms.GraphMismatchError):
            assert snapshot(model) == before
        try:
            load_optimizer(bad, optim.Adam(ms.params(model)))
        except ms.LoadError:
            pass
        try:
            inspect_text(bad)
        except ms.LoadError:
            pass
