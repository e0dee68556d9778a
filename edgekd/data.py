"""Datasets: every source becomes a `DataBundle` of RGB PIL images plus the transforms that feed a model.

Raw splits hold untransformed ``(PIL RGB image, int label)`` items so that training augmentation, evaluation and
INT8 calibration share one source of truth. The eval transform is built from the bundle's preprocessing spec
(``edgekd.contracts.preprocessing``), which the exporter writes into the manifest and the torch-free server
rebuilds with PIL + numpy.
Nothing here downloads: a source that is not on disk is a user error that says which layout is expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.transforms import v2

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The statistics the RepDistiller/mdistiller CIFAR-100 teachers were trained with.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

# Fixed so that every run, whatever its training seed, and the exporter hold out the same digits.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2

SYNTHETIC_DEFAULTS = {"classes": 10, "size": 32, "count": 4000, "val_count": 1000, "seed": 0}


# --------------------------------------------------------------------------------------------- datasets


class ArrayImages(Dataset):
    """In-memory uint8 images, (N, H, W) grayscale or (N, H, W, 3) RGB, served as RGB PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.targets = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


class ImageList(Dataset):
    """Image files listed with their labels, for layouts that are not one folder per class."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples
        self.targets = [y for _, y in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path), label


class TransformedDataset(Dataset):
    """A raw split seen through a transform; the raw split itself stays untouched and shareable."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; a broken file becomes an EdgeKDError naming it instead of a bare PIL traceback."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EdgeKDError(f"cannot read image {path}: {exc}; replace or remove the file") from exc


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


# --------------------------------------------------------------------------------------------- bundle


def make_eval_transform(spec: PreprocessSpec) -> v2.Compose:
    """The spec's steps in torchvision v2: resize (exact, or shorter side + centre crop), scale, normalise, order."""
    interpolation = v2.InterpolationMode[spec.interpolation.upper()]
    if spec.resize_policy == "exact":
        steps: list[Any] = [v2.Resize(spec.size, interpolation)]
    else:
        steps = [v2.Resize(spec.shorter_side, interpolation), v2.CenterCrop(spec.size)]
    return v2.Compose(steps + _to_input(spec))


def _to_input(spec: PreprocessSpec) -> list[Any]:
    """The spec's steps after the geometry, shared by training and evaluation: scale, channel order, normalise."""
    return [
        v2.ToImage(),
        _ScaleAndOrder(spec.scale, spec.channel_order == "BGR"),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ]


@dataclass(frozen=True)
class _ScaleAndOrder:
    """uint8 CHW -> float32 times ``scale`` (the multiply ``ToDtype(scale=True)`` does), channels reversed for BGR.

    A module-level class, not a lambda, so that DataLoader workers started by spawn can pickle the transform.
    """

    scale: float
    bgr: bool

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) * self.scale
        return x.flip(0) if self.bgr else x


def make_train_transform(spec: PreprocessSpec, *, hflip: bool) -> v2.Compose:
    """Training augmentation for a spec: the CIFAR recipe (exact resize, pad-and-crop) for ``exact``, the ImageNet
    one (a random-resized crop at the spec's interpolation) for ``shorter_side``; optional mirror; batch mixing lives
    in methods."""
    size = spec.size
    if spec.resize_policy == "exact":
        steps: list[Any] = [v2.Resize(size), v2.RandomCrop(size, padding=size[0] // 8)]
    else:
        steps = [v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode[spec.interpolation.upper()])]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_input(spec))


@dataclass
class DataBundle:
    """One dataset, its held-out split, and everything needed to rebuild and preprocess it elsewhere."""

    name: str
    spec: str
    options: dict
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    raw_train: Dataset = field(repr=False)
    raw_val: Dataset = field(repr=False)
    hflip: bool = True
    model_preprocessing: PreprocessSpec | None = None  # the pretrained weights' own, set by ``with_preprocessing``
    train_transform: v2.Compose = field(init=False, repr=False)
    eval_transform: v2.Compose = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.train_transform = make_train_transform(self.preprocessing, hflip=self.hflip)
        self.eval_transform = make_eval_transform(self.preprocessing)

    @property
    def preprocessing(self) -> PreprocessSpec:
        """The model's spec: its pretrained weights' own, else the CIFAR-style exact resize to the input size with the
        dataset's mean and std."""
        return self.model_preprocessing or PreprocessSpec(
            size=(self.input_size[1], self.input_size[2]), mean=tuple(self.mean), std=tuple(self.std))

    def with_preprocessing(self, spec: PreprocessSpec) -> DataBundle:
        """The same data fed as ``spec`` says (a pretrained model's resize, crop, mean and std)."""
        return dataclasses.replace(self, model_preprocessing=spec, input_size=(3, *spec.size), mean=spec.mean,
                                   std=spec.std)

    def train_set(self) -> Dataset:
        return TransformedDataset(self.raw_train, self.train_transform)

    def val_set(self) -> Dataset:
        return TransformedDataset(self.raw_val, self.eval_transform)

    def calib_set(self) -> Dataset:
        """Training images without augmentation: what INT8 calibration should see."""
        return TransformedDataset(self.raw_train, self.eval_transform)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order (and worker augmentation RNG) follows `seed`.

    With `distributed`, a DistributedSampler(seed=seed) splits the data over the process group; the caller
    calls ``loader.sampler.set_epoch(epoch)``. With workers == 0, augmentation draws from the global torch RNG,
    so the caller seeds that.
    """
    if batch_size <= 0:
        raise EdgeKDError(f"batch size must be positive, got {batch_size}")
    if workers < 0:
        raise EdgeKDError(f"number of data workers must be >= 0, got {workers}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
    )


def channel_stats(raw: Dataset, size: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of a raw split after the eval resize."""
    total = np.zeros(3)
    squares = np.zeros(3)
    pixels = 0
    for index in range(len(raw)):
        image, _ = raw[index]
        x = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64) / 255.0
        total += x.sum(axis=(0, 1))
        squares += (x * x).sum(axis=(0, 1))
        pixels += x.shape[0] * x.shape[1]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


