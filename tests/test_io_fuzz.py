"""Fuzzing the reader: hypothesis mutates real saved files (flips bytes, truncates, splices,
edits header and metadata JSON) and every outcome must be a clean load or a LoadError, with
load_into leaving the model exactly as it was whenever it fails.

A second fuzzer edits the architecture structurally (wrong types in every field, nulls,
nesting, lists where objects are, huge ints, NaN and inf, layers moved, duplicated, shared)
and then makes the file agree with itself again, graph id included (`repair`), so that only
the loader's layer checks stand between the edit and a model: such a file must load a model
that works (called, trained, converted, synced, saved) or raise LoadError.

``MODELSYNC_FUZZ_SCALE=20`` (say) multiplies the number of examples for a longer run.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_io_hostile import repair

import modelsync as ms
from modelsync import layers, losses, optim, tree
from modelsync.devices import dtype_name
from modelsync.inspect_file import inspect_text
from modelsync.io import load, load_into, load_optimizer, save

SCALE = float(os.environ.get("MODELSYNC_FUZZ_SCALE", "1"))
EXAMPLES = max(1, int(1100 * SCALE))
STRUCTURAL_EXAMPLES = max(1, int(250 * SCALE))


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
            loaded = load(bad)
        except ms.LoadError as exc:
            event(f"load: LoadError {str(exc).split(': ', 1)[-1][:40]}")
        else:
            event("load: loaded")
            exercise(loaded, Path(folder))
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


# -- what a loaded model must survive ----------------------------------------------------------
def valid_input(model) -> np.ndarray:
    """An input the model's first layer takes: indices for an Embedding, floats of the right
    width for a Dense or LayerNorm (a later layer may still want another width: that is the
    model's own ArgumentError, as for a model built by its constructors)."""
    for _, node in [("", model), *tree.walk(model)]:
        if isinstance(node, layers.Embedding):
            return np.arange(6).reshape(2, 3) % node.num
        if isinstance(node, (layers.Dense, layers.LayerNorm)):
            width = node.in_features if isinstance(node, layers.Dense) else node.dim
            return np.linspace(-1.0, 1.0, 2 * width).reshape(2, width)
    return np.linspace(-1.0, 1.0, 6).reshape(2, 3)


def exercise(model, folder: Path) -> None:
    """Use a loaded model as a user would. Running it may raise a library error about the
    input (a ModelSyncError, as a constructed model would); anything else (AttributeError,
    TypeError, KeyError from inside a layer) fails the test. Copying, syncing, saving,
    wrapping and moving must simply work, and the saved file must load back as the same
    graph."""
    named = ms.named_params(model)
    x = valid_input(model)
    try:
        with np.errstate(all="ignore"):  # a file's values may be any floats (inf, NaN)
            y = model(x)
            ms.backprop(model, losses.mse, x, np.zeros(tuple(y.shape), np.float64), rng=0)
            optim.Adam(ms.params(model), lr=0.01).step()
        event("use: ran, trained")
    except ms.ModelSyncError as exc:
        event(f"use: {type(exc).__name__}")
    twin = ms.to_device(model, "sim:1")
    for p in ms.params(twin):
        p.assign(np.zeros(p.shape, dtype_name(p.dtype)))
    ms.sync(twin, model)
    assert all(to_host(a.value).tobytes() == to_host(b.value).tobytes() for a, b in zip(
        ms.params(twin), named.values(), strict=True))
    ms.save(twin, folder / "again.safetensors")
    again = load(folder / "again.safetensors")
    assert ms.graph_id(again) == ms.graph_id(model)
    assert list(ms.named_params(again)) == list(named)
    wrapper = ms.to_device(again, "sim:1", mode="wrap")
    for p in ms.params(wrapper):
        p.assign(np.ones(p.shape, dtype_name(p.dtype)))
    assert all(np.all(p.value == 1) for p in ms.params(again))  # pulled through the wrap
    ms.detach(wrapper)
    moved = ms.to_device(again, "sim:1", mode="move")
    assert ms.graph_id(moved) == ms.graph_id(model)


def to_host(array) -> np.ndarray:
    return np.asarray(ms.to_device(array, "host"))


# -- structural edits of the architecture, with the file repaired ----------------------------------
@functools.cache
def structured() -> tuple[tuple[bytes, tuple[str, ...], tuple[str, ...]], ...]:
    """Files of models holding every built-in layer (nested, tied, bias-less, an Embedding),
    each with its Param paths and layer paths (what "param" and "same" nodes may name)."""
    inner = layers.Chain(layers.Dense(5, 5, seed=3), layers.Dense(5, 2, "sigmoid", seed=4))
    first = layers.Chain(layers.Dense(3, 5, "relu", seed=0), layers.Dropout(0.2),
                         layers.LayerNorm(5), layers.Activation("tanh"), inner,
                         layers.Dense(2, 2, bias=False, dtype="float32", seed=5))
    inner.layers[0].bias = first.layers[2].bias  # a tie
    second = layers.Chain(layers.Embedding(6, 4, seed=6), layers.LayerNorm(4, eps=1e-3),
                          layers.Dense(4, 3, "softmax", dtype="float64", seed=7))
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for i, model in enumerate((first, second)):
            path = Path(folder) / f"{i}.safetensors"
            save(model, path)
            layer_paths = tuple(p for p, node in tree.walk(model) if tree.is_layer(node))
            out.append((path.read_bytes(), tuple(ms.named_params(model)), layer_paths))
    return tuple(out)


ODD_VALUES = [
    None, True, False, 0, -1, 1, 2, 3, 5, 2**31, 2**63, 2**70, -2**70, 10**300, 0.5, 1.5, -0.0,
    1e-300, 1e308, float("nan"), float("inf"), {"__float__": "nan"}, {"__float__": "inf"},
    {"__float__": "-inf"}, "", "relu", "nope", "float16", "float64", "int8", "Dense", "Chain",
    [], {}, [1, 2], [None], [[[]]], {"a": 1}, {"value": 5}, {"value": None}, {"list": []},
    {"tuple": []}, {"list": [None]}, {"list": [{"value": "relu"}]}, {"tuple": [{"value": 1}]},
    {"__tuple__": [1]}, {"__scalar__": ["int64", 3]}, {"__scalar__": ["float32", 0.001]},
    {"__scalar__": ["bool", True]}, {"__dict__": [[1, 2]]}, {"param": "nope"}, {"same": ""},
    {"same": "nope"}, {"layer": "Dense", "config": {}, "children": {}},
]


def chain_of(node: object) -> dict:
    return {"layer": "Chain", "config": {}, "children": {"layers": {"list": [node]}}}


PLAUSIBLE_VALUES = [None, 1, 2, 3, 4, 5, 6, 0.0, 0.5, 0.99, 1e-3, 1e-8, "relu", "tanh",
                    "sigmoid", "gelu", "softmax", "float16", "float32", "float64"]


def layer_nodes(architecture: object) -> list[tuple]:
    """JSON paths of the layer objects in an architecture."""
    return [p for p in json_paths(architecture)
            if isinstance(node := get(architecture, p), dict) and {"layer", "config"} <= set(node)
            and isinstance(node["config"], dict)]


def chain_lists(architecture: object) -> list[tuple]:
    """JSON paths of the arrays holding a Chain's items."""
    return [(*p, "children", "layers", "list") for p in layer_nodes(architecture)
            if isinstance(get(architecture, p).get("children"), dict)
            and isinstance(get(architecture, p)["children"].get("layers"), dict)
            and isinstance(get(architecture, p)["children"]["layers"].get("list"), list)]


@st.composite
def architecture_edits(draw, architecture: dict, param_paths: tuple[str, ...],
                       layer_paths: tuple[str, ...]) -> dict:
    """``architecture`` with one to three structural edits: a node replaced by a value of the
    wrong kind, by another node (copied, wrapped in a list, tuple, value or Chain, or nested
    in a plain JSON list), deleted, or inserted into a list; a field moved between a layer's
    configuration and children; a Chain's items dropped, repeated, shared or swapped; a
    configuration value set to another plausible or odd one."""
    for _ in range(draw(st.integers(1, 3))):
        paths = json_paths(architecture)
        pieces = st.sampled_from(paths).map(
            lambda p, tree=architecture: copy.deepcopy(get(tree, p)))
        value = draw(st.one_of(
            st.sampled_from(ODD_VALUES).map(copy.deepcopy),
            st.sampled_from(PLAUSIBLE_VALUES),
            pieces,
            pieces.map(lambda n: {"list": [n]}), pieces.map(lambda n: {"tuple": [n]}),
            pieces.map(lambda n: [n]), pieces.map(lambda n: {"value": n}),
            pieces.map(chain_of),
            st.sampled_from(param_paths).map(lambda p: {"param": p}),
            st.sampled_from(layer_paths).map(lambda p: {"same": p}),
            JSON_VALUES))
        how = draw(st.sampled_from(["replace", "delete", "insert", "move", "chain", "chain",
                                    "config", "config"]))
        chains, nodes = chain_lists(architecture), layer_nodes(architecture)
        if how == "chain" and chains:
            items = get(architecture, draw(st.sampled_from(chains)))
            op = draw(st.sampled_from(["drop", "repeat", "share", "swap", "wrap"]))
            i, j = (draw(st.integers(0, max(len(items) - 1, 0))) for _ in range(2))
            if op == "drop" and items:
                del items[i]
            elif op == "repeat" and items:
                items.insert(j, copy.deepcopy(items[i]))
            elif op == "share":
                items.insert(j, {"same": draw(st.sampled_from(layer_paths))})
            elif op == "swap" and items:
                items[i], items[j] = items[j], items[i]
            elif op == "wrap" and items:
                items[i] = chain_of(items[i])
            continue
        if how == "config" and nodes:
            config = get(architecture, draw(st.sampled_from(nodes)))["config"]
            if config:
                config[draw(st.sampled_from(sorted(config)))] = value
            continue
        path = draw(st.sampled_from(paths))
        if not path:
            architecture = value if how == "replace" else architecture
            continue
        parent, key = get(architecture, path[:-1]), path[-1]
        node = get(architecture, path)
        if how == "delete":
            del parent[key]
        elif how == "insert" and isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), value)
        elif how == "move" and path in nodes and isinstance(node["children"], dict):
            source, target = draw(st.sampled_from([("config", "children"),
                                                   ("children", "config")]))
            if node[source]:
                field = draw(st.sampled_from(sorted(node[source])))
                node[target][field] = node[source].pop(field)
        else:
            parent[key] = value
    return architecture


@st.composite
def structurally_edited_files(draw) -> bytes:
    blob, param_paths, layer_paths = draw(st.sampled_from(structured()))
    header, data = split(blob)
    meta = header["__metadata__"]
    architecture = json.loads(meta["modelsync.architecture"])
    edited = draw(architecture_edits(architecture, param_paths, layer_paths))
    meta["modelsync.architecture"] = json.dumps(edited)
    return repair(join(header, data))


@settings(max_examples=STRUCTURAL_EXAMPLES)
@given(blob=structurally_edited_files())
def test_structurally_edited_architectures_load_a_working_model_or_raise_load_error(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edited.safetensors"
        path.write_bytes(blob)
        try:
            inspect_text(path)
        except ms.LoadError:
            pass
        try:
            model = load(path)
        except ms.LoadError as exc:
            event(f"load: LoadError {str(exc).rsplit(': ', 1)[-1][:30]}")
            return
        event("load: loaded")
        exercise(model, Path(folder))
