"""Distillation methods, one small module each, registered by name (imported on first lookup: the
``edgekd.methods`` entry points in ``pyproject.toml``)."""

from edgekd.methods.base import Method, build_method, list_methods, method_class, register_method

__all__ = ["Method", "build_method", "list_methods", "method_class", "register_method"]
