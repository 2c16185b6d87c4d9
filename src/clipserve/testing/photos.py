"""Photo-like JPEGs for benchmarks, made from the photos that ship inside scikit-image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def source_photos() -> list[Image.Image]:
    """The RGB photos bundled with scikit-image (no download)."""
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in _PHOTOS]


def make_jpegs(count: int, long_side: int = 1920, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` distinct 3:2 JPEGs ``long_side`` pixels wide, from random crops of the photos.

    Upscaled, so their detail is that of the small originals, but their decode cost is that of
    a real ``long_side``-pixel camera JPEG.
    """
    rng = np.random.default_rng(seed)
    photos = source_photos()
    size = (long_side, long_side * 2 // 3)
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        crop_w = int(width * rng.uniform(0.7, 1.0))
        crop_h = min(height, int(crop_w * 2 / 3))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(
            size, Image.Resampling.BICUBIC
        )
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out
