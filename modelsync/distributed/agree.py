"""Agreement before every collective: the ranks compare a small digest of what they are about
to do, so a mismatch raises on every rank and moves nothing, instead of hanging one rank or
silently mixing bytes that do not belong together.

Each rank makes a fixed-size record (its count of agreed operations, the operation, a digest
of its arguments and of what it holds, whether it failed locally). Where MPI takes calls from
several threads (so that a watchdog can guard a blocking call), the records are compared in
one small blocking collective, an in-place bitwise-AND Allreduce of the record and its
complement (`_compare`): a few microseconds, about one latency. Before it each rank says it
has arrived where only a timeout reads it (`ArrivalBoard`, shared memory, on rank 0's node;
a message to rank 0 from any other node), so that a timeout still names the ranks that never
arrived. Elsewhere each rank
sends its record to rank 0, the coordinator, which answers each rank with one verdict (torch's
``monitored_barrier`` does the same). On "not equal" every rank is known to be present, so
they exchange full descriptions (`Description`, small and only on this error path) and each
rank derives the same error from them: the ranks, and the first path where they differ.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ArgumentError, GraphMismatchError
from .board import ArrivalBoard
from .comm import Comm, mpi_module
from .errors import CollectiveError

RECORD = struct.Struct("<QQ32sBB")  # seq, operation, digest, failed locally, GPU groups
VERDICT = struct.Struct("<BB")  # 0 = agreed / 1 = not, GPU groups every rank holds
TAG_RECORD, TAG_VERDICT = 7101, 7102
COORDINATOR = 0
#: A "Description" is what a rank says about itself when the digests differ: {"op", "seq",
#: "error" (text or None), "args" (dict), "params" ([path, shape, dtype, origin, tied to]),
#: "graph" (graph id or None), "grads" ([path with a gradient] or None)}.
Description = dict


def digest_of(*parts: Any) -> bytes:
    """A 32-byte digest of ``parts`` (their reprs: tuples of str, int and float)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()


def agree(comm: Comm, op: str, digest: bytes, *, describe: Callable[[], Description],
          error: BaseException | None = None, gpu_groups: int = 0) -> int:
    """Return once every rank has reached ``op`` with the same ``digest``; raise on every
    rank otherwise (nothing has been moved). ``error`` is this rank's own failure to take
    part (it is raised here, and the other ranks raise a `CollectiveError` naming it).
    ``gpu_groups`` is a bit mask of the dtype groups this rank holds on a GPU; the result
    is the mask of those every rank holds on a GPU (the groups NCCL may carry)."""
    if comm.size == 1:
        if error is not None:
            raise error
        return gpu_groups
    comm.seq += 1
    if comm.watchdog is not None:  # the fast path: one small blocking Allreduce
        differ, mask = _compare(comm, op, digest, error is not None, gpu_groups)
    else:
        differ, mask = VERDICT.unpack(_verdict(comm, op, digest, error, gpu_groups))
    if not differ:
        if error is not None:  # every rank failed alike: each raises its own
            raise error
        return mask
    _raise_disagreement(comm, op, describe, error)


def _raise_disagreement(comm: Comm, op: str, describe: Callable[[], Description],
                        error: BaseException | None) -> None:
    """The records differ: every rank is here (the coordinator heard them all), so they
    exchange descriptions and each raises the same error (or its own failure)."""
    mine = _describe(describe, op, comm.seq, error)
    everyone = comm.mpi.allgather(mine)
    if error is not None:
        raise error
    raise explain(everyone)


def _verdict(comm: Comm, op: str, digest: bytes, error: BaseException | None,
             gpu_groups: int) -> bytes:
    """The coordinator's verdict on every rank's record (where MPI has no threads for the
    watchdog, and so no `_compare`)."""
    record = RECORD.pack(comm.seq, _op_code(op), digest, error is not None, gpu_groups & 0xFF)
    if comm.rank == COORDINATOR:
        verdict = _coordinate(comm, op, record)
    else:
        verdict = _report(comm, op, record)
    return verdict


