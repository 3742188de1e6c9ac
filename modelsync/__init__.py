"""modelsync: small neural-network models whose Params live on the host (NumPy), a GPU (CuPy)
or a simulated device, and cross between them as a copy, a move or a wrapper."""

from . import datasets, distributed, interop, layers, losses, optim
from .batching import batches
from .buffers import Buffer
from .convert import detach, sync, to_device, to_host
from .devices import Device, available_devices, device
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    CoherenceError,
    DeviceError,
    DeviceMismatchError,
    ExportError,
    GradientCheckError,
    GraphMismatchError,
    LoadError,
    ModelSyncError,
    MovedError,
    SaveError,
    TransferError,
)
from .export import export_onnx, export_rule
from .gradcheck import check_gradients
from .interop import state_dict
from .io import load, load_into, load_optimizer, read_metadata, save
from .layers.base import buffer_field, layer
from .packing import flatten
from .params import Param
from .train import backprop, train
from .transfers import TransferLedger, track_transfers, transfer_guard
from .tree import buffers, graph_id, named_buffers, named_params, params
from .update_bn import update_bn

__version__ = "0.1.0"

__all__ = [
    "ArgumentError", "ArgumentTypeError", "Buffer", "CoherenceError", "Device", "DeviceError",
    "DeviceMismatchError", "ExportError", "GradientCheckError", "GraphMismatchError",
    "LoadError", "ModelSyncError", "MovedError", "Param", "SaveError", "TransferError",
    "TransferLedger", "available_devices", "backprop", "batches", "buffer_field", "buffers",
    "check_gradients", "datasets", "detach", "device", "distributed", "export_onnx",
    "export_rule", "flatten", "graph_id", "interop", "layer", "layers", "load", "load_into",
    "load_optimizer", "losses", "named_buffers", "named_params", "optim", "params",
    "read_metadata", "save", "state_dict", "sync", "to_device", "to_host", "track_transfers",
    "train", "transfer_guard", "update_bn",
]
