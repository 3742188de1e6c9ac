"""ms.export_onnx: a model, in evaluation mode, as an ONNX graph checked by ONNX's own
checker before the file is written atomically (as ms.save writes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..devices import HOST, device_of, is_array
from ..errors import ArgumentError, ArgumentTypeError, DeviceMismatchError, ExportError
from ..io.atomic import atomic_write, check_destination
from ..io.files import check_path
from ..layers.base import param_device
from ..transfers import copy_to
from ..tree import graph_id, require_model
from .emit import Emitter, Value

#: ONNX operator set the graphs use: 17 has LayerNormalization and batch-first GRU/LSTM, and
#: every ONNX Runtime since 1.13 runs it.
OPSET = 17


def export_onnx(model: Any, path: Any, *, example: Any) -> None:
    """Write ``model`` in evaluation mode as an ONNX graph at ``path``. ``example`` is an
    input batch: its shape past the batch axis and its dtype fix the graph's input, whose
    batch axis is dynamic. Weights are initializers (a tied Param stored once); the graph
    id and modelsync version are in the model's metadata_props. Nothing is written unless
    the whole graph is built and passes ``onnx.checker.check_model(full_check=True)``."""
    target = check_path(path)
    require_model(model)
    check_destination(target, "model.onnx")  # before the work, as atomic_write checks after
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("export_onnx needs the onnx package: pip install "
                          "'modelsync[onnx]'") from exc
    host_example = _host_example(model, example)
    from ..convert import to_host

    host = to_host(model, mode="copy")  # the values as they are now, on the host
    g = Emitter()
    source = Value("input", host_example)
    out = g.emit(host, source, "")
    output = g.node("Identity", [out.name], "output")
    graph = g.helper.make_graph(
        g.nodes, "modelsync", [_info(g, "input", host_example)], [_info(g, output, out.example)],
        initializer=g.initializers)
    made = g.helper.make_model(graph, producer_name="modelsync",
                               opset_imports=[g.helper.make_opsetid("", OPSET)])
    made.ir_version = min(made.ir_version, 10)  # readable by every ONNX Runtime of opset 17+
    from .. import __version__

    g.helper.set_model_props(made, {"modelsync.graph_id": graph_id(model),
                                    "modelsync.version": __version__})
    try:
        onnx.checker.check_model(made, full_check=True)
    except Exception as exc:  # noqa: BLE001 (the checker's own error, reported as ours)
        raise ExportError(f"{target}: ONNX's checker refused the graph: {exc}") from exc
    blob = made.SerializeToString()
    atomic_write(target, lambda fh: fh.write(blob))


def _host_example(model: Any, example: Any) -> np.ndarray:
    """``example`` as a host array, after checking it is an array with a batch axis on the
    model's device (or the host)."""
    if not is_array(example):
        raise ArgumentTypeError(
            f"example is a {type(example).__name__}; expected an input batch array "
            "(numpy.asarray a list first)")
    if example.ndim < 1 or example.shape[0] < 1:
        raise ArgumentError(
            f"example has shape {tuple(example.shape)}; expected a batch of at least one "
            "sample, batch axis first")
    where, home = device_of(example), param_device(model)
    if where != HOST and home is not None and where != home:
        raise DeviceMismatchError(
            f"example is on {where} but the model's Params are on {home}; pass a batch on "
            f"{home} or on the host")
    return example if where == HOST else np.asarray(
        copy_to(example, HOST, reason="export_onnx", what="data"))


def _info(g: Emitter, name: str, example: np.ndarray) -> Any:
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.asarray(example).dtype)
    return g.helper.make_tensor_value_info(name, elem, ["batch", *example.shape[1:]])
