"""Distillation methods, one small module each, registered by name."""

from edgekd.methods import ce, dist, dkd, drkd, kd, lsr, r2kd, sld, tfkd  # noqa: F401  (registers)
from edgekd.methods.base import Method, build_method, list_methods, method_class, register_method

__all__ = ["Method", "build_method", "list_methods", "method_class", "register_method"]
