"""edgekd: distil a vision model, quantize it, and serve it on an edge device.

This module stays import-light: the device side (``edgekd bench``, ``edgekd serve``) runs
where torch is not installed, so nothing here may import torch.
"""

__version__ = "0.1.0"
