"""Hostile and broken files: each raises LoadError saying what is wrong (never another
exception type), from load, load_into, load_optimizer and inspect, and load_into leaves the
model untouched."""

from __future__ import annotations

import json
import struct

import attrs
import numpy as np
import pytest
import safetensors.numpy as stnp

import modelsync as ms
from modelsync import layers, losses, optim, tree
from modelsync.inspect_file import inspect_text
from modelsync.io import load, load_into, load_optimizer, save
from modelsync.io.architecture import build, read_plan
from modelsync.io.modelfile import (
    ALIASES_KEY,
    ARCHITECTURE_KEY,
    CHECKSUMS_KEY,
    GRAPH_KEY,
    OPTIMIZER_KEY,
    PARAMS_KEY,
)


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


# -- hostile architectures, made consistent again ----------------------------------------------
# Anyone can edit an architecture and then make the file agree with itself: rename the stored
# Params to the paths the new architecture gives them and recompute the aliases and the graph
# id, which is derived from public data (layer types, configuration, ties and Param origins).
# `repair` does that by rebuilding the model as ms.load does and asking tree.graph_id, so the
# loader's graph check cannot be what refuses these files: only its layer checks can.
def _rebuild(architecture, table, tensors):
    """The model an architecture describes, built as ms.load builds it, and for each Param
    the table entry it came from."""
    ref_of = {}

    def make_param(ref):
        param = ms.Param(tensors[ref], name=table[ref]["name"])
        param.origin = table[ref]["origin"]
        ref_of[id(param)] = ref
        return param

    model = build(read_plan(architecture, set(table)), make_param)
    return model, ref_of


def _renamed_refs(node, new_path):
    if isinstance(node, list):
        return [_renamed_refs(item, new_path) for item in node]
    if isinstance(node, dict):
        if set(node) == {"param"} and node["param"] in new_path:
            return {"param": new_path[node["param"]]}
        return {key: _renamed_refs(value, new_path) for key, value in node.items()}
    return node


def repair(blob: bytes) -> bytes:
    """``blob`` (whose architecture was edited) made to agree with itself: each Param stored
    under the path the architecture now gives it, unused ones dropped, the aliases and graph
    id recomputed, optimizer state dropped. A file whose architecture the loader refuses to
    build is returned as it is (ms.load refuses it the same way)."""
    header, _ = split(blob)
    meta = dict(header["__metadata__"])
    architecture = json.loads(meta[ARCHITECTURE_KEY])
    table = json.loads(meta[PARAMS_KEY])
    tensors = stnp.load(blob)
    try:
        model, ref_of = _rebuild(architecture, table, tensors)
        new_path = {ref_of[id(p)]: path for path, p in ms.named_params(model).items()}
        architecture = _renamed_refs(architecture, new_path)
        table = {new: table[old] for old, new in new_path.items()}
        tensors = {new: tensors[old] for old, new in new_path.items()}
        model, _ = _rebuild(architecture, table, tensors)
    except ms.LoadError:
        return blob
    meta.pop(OPTIMIZER_KEY, None)
    meta.pop(CHECKSUMS_KEY, None)  # (the tensors were renamed: as in a file from before them)
    meta.update({ARCHITECTURE_KEY: json.dumps(architecture), PARAMS_KEY: json.dumps(table),
                 ALIASES_KEY: json.dumps(tree.aliases(model)),
                 GRAPH_KEY: ms.graph_id(model)})
    return stnp.save(tensors, meta)


def five_layers():
    """A model with every built-in layer kind a Chain of floats can hold."""
    return layers.Chain(layers.Dense(3, 5, "relu", seed=0), layers.Dropout(0.25),
                        layers.LayerNorm(5), layers.Activation("tanh"),
                        layers.Dense(5, 2, seed=1))


def item(a, i):
    return a["children"]["layers"]["list"][i]


def to_config(node, field, value):
    """Move ``field`` of a layer node from its children into its configuration."""
    node["children"].pop(field)
    node["config"][field] = value


def items(a, new):
    a["children"]["layers"]["list"] = new


