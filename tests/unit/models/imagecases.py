"""A varied, deterministic set of encoded images for preprocessing parity tests.

Photos come from ``skimage.data`` (shipped with scikit-image, nothing is downloaded);
everything else is synthetic. Each case is the encoded file, as a server would receive it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np
from PIL import Image

PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
)


@dataclass(frozen=True)
class Case:
    """One encoded image and a readable name for test ids."""

    name: str
    data: bytes


@cache
def photo(name: str) -> Image.Image:
    """A photo from skimage.data as an RGB (or L, for grey photos) PIL image."""
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array)


def synthetic(width: int, height: int, seed: int = 0, noise: float = 24.0) -> Image.Image:
    """Colour gradients, a few sharp edges and Gaussian noise: detail at every scale."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = x / max(width - 1, 1)
    v = y / max(height - 1, 1)
    base = np.stack([255 * u, 255 * v, 127.5 + 127.5 * np.sin(6.28 * (u + v) * 3)], axis=-1)
    stripes = ((x // max(width // 16, 1) + y // max(height // 12, 1)) % 2)[..., None] * 40.0
    pixels = base + stripes + rng.normal(0.0, noise, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """Encode ``image`` as ``fmt`` with Pillow."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_orientation(image: Image.Image, orientation: int, **options: Any) -> bytes:
    """A JPEG carrying the given EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), **options)


def upscaled_photo(name: str, width: int, height: int) -> Image.Image:
    """A skimage photo resized (aspect not kept) to a camera-sized image."""
    return photo(name).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def _rgba(width: int, height: int, seed: int) -> Image.Image:
    rgb = np.asarray(synthetic(width, height, seed))
    yy, xx = np.mgrid[0:height, 0:width]
    alpha = ((xx * 255) // max(width - 1, 1)).astype(np.uint8)
    alpha[(yy // 7 + xx // 5) % 3 == 0] = 0  # fully transparent patches with non-white RGB
    return Image.fromarray(np.dstack([rgb, alpha]))


def _palette(width: int, height: int, seed: int) -> Image.Image:
    return synthetic(width, height, seed).quantize(colors=64)


def _animated(fmt: str, transparency: bool = False) -> bytes:
    frames = [synthetic(120, 90, seed) for seed in range(3)]
    frames[1] = frames[1].transpose(Image.Transpose.ROTATE_180)
    if fmt == "GIF":
        palettised = [frame.quantize(colors=32) for frame in frames]
        options: dict[str, Any] = {"duration": 80, "loop": 0}
        if transparency:
            options["transparency"] = 0
        return encode(palettised[0], "GIF", save_all=True, append_images=palettised[1:], **options)
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80)


def _i16(width: int, height: int) -> Image.Image:
    ramp = np.linspace(0, 1000, width * height, dtype=np.float64).reshape(height, width)
    return Image.fromarray(ramp.astype(np.uint16))


def _rgb_trns() -> Image.Image:
    image = synthetic(64, 48, 5).quantize(colors=8).convert("RGB")
    image.info["transparency"] = image.getpixel((0, 0))
    return image


def _synthetic_png(width: int, height: int, seed: int) -> bytes:
    return encode(synthetic(width, height, seed), "PNG")


def _photo_jpeg(name: str) -> bytes:
    return encode(photo(name), "JPEG", quality=90)


def _oriented_rocket(orientation: int) -> bytes:
    return with_orientation(upscaled_photo("rocket", 320, 200), orientation)


def _parity_builders() -> dict[str, Callable[[], bytes]]:
    builders: dict[str, Callable[[], bytes]] = {}

    def add(name: str, build: Callable[[], bytes]) -> None:
        builders[name] = build

    for w, h in [
        (1, 1), (2, 3), (7, 5), (223, 224), (224, 224), (225, 224), (224, 300), (300, 224),
        (640, 480), (1000, 667), (333, 1001), (1920, 1280), (500, 1100),
    ]:  # fmt: skip
        add(f"png-rgb-{w}x{h}", partial(_synthetic_png, w, h, w + h))
    # Elongated: the reference's resize gets huge (3x4000 -> 224x298666); both pass orders.
    for w, h in [(1, 1000), (4000, 3), (3, 4000), (5, 600), (2400, 240), (240, 2400)]:
        add(f"png-extreme-{w}x{h}", partial(_synthetic_png, w, h, 3))
    for name in PHOTO_NAMES:
        add(f"jpeg-photo-{name}", partial(_photo_jpeg, name))
    add("jpeg-4000x3000", lambda: encode(upscaled_photo("coffee", 4000, 3000), "JPEG", quality=85))
    add("png-rgba", lambda: encode(_rgba(301, 203, 1), "PNG"))
    add("png-la", lambda: encode(_rgba(150, 260, 2).convert("LA"), "PNG"))
    add("png-l", lambda: encode(synthetic(260, 150, 3).convert("L"), "PNG"))
    add("png-1bit", lambda: encode(synthetic(97, 61, 4).convert("1"), "PNG"))
    add("png-p", lambda: encode(_palette(250, 180, 5), "PNG"))
    add("png-p-transparent", lambda: encode(_palette(250, 180, 6), "PNG", transparency=3))
    add("png-rgb-trns", lambda: encode(_rgb_trns(), "PNG"))
    add("png-i16", lambda: encode(_i16(230, 170), "PNG"))
    add("png-skimage-logo-rgba", lambda: encode(photo("logo"), "PNG"))
    add("jpeg-l", lambda: encode(synthetic(333, 250, 7).convert("L"), "JPEG"))
    add("jpeg-cmyk", lambda: encode(synthetic(320, 240, 8).convert("CMYK"), "JPEG"))
    add("jpeg-progressive", lambda: encode(photo("rocket"), "JPEG", progressive=True))
    add("jpeg-444", lambda: encode(photo("chelsea"), "JPEG", subsampling=0, quality=95))
    add("webp-lossy", lambda: encode(photo("astronaut"), "WEBP", quality=80))
    add("webp-lossless-rgba", lambda: encode(_rgba(200, 300, 9), "WEBP", lossless=True))
    add("webp-animated", lambda: _animated("WEBP"))
    add("gif-static", lambda: encode(_palette(230, 170, 10), "GIF"))
    add("gif-animated", lambda: _animated("GIF"))
    add("gif-animated-transparent", lambda: _animated("GIF", transparency=True))
    add("bmp-rgb", lambda: encode(synthetic(401, 299, 11), "BMP"))
    add("bmp-p", lambda: encode(_palette(199, 301, 12), "BMP"))
    add("tiff-rgb", lambda: encode(synthetic(310, 230, 13), "TIFF"))
    add("tiff-rgba", lambda: encode(_rgba(230, 310, 14), "TIFF", compression="tiff_lzw"))
    add("tiff-cmyk", lambda: encode(synthetic(310, 230, 15).convert("CMYK"), "TIFF"))
    add("tiff-i16", lambda: encode(_i16(170, 230), "TIFF"))
    for orientation in range(1, 9):
        add(f"jpeg-exif-orientation-{orientation}", partial(_oriented_rocket, orientation))
    return builders


_PARITY = _parity_builders()
PARITY_CASES = tuple(_PARITY)
"""Names of every size, aspect, mode, format and orientation the reference must match on."""


@cache
def parity_case(name: str) -> bytes:
    """The encoded file of one of :data:`PARITY_CASES` (built once)."""
    return _PARITY[name]()


def orientation_case(orientation: int) -> bytes:
    """A sharp 1354x902 JPEG with an EXIF orientation: decoded at 1/4 scale it is 339x226
    with half a pixel of padding on the right and bottom, which each transpose moves."""
    return with_orientation(_sharp_photo(), orientation, quality=92)


@cache
def _sharp_photo() -> Image.Image:
    return upscaled_photo("camera", 1354, 902)


@cache
def draft_cases() -> tuple[Case, ...]:
    """Large JPEGs where DCT-domain downscaling engages, incl. its worst geometries."""
    cases: list[Case] = []
    sizes = [(1920, 1280), (4000, 3000), (1280, 1920), (1001, 1503), (2047, 1365)]
    for index, name in enumerate(PHOTO_NAMES):
        w, h = sizes[index % len(sizes)]
        image = upscaled_photo(name, w, h)
        cases.append(Case(f"{name}-{w}x{h}", encode(image, "JPEG", quality=90)))
    for seed, (w, h) in enumerate([(3000, 4000), (1799, 1201)]):
        texture = synthetic(w, h, seed, noise=12.0)
        cases.append(Case(f"texture-{w}x{h}", encode(texture, "JPEG", quality=90)))
    # Decoded shortest side just above the resize size: the least margin in measurements.
    worst = upscaled_photo("camera", 1800, 2700)
    cases.append(Case("camera-1800x2700", encode(worst, "JPEG", quality=90)))
    partial = upscaled_photo("immunohistochemistry", 902, 1354)
    cases.append(Case("immunohistochemistry-902x1354", encode(partial, "JPEG", quality=90)))
    for orientation in (3, 6):
        cases.append(
            Case(f"camera-1354x902-orientation-{orientation}", orientation_case(orientation))
        )
    return tuple(cases)
