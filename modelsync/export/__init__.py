"""ONNX export (extra ``modelsync[onnx]``): ``ms.export_onnx`` and ``ms.export_rule``."""

from . import rules as _rules  # noqa: F401 (registers the built-in layers' rules)
from . import rules_attention as _rules_attention  # noqa: F401
from . import rules_conv as _rules_conv  # noqa: F401
from . import rules_recurrent as _rules_recurrent  # noqa: F401
from .api import OPSET, export_onnx
from .emit import Emitter, Value, export_rule

__all__ = ["OPSET", "Emitter", "Value", "export_onnx", "export_rule"]
