"""The modelsync layout inside a safetensors file: which metadata keys hold what, how they are
written, and how a file's metadata is read back and cross-checked against its tensors.

Tensors are named by parameter path (``named_params``; a tied Param is stored once), and
optimizer arrays by ``__optim__/<path>/<name>``. The metadata (all str, as safetensors
requires) holds the format version, the architecture, a table of Params (shape, dtype,
origin, name), the tie aliases, the graph id, optional optimizer state and user entries.
Buffers (running statistics, counters) are tensors named by their paths too, listed in a
table of their own (``modelsync.buffers``; a file written before Buffers has none).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..buffers import BUFFER_DTYPES, Buffer
from ..devices import HOST
from ..errors import LoadError
from ..params import Param
from ..tree import aliases, graph_id, named_buffers, named_params
from . import codec
from .architecture import LayerPlan, build, read_plan
from .files import RawFile, parse_json
from .shapes import check_layers

FORMAT_KEY = "modelsync.format"
FORMAT_VERSION = "1"
ARCHITECTURE_KEY = "modelsync.architecture"
PARAMS_KEY = "modelsync.params"
ALIASES_KEY = "modelsync.aliases"
GRAPH_KEY = "modelsync.graph_id"
OPTIMIZER_KEY = "modelsync.optimizer"
BUFFERS_KEY = "modelsync.buffers"
#: Each tensor's CRC-32 (tensor name -> 8 hex digits); files written before it have none.
CHECKSUMS_KEY = "modelsync.checksums"
USER_PREFIX = "user."
OPTIMIZER_PREFIX = "__optim__/"
PARAM_DTYPES = ("float16", "float32", "float64")
MAX_ORIGIN_CHARS = 128


@attrs.frozen
class ParamEntry:
    """One stored Param as the metadata's table describes it."""

    shape: tuple[int, ...]
    dtype: str
    origin: str
    name: str | None


@attrs.frozen
class ModelFile:
    """A validated modelsync file: its metadata read, every tensor accounted for."""

    raw: RawFile
    plan: LayerPlan
    params: dict[str, ParamEntry]
    aliases: dict[str, str]
    graph_id: str
    optimizer: Any  # the optimizer state's tagged JSON, or None
    user: dict[str, str]
    checksums: dict[str, str] | None  # tensor name -> CRC-32 hex (None: an older file)
    buffers: dict[str, ParamEntry] = attrs.field(factory=dict)  # path -> stored Buffer


def is_modelsync(raw: RawFile) -> bool:
    """Whether the file carries modelsync metadata (else it is a plain safetensors file)."""
    return FORMAT_KEY in raw.metadata


def read_model_file(raw: RawFile, *, require_registered: bool = True) -> ModelFile:
    """Read and check a modelsync file's metadata against its tensors; LoadError if anything
    is missing, malformed or inconsistent."""
    where = raw.path
    meta = raw.metadata
    if FORMAT_KEY not in meta:
        raise LoadError(f"{where}: not a modelsync file (its metadata has no {FORMAT_KEY!r}); "
                        "a plain safetensors file can be loaded into an existing model with "
                        "ms.load_into(model, path, check='structure')")
    if meta[FORMAT_KEY] != FORMAT_VERSION:
        raise LoadError(f"{where}: format version {meta[FORMAT_KEY]!r} is not supported; this "
                        f"modelsync reads version {FORMAT_VERSION!r} (a newer modelsync may "
                        "have written it)")
    for key in (ARCHITECTURE_KEY, PARAMS_KEY, ALIASES_KEY, GRAPH_KEY):
        if key not in meta:
            raise LoadError(f"{where}: the metadata has no {key!r} entry")
    params = _read_params(parse_json(meta[PARAMS_KEY], f"{where}: {PARAMS_KEY}"), where)
    buffers = (_read_params(parse_json(meta[BUFFERS_KEY], f"{where}: {BUFFERS_KEY}"), where,
                            key=BUFFERS_KEY, dtypes=BUFFER_DTYPES, kind="Buffer")
               if BUFFERS_KEY in meta else {})
    both = sorted(set(params) & set(buffers))
    if both:
        raise LoadError(f"{where}: {both[0]!r} is listed both as a Param and as a Buffer")
    stored_aliases = parse_json(meta[ALIASES_KEY], f"{where}: {ALIASES_KEY}")
    if not isinstance(stored_aliases, dict) or not all(
            isinstance(v, str) and v in params for v in stored_aliases.values()):
        raise LoadError(f"{where}: {ALIASES_KEY} must map paths to stored Param paths")
    plan = read_plan(parse_json(meta[ARCHITECTURE_KEY], f"{where}: {ARCHITECTURE_KEY}"),
                     set(params), require_registered=require_registered,
                     buffer_paths=set(buffers))
    optimizer = None
    optimizer_tensors: set[str] = set()
    if OPTIMIZER_KEY in meta:
        optimizer = parse_json(meta[OPTIMIZER_KEY], f"{where}: {OPTIMIZER_KEY}")

        def note(name: str, at: str) -> None:
            if name not in raw.tensors or name in params or name in buffers:
                raise LoadError(f"{where}: optimizer state at {at} refers to tensor {name!r}, "
                                "which is not an optimizer tensor in the file")
            optimizer_tensors.add(name)

        codec.decode(optimizer, "optimizer state", note)
    _check_tensors(raw, params, optimizer_tensors, buffers)
    checksums = _read_checksums(raw) if CHECKSUMS_KEY in meta else None
    user = {k[len(USER_PREFIX):]: v for k, v in meta.items() if k.startswith(USER_PREFIX)}
    return ModelFile(raw, plan, params, stored_aliases, meta[GRAPH_KEY], optimizer, user,
                     checksums, buffers)


