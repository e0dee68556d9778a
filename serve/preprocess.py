"""Image bytes -> the float32 CHW tensor an exported model expects, as the manifest's preprocessing spec says.

The spec's steps (``edgekd.contracts.preprocessing``) in PIL + numpy, bit for bit the training eval transform
built from the same spec with torchvision: resize (exact, or shorter side then centre crop) with the spec's PIL
filter, uint8 times float32 ``scale``, then (x - mean) / std in float32. Before that, whatever the client sent is
turned into the RGB image training would have seen:

- EXIF orientation is applied (a phone photo is classified the way it is displayed);
- images with transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) are composited on a
  **white** background, which is what a viewer shows; the colour values under transparent pixels are
  arbitrary and would otherwise leak into the input;
- 16-bit greyscale (``I;16*``) is scaled to 0-255 (``round(v / 257)``), not clipped as ``convert`` does;
  32-bit ``I`` and float ``F`` images are read by their value range: 0-255 as is, 0-65535 as 16-bit,
  ``F`` in 0-1 as a fraction of white, anything else rescaled from its min-max;
- every other mode (1, L, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's ``convert("RGB")``.

Multi-frame files (GIF, TIFF, APNG) use their first frame.

Memory: decoded pixels in flight across the decode threads are bounded by a byte budget (a maximum-size image
decodes alone), and an image over ``LEAN_PIXELS`` never exists at full size in more than one copy: a JPEG is
decoded at a reduced DCT scale (Pillow's draft mode), anything else is converted to RGB and box-reduced strip by
strip (Pillow's ``reduce``, as ``resize(reducing_gap=...)`` does) to at least twice the size the resize needs,
then oriented; glibc is asked to return the freed memory afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgekd.contracts.manifest import manifest_preprocessing
from edgekd.contracts.preprocessing import PreprocessSpec
from edgekd.settings import SERVE

# 25 megapixels covers 24 MP camera photos; decoding one as RGB takes 75 MB, which keeps the server in budget.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Up to this size decoding and resizing take well under a millisecond: cheaper on the event loop than a thread hop.
INLINE_MAX_PIXELS = 128 * 128
LEAN_PIXELS = 4_000_000  # above this an image is decoded lean (module doc): never a second full-size copy
STRIP_ROWS = 64  # rows converted at a time on the lean path
# bytes per pixel of Pillow's decoded storage (RGB takes 4: Pillow pads it), for the decode budget
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# EXIF orientation -> the transpose that displays the image upright (what ImageOps.exif_transpose applies)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def decoded_bytes(img: Image.Image) -> int:
    """What decoding ``img`` at its header's size and mode allocates: its pixels, plus the decoder's and the
    strip conversions' buffers (measured: a quarter of the pixels and a few MB)."""
    pixels = img.width * img.height * _BYTES_PER_PIXEL.get(img.mode, 4)
    return pixels + pixels // 4 + (8 << 20)


class DecodeBudget:
    """Bytes of decoded pixels the decode threads may hold at once; a decode waits until its share is free.

    A decode larger than the whole budget runs alone rather than never."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.capacity)
        with self._free:
            self._free.wait_for(lambda: self.used + nbytes <= self.capacity)
            self.used += nbytes
        try:
            yield
        finally:
            with self._free:
                self.used -= nbytes
                self._free.notify_all()


def _release_freed_memory() -> None:
    """Ask glibc to hand freed pages back to the system; without it a burst of large decodes stays resident."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


class ImageError(ValueError):
    """The client's bytes are not an image we can classify (HTTP 400)."""

    status_code = 400


class ImageTooLarge(ImageError):
    """The image has more pixels than the server allows (HTTP 413): a decompression bomb or a huge scan."""

    status_code = 413