def _coordinate(comm: Comm, op: str, record: bytes) -> bytes:
    """Rank 0: hear every rank's record (naming the ranks that never come), answer each."""
    mpi = comm.mpi
    byte = mpi_module().BYTE
    size = len(record)
    buffers = [bytearray(size) for _ in range(comm.size - 1)]
    requests = [mpi.Irecv([buf, byte], source=r, tag=TAG_RECORD)
                for r, buf in enumerate(buffers, start=1)]
    comm.wait(requests, f"{op} (operation #{comm.seq})", deadline=comm.deadline(),
              missing=lambda left: _missing([i + 1 for i in left], comm))
    records = [record] + [bytes(b) for b in buffers]
    strip = [r[:-1] for r in records]  # (all but the GPU mask must be equal)
    differ = any(r != strip[0] for r in strip[1:])
    mask = 0xFF
    for r in records:
        mask &= r[-1]
    verdict = VERDICT.pack(differ, mask)
    sends = [mpi.Isend([verdict, byte], dest=r, tag=TAG_VERDICT) for r in range(1, comm.size)]
    comm.wait(sends, f"{op} (operation #{comm.seq})", deadline=comm.deadline(),
              missing=lambda left: f"ranks {[i + 1 for i in left]} stopped listening")
    return verdict


def _report(comm: Comm, op: str, record: bytes) -> bytes:
    """Any other rank: send the record to rank 0 and wait for its verdict. The wait is a
    little longer than rank 0's, so that where rank 0 is there it is the one that reports."""
    mpi = comm.mpi
    byte = mpi_module().BYTE
    verdict = bytearray(VERDICT.size)
    requests = [mpi.Isend([record, byte], dest=COORDINATOR, tag=TAG_RECORD),
                mpi.Irecv([verdict, byte], source=COORDINATOR, tag=TAG_VERDICT)]
    comm.wait(requests, f"{op} (operation #{comm.seq})",
              deadline=comm.deadline(1.0 + 0.05 * comm.timeout),
              missing=lambda _: (f"rank {COORDINATOR}, which coordinates every agreement, did "
                                 f"not arrive within {comm.timeout:g} s"))
    return bytes(verdict)


# -- the fast path: a digest compared in one small collective ---------------------------------
#: What `_compare` reduces, as 8-byte words: the sequence number, its inverse and the GPU
#: mask (`HEAD`), then the rest of the record (operation, digest, failed locally) and its
#: inverse.
HEAD = struct.Struct("<QQQ")
STATIC = struct.Struct("<Q32sQ")
WORDS = HEAD.size + 2 * STATIC.size
ALL_ONES = (1 << (8 * STATIC.size)) - 1
SEQ_ONES = (1 << 64) - 1
TAG_ARRIVAL = 7104


def _compare(comm: Comm, op: str, digest: bytes, failed: bool, gpu_groups: int
             ) -> tuple[bool, int]:
    """Whether the ranks' records differ, and the GPU groups all of them hold, from one
    in-place bitwise-AND Allreduce of (record, NOT record, GPU mask). Every rank compares the
    result with what it put in: AND(r) == own and AND(NOT r) == NOT own hold exactly when
    every rank's record is its own, so every rank reaches the same verdict. It runs under the
    watchdog; before it, this rank's arrival (`_Arrivals`), which only a timeout reads, so
    that one can still name the ranks that never came."""
    arrivals = comm.agreement
    if arrivals is None:
        arrivals = comm.agreement = _Arrivals(comm)
    arrivals.fill(op, digest, failed, gpu_groups)
    differ, mask = arrivals.again(comm.seq, gpu_groups & 0xFF, _label(op).format(comm.seq))
    if not differ and not arrivals.board_tried:  # (every rank is here, and knows it)
        arrivals.make_board()
    return differ, mask


class Repeated:
    """`agree` on one operation and digest, made ready for a loop that repeats it (the steady
    step of `DataParallel`): the same exchange and the same errors, in a few lines of Python
    while the words still hold this rank's record. Right after other work, Python on a busy
    host runs about a microsecond a line (its caches are cold), and the general path's calls
    were 30-45 us of a 100 us step of a small model."""

    __slots__ = ("comm", "op", "digest", "describe", "bits", "key", "label")

    def __init__(self, comm: Comm, op: str, digest: bytes, *,
                 describe: Callable[[], Description], gpu_groups: int = 0) -> None:
        self.comm, self.op, self.digest, self.describe = comm, op, digest, describe
        self.bits = gpu_groups & 0xFF
        self.key = (op, digest, False, self.bits)
        self.label = _label(op)

    def __call__(self) -> None:
        comm = self.comm
        arrivals = comm.agreement
        if arrivals is None or arrivals.key != self.key or comm.watchdog is None:
            agree(comm, self.op, self.digest, describe=self.describe, gpu_groups=self.bits)
            return
        seq = comm.seq = comm.seq + 1
        if arrivals.again(seq, self.bits, self.label.format(seq))[0]:
            _raise_disagreement(comm, self.op, self.describe, None)