HOSTILE_ARCHITECTURES = {
    # name: (edit of the architecture JSON, what the LoadError must say)
    "Dense.weight an int": (lambda a: to_config(item(a, 0), "weight", 5),
                            r"Dense.weight holds a int; expected a Param$"),
    "Dense.weight a layer": (lambda a: item(a, 0)["children"].update(weight=item(a, 4)),
                             r"Dense.weight holds a Dense; expected a Param"),
    "Dense.weight null": (lambda a: item(a, 0)["children"].update(weight=None),
                          r"Dense.weight holds a NoneType; expected a Param$"),
    "Dense.bias a list of Params": (lambda a: item(a, 0)["children"].update(
        bias={"list": [{"param": "layers.0.bias"}]}), r"Dense.bias holds a TrackedList"),
    "Dense.bias a string": (lambda a: to_config(item(a, 0), "bias", "layers.0.bias"),
                            r"Dense.bias holds a str; expected a Param or None"),
    "LayerNorm.bias null": (lambda a: item(a, 2)["children"].update(bias=None),
                            r"LayerNorm.bias holds a NoneType; expected a Param$"),
    "Chain.layers configuration": (lambda a: to_config(a, "layers", [1, 2]),
                                   r"Chain.layers=\[1, 2\] is refused by the class: Chain "
                                   r"argument 0 is a int"),
    "Chain.layers a mapping": (lambda a: to_config(a, "layers", {"a": 1}),
                               r"Chain.layers is a dict; expected a list of layers"),
    "Chain.layers a number": (lambda a: to_config(a, "layers", 7),
                              r"Chain.layers is a int; expected a list of layers"),
    "Chain item a value": (lambda a: item(a, 1).clear() or item(a, 1).update(value=5),
                           r"Chain argument 1 is a int"),
    "Chain item null": (lambda a: a["children"]["layers"]["list"].__setitem__(1, None),
                        r"Chain argument 1 is a NoneType"),
    "Chain item a Param": (lambda a: a["children"]["layers"]["list"].__setitem__(
        1, {"param": "layers.0.bias"}), r"Chain argument 1 is a Param"),
    "Chain item a list of layers": (lambda a: a["children"]["layers"]["list"].__setitem__(
        1, {"list": [item(a, 3)]}), r"Chain argument 1 is a TrackedList"),
    "LayerNorm eps inf": (lambda a: item(a, 2)["config"].update(eps={"__float__": "inf"}),
                          r"LayerNorm.eps=inf is refused by the class: eps=inf is outside"),
    "LayerNorm eps nan": (lambda a: item(a, 2)["config"].update(eps={"__float__": "nan"}),
                          r"eps=nan is outside"),
    "LayerNorm eps a string": (lambda a: item(a, 2)["config"].update(eps="1e-5"),
                               r"eps='1e-5' is a str; expected a float"),
    "LayerNorm dim zero": (lambda a: item(a, 2)["config"].update(dim=0), r"dim=0 is outside"),
    "Dense in_features a float": (lambda a: item(a, 0)["config"].update(in_features=3.0),
                                  r"in_features=3.0 is a float; expected an int"),
    "Dense in_features a bool": (lambda a: item(a, 0)["config"].update(in_features=True),
                                 r"in_features=True is a bool; expected an int"),
    "Dense out_features huge": (lambda a: item(a, 0)["config"].update(out_features=2**70),
                                r"configuration needs \(1180591620717411303424, 3\)"),
    "Dense activation a list": (lambda a: item(a, 0)["config"].update(activation=["relu"]),
                                r"activation=\['relu'\] is not an activation"),
    "Dense dtype int8": (lambda a: item(a, 0)["config"].update(dtype="int8"),
                         r"dtype='int8' is not supported"),
    "Dropout p inf": (lambda a: item(a, 1)["config"].update(p={"__float__": "inf"}),
                      r"p=inf is outside \[0, 1\)"),
    "Activation name a number": (lambda a: item(a, 3)["config"].update(name=3),
                                 r"name=3 is not an activation"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHITECTURES))
def test_a_hostile_architecture_with_a_repaired_graph_id_is_refused(tmp_path, case):
    """Each edit, with the file made to agree with itself (graph id included), is a LoadError
    naming the layer and what its class refuses: never a model that fails when used."""
    edit, message = HOSTILE_ARCHITECTURES[case]
    path = tmp_path / "m.safetensors"
    save(five_layers(), path)
    path.write_bytes(repair(arch(edit)(path.read_bytes())))
    with pytest.raises(ms.LoadError, match=message) as info:
        load(path)
    assert "architecture at" in str(info.value) and "\n" not in str(info.value)


