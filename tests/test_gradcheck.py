"""ms.check_gradients: passes on correct pullbacks, names the path of a wrong one."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import modelsync as ms
from modelsync import layers
from modelsync.layers.base import Context, accumulate, param_field


@ms.layer
@attrs.define(eq=False)
class _WrongScale:
    """y = x * weight, whose pullback gets the weight's gradient wrong by a factor of 2."""

    weight: ms.Param = param_field()

    def forward(self, x, ctx: Context):
        w = self.weight.value

        def pullback(dy):
            accumulate(self.weight, 2.0 * np.sum(dy * x, axis=0))
            return dy * w

        return x * w, pullback


@ms.layer
@attrs.define(eq=False)
class _WrongInput:
    """y = x ** 2 with a pullback that forgets the factor 2 for the input."""

    def forward(self, x, ctx: Context):
        return x * x, lambda dy: dy * x


def test_built_in_layers_pass():
    rng = np.random.default_rng(0)
    model = layers.Chain(layers.Dense(5, 4, "tanh", seed=1), layers.LayerNorm(4),
                         layers.Dense(4, 3, seed=2))
    ms.check_gradients(model, rng.standard_normal((6, 5)).astype(np.float32))


def test_dropout_is_checked_as_one_fixed_draw():
    model = layers.Chain(layers.Dense(4, 8, seed=1), layers.Dropout(0.5))
    ms.check_gradients(model, np.ones((3, 4), np.float32))


def test_wrong_param_gradient_names_its_path():
    bad = layers.Chain(layers.Dense(3, 3, seed=0), _WrongScale(ms.Param(np.ones(3))))
    with pytest.raises(ms.GradientCheckError, match=r"layers\.1\.weight.*relative error"):
        ms.check_gradients(bad, np.ones((2, 3)))


def test_wrong_input_gradient_names_the_input():
    with pytest.raises(ms.GradientCheckError, match=r"^input:"):
        ms.check_gradients(_WrongInput(), np.linspace(1, 2, 6).reshape(2, 3))


def test_the_layer_itself_is_untouched():
    model = layers.Dense(3, 2, seed=0)
    before = np.array(model.weight.value)
    ms.check_gradients(model, np.ones((2, 3), np.float32))
    assert model.weight.grad is None
    assert model.weight.dtype == np.float32
    np.testing.assert_array_equal(model.weight.value, before)


def test_a_device_layer_is_checked(dev):
    model = ms.to_device(layers.Dense(3, 2, "relu", seed=0), dev)
    ms.check_gradients(model, ms.to_device(np.linspace(-1, 1, 6).reshape(2, 3), dev))


@pytest.mark.parametrize("kwargs, match", [({"rtol": -1}, "rtol"), ({"seed": -2}, "seed"),
                                           ({"directions": 0}, "directions")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ms.ArgumentError, match=match):
        ms.check_gradients(layers.Dense(2, 2), np.ones((1, 2)), **kwargs)


def test_not_a_layer():
    with pytest.raises(TypeError, match="layer"):
        ms.check_gradients(object(), np.ones((1, 2)))