def _never() -> None:  # pragma: no cover (Comm.collective polls only without a watchdog)
    raise AssertionError("the agreement's Allreduce is blocking")


class _Arrivals:
    """The agreement's buffers for one Comm, and every rank's word to rank 0 that it has
    arrived: a store in the `ArrivalBoard` on rank 0's node (made after the first agreement),
    one message per agreement from a rank on any other node. Nothing waits for the messages
    but the agreement's end (they complete alongside its Allreduce); at a timeout rank 0's
    watchdog reads the board and asks which messages have come.
    Rank 0 sends nothing back: the others wait a grace longer (`grace`), so that where rank 0
    is there it is rank 0 that ends the job, naming the ranks it waits for. (Plain requests:
    persistent ones made Open MPI's next large Allreduce 30x slower.)

    A step of a small model is a few tens of microseconds of MPI, so the words are written
    as little as possible: an agreement that found the ranks equal leaves exactly this rank's
    record in them, and the next one of the same operation and digest only writes its
    sequence number."""

    def __init__(self, comm: Comm) -> None:
        MPI = mpi_module()
        self.comm = comm
        #: What `_compare` reduces (one buffer per Comm, reused: MPI registers it once).
        self.words = bytearray(WORDS)
        self._key: tuple[str, bytes, bool, int] | None = None
        self._static = b""
        self.out = np.zeros(1, dtype=np.uint64)
        self.heard = np.zeros(max(comm.size, 1), dtype=np.uint64)
        self._out = [self.out, MPI.UINT64_T]
        self._heard = [[self.heard[r:r + 1], MPI.UINT64_T] for r in range(comm.size)]
        #: The ranks whose arrival rank 0 hears by message (the others post on the board).
        self._remote = list(range(1, comm.size))
        self.board: ArrivalBoard | None = None
        self.board_tried = False
        self._post: Callable[[int], None] | None = None
        self.root = comm.rank == COORDINATOR
        self.grace = 0.0 if self.root else 1.0 + 0.05 * comm.timeout
        self.recvs: list[Any] = []
        self.requests: list[Any] = []
        self._waitall = MPI.Request.Waitall
        self._allreduce = functools.partial(comm.mpi.Allreduce, MPI.IN_PLACE,
                                            [self.words, MPI.UINT64_T], MPI.BAND)

    def fill(self, op: str, digest: bytes, failed: bool, gpu_groups: int) -> None:
        """Write this rank's record after `HEAD` (what an agreement of equal records gives
        back there), unless the words hold it already; `again` writes the head."""
        key = (op, digest, failed, gpu_groups & 0xFF)
        if key != self._key:
            record = STATIC.pack(_op_code(op), digest, failed)
            inverse = (int.from_bytes(record, "little") ^ ALL_ONES).to_bytes(STATIC.size,
                                                                             "little")
            self._static = record + inverse
            self.words[HEAD.size:] = self._static
            self._key = key

    @property
    def key(self) -> tuple[str, bytes, bool, int] | None:
        """(operation, digest, failed, GPU groups) of the record the words hold."""
        return self._key

    def again(self, seq: int, bits: int, label: str) -> tuple[bool, int]:
        """Agreement ``seq`` of the record the words hold (`fill`): write its number and GPU
        mask, post this rank's arrival, reduce under the watchdog. Whether the records
        differ (the words are then forgotten), and the GPU groups every rank holds."""
        words = self.words
        HEAD.pack_into(words, 0, seq, seq ^ SEQ_ONES, bits)
        self.start(seq)
        self.comm.collective(label, blocking=self.reduce,
                             nonblocking=_never,  # (never called: there is a watchdog)
                             missing=self.missing, grace=self.grace)
        got_seq, got_inverse, mask = HEAD.unpack_from(words)
        same = (got_seq == seq and got_inverse == seq ^ SEQ_ONES
                and words[HEAD.size:] == self._static)
        if not same:
            self.forget()
        return not same, mask

    def forget(self) -> None:
        """The words hold a disagreement's result, not this rank's record: rewrite them."""
        self._key = None

    def make_board(self) -> None:
        """Make the `ArrivalBoard`, once, right after the first agreement (every rank makes
        it there); used only where every rank could make it."""
        self.board_tried = True
        comm = self.comm
        made: list[ArrivalBoard | None] = [None]

        def make() -> None:
            try:
                made[0] = ArrivalBoard(comm)
            except Exception:  # (an MPI without shared windows: messages, as before)
                made[0] = None
            everyone = comm.mpi.allreduce(made[0] is not None, op=mpi_module().LAND)
            if not everyone and made[0] is not None:
                made[0].close()
                made[0] = None

        comm.collective(f"making the arrival board after agreement #{comm.seq}",
                        blocking=make, nonblocking=_never,
                        missing=lambda _: "a rank stopped right after every rank agreed")
        board = self.board = made[0]
        if board is None:
            return
        self._remote = [r for r in range(1, comm.size) if r not in board.members]
        if not self.root and comm.rank in board.members:
            self._post = board.post
            self.requests = []

    def start(self, seq: int) -> None:
        self.out[0] = seq
        if self.root:
            mpi, heard = self.comm.mpi, self._heard
            self.recvs = [mpi.Irecv(heard[r], r, TAG_ARRIVAL) for r in self._remote]
            self.requests = self.recvs
        elif self._post is not None:
            self._post(seq)
        else:
            self.requests = [self.comm.mpi.Isend(self._out, COORDINATOR, TAG_ARRIVAL)]

    def reduce(self) -> None:
        """The agreement's Allreduce, then the arrivals' end (both under the watchdog)."""
        self._allreduce()
        if self.requests:
            self._waitall(self.requests)

    def missing(self, _pending: Any = None) -> str:
        """Who has not arrived: rank 0 knows; any other rank, still waiting after rank 0
        would have ended the job, says that rank 0 did not come."""
        comm = self.comm
        if not self.root:
            return (f"rank {COORDINATOR}, which coordinates every agreement, did not arrive "
                    f"within {comm.timeout:g} s (where it is there, it ends the job first, "
                    "naming the ranks it waits for)")
        came = {rank for rank, request in zip(self._remote, self.recvs, strict=True)
                if request.Get_status()}
        if self.board is not None:
            came |= self.board.arrived(int(self.out[0]))
        return _missing([r for r in range(1, comm.size) if r not in came], comm)


