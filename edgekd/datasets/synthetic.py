"""Procedural shapes with oriented stripe textures: a dataset of any size, classes and resolution, made from a seed,
on which a teacher clearly helps (a test bed for distillation without downloads)."""

from __future__ import annotations

import math

import numpy as np

from edgekd.data import ArrayImages, DataBundle, DatasetSource, channel_stats, no_path, positive_int, register_dataset
from edgekd.errors import EdgeKDError

SYNTHETIC_DEFAULTS = {"classes": 10, "size": 32, "count": 4000, "val_count": 1000, "seed": 0}


def _synthetic(path: str, image_size: int | None, options: dict) -> DataBundle:
    no_path("synthetic", path)
    unknown = set(options) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise EdgeKDError(f"unknown synthetic option(s) {sorted(unknown)}; valid: {sorted(SYNTHETIC_DEFAULTS)}")
    opts = {**SYNTHETIC_DEFAULTS, **options}
    opts["classes"] = positive_int("synthetic classes", opts["classes"], 2)
    opts["size"] = positive_int("synthetic size", opts["size"], 8)
    opts["count"] = positive_int("synthetic count", opts["count"], opts["classes"])
    opts["val_count"] = positive_int("synthetic val_count", opts["val_count"], opts["classes"])
    opts["seed"] = positive_int("synthetic seed", opts["seed"], 0)
    x_train, y_train, x_val, y_val = synthetic_images(**opts)
    size = image_size or opts["size"]
    raw_train, raw_val = ArrayImages(x_train, y_train), ArrayImages(x_val, y_val)
    mean, std = channel_stats(raw_train, (size, size))
    names = [f"class{c}" for c in range(opts["classes"])]
    return DataBundle("synthetic", "synthetic", opts, opts["classes"], names, (3, size, size), mean, std,
                      raw_train, raw_val)


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


register_dataset(DatasetSource(
    "synthetic", "synthetic", "procedural shapes with oriented stripe textures, shared colour palettes, clutter and "
    "noise; options classes, size, count, val_count, seed", "10 (option classes)", "3x32x32 (option size)",
    "none (generated)", _synthetic))
