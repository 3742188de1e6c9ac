"""What `sync` does to Buffers (state that is not trained): checked with the Params, staged
before the first write, and written by the rule ``buffers=`` names.

| ``buffers=`` | floating Buffers (statistics)        | counters            |
| ------------ | ------------------------------------ | ------------------- |
| ``"copy"``   | src's values copied (the default)    | copied              |
| ``"lerp"``   | blended like Params (``tau``)        | copied              |
| ``"keep"``   | dst's kept                           | dst's kept          |

A hard sync (``tau=1``) copies under ``"copy"`` and ``"lerp"`` alike. Copying statistics is
what stable-baselines3 does for target networks (its ``polyak_update`` of ``batch_norm_stats``
with ``tau=1``): blended running variances are not the variance of anything.
"""

from __future__ import annotations

from typing import Any

from .blend import Blend
from .buffers import Buffer
from .devices import dtype_name
from .errors import ArgumentError, GraphMismatchError
from .transfers import copy_to
from .tree import buffer_paths

BUFFER_RULES = ("copy", "lerp", "keep")

Staged = list[tuple[Buffer, Any, bool]]  # (dst Buffer, src values on its device, blend it)


def check_rule(buffers: Any) -> str:
    """``buffers`` if it is one of BUFFER_RULES, else ArgumentError naming it."""
    if not isinstance(buffers, str) or buffers not in BUFFER_RULES:
        raise ArgumentError(f"buffers={buffers!r} is not a rule for Buffers; expected one of "
                            f"{BUFFER_RULES}")
    return buffers


def matched(dst: Any, src: Any) -> list[tuple[Buffer, Buffer]]:
    """Each distinct dst Buffer with src's at its place; GraphMismatchError naming the first
    Buffer that is missing, extra or of another shape or dtype on either side."""
    dst_paths, src_paths = buffer_paths(dst), buffer_paths(src)
    if not dst_paths and not src_paths:
        return []
    for (dpath, db), (spath, sb) in zip(dst_paths, src_paths, strict=False):
        if dpath != spath or db.shape != sb.shape or dtype_name(db.dtype) != dtype_name(sb.dtype):
            raise GraphMismatchError(
                f"{dpath if dpath == spath else dpath + ' vs ' + spath}: dst buffer "
                f"{describe(db)} vs src buffer {describe(sb)}; the models differ in structure")
    if len(dst_paths) != len(src_paths):
        longer, side = (dst_paths, "dst") if len(dst_paths) > len(src_paths) else (src_paths, "src")
        path, b = longer[min(len(dst_paths), len(src_paths))]
        raise GraphMismatchError(
            f"{path}: only {side} has this buffer ({describe(b)}); the models differ in "
            "structure")
    pairs: dict[int, tuple[Buffer, Buffer]] = {}
    for (_, db), (_, sb) in zip(dst_paths, src_paths, strict=True):
        pairs.setdefault(id(db), (db, sb))
    return list(pairs.values())


def describe(b: Buffer) -> str:
    return f"{b.shape} {dtype_name(b.dtype)}"


def stage(pairs: list[tuple[Buffer, Buffer]], rule: str, soft: bool) -> Staged:
    """src's values on each dst Buffer's device (a counted transfer where they differ), read
    before anything is written; nothing under ``"keep"``."""
    if rule == "keep":
        return []
    staged: Staged = []
    for d, s in pairs:
        values = s.value
        if s.device != d.device:
            values = copy_to(values, d.device, reason="sync: buffers")
        elif s.storage() is d.storage():
            continue
        staged.append((d, values, soft and rule == "lerp" and not d.is_counter))
    return staged


def open_for_write(staged: Staged) -> list[Any]:
    """Each staged dst Buffer's storage, its wrap-mode hand-over done (a blend pulls first):
    called for all of them before the first write of the sync, Params' or Buffers'."""
    return [d.writable(overwrite=not mix) for d, _, mix in staged]


def write(staged: Staged, storages: list[Any], tau: float) -> None:
    """Write each staged value into its dst Buffer's storage."""
    blend = Blend(tau) if any(mix for _, _, mix in staged) else None
    for (_, values, mix), data in zip(staged, storages, strict=True):
        if mix:
            blend(data, values)
        else:
            data[...] = values
