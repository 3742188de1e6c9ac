"""Optimizers bound to Params, PyTorch-style: ``opt = optim.Adam(ms.params(model), lr=1e-3)``,
then ``opt.step()`` and ``opt.zero_grad()``. State is per Param and follows its Param."""

from .adam import Adam, AdamW
from .adaptive import AdaGrad, RMSProp
from .base import Optimizer
from .chain import Chain, chain
from .ranges import Interval, check_range, parse_interval, restrict_range
from .sgd import SGD, Momentum, Nesterov
from .transforms import ClipNorm, ClipValue, WeightDecay

__all__ = [
    "SGD", "AdaGrad", "Adam", "AdamW", "Chain", "ClipNorm", "ClipValue", "Interval", "Momentum",
    "Nesterov", "Optimizer", "RMSProp", "WeightDecay", "chain", "check_range", "parse_interval",
    "restrict_range",
]
