"""The library's exceptions: every one derives from ModelSyncError, so one except clause
catches them all."""

from __future__ import annotations


class ModelSyncError(Exception):
    """Base of every error modelsync raises on purpose."""


class ArgumentError(ModelSyncError, ValueError):
    """A bad argument value: names the argument, the value and what was expected."""


class ArgumentTypeError(ModelSyncError, TypeError):
    """An argument of the wrong type: names the argument, its type and what was expected."""


class DeviceError(ModelSyncError):
    """A device spec that is unknown or not usable on this machine."""


class DeviceMismatchError(ModelSyncError):
    """Arrays on two devices met where one device was required."""


class MovedError(ModelSyncError):
    """A model whose Params were moved away by to_device(mode="move") was used."""


class CoherenceError(ModelSyncError):
    """A wrap-mode rule was broken: a second wrapper, or a move of a wrapped original."""


class GraphMismatchError(ModelSyncError):
    """Two models that were required to share a graph or a structure do not."""


class TransferError(ModelSyncError):
    """A transfer was attempted under transfer_guard("disallow")."""


class LoadError(ModelSyncError):
    """A file could not be loaded: truncated, corrupted, foreign or incompatible."""


class SaveError(ModelSyncError):
    """A model could not be saved (the previous file, if any, is left intact)."""


class GradientCheckError(ModelSyncError):
    """A layer's pullback disagrees with central differences (ms.check_gradients)."""


class ExportError(ModelSyncError):
    """A model could not be exported (ms.export_onnx): a layer without an export rule, or a
    graph ONNX's checker refuses. Nothing is written."""
