"""Replicas of one graph across processes: `broadcast` (the root's values into every rank's
model, in place, Buffers too), `sync` (every replica's Params become the mean of all, or a
soft step toward it) and `sync_buffers` (the Buffers: running statistics averaged or the
root's, counters required equal).

Both agree first (graph id or structure, paths, shapes, dtypes, ties, arguments), then move
one flat buffer per dtype: an intact flat store's own buffer on the host, in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import match_check, soft_tau
from ..devices import HOST, device_of, dtype_name
from ..errors import ArgumentError
from ..transfers import copy_to
from . import transport
from .agree import digest_of
from .comm import Comm
from .layout import (
    ValueGroup,
    buffer_values,
    describe_model,
    distinct_buffers,
    distinct_params,
    model_digest_parts,
    on_device,
    value_groups,
)
from .ops import check_root, gpu_bits, require_comm, run_agreed


def broadcast(model: Any, comm: Comm, *, root: int = 0, check: str = "graph") -> Any:
    """Write ``root``'s Param and Buffer values into every rank's ``model`` in place;
    returns ``model``.

    The ranks first agree that their models are replicas (``check="graph"``: one graph id;
    ``"structure"``: the same paths, shapes, dtypes and ties); otherwise every rank raises
    GraphMismatchError naming the ranks and the first differing path, and nothing changes.
    """
    comm = require_comm(comm)
    reason = "distributed.broadcast"
    groups: list[ValueGroup] = []

    def prepare() -> tuple[bytes, int]:
        check_root(root, comm)
        match_check(check)
        groups.extend(value_groups(distinct_params(model)))
        groups.extend(value_groups(distinct_buffers(model)))  # (the root's statistics too)
        transport.check_guard(comm, _nbytes(groups), reason=reason, what="param",
                              where=_where(groups))
        return (digest_of("broadcast", root, check, model_digest_parts(model, check)),
                gpu_bits(comm, [None if g.spread else g.device for g in groups]))

    shared = run_agreed(comm, "broadcast", prepare, lambda: {
        "args": {"root": root, "check": check}, **describe_model(model, check)})
    if comm.size == 1:
        return model
    for i, group in enumerate(groups):
        with on_device(group.device):
            _broadcast_group(comm, group, root, bool(shared >> i & 1), reason)
    return model


def _broadcast_group(comm: Comm, group: ValueGroup, root: int, use_nccl: bool, reason: str
                     ) -> None:
    if comm.rank == root:
        transport.broadcast_from(comm, group.read(reason=reason), root, reason=reason,
                                 what="param", use_nccl=use_nccl)
        return
    receive = _receiver(group, use_nccl)
    values = transport.broadcast_from(comm, receive, root, reason=reason, what="param",
                                      use_nccl=use_nccl)
    if device_of(values) != group.device:
        values = copy_to(values, group.device, reason=reason)
    group.write(values, reason=reason)


def sync(model: Any, comm: Comm, *, tau: float = 1.0, check: str = "graph") -> Any:
    """Every rank's ``model`` becomes the mean of all the replicas, in place (``tau < 1``:
    ``p = tau·mean + (1−tau)·p``); returns ``model``. Agreement first, as in `broadcast`.
    With ``tau=1`` the replicas are bitwise equal afterwards."""
    comm = require_comm(comm)
    reason = "distributed.sync"
    groups: list[ValueGroup] = []
    blend = [1.0]

    def prepare() -> tuple[bytes, int]:
        blend[0] = soft_tau(tau)
        match_check(check)
        groups.extend(value_groups(distinct_params(model)))
        transport.check_guard(comm, _nbytes(groups), reason=reason, what="param",
                              where=_where(groups))
        return (digest_of("sync", blend[0], check, model_digest_parts(model, check)),
                gpu_bits(comm, [None if g.spread else g.device for g in groups]))

    shared = run_agreed(comm, "sync", prepare, lambda: {
        "args": {"tau": tau, "check": check}, **describe_model(model, check)})
    if comm.size == 1:
        return model
    soft = blend[0] != 1.0
    for i, group in enumerate(groups):
        with on_device(group.device):
            total = transport.sum_over_ranks(
                comm, group.read(reason=reason, copy=soft), reason=reason, what="param",
                use_nccl=bool(shared >> i & 1))
            mean = _divide(total, comm.size)
            if soft:
                own = group.read(reason=reason)
                mean = blend[0] * mean + (1.0 - blend[0]) * own
            group.write(mean, reason=reason)
    return model


BUFFER_HOWS = ("mean", "root")


def sync_buffers(model: Any, comm: Comm, how: str = "mean", *, root: int = 0) -> Any:
    """Bring every replica's Buffers into agreement, in place; returns ``model``.

    ``how="mean"``: each floating Buffer (running statistics) becomes the mean over the
    ranks; ``"root"``: ``root``'s values are copied. Counters (``num_batches_tracked``) must
    already agree: if they differ, every rank raises CollectiveError naming the path and
    the ranks, and nothing changes. Agreement first, as in `broadcast` (``check="graph"``).
    """
    comm = require_comm(comm)
    reason = "distributed.sync_buffers"
    groups: list[ValueGroup] = []
    counters: list[Any] = []

    def prepare() -> tuple[bytes, int]:
        if how not in BUFFER_HOWS:
            raise ArgumentError(f"how={how!r} is not a way to sync buffers; expected one of "
                                f"{BUFFER_HOWS}")
        check_root(root, comm)
        found = distinct_buffers(model)
        groups.extend(value_groups([b for b in found if not b.is_counter]))
        counters.extend(buffer_values(model, counters_only=True, reason=reason))
        transport.check_guard(comm, _nbytes(groups), reason=reason, what="param",
                              where=_where(groups))
        return (digest_of("sync_buffers", how, root, model_digest_parts(model, "graph"),
                          tuple(map(tuple, counters))),
                gpu_bits(comm, [None if g.spread else g.device for g in groups]))

    shared = run_agreed(comm, "sync_buffers", prepare, lambda: {
        "args": {"how": how, "root": root}, **describe_model(model, "graph"),
        "values": counters, "values_hint": "counters must agree before their statistics "
        "are synced (each rank counts the batches it saw: train every rank on as many)"})
    if comm.size == 1:
        return model
    for i, group in enumerate(groups):
        use_nccl = bool(shared >> i & 1)
        with on_device(group.device):
            if how == "root":
                _broadcast_group(comm, group, root, use_nccl, reason)
                continue
            total = transport.sum_over_ranks(comm, group.read(reason=reason, copy=True),
                                             reason=reason, what="param", use_nccl=use_nccl)
            group.write(_divide(total, comm.size), reason=reason)
    return model


def _receiver(group: ValueGroup, use_nccl: bool) -> Any:
    """Where a non-root rank receives a group's values: the store's own buffer when the
    bytes can land there directly (host, or NCCL), else a fresh buffer (on the host for a
    trip through it)."""
    direct = group.device == HOST or (use_nccl and group.device.kind == "cuda")
    if direct and group.store is not None:
        for p in group.params:
            p.writable(overwrite=True)  # wrap mode: this side becomes the newest
        return group.store.buffer
    if direct:
        return group.empty()
    return np.empty(sum(group.sizes), dtype=np.dtype(dtype_name(group.params[0].dtype)))


def _divide(total: Any, size: int) -> Any:
    if isinstance(total, np.ndarray):
        np.divide(total, size, out=total)
        return total
    return total / size


def _nbytes(groups: list[ValueGroup]) -> int:
    return sum(g.nbytes for g in groups)


def _where(groups: list[ValueGroup]) -> str:
    return ", ".join(sorted({str(g.device) for g in groups})) or "no Params"
