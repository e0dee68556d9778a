"""CIFAR-10 and CIFAR-100 from the official python files on disk, read by torchvision's readers after a check that
the pickles hold only data."""

from __future__ import annotations

import pickle
from pathlib import Path

from torchvision.datasets import CIFAR10, CIFAR100

from edgekd.data import DataBundle, DatasetSource, need_dir, no_options, register_dataset
from edgekd.errors import EdgeKDError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The statistics the RepDistiller/mdistiller CIFAR-100 teachers were trained with.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
_CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
_CIFAR100_FILES = ["train", "test", "meta"]


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for CIFAR's python batches: containers, strings, numbers and numpy arrays, nothing callable.

    torchvision reads the batches with plain ``pickle.load``; with the md5 check off (the readers below), a
    crafted batch file could run code. Each file goes through this first.
    """

    ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {
        (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")
    } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not data; a CIFAR batch holds only arrays, lists and strings")


def _check_pickles_hold_data(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            _ArraysOnly(f, encoding="latin1").load()


class _CIFAR10Files(CIFAR10):
    """torchvision's CIFAR-10 reader on a folder holding the files; the md5 check becomes an existence check."""

    base_folder = ""
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100Files(CIFAR100):
    """torchvision's CIFAR-100 reader on a folder holding the files; the md5 check becomes an existence check."""

    base_folder = ""
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


def _cifar(name: str, reader: type, files: list[str], subfolder: str, mean, std):
    layout = f"the official python files ({', '.join(files)}), directly or in {subfolder}/"

    def build(path: str, image_size: int | None, options: dict) -> DataBundle:
        no_options(name, options)
        root = need_dir(name, path, layout)
        folder = root / subfolder if (root / subfolder).is_dir() else root
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise EdgeKDError(f"{folder} is missing {', '.join(missing)}; {name} expects {layout}")
        try:
            _check_pickles_hold_data([folder / f for f in files])
            raw_train, raw_val = reader(str(folder), train=True), reader(str(folder), train=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
            raise EdgeKDError(f"cannot read {name} files in {folder}: {exc!r}; expected {layout}") from exc
        size = image_size or 32
        return DataBundle(name, f"{name}:{root}", {}, len(raw_train.classes), list(raw_train.classes),
                          (3, size, size), mean, std, raw_train, raw_val)

    return build


register_dataset(DatasetSource(
    "cifar10", "cifar10:ROOT", "CIFAR-10, official python version; test_batch is the held-out split", "10", "3x32x32",
    "ROOT or ROOT/cifar-10-batches-py holding " + ", ".join(_CIFAR10_FILES),
    _cifar("cifar10", _CIFAR10Files, _CIFAR10_FILES, "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD)))
register_dataset(DatasetSource(
    "cifar100", "cifar100:ROOT", "CIFAR-100 (fine labels), official python version; test is the held-out split",
    "100", "3x32x32", "ROOT or ROOT/cifar-100-python holding " + ", ".join(_CIFAR100_FILES),
    _cifar("cifar100", _CIFAR100Files, _CIFAR100_FILES, "cifar-100-python", CIFAR100_MEAN, CIFAR100_STD)))
