"""Saving and loading models (and optimizer state) as safetensors files."""

from .api import load, load_into, load_optimizer, read_metadata, save

__all__ = ["load", "load_into", "load_optimizer", "read_metadata", "save"]
