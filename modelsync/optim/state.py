"""Per-Param optimizer state: the device it lives on, its step count and its arrays; and how
it follows its Param to another device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ..devices import Device
from ..transfers import copy_to

#: The reason a state transfer is recorded under (track_transfers, transfer_guard).
STATE_FOLLOWS = "optimizer state follows its Param"


@attrs.define(slots=True, eq=False)
class State:
    """One Param's optimizer state: where it lives, its step count (a host int, as torch's
    ``step``) and its arrays, in the rule's ``state_names`` order."""

    device: Device
    step: int
    arrays: list[Any]

    def entry(self, names: Sequence[str]) -> dict[str, Any]:
        """``{"step": int, name: array}``: what ``Optimizer.state`` shows."""
        return {"step": self.step, **dict(zip(names, self.arrays, strict=True))}

    def follow(self, device: Device) -> State:
        """This state copied to ``device`` (its Param moved there): one transfer per array,
        counted as "state". Raises before anything is made if the guard refuses."""
        return State(device, self.step, follow(self.arrays, device))


def follow(arrays: Sequence[Any], device: Device) -> list[Any]:
    """``arrays`` copied to ``device`` for a Param that moved there."""
    return [copy_to(a, device, reason=STATE_FOLLOWS, what="state") for a in arrays]