def test_repair_makes_an_edited_architecture_load(tmp_path):
    """The repair is real: an edit the classes accept (a layer dropped, a LayerNorm used twice)
    loads after it, with Params renamed, ties recomputed, and the model works."""
    path = tmp_path / "m.safetensors"
    model = five_layers()
    save(model, path)

    def edit(a):
        items(a, [item(a, 0), item(a, 2), {"same": "layers.1"}, item(a, 4)])

    path.write_bytes(repair(arch(edit)(path.read_bytes())))
    loaded = load(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [
        "Dense", "LayerNorm", "LayerNorm", "Dense"]
    assert loaded.layers[1] is loaded.layers[2]
    assert ms.named_params(loaded)["layers.3.weight"] is not None
    assert np.array_equal(ms.named_params(loaded)["layers.3.weight"].value,
                          model.layers[4].weight.value)
    x = np.ones((2, 3), np.float32)
    ms.backprop(loaded, losses.mse, x, np.zeros((2, 2), np.float32))
    assert loaded.layers[1].weight.grad is not None


def test_a_stored_value_is_what_the_class_converter_makes_of_it(tmp_path):
    """The converted value is kept, as the class's initialiser keeps it: a Chain stored as a
    tuple comes back holding a TrackedList, a NumPy int scalar as an int."""
    path = tmp_path / "m.safetensors"
    save(five_layers(), path)

    def edit(a):
        a["children"]["layers"] = {"tuple": a["children"]["layers"]["list"]}
        item_ = a["children"]["layers"]["tuple"][0]
        item_["config"]["in_features"] = {"__scalar__": ["int64", 3]}

    path.write_bytes(repair(arch(edit)(path.read_bytes())))
    loaded = load(path)
    assert type(loaded.layers) is tree.TrackedList
    assert type(loaded.layers[0].in_features) is int
    loaded.layers.append(layers.Activation("relu"))  # a list, as the constructor makes it
    assert loaded(np.ones((1, 3), np.float32)).shape == (1, 2)


seen_by_validator = []


def _positive_gain(node, field, value):
    seen_by_validator.append(value)
    if not value > 0:
        raise ValueError(f"gain={value!r} must be positive")


@ms.layer(name="test_io_hostile.Gain")
@attrs.define(eq=False)
class Gain:
    """A user layer whose configuration has a validator of its own."""

    gain: float = attrs.field(validator=_positive_gain)

    def forward(self, x, ctx):
        return x * self.gain, lambda dy: dy * self.gain


def test_the_loader_runs_the_class_own_validators_not_a_copy(tmp_path):
    path = tmp_path / "m.safetensors"
    save(layers.Chain(layers.Dense(2, 2), Gain(2.0)), path)
    path.write_bytes(repair(arch(lambda a: item(a, 1)["config"].update(gain=-1.0))(
        path.read_bytes())))
    seen_by_validator.clear()
    with pytest.raises(ms.LoadError, match=r"layers.1: the stored test_io_hostile.Gain is "
                       r"refused by its validators: gain=-1.0 must be positive"):
        load(path)
    assert seen_by_validator == [-1.0]


@pytest.mark.parametrize("assign, message", [
    (lambda m: setattr(m.layers[0], "weight", 5), "Dense.weight holds a int"),
    (lambda m: setattr(m.layers[0], "bias", m.layers[4]), "Dense.bias holds a Dense"),
    (lambda m: setattr(m, "layers", [1, 2]), "Chain argument 0 is a int"),
    (lambda m: setattr(m.layers[2], "eps", float("inf")), "eps=inf is outside"),
])
def test_the_classes_refuse_the_same_values_on_assignment(assign, message):
    """What the loader refuses is what the class refuses, wherever the value comes from."""
    model = five_layers()
    with pytest.raises((ms.ArgumentError, ms.ArgumentTypeError), match=message):
        assign(model)


@ms.layer(name="test_io_hostile.Scale")
@attrs.define(eq=False, init=False)
class Scale:
    """A user layer as docs/guide.md writes one: its Param field has an annotation and no
    validator; ``inner`` is declared an optional Dense."""

    features: int
    gain: ms.Param
    inner: layers.Dense | None = None

    def __init__(self, features: int, inner=None) -> None:
        self.__attrs_init__(features, ms.Param(np.ones(features, np.float32)), inner)

    def forward(self, x, ctx):
        gain = self.gain.value
        if self.inner is not None:
            x, _ = self.inner.forward(x, ctx)
        return x * gain, lambda dy: dy * gain


@ms.layer(name="test_io_hostile.Vague")
@attrs.define(eq=False)
class Vague:
    """A layer whose annotation names a type that does not resolve at run time."""

    thing: NotDefinedAnywhere  # noqa: F821

    def forward(self, x, ctx):
        return x, lambda dy: dy


@pytest.mark.parametrize("edit, message", [
    (lambda a: to_config(a, "gain", 5), r"Scale.gain holds a int, but the class declares it a "
                                        r"Param$"),
    (lambda a: a["children"].update(gain=None), r"Scale.gain holds a NoneType"),
    (lambda a: a["children"].update(gain=a["children"]["inner"]), r"Scale.gain holds a Dense"),
    (lambda a: a["children"].update(inner={"param": "gain"}),
     r"Scale.inner holds a Param, but the class declares it a Dense or None$"),
    (lambda a: to_config(a, "inner", [1]), r"Scale.inner holds a list"),
])
def test_a_user_layer_field_holds_what_its_annotation_declares(tmp_path, edit, message):
    """A user layer without validators (as the guide writes one) still gets its Param and
    layer fields checked against their annotations."""
    path = tmp_path / "m.safetensors"
    save(Scale(2, layers.Dense(2, 2, seed=0)), path)
    path.write_bytes(repair(arch(edit)(path.read_bytes())))
    with pytest.raises(ms.LoadError, match=message):
        load(path)


def test_declared_fields_allow_what_they_declare_and_unresolved_ones_are_skipped(tmp_path):
    path = tmp_path / "m.safetensors"
    save(layers.Chain(Scale(2), Vague(thing=3)), path)  # inner None: declared optional
    loaded = load(path)
    assert loaded.layers[0].inner is None and loaded.layers[1].thing == 3
    assert np.array_equal(loaded(np.ones((1, 2), np.float32)), np.ones((1, 2)))
