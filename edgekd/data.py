"""Datasets: every source becomes a `DataBundle` of RGB PIL images plus the transforms that feed a model.

Raw splits hold untransformed ``(PIL RGB image, int label)`` items so that training augmentation, evaluation and
INT8 calibration share one source of truth. The eval transform is built from the bundle's preprocessing spec
(``edgekd.contracts.preprocessing``), which the exporter writes into the manifest and the torch-free server
rebuilds with PIL + numpy.
Nothing here downloads: a source that is not on disk is a user error that says which layout is expected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.errors import EdgeKDError
from edgekd.registries import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EdgeKDError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def no_options(name: str, options: dict) -> None:
    if options:
        raise EdgeKDError(f"dataset {name!r} takes no options, got {sorted(options)}")


def no_path(name: str, path: str) -> None:
    if path:
        raise EdgeKDError(f"dataset {name!r} takes no path; write just '{name}'")


def need_dir(name: str, path: str, layout: str) -> Path:
    if not path:
        raise EdgeKDError(f"dataset {name!r} needs a path: --data {name}:PATH, where PATH holds {layout}")
    folder = Path(os.path.abspath(os.path.expanduser(path)))
    if not folder.is_dir():
        raise EdgeKDError(f"{folder} is not a directory; pass --data {name}:PATH, where PATH holds {layout}")
    return folder


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSource:
    """A dataset source: how ``--data`` names it (``syntax``), what `edgekd datasets` says of it, and ``build(path,
    image_size, options)``, which reads it from disk (never downloading) into a ``DataBundle``."""

    name: str
    syntax: str
    description: str
    classes: str
    input_size: str
    layout: str
    build: Callable[[str, int | None, dict], DataBundle]


# each source is a module of edgekd.datasets, imported on the first lookup (the edgekd.datasets entry points)
register_dataset = DATASETS.register


def list_datasets() -> list[dict]:
    """What `edgekd datasets` prints: one row per source."""
    return [
        {"name": name, "spec": s.syntax, "description": s.description, "classes": s.classes,
         "input_size": s.input_size, "layout": s.layout}
        for name, s in ((n, DATASETS[n]) for n in DATASETS.names())
    ]


def _source(spec: str) -> tuple[DatasetSource, str]:
    name, _, path = spec.strip().partition(":")
    return DATASETS.lookup(name), path.strip()


def check_data_spec(spec: str) -> None:
    """A known dataset, with a folder that exists where it takes one; reads no data (the files are checked when
    built)."""
    source, path = _source(spec)
    if ":" in source.syntax:
        need_dir(source.name, path, source.layout)
    else:
        no_path(source.name, path)


def build_data(spec: str, *, image_size: int | None = None, options: dict | None = None) -> DataBundle:
    """Build a dataset from its spec ('digits', 'synthetic', 'cifar100:/data/c100', ...); never downloads."""
    source, path = _source(spec)
    if image_size is not None:
        image_size = positive_int("image size", image_size)
    return source.build(path, image_size, dict(options or {}))


def run_data(desc: dict[str, Any]) -> DataBundle:
    """The dataset a run's model was trained on (its ``model.json``), at the model's input size and with the
    model's own preprocessing (e.g. its pretrained weights'): what exporting or pruning that model evaluates on."""
    from edgekd.contracts.rundir import description_preprocessing

    options = desc.get("dataset_options") or {}
    bundle = build_data(desc["dataset"], image_size=int(desc["input_size"][-1]), options=options)
    return bundle.with_preprocessing(description_preprocessing(desc))