def _missing(ranks: list[int], comm: Comm) -> str:
    here = [r for r in range(comm.size) if r not in ranks]
    return (f"ranks {ranks} did not arrive within {comm.timeout:g} s (ranks {here} are "
            "waiting for them)")


@functools.lru_cache(maxsize=64)
def _label(op: str) -> str:
    """What a timeout calls agreement number N of ``op`` (formatted with N)."""
    return op + " (operation #{})"


@functools.lru_cache(maxsize=64)
def _op_code(op: str) -> int:
    return int.from_bytes(hashlib.blake2b(op.encode(), digest_size=8).digest(), "little")


def _describe(describe: Callable[[], Description], op: str, seq: int,
              error: BaseException | None) -> Description:
    """This rank's description; its own failure, or a failure to describe, as text."""
    base: Description = {"op": op, "seq": seq, "error": None, "args": {}, "params": None,
                         "graph": None, "grads": None}
    if error is not None:
        base["error"] = f"{type(error).__name__}: {error}"
        return base
    try:
        base.update(describe())
    except Exception as exc:  # the others must still hear something
        base["error"] = f"{type(exc).__name__}: {exc}"
    return base


# -- from descriptions to one error, the same on every rank ------------------------------------
def explain(everyone: Sequence[Description]) -> Exception:
    """The error every rank raises for these descriptions (index = rank)."""
    first = everyone[0]
    where = {(d["op"], d["seq"]) for d in everyone}
    if len(where) > 1:
        at = ", ".join(f"rank {r} at {d['op']} (operation #{d['seq']})"
                       for r, d in enumerate(everyone))
        return CollectiveError(
            f"the ranks are at different collective operations: {at}; every rank must make "
            "the same ms.distributed calls in the same order")
    op = first["op"]
    failed = [(r, d["error"]) for r, d in enumerate(everyone) if d["error"]]
    if failed:
        rank, text = failed[0]
        return CollectiveError(f"{op}: rank {rank} could not take part: {text}; no rank "
                               "has changed anything")
    for name in sorted({k for d in everyone for k in d["args"]}):
        values = [d["args"].get(name) for d in everyone]
        if any(v != values[0] for v in values[1:]):
            listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            return ArgumentError(f"{op}: {name} differs between ranks ({listed}); every rank "
                                 "must pass the same")
    found = (_structure_difference(everyone, op) or _graph_difference(everyone, op)
             or _grads_difference(everyone, op)
             or values_difference(everyone, op, everyone[0].get("values_hint") or ""))
    if found is not None:
        return found
    return CollectiveError(f"{op}: the ranks' digests differ but their descriptions agree "
                           "(a library bug: please report it)")


