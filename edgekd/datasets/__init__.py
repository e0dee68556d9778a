"""The dataset sources, one module each; importing this package registers them in ``edgekd.data.DATASETS``
(which imports it on the first lookup). A new source is one module here that calls ``register_dataset``, and its
import below."""

# the order of registration is the order `edgekd datasets` lists them in
from edgekd.datasets import digits, synthetic, cifar, imagefolder, tiny_imagenet  # noqa: F401, I001  (registers)
