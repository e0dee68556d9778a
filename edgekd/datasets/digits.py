"""scikit-learn's bundled 8x8 handwritten digits: the dataset every command runs on with nothing downloaded."""

from __future__ import annotations

import numpy as np

from edgekd.data import ArrayImages, DataBundle, DatasetSource, channel_stats, no_options, no_path, register_dataset

# Fixed so that every run, whatever its training seed, and the exporter hold out the same digits.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2


def _digits(path: str, image_size: int | None, options: dict) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    no_path("digits", path)
    no_options("digits", options)
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


register_dataset(DatasetSource(
    "digits", "digits", "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download); "
    "fixed stratified 20% held-out split", "10", "3x32x32", "none (ships with scikit-learn)", _digits))