def _ranks_by(values: Sequence[Any]) -> str:
    """'rank 0 (64, 10) float32 vs ranks 1, 2 (64, 12) float32' from one value per rank."""
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(value, []).append(rank)
    parts = []
    for value, ranks in groups.items():
        label = f"rank {ranks[0]}" if len(ranks) == 1 else \
            "ranks " + ", ".join(str(r) for r in ranks)
        parts.append(f"{label} {value}")
    return " vs ".join(parts)


def _first_difference(rows: Sequence[Sequence[Any]]) -> int | None:
    longest = max(len(r) for r in rows)
    for i in range(longest):
        column = [r[i] if i < len(r) else None for r in rows]
        if any(c != column[0] for c in column[1:]):
            return i
    return None


def _structure_difference(everyone: Sequence[Description], op: str) -> Exception | None:
    tables = [d["params"] or [] for d in everyone]
    shapes = [[(p[0], tuple(p[1]), p[2], p[4]) for p in t] for t in tables]
    i = _first_difference(shapes)
    if i is None:
        return None
    path = next(t[i][0] for t in tables if i < len(t))

    def cell(t: list[Any]) -> str:
        if i >= len(t):
            return "has no Param there"
        p = t[i]
        tied = f" tied to {p[4]}" if p[4] != p[0] else ""
        name = "" if p[0] == path else f"holds {p[0]} there: "
        return f"{name}{tuple(p[1])} {p[2]}{tied}"

    return GraphMismatchError(
        f"{op}: {path}: {_ranks_by([cell(t) for t in tables])}; the ranks' models differ in "
        "structure (paths, order, shapes, dtypes or ties), so no bytes were exchanged")


def _graph_difference(everyone: Sequence[Description], op: str) -> Exception | None:
    tables = [d["params"] or [] for d in everyone]
    if not any(d["graph"] for d in everyone):
        return None  # check="structure": origins are not compared
    hint = ("build the model on one rank and give it to the others with "
            "ms.distributed.replicate, or pass check=\"structure\"")
    i = _first_difference([[p[3] for p in t] for t in tables])
    if i is not None:
        origins = [t[i][3][:12] + "…" for t in tables]
        return GraphMismatchError(
            f"{op}: {tables[0][i][0]}: the ranks hold Params made as different originals "
            f"({_ranks_by(origins)}): their models are not replicas of one graph; {hint}")
    graphs = [d["graph"] for d in everyone]
    if any(g != graphs[0] for g in graphs[1:]):
        return GraphMismatchError(
            f"{op}: the graph ids differ ({_ranks_by([g[:12] + '…' for g in graphs])}): same "
            f"Params, but layer types or configuration differ; {hint}")
    return None


def values_difference(everyone: Sequence[Description], op: str, hint: str
                      ) -> Exception | None:
    """The first Buffer whose values differ between the ranks (a description's "values":
    [path, value or digest]), named with the ranks on each side, and ``hint``."""
    tables = [d.get("values") or [] for d in everyone]
    i = _first_difference([[tuple(map(repr, row)) for row in t] for t in tables])
    if i is None:
        return None
    path = next(t[i][0] for t in tables if i < len(t))
    cells = [repr(t[i][1]) if i < len(t) else "none" for t in tables]
    return CollectiveError(f"{op}: {path}: the replicas' buffers differ ({_ranks_by(cells)}); "
                           f"{hint}; nothing was changed")


def _grads_difference(everyone: Sequence[Description], op: str) -> Exception | None:
    grads = [d["grads"] for d in everyone]
    if all(g is None for g in grads):
        return None
    paths = [p[0] for p in everyone[0]["params"] or []]
    held = [set(g or ()) for g in grads]
    for path in paths:
        has = ["has a gradient" if path in h else "has none" for h in held]
        if any(h != has[0] for h in has[1:]):
            return GraphMismatchError(
                f"{op}: {path}: {_ranks_by(has)}; every rank must backprop through the same "
                "Params before the step (a Param no rank has a gradient for is skipped)")
    return None
