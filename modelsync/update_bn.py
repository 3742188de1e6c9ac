"""update_bn: recompute every BatchNorm's running statistics from data, as
``torch.optim.swa_utils.update_bn`` does for averaged or EMA weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import ArgumentError
from .layers.base import Context, forward_pair, on_model_device
from .layers.batchnorm import BatchNorm
from .tree import require_model, walk


def update_bn(model: Any, batches: Iterable[Any]) -> Any:
    """Reset every BatchNorm's running statistics and recompute them over ``batches`` (each
    an input array, or a tuple whose first item is the input) in training mode, as the
    cumulative average (``momentum=None`` for the pass, each layer's momentum restored
    after). Params are not touched; a batch that fails leaves the statistics as they were.
    Returns ``model``; ArgumentError if it holds no BatchNorm that tracks running
    statistics."""
    require_model(model)
    norms = [node for node in [model, *(n for _, n in walk(model))]
             if type(node) is BatchNorm and node.track_running_stats]
    norms = list({id(n): n for n in norms}.values())
    if not norms:
        raise ArgumentError(
            f"update_bn: the {type(model).__name__} holds no BatchNorm with "
            "track_running_stats=True, so there are no running statistics to recompute")
    momenta = [n.momentum for n in norms]
    kept = [(b, _copy(b.value)) for n in norms for b in
            (n.running_mean, n.running_var, n.num_batches_tracked)]
    for n in norms:
        n.reset_running_stats()
        n.momentum = None
    try:
        with on_model_device(model):
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                forward_pair(model, x, Context(train=True))
    except BaseException:
        for b, value in kept:  # all or nothing: a batch that fails leaves them as they were
            b.writable(overwrite=True)[...] = value
        raise
    finally:
        for n, momentum in zip(norms, momenta, strict=True):
            n.momentum = momentum
    return model


def _copy(array: Any) -> Any:
    """A copy of ``array`` on its own device (no transfer)."""
    if hasattr(array, "copy"):
        return array.copy()
    from .xp import namespace

    return namespace(array).asarray(array, copy=True)
