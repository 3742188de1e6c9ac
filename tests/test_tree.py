"""Model trees: deterministic params/named_params, ties and shared layers kept once, graph_id
identity through rebuilds, the @ms.layer registry, and MovedError after mark_moved."""

from __future__ import annotations

import collections
import gc
import types

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import modelsync as ms
from modelsync import layers, syncing, tree
from modelsync.params import Param
from modelsync.rebuild import rebuild


@ms.layer
class TreeTestTied:
    """Two fields holding Params (tied when they are the same one) and one config value."""

    first: Param
    second: Param
    scale: float = 1.0

    def forward(self, x, ctx):
        return x * self.scale, lambda dy: dy


@ms.layer(name="tree_test_scale")
class TreeTestScale:
    """A user layer with a forward: y = x * factor."""

    factor: Param

    def forward(self, x, ctx):
        layers.base.check_input(x, self.factor.device, ctx)
        return x * self.factor.value, lambda dy: dy * self.factor.value


@pytest.fixture
def registry():
    """Restore the layer registry after a test that registers (or hijacks) names."""
    saved = dict(tree._REGISTRY)
    yield tree._REGISTRY
    tree._REGISTRY.clear()
    tree._REGISTRY.update(saved)


def _mlp(seed: int = 0) -> layers.Chain:
    return layers.Chain(layers.Dense(3, 4, "relu", seed=seed), layers.Dense(4, 2, seed=seed + 1))


def _same_origin(p: Param) -> Param:
    """A new Param with a copy of ``p``'s values that keeps its origin (what copies do)."""
    q = Param(p.value.copy(), name=p.name)
    q.origin = p.origin
    return q


# -- params / named_params --------------------------------------------------------------------
def test_named_params_depth_first_order() -> None:
    inner = layers.Chain(layers.Dense(4, 4, seed=2), layers.Dense(4, 4, bias=False, seed=3))
    model = layers.Chain(layers.Dense(3, 4, seed=1), inner, "relu", layers.Dense(4, 2, seed=4))
    assert list(ms.named_params(model)) == [
        "layers.0.weight", "layers.0.bias",
        "layers.1.layers.0.weight", "layers.1.layers.0.bias", "layers.1.layers.1.weight",
        "layers.3.weight", "layers.3.bias"]
    named = ms.named_params(model)
    assert named["layers.1.layers.1.weight"] is inner.layers[1].weight
    assert ms.params(model) == list(named.values())


def test_params_is_a_list_that_knows_paths() -> None:
    model = _mlp()
    found = ms.params(model)
    assert isinstance(found, list) and all(isinstance(p, Param) for p in found)
    assert found.paths == list(ms.named_params(model))
    assert ms.params(model) == found  # deterministic: same order each call


def test_tied_param_listed_once_under_first_path() -> None:
    p, q = Param(np.ones(2)), Param(np.zeros(2))
    model = TreeTestTied(p, p)
    assert ms.named_params(model) == {"first": p}
    assert ms.params(model) == [p]
    assert tree.aliases(model) == {"second": "first"}
    assert tree.structure(model) == [("first", (2,), "float64"), ("second", (2,), "float64")]
    untied = TreeTestTied(p, q)
    assert ms.named_params(untied) == {"first": p, "second": q}
    assert tree.aliases(untied) == {}


def test_shared_layer_listed_once_and_aliased() -> None:
    dense = layers.Dense(3, 3, seed=0)
    model = layers.Chain(dense, "tanh", dense)
    assert list(ms.named_params(model)) == ["layers.0.weight", "layers.0.bias"]
    assert tree.aliases(model) == {"layers.2.weight": "layers.0.weight",
                                   "layers.2.bias": "layers.0.bias"}
    assert [path for path, _, _ in tree.structure(model)] == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]


def test_structure_names_shapes_and_dtypes() -> None:
    model = layers.Chain(layers.Dense(3, 4, dtype="float64", seed=0))
    assert tree.structure(model) == [("layers.0.weight", (4, 3), "float64"),
                                     ("layers.0.bias", (4,), "float64")]


def test_static_config() -> None:
    dense = layers.Dense(3, 4, "relu", seed=0)
    assert tree.static_config(dense) == {
        "in_features": 3, "out_features": 4, "activation": "relu", "dtype": "float32"}
    assert tree.static_config(layers.Dense(3, 4, bias=False)).keys() == {
        "in_features", "out_features", "activation", "dtype"}  # bias=None is not config
    assert tree.static_config(_mlp()) == {}


