"""Any image folder tree with train/ and val/, one folder per class: the user's own photos."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import ImageFolder

from edgekd.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    DatasetSource,
    load_rgb,
    need_dir,
    no_options,
    register_dataset,
)
from edgekd.errors import EdgeKDError


def image_folder(root: str | Path, what: str) -> ImageFolder:
    try:
        return ImageFolder(str(root), loader=load_rgb)
    except FileNotFoundError as exc:
        raise EdgeKDError(f"{what}: {exc}") from exc


_IMAGEFOLDER_LAYOUT = "PATH/train/<class>/*.jpg|png|... and PATH/val/<class>/* with the same class folders"


def _imagefolder(path: str, image_size: int | None, options: dict) -> DataBundle:
    no_options("imagefolder", options)
    root = need_dir("imagefolder", path, _IMAGEFOLDER_LAYOUT)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise EdgeKDError(f"{root} has no '{split}' folder; imagefolder expects {_IMAGEFOLDER_LAYOUT}")
    train = image_folder(root / "train", f"imagefolder {root}/train ({_IMAGEFOLDER_LAYOUT})")
    val = image_folder(root / "val", f"imagefolder {root}/val ({_IMAGEFOLDER_LAYOUT})")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise EdgeKDError(f"{root}: train and val class folders differ (only in train: {only_train}, "
                          f"only in val: {only_val}); give both splits the same class folders")
    size = image_size or 224
    return DataBundle("imagefolder", f"imagefolder:{root}", {}, len(train.classes), list(train.classes),
                      (3, size, size), IMAGENET_MEAN, IMAGENET_STD, train, val)


register_dataset(DatasetSource(
    "imagefolder", "imagefolder:PATH", "any image folder tree, one folder per class; ImageNet statistics",
    "number of class folders", "3x224x224 (image_size overrides)", _IMAGEFOLDER_LAYOUT, _imagefolder))
