"""Tiny-ImageNet-200 in its official layout; its labelled val split is the held-out split."""

from __future__ import annotations

from edgekd.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    DatasetSource,
    ImageList,
    need_dir,
    no_options,
    register_dataset,
)
from edgekd.datasets.imagefolder import image_folder
from edgekd.errors import EdgeKDError

_TINY_LAYOUT = ("wnids.txt, words.txt (optional), train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                "val/val_annotations.txt (the official tiny-imagenet-200 layout)")


def _tiny_imagenet(path: str, image_size: int | None, options: dict) -> DataBundle:
    no_options("tiny-imagenet", options)
    root = need_dir("tiny-imagenet", path, _TINY_LAYOUT)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    needed = [root / "wnids.txt", root / "train", root / "val" / "images", root / "val" / "val_annotations.txt"]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise EdgeKDError(f"{root} is missing {', '.join(missing)}; tiny-imagenet expects {_TINY_LAYOUT}")
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    train = image_folder(root / "train", f"tiny-imagenet {root}/train ({_TINY_LAYOUT})")
    if train.classes != wnids:
        raise EdgeKDError(f"{root}/train class folders do not match wnids.txt "
                          f"({len(train.classes)} folders, {len(wnids)} wnids); expected {_TINY_LAYOUT}")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    samples = []
    for number, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise EdgeKDError(f"{root}/val/val_annotations.txt line {number}: expected 'FILE<TAB>WNID' with a wnid "
                              f"from wnids.txt, got {line[:80]!r}")
        samples.append((str(root / "val" / "images" / fields[0]), index[fields[1]]))
    if not samples:
        raise EdgeKDError(f"{root}/val/val_annotations.txt lists no images; tiny-imagenet expects {_TINY_LAYOUT}")
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in index and text.strip():
                words[wnid] = text.split(",")[0].strip()
    size = image_size or 64
    return DataBundle("tiny-imagenet", f"tiny-imagenet:{root}", {}, len(wnids), [words.get(w, w) for w in wnids],
                      (3, size, size), IMAGENET_MEAN, IMAGENET_STD, train, ImageList(samples))


register_dataset(DatasetSource(
    "tiny-imagenet", "tiny-imagenet:PATH", "Tiny-ImageNet-200; the labelled val split is the held-out split", "200",
    "3x64x64", "PATH (or PATH/tiny-imagenet-200) with " + _TINY_LAYOUT, _tiny_imagenet))