# --------------------------------------------------------------------------------------------- sources


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EdgeKDError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise EdgeKDError(f"dataset {name!r} takes no options, got {sorted(options)}")


def _no_path(name: str, path: str) -> None:
    if path:
        raise EdgeKDError(f"dataset {name!r} takes no path; write just '{name}'")


def _need_dir(name: str, path: str, layout: str) -> Path:
    if not path:
        raise EdgeKDError(f"dataset {name!r} needs a path: --data {name}:PATH, where PATH holds {layout}")
    folder = Path(os.path.abspath(os.path.expanduser(path)))
    if not folder.is_dir():
        raise EdgeKDError(f"{folder} is not a directory; pass --data {name}:PATH, where PATH holds {layout}")
    return folder


def _digits(path: str, image_size: int | None, options: dict) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _no_path("digits", path)
    _no_options("digits", options)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=DIGITS_VAL_FRACTION, stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    size = image_size or 32
    raw_train, raw_val = ArrayImages(x_train, y_train), ArrayImages(x_val, y_val)
    mean, std = channel_stats(raw_train, (size, size))
    return DataBundle("digits", "digits", {}, 10, [str(d) for d in range(10)], (3, size, size), mean, std,
                      raw_train, raw_val, hflip=False)


def _synthetic(path: str, image_size: int | None, options: dict) -> DataBundle:
    _no_path("synthetic", path)
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise EdgeKDError(f"unknown synthetic option(s) {sorted(unknown)}; valid: {sorted(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    opts["classes"] = _positive_int("synthetic classes", opts["classes"], 2)
    opts["size"] = _positive_int("synthetic size", opts["size"], 8)
    opts["count"] = _positive_int("synthetic count", opts["count"], opts["classes"])
    opts["val_count"] = _positive_int("synthetic val_count", opts["val_count"], opts["classes"])
    opts["seed"] = _positive_int("synthetic seed", opts["seed"], 0)
    x_train, y_train, x_val, y_val = synthetic_images(**opts)
    size = image_size or opts["size"]
    raw_train, raw_val = ArrayImages(x_train, y_train), ArrayImages(x_val, y_val)
    mean, std = channel_stats(raw_train, (size, size))
    names = [f"class{c}" for c in range(opts["classes"])]
    return DataBundle("synthetic", "synthetic", opts, opts["classes"], names, (3, size, size), mean, std,
                      raw_train, raw_val)


def _cifar(name: str, reader: type, files: list[str], subfolder: str, mean, std):
    layout = f"the official python files ({', '.join(files)}), directly or in {subfolder}/"

    def build(path: str, image_size: int | None, options: dict) -> DataBundle:
        _no_options(name, options)
        root = _need_dir(name, path, layout)
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


def _image_folder(root: str | Path, what: str) -> ImageFolder:
    try:
        return ImageFolder(str(root), loader=load_rgb)
    except FileNotFoundError as exc:
        raise EdgeKDError(f"{what}: {exc}") from exc


_IMAGEFOLDER_LAYOUT = "PATH/train/<class>/*.jpg|png|... and PATH/val/<class>/* with the same class folders"


def _imagefolder(path: str, image_size: int | None, options: dict) -> DataBundle:
    _no_options("imagefolder", options)
    root = _need_dir("imagefolder", path, _IMAGEFOLDER_LAYOUT)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise EdgeKDError(f"{root} has no '{split}' folder; imagefolder expects {_IMAGEFOLDER_LAYOUT}")
    train = _image_folder(root / "train", f"imagefolder {root}/train ({_IMAGEFOLDER_LAYOUT})")
    val = _image_folder(root / "val", f"imagefolder {root}/val ({_IMAGEFOLDER_LAYOUT})")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise EdgeKDError(f"{root}: train and val class folders differ (only in train: {only_train}, "
                          f"only in val: {only_val}); give both splits the same class folders")
    size = image_size or 224
    return DataBundle("imagefolder", f"imagefolder:{root}", {}, len(train.classes), list(train.classes),
                      (3, size, size), IMAGENET_MEAN, IMAGENET_STD, train, val)


_TINY_LAYOUT = ("wnids.txt, words.txt (optional), train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                "val/val_annotations.txt (the official tiny-imagenet-200 layout)")


def _tiny_imagenet(path: str, image_size: int | None, options: dict) -> DataBundle:
    _no_options("tiny-imagenet", options)
    root = _need_dir("tiny-imagenet", path, _TINY_LAYOUT)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    needed = [root / "wnids.txt", root / "train", root / "val" / "images", root / "val" / "val_annotations.txt"]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise EdgeKDError(f"{root} is missing {', '.join(missing)}; tiny-imagenet expects {_TINY_LAYOUT}")
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    train = _image_folder(root / "train", f"tiny-imagenet {root}/train ({_TINY_LAYOUT})")
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


# --------------------------------------------------------------------------------------------- synthetic


def _shape_masks(kind: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Masks of five shapes (disc, square, triangle, ring, cross) in centred, rotated coordinates u, v."""
    d = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    shapes = [
        d < r,
        np.maximum(au, av) < 0.8 * r,
        (v < 0.5 * r) & (au * math.sqrt(3.0) < v + r),
        (d < r) & (d > 0.55 * r),
        ((au < 0.3 * r) | (av < 0.3 * r)) & (np.maximum(au, av) < r),
    ]
    return np.select([kind == k for k in range(len(shapes))], shapes, False)


def _grating(x: np.ndarray, y: np.ndarray, theta: np.ndarray, freq: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Stripes in [0, 1] whose wave vector points along theta, `freq` cycles per image."""
    return 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)


def _synthetic_split(n: int, classes: int, size: int, palettes: np.ndarray, rng: np.random.Generator):
    """Each class is a (shape, stripe orientation) pair; colour, position, scale, phase and clutter are random."""
    orientations = max(2, math.ceil(classes / 5))
    shapes = math.ceil(classes / orientations)
    labels = rng.permutation(np.arange(n) % classes)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 19) // (size * size))
    for start in range(0, n, chunk):
        lab = labels[start:start + chunk]
        m = len(lab)

        def col(values: np.ndarray, m: int = m) -> np.ndarray:
            return values.astype(np.float32).reshape(m, 1, 1, *values.shape[1:])

        def uniform(low: float, high: float, *shape: int, m: int = m) -> np.ndarray:
            return col(rng.uniform(low, high, (m, *shape)))

        palette = palettes[rng.integers(0, len(palettes), m)]
        swap = rng.random(m) < 0.5
        palette[swap] = palette[swap][:, [2, 3, 0, 1]]
        bg_a, bg_b, fg_a, fg_b = (col(palette[:, i]) for i in range(4))

        t = _grating(x, y, uniform(0, np.pi), uniform(1.0, 3.0), uniform(0, 2 * np.pi)) * uniform(0.3, 0.9)
        img = bg_a + (bg_b - bg_a) * t[..., None]

        for _ in range(2):
            cx, cy, r, rot = uniform(0.1, 0.9), uniform(0.1, 0.9), uniform(0.06, 0.12), uniform(0, np.pi)
            u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
            v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
            mask = _shape_masks(col(rng.integers(0, 5, m)), u, v, r)
            t = _grating(x, y, uniform(0, np.pi), uniform(3.0, 5.0), uniform(0, 2 * np.pi))
            img = np.where(mask[..., None], fg_a + (fg_b - fg_a) * t[..., None], img)

        theta = col((lab // shapes) * np.pi / orientations) + uniform(-0.2, 0.2) * (np.pi / orientations)
        cx, cy, r, rot = uniform(0.3, 0.7), uniform(0.3, 0.7), uniform(0.24, 0.36), uniform(-0.3, 0.3)
        u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
        v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
        mask = _shape_masks(col(lab % shapes), u, v, r)
        t = _grating(x, y, theta, uniform(3.0, 5.0), uniform(0, 2 * np.pi))
        img = np.where(mask[..., None], fg_a + (fg_b - fg_a) * t[..., None], img)

        img = img * uniform(0.7, 1.1)[..., None] + uniform(-0.1, 0.1)[..., None]
        img = img + rng.normal(0, 0.05, img.shape).astype(np.float32)
        images[start:start + m] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels


def synthetic_images(classes: int, size: int, count: int, val_count: int, seed: int):
    """Train and val images (uint8 NHWC) and labels, a pure function of the options.

    Palettes are shared by all classes and drawn per image, so mean colour says nothing about the class;
    train and val use independent streams, so changing val_count leaves the training images as they were.
    """
    streams = [np.random.default_rng([seed, k]) for k in range(3)]
    soft, bold = streams[0].uniform(0.2, 0.8, (2, 8, 3))
    palettes = np.stack([soft + 0.12, soft - 0.12, bold + 0.22, bold - 0.22], axis=1).clip(0, 1).astype(np.float32)
    x_train, y_train = _synthetic_split(count, classes, size, palettes, streams[1])
    x_val, y_val = _synthetic_split(val_count, classes, size, palettes, streams[2])
    return x_train, y_train, x_val, y_val


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Source:
    syntax: str
    description: str
    classes: str
    input_size: str
    layout: str
    build: Callable[[str, int | None, dict], DataBundle]


_CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
_CIFAR100_FILES = ["train", "test", "meta"]

_SOURCES: dict[str, _Source] = {
    "digits": _Source(
        "digits", "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download); "
        "fixed stratified 20% held-out split", "10", "3x32x32", "none (ships with scikit-learn)", _digits),
    "synthetic": _Source(
        "synthetic", "procedural shapes with oriented stripe textures, shared colour palettes, clutter and noise; "
        "options classes, size, count, val_count, seed", "10 (option classes)", "3x32x32 (option size)",
        "none (generated)", _synthetic),
    "cifar10": _Source(
        "cifar10:ROOT", "CIFAR-10, official python version; test_batch is the held-out split", "10", "3x32x32",
        "ROOT or ROOT/cifar-10-batches-py holding " + ", ".join(_CIFAR10_FILES),
        _cifar("cifar10", _CIFAR10Files, _CIFAR10_FILES, "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD)),
    "cifar100": _Source(
        "cifar100:ROOT", "CIFAR-100 (fine labels), official python version; test is the held-out split", "100",
        "3x32x32", "ROOT or ROOT/cifar-100-python holding " + ", ".join(_CIFAR100_FILES),
        _cifar("cifar100", _CIFAR100Files, _CIFAR100_FILES, "cifar-100-python", CIFAR100_MEAN, CIFAR100_STD)),
    "imagefolder": _Source(
        "imagefolder:PATH", "any image folder tree, one folder per class; ImageNet statistics",
        "number of class folders", "3x224x224 (image_size overrides)", _IMAGEFOLDER_LAYOUT, _imagefolder),
    "tiny-imagenet": _Source(
        "tiny-imagenet:PATH", "Tiny-ImageNet-200; the labelled val split is the held-out split", "200",
        "3x64x64", "PATH (or PATH/tiny-imagenet-200) with " + _TINY_LAYOUT, _tiny_imagenet),
}


def list_datasets() -> list[dict]:
    """What `edgekd datasets` prints: one row per source."""
    return [
        {"name": name, "spec": s.syntax, "description": s.description, "classes": s.classes,
         "input_size": s.input_size, "layout": s.layout}
        for name, s in _SOURCES.items()
    ]


def _source(spec: str) -> tuple[_Source, str]:
    name, _, path = spec.strip().partition(":")
    source = _SOURCES.get(name.strip().lower())
    if source is None:
        raise EdgeKDError(f"unknown dataset {name!r}; valid: {', '.join(s.syntax for s in _SOURCES.values())}")
    return source, path.strip()


def check_data_spec(spec: str) -> None:
    """A known dataset, with a folder that exists where it takes one; reads no data (the files are checked when
    built)."""
    source, path = _source(spec)
    name = source.syntax.partition(":")[0]
    if ":" in source.syntax:
        _need_dir(name, path, source.layout)
    else:
        _no_path(name, path)


def build_data(spec: str, *, image_size: int | None = None, options: dict | None = None) -> DataBundle:
    """Build a dataset from its spec ('digits', 'synthetic', 'cifar100:/data/c100', ...); never downloads."""
    source, path = _source(spec)
    if image_size is not None:
        image_size = _positive_int("image size", image_size)
    return source.build(path, image_size, dict(options or {}))


def run_data(desc: dict[str, Any]) -> DataBundle:
    """The dataset a run's model was trained on (its ``model.json``), at the model's input size and with the
    model's own preprocessing (e.g. its pretrained weights'): what exporting or pruning that model evaluates on."""
    from edgekd.contracts.rundir import description_preprocessing

    options = desc.get("dataset_options") or {}
    bundle = build_data(desc["dataset"], image_size=int(desc["input_size"][-1]), options=options)
    return bundle.with_preprocessing(description_preprocessing(desc))
