"""Optimizers bound to Params, PyTorch-style: ``opt = optim.Adam(ms.params(model), lr=1e-3)``,
then ``opt.step()`` and ``opt.zero_grad()``. State is per Param and follows its Param.

The engine (`optimizer`, `transform`, `chain`, and the planning, state and kernel choice
they use) is apart from the rules' maths (`rules`: one file per family, every form of it).
"""

from __future__ import annotations

import warnings
from typing import Any

from .chain import OptimizerChain, chain
from .optimizer import Optimizer
from .ranges import Interval, check_range, parse_interval, restrict_range
from .rules.adam import Adam, AdamW
from .rules.adaptive import AdaGrad, RMSProp
from .rules.sgd import SGD, Momentum, Nesterov
from .rules.transforms import ClipNorm, ClipValue, WeightDecay
from .transform import GradientTransform

__all__ = [
    "SGD", "AdaGrad", "Adam", "AdamW", "ClipNorm", "ClipValue", "GradientTransform", "Interval",
    "Momentum", "Nesterov", "Optimizer", "OptimizerChain", "RMSProp", "WeightDecay", "chain",
    "check_range", "parse_interval", "restrict_range",
]

#: Old names kept for one release: each warns (DeprecationWarning) and gives the new one.
_DEPRECATED = {"Chain": ("OptimizerChain", OptimizerChain)}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(f"optim.{name} is deprecated and will be removed in the next release; "
                      f"use optim.{new} (optim.chain(...) builds one)", DeprecationWarning,
                      stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