def open_image(data: bytes, max_pixels: int = SERVE.max_pixels) -> Image.Image:
    """Read the header only (format and size; nothing decoded yet), refusing more than ``max_pixels`` pixels."""
    if not data:
        raise ImageError("the uploaded file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        reason = str(e).split(",")[0]  # Pillow's "Image size (N pixels) exceeds limit of M pixels, could be ..."
        raise ImageTooLarge(
            f"image rejected as a decompression bomb: {reason}; this server accepts at most {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageError("not an image: the data matches no image format Pillow can read") from None
    except Exception as e:  # Pillow signals unreadable input with many types (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; this server accepts at most {max_pixels}")
    return img


def load_image(img: Image.Image, *, orient: bool = True) -> Image.Image:
    """Decode an image from ``open_image`` fully (so truncation shows here) and apply its EXIF orientation."""
    try:
        img.load()
        if orient:
            ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # truncated data, broken chunks or EXIF: a client problem, never a server error
        raise ImageError(f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    if img.width == 0 or img.height == 0:
        raise ImageError("the image has no pixels")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: the image as stored
        return 1


def _rescale_to_uint8(arr: np.ndarray, mode: str, extrema: tuple[float, float] | None = None) -> np.ndarray:
    """Map a 16-bit, 32-bit integer or float greyscale array to 0-255 by its nominal range (see module doc);
    ``extrema``: the whole image's (min, max) when ``arr`` is a strip of it."""
    if mode in _SIXTEEN_BIT:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = extrema if extrema is not None else (float(values.min()), float(values.max()))
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif lo >= 0.0 and hi > 255.0 and hi <= 65535.0:
        values = values / 257.0
    elif lo < 0.0 or hi > 255.0:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, the mode the training images had (rules in the module doc)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(img), img.mode, extrema), "L").convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Preprocessor:
    """A preprocessing spec (``edgekd.contracts.preprocessing``) as a callable: image bytes -> float32 (3, H, W)."""

    spec: PreprocessSpec
    max_pixels: int = SERVE.max_pixels
    budget: DecodeBudget = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.budget is None:  # a maximum-size RGBA image, decoded alone
            object.__setattr__(self, "budget", DecodeBudget(4 * self.max_pixels + (8 << 20)))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], max_pixels: int = SERVE.max_pixels) -> Preprocessor:
        """Build from the manifest's spec; an unusable spec is an export problem, said so."""
        return cls(manifest_preprocessing(manifest), max_pixels)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        return self.spec.size

    def image_to_array(self, img: Image.Image) -> np.ndarray:
        """An RGB PIL image -> normalised float32 (3, H, W), exactly like the torchvision eval transform."""
        width, height = self.spec.resized_size(*img.size)
        if img.size != (width, height):
            img = img.resize((width, height), RESAMPLING[self.spec.interpolation])
        box = self.spec.crop_box(width, height)
        if box is not None:
            img = img.crop(box)
        chw = np.asarray(img).transpose(2, 0, 1)
        if self.spec.channel_order == "BGR":
            chw = chw[::-1]
        out = np.empty(chw.shape, np.float32)
        for c in range(3):
            np.take(self.levels[c], chw[c], out=out[c])
        return out

    @cached_property
    def levels(self) -> np.ndarray:
        """(3, 256): every 8-bit value of each channel through ``x * scale``, ``- mean``, ``/ std`` in float32.

        The same float32 operations as the eval transform, done once per value: a table lookup per pixel then
        gives bit-identical results at half the cost of doing the arithmetic on every pixel.
        """
        values = np.arange(256, dtype=np.float32) * np.float32(self.spec.scale)
        mean = np.asarray(self.spec.mean, dtype=np.float32).reshape(3, 1)
        std = np.asarray(self.spec.std, dtype=np.float32).reshape(3, 1)
        return (values - mean) / std

    def open(self, data: bytes) -> Image.Image:
        """The image's header, checked against ``max_pixels``: enough to decide where to decode it."""
        return open_image(data, self.max_pixels)

    def array_from(self, img: Image.Image) -> np.ndarray:
        """An image from ``open`` -> decoded, converted and normalised (3, H, W) float32."""
        if img.width * img.height <= INLINE_MAX_PIXELS:  # on the event loop: never waits for the budget
            return self.image_to_array(to_rgb(load_image(img)))
        lean = img.width * img.height > LEAN_PIXELS
        if lean and img.format == "JPEG":  # decode at the smallest DCT scale that keeps twice the needed size
            width, height = self.spec.resized_size(*img.size)
            img.draft(img.mode, (2 * width, 2 * height))
        try:
            with self.budget.hold(decoded_bytes(img)):
                if lean and img.width * img.height > LEAN_PIXELS:
                    rgb = self._lean_rgb(img)
                    img.close()  # the full-size decode goes before the (small) array is made
                    return self.image_to_array(rgb)
                return self.image_to_array(to_rgb(load_image(img)))
        finally:
            img.close()  # the caller keeps its reference until the model has answered: not the pixels
            if lean:
                _release_freed_memory()

    def _lean_rgb(self, img: Image.Image) -> Image.Image:
        """RGB of a large image box-reduced to at least twice the size the resize needs, converted strip by strip,
        then oriented: the full-size decode is the only full-size copy."""
        orientation = _orientation(img)
        load_image(img, orient=False)
        width, height = self.spec.resized_size(*img.size)
        factor = max(1, min(img.width // (2 * max(width, height)), img.height // (2 * max(width, height))))
        extrema = img.getextrema() if img.mode in ("I", "F") else None
        out = Image.new("RGB", (math.ceil(img.width / factor), math.ceil(img.height / factor)))
        rows = max(factor, STRIP_ROWS // factor * factor)  # whole blocks of the reduce, about STRIP_ROWS rows
        for top in range(0, img.height, rows):
            strip = to_rgb(img.crop((0, top, img.width, min(img.height, top + rows))), extrema)
            out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
        return out.transpose(_ORIENTATION[orientation]) if orientation in _ORIENTATION else out

    def __call__(self, data: bytes) -> np.ndarray:
        return self.array_from(self.open(data))
