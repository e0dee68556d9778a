"""Defaults that the CLI, the Python API and the library functions share and that must be readable without torch
(the CLI documents them in --help); imports nothing, so every layer can use them."""

PRUNE_RATIO = 0.3  # the cut when neither a ratio nor a MACs target is given
# What `edgekd prune` keeps channel counts a multiple of: ORT's x86 kernels work on 8 FP32 channels at a time, and
# on an AVX-512 VNNI Xeon its INT8 convolution with 8 output channels ran slower than with 16 (AVX2 not re-measured).
CHANNEL_MULTIPLE = 16
