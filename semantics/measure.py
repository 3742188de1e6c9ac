"""How the experiments measure: a ledger per phase, a clock, and live bytes per device.

Live bytes are counted, not sampled from an allocator: at each phase boundary we add up the
distinct Params reachable from the models an experiment still holds (``Param.nbytes`` on
``Param.device``), their gradients, and every optimizer state array (``opt.state``). A
Param shared by two models (move mode keeps the Param objects) is counted once. An allocator
such as tracemalloc cannot tell the host from the simulated device, whose arrays are NumPy
memory underneath, so counting is both cheaper and more honest here. Transients (a batch's
activations, the one Param in flight during a copy) are not included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

import modelsync as ms
from modelsync.devices import device_of, is_array, nbytes_of
from modelsync.tree import param_paths


@attrs.define
class Phase:
    """One measured phase: bytes by direction and by what they carried, and seconds."""

    name: str
    h2d: int = 0
    d2h: int = 0
    d2d: int = 0
    by_what: dict[str, int] = attrs.field(factory=dict)
    count: int = 0
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return self.h2d + self.d2h + self.d2d


@contextlib.contextmanager
def measured(name: str) -> Iterator[Phase]:
    """Time the block and record what it moved (filled in when the block ends)."""
    phase = Phase(name)
    start = time.perf_counter()
    with ms.track_transfers() as ledger:
        try:
            yield phase
        finally:
            phase.seconds = time.perf_counter() - start
            phase.h2d, phase.d2h, phase.d2d = ledger.h2d_bytes, ledger.d2h_bytes, ledger.d2d_bytes
            phase.count = ledger.count
            phase.by_what = {w: ledger.bytes_of(w) for w in ("param", "state", "grad", "data")
                             if ledger.bytes_of(w)}


def live_bytes(models: Iterable[Any], optimizers: Iterable[Any] = ()) -> dict[str, int]:
    """Bytes of Params, gradients and optimizer state alive, per device (see module doc)."""
    seen: set[int] = set()
    total: dict[str, int] = {}

    def add(dev: Any, nbytes: int) -> None:
        total[str(dev)] = total.get(str(dev), 0) + nbytes

    for model in models:
        for _, p in param_paths(model):  # raw walk: no coherence pull, no MovedError
            if id(p) in seen:
                continue
            seen.add(id(p))
            add(p.device, p.nbytes)
            if p.grad is not None:
                add(p.device, nbytes_of(p.grad))
    for opt in optimizers:
        for state in opt.state.values():
            for value in state.values():
                if is_array(value) and id(value) not in seen:
                    seen.add(id(value))
                    add(device_of(value), nbytes_of(value))
    return total


class Peak:
    """The largest live bytes seen per device across the samples taken."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}

    def sample(self, models: Iterable[Any], optimizers: Iterable[Any] = ()) -> None:
        for dev, n in live_bytes(models, optimizers).items():
            self.bytes[dev] = max(self.bytes.get(dev, 0), n)

    def on(self, dev: Any) -> int:
        return self.bytes.get(str(dev), 0)
