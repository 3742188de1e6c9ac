"""``modelsync inspect FILE``: a saved model's architecture, graph id, Params and sizes, read
from the file's header alone (no tensor bytes are loaded and no layer needs to be imported)."""

from __future__ import annotations

import math
from typing import Any

from .io import codec
from .io.architecture import BufferRef, Container, LayerPlan, ParamRef, SameLayer, Value
from .io.files import RawFile, read
from .io.modelfile import is_modelsync, read_model_file


def inspect_text(path: Any) -> str:
    """A readable report of the file at ``path``; LoadError (one line) for a bad file."""
    raw = read(path)
    if not is_modelsync(raw):
        return _foreign(raw)
    mf = read_model_file(raw, require_registered=False)
    lines = [f"modelsync file {raw.path} (format {raw.metadata['modelsync.format']}, "
             f"{_bytes(raw.size)})", f"graph id: {mf.graph_id}", "architecture:"]
    lines += _tree(mf.plan, indent=1)
    lines.append("params:")
    rows = [(name, str(e.shape), e.dtype, _bytes(raw.tensors[name].nbytes))
            for name, e in mf.params.items()]
    lines += _table(rows, ("path", "shape", "dtype", "size"))
    lines += [f"  {alias} -> {target} (tied)" for alias, target in mf.aliases.items()]
    values = sum(math.prod(e.shape) for e in mf.params.values())
    nbytes = sum(raw.tensors[name].nbytes for name in mf.params)
    lines.append(f"total: {len(mf.params)} params, {values:,} values, {_bytes(nbytes)}")
    if mf.buffers:  # (state that is not trained, listed apart from the Params)
        lines.append("buffers (not trained):")
        rows = [(name, str(e.shape), e.dtype, _bytes(raw.tensors[name].nbytes))
                for name, e in mf.buffers.items()]
        lines += _table(rows, ("path", "shape", "dtype", "size"))
        nbytes = sum(raw.tensors[name].nbytes for name in mf.buffers)
        lines.append(f"total: {len(mf.buffers)} buffers, {_bytes(nbytes)}")
    lines.append(_optimizer_line(mf.optimizer, raw, set(mf.params) | set(mf.buffers)))
    if mf.user:
        lines.append("metadata:")
        lines += [f"  {_printable(key)}: {_printable(value)}" for key, value in mf.user.items()]
    return "\n".join(lines)


def _tree(plan: Any, indent: int, label: str = "") -> list[str]:
    pad = "  " * indent
    if plan is None:
        return [f"{pad}{label}None"]
    if isinstance(plan, LayerPlan):
        config = ", ".join(f"{k}={v!r}" for k, v in plan.config.items())
        note = "" if plan.cls is not None else "  [not registered in this process]"
        lines = [f"{pad}{label}{plan.name}({config}){note}"]
        for name, child in plan.children.items():
            lines += _tree(child, indent + 1, f"{name}: ")
        return lines
    if isinstance(plan, ParamRef):
        return [f"{pad}{label}Param {plan.path}"]
    if isinstance(plan, BufferRef):
        return [f"{pad}{label}Buffer {plan.path}"]
    if isinstance(plan, SameLayer):
        return [f"{pad}{label}the layer at {plan.path} (shared)"]
    if isinstance(plan, Container):
        lines = [f"{pad}{label}{plan.kind} of {len(plan.items)}"]
        for i, item in enumerate(plan.items):
            lines += _tree(item, indent + 1, f"{i}: ")
        return lines
    value = plan.value if isinstance(plan, Value) else plan
    return [f"{pad}{label}{value!r}"]


def _optimizer_line(state: Any, raw: RawFile, param_names: set[str]) -> str:
    if state is None:
        return "optimizer state: none"
    decoded = codec.decode(state, "optimizer state", lambda name, where: name)
    kind = decoded.get("type") if isinstance(decoded, dict) else None
    names = [name for name in raw.tensors if name not in param_names]
    nbytes = sum(raw.tensors[name].nbytes for name in names)
    label = f"{kind}, " if isinstance(kind, str) else ""
    return f"optimizer state: {label}{len(names)} tensors, {_bytes(nbytes)}"


def _foreign(raw: RawFile) -> str:
    lines = [f"safetensors file {raw.path} ({_bytes(raw.size)}), not written by modelsync: "
             "no architecture or graph id", "tensors:"]
    rows = [(name, str(t.shape), t.dtype, _bytes(t.nbytes)) for name, t in raw.tensors.items()]
    lines += _table(rows, ("name", "shape", "dtype", "size"))
    lines.append(f"total: {len(rows)} tensors, "
                 f"{_bytes(sum(t.nbytes for t in raw.tensors.values()))}")
    if raw.metadata:
        lines.append("metadata:")
        lines += [f"  {_printable(key)}: {_printable(value)}"
                  for key, value in raw.metadata.items()]
    return "\n".join(lines)


def _printable(text: Any) -> str:
    """A file's own text, with control characters escaped: a hostile file must not move the
    cursor, colour the terminal or forge extra lines."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return ["  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)
                             ).rstrip() for row in [head, *rows]]


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
