"""`replicate`: the root's model becomes the same graph on every rank (same graph id, values
and ties), as a new model on each rank's own device.

The model's skeleton (its layers and configuration, with each Param and Buffer replaced by
its index) is pickled on the root and sent as bytes; the Params' values go as one flat
buffer per dtype, then the Buffers' (running statistics, counters) the same way: every
rank's replica starts from the root's statistics. Ranks of one job run one program, so
unpickling the root's layers is as safe as running them; nothing is unpickled from a file.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import attrs
import numpy as np

from ..buffers import Buffer, made_like
from ..convert import to_device
from ..devices import HOST, Device, cuda_status, device, device_of, dtype_name
from ..flat import params_on
from ..params import Param
from ..transfers import copy_to
from ..tree import require_model
from . import transport
from .agree import digest_of
from .comm import Comm
from .layout import distinct_buffers, distinct_params, on_device, value_groups
from .ops import check_root, require_comm, run_agreed

REASON = "distributed.replicate"


@attrs.frozen
class ParamSpec:
    """What a receiving rank needs to make a Param: shape, dtype, name and origin."""

    shape: tuple[int, ...]
    dtype: str
    name: str | None
    origin: str
    buffer: bool = False  # a Buffer (state that is not trained), not a Param


def replicate(model: Any, comm: Comm, *, root: int = 0, device: Device | str | None = None
              ) -> Any:
    """The root's ``model`` (other ranks may pass None: theirs is ignored) as a new model
    on every rank: one graph id, the root's values, ties kept, on ``device`` (default: each
    rank's own device of the root's kind, ``cuda:<local rank>`` for GPUs)."""
    comm = require_comm(comm)
    chosen: list[Device | None] = [None]

    def prepare() -> tuple[bytes, int]:
        check_root(root, comm)
        chosen[0] = None if device is None else _device(device)
        if comm.rank == root:
            require_model(model)
            nbytes = sum(p.nbytes for p in [*distinct_params(model),
                                             *distinct_buffers(model)])
        else:
            nbytes = 0  # (not known before the root says)
        transport.check_guard(comm, nbytes, reason=REASON, what="param",
                              where=chosen[0] or "its device")
        return digest_of("replicate", root), 0

    run_agreed(comm, "replicate", prepare, lambda: {"args": {"root": root}})
    if comm.rank == root:
        params = distinct_params(model)
        home = params[0].device if params else HOST
        if comm.size > 1:
            _send(comm, model, [*params, *distinct_buffers(model)], home, root)
        return to_device(model, chosen[0] or home, mode="copy")
    return _receive(comm, root, chosen[0])


def _send(comm: Comm, model: Any, params: list[Param], home: Device, root: int) -> None:
    index = {id(p): i for i, p in enumerate(params)}
    skeleton = io.BytesIO()
    _Pickler(skeleton, index).dump(model)
    specs = [ParamSpec(p.shape, dtype_name(p.dtype), p.name, p.origin, type(p) is Buffer)
             for p in params]
    header = pickle.dumps((skeleton.getvalue(), specs, home.kind, home.index), protocol=5)
    transport.broadcast_bytes(comm, header, root)
    for kind in (False, True):  # the Params' groups, then the Buffers'
        for group in value_groups([p for p in params if (type(p) is Buffer) == kind]):
            with on_device(group.device):
                transport.broadcast_from(comm, group.read(reason=REASON), root,
                                         reason=REASON, what="param", use_nccl=False)


def _receive(comm: Comm, root: int, target: Device | None) -> Any:
    skeleton, specs, kind, index = pickle.loads(transport.broadcast_bytes(comm, None, root))
    target = target or _own_device(comm, kind, index)
    made: dict[int, Param] = {}
    for kind in (False, True):  # the Params' groups, then the Buffers', as the root sends
        by_dtype: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            if spec.buffer == kind:
                by_dtype.setdefault(spec.dtype, []).append(i)
        for dtype, members in by_dtype.items():
            like = [specs[i] for i in members]
            sizes = [int(np.prod(s.shape, dtype=np.int64)) for s in like]
            buffer = np.empty(sum(sizes), dtype=dtype)
            buffer = transport.broadcast_from(comm, buffer, root, reason=REASON, what="param",
                                              use_nccl=False)
            if target != HOST:
                buffer = copy_to(buffer, target, reason=REASON)
            made_now = params_on(buffer, like) if not kind else _buffers_on(buffer, like, sizes)
            for i, p in zip(members, made_now, strict=True):
                made[i] = p
    return _Unpickler(io.BytesIO(skeleton), made).load()


def _buffers_on(buffer: Any, like: list[ParamSpec], sizes: list[int]) -> list[Buffer]:
    """New Buffers viewing ``buffer``, one per spec (its shape, name and origin)."""
    xp = device_of(buffer).xp
    made, at = [], 0
    for spec, size in zip(like, sizes, strict=True):
        made.append(made_like(xp.reshape(buffer[at:at + size], spec.shape), spec))
        at += size
    return made



def _own_device(comm: Comm, kind: str, index: int) -> Device:
    """This rank's device of the root's kind: a GPU by local rank, the same simulated
    device, or the host (also for a GPU model on a rank that has no GPU)."""
    if kind == "cuda":
        count = cuda_status()[0]
        return device(f"cuda:{comm.local_rank % count}") if count else HOST
    return device(f"{kind}:{index}") if kind == "sim" else HOST


def _device(spec: Any) -> Device:
    return device(spec)


class _Pickler(pickle.Pickler):
    """Pickles a model with each Param written as its index (its values go separately)."""

    def __init__(self, file: Any, index: dict[int, int]) -> None:
        super().__init__(file, protocol=5)
        self.index = index

    def persistent_id(self, obj: Any) -> int | None:
        return self.index[id(obj)] if type(obj) in (Param, Buffer) else None


class _Unpickler(pickle.Unpickler):
    """Rebuilds the model with each index replaced by its new Param (a tied Param is one)."""

    def __init__(self, file: Any, made: dict[int, Param]) -> None:
        super().__init__(file)
        self.made = made

    def persistent_load(self, pid: Any) -> Param:
        return self.made[pid]
