"""What `sync` does to Buffers (state that is not trained): matched by path, shape and dtype
with the Params' plan (syncing.py, which stages and writes them as it does Params: one whole
buffer where flat stores allow), and written by the rule ``buffers=`` names.

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

from .buffers import Buffer
from .devices import dtype_name
from .errors import ArgumentError, GraphMismatchError
from .tree import buffer_paths

BUFFER_RULES = ("copy", "lerp", "keep")


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


def chosen(groups: list[Any], rule: str, tau: float) -> list[tuple[Any, bool]]:
    """The Buffer groups (one dtype each) a sync writes under ``rule``, each with whether it
    is blended (``"lerp"`` with ``tau < 1``, floating Buffers only) or copied; none under
    ``"keep"``."""
    if rule == "keep":
        return []
    soft = rule == "lerp" and tau != 1.0
    return [(group, soft and not group.dsts[0].is_counter) for group in groups]