@given(st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_sharing_patterns(picks: list[int]) -> None:
    """A Chain picking among four layers (repeats = shared layers): every Param once, paths of
    first use, aliases for the rest, and rebuild keeps exactly the same sharing."""
    pool = [layers.Dense(2, 2, seed=i) for i in range(4)]
    model = layers.Chain(*(pool[i] for i in picks))
    places = tree.param_paths(model)
    named = ms.named_params(model)
    firsts: dict[int, str] = {}
    for path, p in places:
        firsts.setdefault(id(p), path)
    assert list(named) == list(firsts.values())
    assert len(named) == 2 * len(set(picks))
    assert set(tree.aliases(model)) == {path for path, _ in places} - set(named)
    for later, first in tree.aliases(model).items():
        assert dict(places)[later] is named[first]
    rebuilt = rebuild(model, _same_origin)
    for i in range(len(picks)):
        for j in range(len(picks)):
            assert (rebuilt.layers[i] is rebuilt.layers[j]) == (picks[i] == picks[j])
    assert tree.aliases(rebuilt) == tree.aliases(model)
    assert ms.graph_id(rebuilt) == ms.graph_id(model)


# -- graph_id -------------------------------------------------------------------------------
def test_graph_id_stable_and_distinct() -> None:
    model = _mlp(seed=0)
    first = ms.graph_id(model)
    assert isinstance(first, str) and len(first) == 32 and int(first, 16) >= 0
    assert ms.graph_id(model) == first
    model.layers[0].weight.assign(np.zeros((4, 3), np.float32))
    assert ms.graph_id(model) == first  # values are not identity
    assert ms.graph_id(_mlp(seed=0)) != first  # same architecture, same seed, built again


def test_graph_id_same_after_identity_rebuild() -> None:
    model = _mlp()
    rebuilt = rebuild(model, lambda p: p)
    assert rebuilt is not model and rebuilt.layers[0] is not model.layers[0]
    assert ms.params(rebuilt) == ms.params(model)
    assert ms.graph_id(rebuilt) == ms.graph_id(model)


def test_graph_id_same_after_rebuild_with_new_params_keeping_origin() -> None:
    model = _mlp()
    rebuilt = rebuild(model, _same_origin)
    assert all(a is not b for a, b in zip(ms.params(rebuilt), ms.params(model), strict=True))
    assert ms.graph_id(rebuilt) == ms.graph_id(model)
    fresh = rebuild(model, lambda p: Param(p.value.copy()))  # new origins: a new graph
    assert ms.graph_id(fresh) != ms.graph_id(model)


def test_graph_id_depends_on_config() -> None:
    model = layers.Chain(layers.Dense(2, 2, "relu", seed=0))
    other = rebuild(model, lambda p: p)
    object.__setattr__(other.layers[0], "activation", "tanh")
    assert ms.graph_id(other) != ms.graph_id(model)


def test_rebuild_keeps_ties_shared_layers_and_config() -> None:
    p = Param(np.ones(3))
    dense = layers.Dense(3, 3, seed=0)
    model = layers.Chain(dense, TreeTestTied(p, p, scale=2.0), dense)
    calls: list[Param] = []

    def on_param(q: Param) -> Param:
        calls.append(q)
        return _same_origin(q)

    rebuilt = rebuild(model, on_param)
    assert len(calls) == 3  # dense.weight, dense.bias, p: each once
    assert rebuilt.layers[0] is rebuilt.layers[2]
    tied = rebuilt.layers[1]
    assert type(tied) is TreeTestTied and tied.first is tied.second and tied.first is not p
    assert tied.scale == 2.0 and rebuilt.layers[0].activation is None
    assert isinstance(rebuilt.layers, list)
    assert tree.aliases(rebuilt) == tree.aliases(model)
    np.testing.assert_array_equal(tied.first.value, p.value)


def test_rebuild_shares_memo_across_calls() -> None:
    dense = layers.Dense(2, 2, seed=0)
    memo: dict = {}
    a = rebuild(layers.Chain(dense), _same_origin, memo)
    b = rebuild(layers.Chain(dense), _same_origin, memo)
    assert a.layers[0] is b.layers[0]


# -- require_model and the registry -------------------------------------------------------------
@attrs.define
class NotRegistered:
    weight: Param


@pytest.mark.parametrize("value", [3, None, Param(np.ones(2)), [layers.Dense(2, 2)],
                                   layers.Dense, NotRegistered(Param(np.ones(2))), {"a": 1}])
def test_require_model_rejects_non_layers(value: object) -> None:
    with pytest.raises(ms.ArgumentTypeError) as info:
        tree.require_model(value, "wrapper")
    message = str(info.value)
    assert "wrapper" in message and type(value).__name__ in message and "@ms.layer" in message
    with pytest.raises(ms.ArgumentTypeError):
        ms.params(value)
    with pytest.raises(ms.ArgumentTypeError):
        ms.graph_id(value)


def test_user_layer_is_a_model() -> None:
    scale = TreeTestScale(Param(np.full(3, 2.0)))
    assert tree.is_layer(scale)
    assert tree.registered_layer("tree_test_scale") is TreeTestScale
    assert tree.layer_name(scale) == "tree_test_scale"
    assert list(ms.named_params(scale)) == ["factor"]
    np.testing.assert_array_equal(scale(np.ones(3)), np.full(3, 2.0))
    model = layers.Chain(scale, layers.Dense(3, 1, dtype="float64", seed=0))
    assert list(ms.named_params(model)) == [
        "layers.0.factor", "layers.1.weight", "layers.1.bias"]
    assert model(np.ones((2, 3))).shape == (2, 1)


def test_layer_decorator_makes_attrs_class_with_identity_equality(registry) -> None:
    @ms.layer
    class TreeTestPlain:
        weight: Param

    p = Param(np.ones(2))
    a, b = TreeTestPlain(p), TreeTestPlain(p)
    assert attrs.has(TreeTestPlain) and a != b and len({a, b}) == 2
    assert registry["TreeTestPlain"] is TreeTestPlain
    assert ms.layer(TreeTestPlain) is TreeTestPlain  # registering the same class again is fine


def test_registering_another_class_under_a_taken_name_raises(registry) -> None:
    with pytest.raises(ms.ArgumentError) as info:
        @ms.layer(name="Dense")
        class Other:
            weight: Param
    message = str(info.value)
    assert "'Dense'" in message and "Other" in message and "name=" in message
    assert registry["Dense"] is layers.Dense
    assert tree.is_layer(layers.Dense(2, 2))


# -- moved models ---------------------------------------------------------------------------
def test_moved_model_refuses_every_use() -> None:
    model = _mlp()
    inner = model.layers[0]
    tree.mark_moved(model, "sim:1")
    uses = [ms.params, ms.named_params, ms.graph_id, tree.require_model,
            lambda m: m(np.ones((1, 3), np.float32))]
    for use in uses:
        with pytest.raises(ms.MovedError) as info:
            use(model)
        assert "sim:1" in str(info.value) and "Chain" in str(info.value)
    with pytest.raises(ms.MovedError, match="Dense was moved to sim:1"):
        ms.params(inner)
    with pytest.raises(ms.MovedError):
        inner(np.ones((1, 3), np.float32))


def test_moving_one_model_leaves_others_alone() -> None:
    model, other = _mlp(), _mlp()
    rebuilt = rebuild(model, lambda p: p)
    tree.mark_moved(model, "sim:2")
    assert len(ms.params(other)) == 4 and len(ms.params(rebuilt)) == 4
    tree.check_not_moved(rebuilt)


def test_moved_marks_are_dropped_with_the_model() -> None:
    model = _mlp()
    before = len(tree._moved)
    tree.mark_moved(model, "sim:1")
    assert model in tree._moved and len(tree._moved) > before
    gc.disable()  # (reference counting alone must drop them)
    try:
        del model
        assert len(tree._moved) == before
    finally:
        gc.enable()


# -- regressions ------------------------------------------------------------------------------
def test_same_class_name_from_another_module_is_refused(registry) -> None:
    user = types.ModuleType("user_layers")
    with pytest.raises(ms.ArgumentError, match="'Dense' is already registered"):
        exec("import modelsync as ms\n@ms.layer\nclass Dense:\n    w: object = None\n",
             user.__dict__)  # a user module with its own class named Dense
    assert registry["Dense"] is layers.Dense
    assert tree.is_layer(layers.Dense(2, 2))


def test_graph_id_sees_the_tie_pattern() -> None:
    p = Param(np.ones(2))
    twin = _same_origin(p)
    assert ms.graph_id(TreeTestTied(p, p)) != ms.graph_id(TreeTestTied(p, twin))


Pair = collections.namedtuple("Pair", "a b")


@ms.layer
class TreeTestPairHolder:
    pair: tuple


def test_rebuild_keeps_namedtuple_containers() -> None:
    model = TreeTestPairHolder(Pair(Param(np.ones(2)), Param(np.zeros(2))))
    assert list(ms.named_params(model)) == ["pair.0", "pair.1"]
    rebuilt = rebuild(model, _same_origin)
    assert type(rebuilt.pair) is Pair
    assert ms.graph_id(rebuilt) == ms.graph_id(model)


# -- cached walks --------------------------------------------------------------------------------
def _chain():
    return layers.Chain(layers.Dense(3, 4, seed=0), layers.Dense(4, 2, seed=1))


def test_a_walk_is_cached_until_the_tree_changes():
    model = _chain()
    assert tree.walk(model) is tree.walk(model)
    first = tree.walk(model)
    model.layers[1].bias = Param(np.zeros(2, dtype="float32"))  # a field assignment
    assert tree.walk(model) is not first
    assert ms.named_params(model)["layers.1.bias"] is model.layers[1].bias


def test_changing_a_chain_in_place_is_seen():
    model = _chain()
    assert len(ms.params(model)) == 4
    model.layers.append(layers.Dense(2, 2))
    assert len(ms.params(model)) == 6
    model.layers[0] = layers.Dense(3, 4, bias=False)
    assert len(ms.params(model)) == 5
    del model.layers[2]
    assert list(ms.named_params(model)) == ["layers.0.weight", "layers.1.weight", "layers.1.bias"]


@ms.layer
class TreeTestPlainList:
    parts: list


def test_a_tree_with_a_plain_list_is_walked_afresh_every_time():
    model = TreeTestPlainList([layers.Dense(2, 2)])
    assert tree.walk(model) is not tree.walk(model)
    model.parts.append(layers.Dense(2, 2))  # a plain list: no event, so no cache to go stale
    assert len(ms.params(model)) == 4


def test_a_changed_tree_is_checked_again_by_sync():
    a = _chain()
    b = ms.to_device(a, "sim:1")
    ms.sync(b, a, check="structure")  # the plan is cached
    b.layers[1] = layers.Dense(4, 3)
    with pytest.raises(ms.GraphMismatchError, match="layers.1.weight"):
        ms.sync(b, a, check="structure")  # the same check: only a new plan can catch it


def test_editing_one_model_leaves_another_models_caches_alone():
    a, b = _chain(), _chain()
    twin = ms.to_device(b, "sim:1")
    ms.sync(twin, b, check="structure")
    b_walk, b_id = tree.cache_of(b), ms.graph_id(b)
    plan = syncing._sync_plan(twin, b, "structure")
    a.layers.append(layers.Dense(2, 2))  # a TrackedList edit
    a.layers[0].bias = None  # a field assignment
    layers.Dense(5, 5)  # building a model
    assert tree.cache_of(b) is b_walk and b_walk.valid
    assert b_walk.graph_id == b_id
    assert syncing._sync_plan(twin, b, "structure") is plan
    assert not tree.cache_of(a).graph_id  # (a was edited: its id is asked for afresh)


def test_a_shared_layer_changed_invalidates_every_model_that_holds_it():
    shared = layers.Dense(3, 3, seed=0)
    one, two = layers.Chain(shared), layers.Chain(shared, layers.Dense(3, 3))
    walks = tree.cache_of(one), tree.cache_of(two)
    shared.bias = None
    assert not any(w.valid for w in walks)
    assert len(ms.params(one)) == 1 and len(ms.params(two)) == 3


def test_the_graph_id_is_cached_with_the_walk_and_goes_with_it():
    model = _chain()
    first = ms.graph_id(model)
    assert tree.cache_of(model).graph_id == first
    model.layers[1] = layers.Dense(4, 2, seed=1)
    assert ms.graph_id(model) != first  # new Params, new origins


def test_the_cache_does_not_keep_a_dropped_model_alive():
    import gc
    import weakref

    model = _chain()
    other = ms.to_device(model, "sim:1")
    ms.sync(other, model)  # a plan in other's cache that holds model's Params
    ms.graph_id(model)
    watched = weakref.ref(model.layers[0].weight)
    gc.disable()  # reference counting alone must free it
    try:
        del model
        assert watched() is None
    finally:
        gc.enable()


@ms.layer
class TreeTestBag:
    blocks: list = attrs.field(factory=list)


def test_an_empty_plain_list_is_not_cached_either():
    bag = TreeTestBag()
    assert ms.params(bag) == []
    bag.blocks.append(layers.Dense(2, 2))
    assert len(ms.params(bag)) == 2


def test_registering_a_class_late_is_seen_by_earlier_walks():
    @attrs.define(eq=False)
    class TreeTestLateHead:
        w: Param

    @ms.layer
    class TreeTestNet:
        head: object

    net = TreeTestNet(TreeTestLateHead(Param(np.ones(3, "float32"))))
    assert ms.params(net) == []
    ms.layer(TreeTestLateHead)
    assert len(ms.params(net)) == 1


def test_a_layer_class_without_weak_references_is_refused():
    @attrs.define(eq=False, weakref_slot=False)
    class TreeTestNoWeakRef:
        w: Param

    with pytest.raises(TypeError, match="TreeTestNoWeakRef does not support weak references"):
        ms.layer(TreeTestNoWeakRef)
    assert tree.registered_layer("TreeTestNoWeakRef") is None


@ms.layer
class TreeTestArrayConfig:
    scale: object
    w: Param


def test_an_array_in_the_configuration_is_read_afresh_by_graph_id():
    model = TreeTestArrayConfig(np.ones(2), Param(np.ones(2)))
    first = ms.graph_id(model)
    model.scale[0] = 5.0  # changed in place: no event, so nothing about it may be cached
    assert ms.graph_id(model) != first


# -- a re-homed Param invalidates the caches that hold it, and no other (issue 10) -------------
def _cached_everything(model):
    """``model``'s walk, a sync plan into a twin of it, and its conversion layout, all cached."""
    twin = ms.to_device(model, "sim:1")
    ms.sync(twin, model, check="structure")
    ms.to_host(model)  # (caches the layout)
    walk = tree.cache_of(model)
    return twin, walk, syncing._sync_plan(twin, model, "structure"), walk.derived["layout"]


@pytest.mark.parametrize("change", [
    lambda a: ms.to_device(a, "sim:2", mode="move"),
    ms.flatten,
    lambda a: ms.params(a)[0].rehome(np.zeros((4, 3), np.float32)),
])
def test_rehoming_one_models_params_leaves_another_models_caches_alone(change, monkeypatch):
    a, b = _chain(), layers.Chain(layers.Dense(3, 4, seed=2), layers.Dense(4, 2, seed=3))
    twin, walk, plan, layout = _cached_everything(b)
    a_walk = tree.cache_of(a)
    change(a)
    assert not a_walk.valid  # (a's Params were re-homed: its own walk goes)
    looked_up = []  # a plan whose stores are looked up again is not one that stayed valid
    intact_store = syncing.flat.intact_store
    monkeypatch.setattr(syncing.flat, "intact_store",
                        lambda group: looked_up.append(group) or intact_store(group))
    ms.sync(twin, b, check="structure")
    assert looked_up == []
    ms.to_host(b)
    assert tree.cache_of(b) is walk and walk.valid
    assert syncing._sync_plan(twin, b, "structure") is plan
    assert walk.derived["layout"] is layout


def test_rehoming_a_param_invalidates_every_walk_that_holds_it():
    model = _chain()
    twin, walk, plan, _ = _cached_everything(model)
    twin_walk = tree.cache_of(twin)
    weight = model.layers[0].weight
    weight.rehome(ms.to_device(np.full((4, 3), 7.0, np.float32), "sim:2"))
    assert not walk.valid and "layout" not in walk.derived
    assert twin_walk.valid  # (twin holds none of model's Params)
    assert syncing._sync_plan(twin, model, "structure") is not plan
    ms.sync(twin, model, check="structure")  # reads the Param where it is now
    np.testing.assert_array_equal(np.asarray(ms.to_host(twin.layers[0].weight.value)),
                                  np.full((4, 3), 7.0, np.float32))
    host = ms.to_host(model)  # a layout made afresh: the weight is on sim:2 now
    np.testing.assert_array_equal(host.layers[0].weight.value, np.full((4, 3), 7.0, np.float32))