def _read_checksums(raw: RawFile) -> dict[str, str]:
    table = parse_json(raw.metadata[CHECKSUMS_KEY], f"{raw.path}: {CHECKSUMS_KEY}")
    if not isinstance(table, dict) or set(table) != set(raw.tensors) or not all(
            isinstance(v, str) and len(v) == 8 and all(c in "0123456789abcdef" for c in v)
            for v in table.values()):
        raise LoadError(f"{raw.path}: {CHECKSUMS_KEY} must map every tensor of the file to "
                        "its CRC-32 as 8 hex digits")
    return table


def _read_params(table: Any, where: str, *, key: str = PARAMS_KEY,
                 dtypes: tuple[str, ...] = PARAM_DTYPES, kind: str = "Param"
                 ) -> dict[str, ParamEntry]:
    if not isinstance(table, dict):
        raise LoadError(f"{where}: {key} must be a JSON object of path -> entry")
    out: dict[str, ParamEntry] = {}
    for path, entry in table.items():
        label = f"{where}: {key} {path!r}"
        if not isinstance(entry, dict) or set(entry) != {"shape", "dtype", "origin", "name"}:
            raise LoadError(f"{label}: expected keys dtype, name, origin and shape")
        shape, dtype, origin, name = (entry["shape"], entry["dtype"], entry["origin"],
                                      entry["name"])
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise LoadError(f"{label}: shape {shape!r} is not a list of non-negative integers")
        if dtype not in dtypes:
            raise LoadError(f"{label}: dtype {dtype!r} is not one of {dtypes} (a {kind}'s)")
        if not isinstance(origin, str) or not 0 < len(origin) <= MAX_ORIGIN_CHARS:
            raise LoadError(f"{label}: origin must be a non-empty str of at most "
                            f"{MAX_ORIGIN_CHARS} characters")
        if name is not None and not isinstance(name, str):
            raise LoadError(f"{label}: name must be a str or null")
        out[path] = ParamEntry(tuple(shape), dtype, origin, name)
    return out


def _check_tensors(raw: RawFile, params: dict[str, ParamEntry], optimizer_tensors: set[str],
                   buffers: dict[str, ParamEntry] | None = None) -> None:
    buffers = buffers or {}
    for kind, table in (("Param", params), ("Buffer", buffers)):
        for path, entry in table.items():
            info = raw.tensors.get(path)
            if info is None:
                raise LoadError(f"{raw.path}: {kind} {path!r} of the architecture has no "
                                "tensor in the file")
            if info.shape != entry.shape or info.dtype != entry.dtype:
                raise LoadError(f"{raw.path}: {kind} tensor {path!r} is {info.shape} "
                                f"{info.dtype} but the architecture says {entry.shape} "
                                f"{entry.dtype}")
    extra = sorted(set(raw.tensors) - set(params) - set(buffers) - optimizer_tensors)
    if extra:
        raise LoadError(f"{raw.path}: tensor {extra[0]!r} is neither a Param nor a Buffer of "
                        "the architecture nor optimizer state"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


def build_model(mf: ModelFile) -> Any:
    """The model a validated file describes, checked to give back the file's parameter paths,
    ties and graph id, before any tensor data is read: its host Params hold read-only
    placeholders (no memory) until `fill_model` gives them the values."""

    def make_param(path: str) -> Param:
        entry = mf.params[path]
        empty = np.broadcast_to(np.zeros((), dtype=entry.dtype), entry.shape)
        return Param.in_store(empty, HOST, name=entry.name, origin=entry.origin, store=None)

    def make_buffer(path: str) -> Buffer:
        entry = mf.buffers[path]
        empty = np.broadcast_to(np.zeros((), dtype=entry.dtype), entry.shape)
        return Buffer.in_store(empty, HOST, name=entry.name, origin=entry.origin, store=None)

    model = build(mf.plan, make_param, make_buffer)
    where = mf.raw.path
    check_layers(model)
    named = list(named_params(model))
    if named != list(mf.params):
        raise LoadError(f"{where}: the architecture's Params ({_preview(named)}) do not match "
                        f"the stored ones ({_preview(list(mf.params))})")
    stored_buffers = list(named_buffers(model))
    if stored_buffers != list(mf.buffers):
        missing = [p for p in mf.buffers if p not in stored_buffers]
        extra = [p for p in stored_buffers if p not in mf.buffers]
        raise LoadError(f"{where}: the architecture's Buffers ({_preview(stored_buffers)}) do "
                        f"not match the stored ones ({_preview(list(mf.buffers))}; unused "
                        f"{missing}, unlisted {extra})")
    if aliases(model) != mf.aliases:
        raise LoadError(f"{where}: the stored tie aliases {mf.aliases} do not match the "
                        f"architecture's ties {aliases(model)}")
    rebuilt = graph_id(model)
    if rebuilt != mf.graph_id:
        raise LoadError(f"{where}: the stored graph_id {mf.graph_id!r} does not match the one "
                        f"the architecture and Param origins give ({rebuilt!r}): the metadata "
                        "was edited or corrupted")
    return model


def fill_model(model: Any, arrays: dict[str, Any]) -> None:
    """Give each Param and Buffer of a model `build_model` made its values: ``arrays[path]``
    (on any device), taken over as its storage."""
    for path, param in [*named_params(model).items(), *named_buffers(model).items()]:
        param.rehome(arrays[path])


def _preview(paths: list[str], limit: int = 4) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")
