"""RandAugment as the ResNeSt recipe runs it (PyTorch-Encoding's ``RandAugment(2, 12)``), on a PIL image.

The recipe's variant, written here from its description (method doc section 4): ``n`` operations drawn with
replacement from 16; each drawn operation is then skipped with probability 1/2 (the recipe compares a uniform draw
with a threshold itself uniform in [0.2, 0.8], which skips with probability exactly 1/2); an operation's strength
is ``low + (m / 30) * (high - low)`` of its range, the same for every image; geometric operations take a random
sign. At m = 12: rotate 12 degrees, shear 0.12, translate 40 px, cutout a 16 px square, posterize to 1 bit,
solarize above 102, colour / contrast / brightness / sharpness factor 0.82. Translation and cutout are in pixels of
the full image, as in the recipe (the crop comes after).

Every draw comes from the numpy generator passed in, so a view is a pure function of its seed.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

MAX_MAGNITUDE = 30
CUTOUT_FILL = (125, 123, 114)  # about the ImageNet mean colour
Op = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coefficients, resample=Image.BICUBIC)


def _solarize_add(img: Image.Image, addition: float, rng: np.random.Generator) -> Image.Image:
    shifted = np.clip(np.asarray(img).astype(np.int16) + int(addition), 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(shifted), 128)


def _cutout(img: Image.Image, side: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    x0, y0 = max(0, int(rng.uniform(0, w) - side / 2)), max(0, int(rng.uniform(0, h) - side / 2))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), CUTOUT_FILL)
    return out


#: (name, operation, low, high): the recipe's 16 operations and the range its magnitude scales
OPERATIONS: tuple[tuple[str, Op, float, float], ...] = (
    ("auto_contrast", lambda img, v, rng: ImageOps.autocontrast(img), 0, 1),
    ("equalize", lambda img, v, rng: ImageOps.equalize(img), 0, 1),
    ("invert", lambda img, v, rng: ImageOps.invert(img), 0, 1),
    ("rotate", lambda img, v, rng: img.rotate(_signed(v, rng)), 0, 30),
    ("posterize", lambda img, v, rng: ImageOps.posterize(img, int(v)), 0, 4),
    ("solarize", lambda img, v, rng: ImageOps.solarize(img, v), 0, 256),
    ("solarize_add", _solarize_add, 0, 110),
    ("color", lambda img, v, rng: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    ("contrast", lambda img, v, rng: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    ("brightness", lambda img, v, rng: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    ("sharpness", lambda img, v, rng: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    ("shear_x", lambda img, v, rng: _affine(img, (1, _signed(v, rng), 0, 0, 1, 0)), 0, 0.3),
    ("shear_y", lambda img, v, rng: _affine(img, (1, 0, 0, _signed(v, rng), 1, 0)), 0, 0.3),
    ("cutout", _cutout, 0, 40),
    ("translate_x", lambda img, v, rng: _affine(img, (1, 0, _signed(v, rng), 0, 1, 0)), 0, 100),
    ("translate_y", lambda img, v, rng: _affine(img, (1, 0, 0, 0, 1, _signed(v, rng))), 0, 100),
)


def rand_augment(img: Image.Image, n: int, m: int, rng: np.random.Generator) -> Image.Image:
    """``n`` operations at magnitude ``m`` (of 30), each skipped with probability 1/2; ``m = 0`` returns ``img``."""
    if m <= 0:
        return img
    for k in rng.integers(0, len(OPERATIONS), size=n):
        _, op, low, high = OPERATIONS[k]
        if rng.random() < 0.5:
            continue
        img = op(img, low + (m / MAX_MAGNITUDE) * (high - low), rng)
    return img
