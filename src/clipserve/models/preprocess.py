"""Image decoding and OpenAI-CLIP preprocessing as pure functions.

The pipeline reproduces the reference — transformers' PIL-backed ``CLIPImageProcessor`` given
``ImageOps.exif_transpose(Image.open(data))`` — to float32 rounding:

1. decode; apply the EXIF orientation;
2. convert to RGB exactly as the reference does: images with an alpha band or a
   ``transparency`` entry are composited onto white, everything else goes through
   ``Image.convert("RGB")`` (so ``I;16`` clips at 255 and CMYK converts naively);
3. resize the shortest side to ``resize_size`` with PIL bicubic (long side
   ``int(resize_size * long / short)``), center crop ``image_size`` (offsets
   ``(resized - crop) // 2``, zero padding when the crop is larger than the image);
4. scale to [0, 1] and normalise with the model's mean and std, in float32.

Without JPEG draft decoding the output equals the reference's bit for bit. For ordinary
aspect ratios that means making the reference's own ``Image.resize`` call and cropping after
it: a ``box=`` resize of just the crop is not equivalent in Pillow 13 (box coordinates are
float32, and which of the two passes runs first depends on the box). Very elongated images,
whose full resize the reference makes huge (3x4000 becomes 224x298666), are resized one axis
at a time with the crop applied between the passes, reproducing each pass exactly.

JPEGs are decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``) while the decoded shortest side
stays at least ``draft_factor`` times ``resize_size``; then only the part of the decoded image
that survives the crop is resampled, with the geometry of the full-resolution picture. That
path is an approximation, bounded by measurement (see :class:`PreprocessConfig`).

Example::

    cfg = PreprocessConfig()
    pixels = preprocess(Path("cat.jpg").read_bytes(), cfg)  # float32, shape (3, 224, 224)
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import PIL
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from clipserve.errors import (
    ClipServeError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    ModelUnavailableError,
)

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ImageInput: TypeAlias = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | npt.NDArray[Any]
)
"""Anything :func:`preprocess` accepts: encoded bytes, a file path, a PIL image or a uint8 array."""

# The reference's rescale factor (1/255, applied in float64 and then cast to float32).
_RESCALE = 1 / 255
# Decoders that run an external program (Ghostscript for EPS) are not for untrusted bytes.
_REFUSED_FORMATS = frozenset({"EPS"})
_ORIENTATION_TAG = 0x0112
_DRAFT_SCALES = (8, 4, 2)
# Up to this aspect ratio the reference's full resize is cheap enough to repeat as is.
_FULL_RESIZE_MAX_ASPECT = 8
# Pillow's Resample.c constants (bicubic support; fixed-point bits of the 8-bit passes).
_BICUBIC_SUPPORT = 2.0
_PRECISION_BITS = 32 - 8 - 2
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are decoded and turned into model input.

    Attributes:
        image_size: Side of the square center crop fed to the model.
        resize_size: Length of the shortest side after resizing.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by afterwards.
        max_pixels: Largest ``width * height`` accepted; checked from the file header before
            any pixel is decoded.
        jpeg_draft: Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 (DCT scaling).
        draft_factor: Draft only while the decoded shortest side stays at least this many
            times ``resize_size``.

    The default ``draft_factor`` is measured: cosine between embeddings of a random-initialised
    ViT-B/32 (``CLIPModel(CLIPConfig())``, seed 0) for our pixels and the reference's (full
    decode). Minimum over 24 JPEGs (8 skimage photos upscaled to 1001-4000 px, textures, odd
    sizes, EXIF orientations, decoded sides just above the threshold):
    0.75 -> 0.999974, 1.0 -> 0.999974, 1.25 -> 0.999997, 2.0 -> 0.999999; over 80 JPEGs
    sized so the decoded shortest side lands just above 224: 1.0 -> 0.999974 (a sharp
    greyscale photo decoded at 225 px), 1.25 -> 0.999994. Sweeping the decoded side at 1/2,
    1/4 and 1/8 scale: 0.75x224 -> 0.99992, 0.875x -> 0.99996, 1.0x-1.06x -> 0.99998 and
    above. Below 1.0 the reduced image gets upsampled and the minimum falls, so 1.0 is the
    most aggressive factor that keeps a margin (>= 0.99995; the bound is 0.9999). It decodes
    a 1920x1280 JPEG at 1/4 scale (480x320) and a 4000x3000 one at 1/8 (500x375).
    """

    image_size: int = 224
    resize_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    max_pixels: int = 50_000_000
    jpeg_draft: bool = True
    draft_factor: float = 1.0

    def __post_init__(self) -> None:
        if min(self.image_size, self.resize_size, self.max_pixels) <= 0:
            raise ValueError(f"sizes and max_pixels must be positive: {self}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values, std positive: {self}")
        if self.draft_factor <= 0:
            raise ValueError(f"draft_factor must be positive: {self.draft_factor}")

    @classmethod
    def from_hf_dir(cls, directory: Path | str, **overrides: Any) -> PreprocessConfig:
        """Read the preprocessing of a Hugging Face CLIP checkpoint directory.

        Uses ``preprocessor_config.json`` (``crop_size`` and ``size`` either as
        ``{"height": ..., "width": ...}`` / ``{"shortest_edge": ...}`` or as plain ints,
        ``image_mean``, ``image_std``); sizes it does not give come from ``config.json``'s
        ``vision_config.image_size``; anything else missing keeps the OpenAI defaults.

        Args:
            directory: The checkpoint directory.
            **overrides: Fields to set regardless of the files (e.g. ``max_pixels``).

        Returns:
            The configuration.

        Raises:
            ModelUnavailableError: A config file is unreadable or describes a preprocessing
                this module does not implement (non-square crop, fixed-size resize).

        Example::

            cfg = PreprocessConfig.from_hf_dir(Path("clip-vit-base-patch32"), max_pixels=10**7)
        """
        directory = Path(directory)
        values: dict[str, Any] = {}
        vision = (_read_json(directory / "config.json") or {}).get("vision_config")
        if isinstance(vision, dict) and isinstance(vision.get("image_size"), int):
            values["image_size"] = values["resize_size"] = vision["image_size"]
        processor = _read_json(directory / "preprocessor_config.json")
        if processor is not None:
            values.update(_from_processor_config(processor))
        known = {field.name for field in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown PreprocessConfig fields: {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)


def decode_image(data: bytes | bytearray | memoryview, cfg: PreprocessConfig) -> Image.Image:
    """Decode encoded image bytes into an upright RGB image.

    The pixel count is checked from the header before decoding; JPEGs may be decoded at a
    reduced scale (see :class:`PreprocessConfig`); animated formats give their first frame;
    the EXIF orientation is applied; the result is converted to RGB as the reference does.

    A JPEG decoded at 1/n scale whose sides are not multiples of n has a partial last row
    or column. :func:`preprocess` accounts for it (it resamples the exact source region);
    ``to_pixel_values(decode_image(...))`` treats the image as whole, which shifts the
    geometry by a fraction of a pixel.

    Args:
        data: The encoded file (JPEG, PNG, WebP, GIF, BMP, TIFF, … anything Pillow reads).
        cfg: Limits and the JPEG draft policy.

    Returns:
        A loaded ``RGB`` image.

    Raises:
        InvalidImageError: Empty, unidentifiable, truncated or corrupt data.
        ImageTooLargeError: More than ``cfg.max_pixels`` pixels.

    Example::

        image = decode_image(Path("cat.jpg").read_bytes(), PreprocessConfig())
    """
    return _decode(data, cfg)[0]


def load_image(source: ImageInput, cfg: PreprocessConfig) -> Image.Image:
    """Turn any supported input into an upright RGB image.

    Args:
        source: Encoded bytes (``bytes``/``bytearray``/``memoryview``), a file path
            (``str``/``os.PathLike``), a PIL image (its EXIF orientation is applied; it is
            not modified) or a uint8 array shaped ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4``
            (RGBA is composited onto white, as the reference does for arrays).
        cfg: Limits and the JPEG draft policy.

    Returns:
        An ``RGB`` image (possibly ``source`` itself when it already is one).

    Raises:
        InvalidInputError: A path that cannot be read, or an unsupported input type.
        InvalidImageError: Undecodable data or an array of the wrong shape or dtype.
        ImageTooLargeError: More than ``cfg.max_pixels`` pixels.

    Example::

        image = load_image("photos/cat.jpg", PreprocessConfig())
    """
    return _load(source, cfg)[0]


def to_pixel_values(image: Image.Image, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Resize, center crop and normalise an RGB image into model input.

    Args:
        image: An RGB image, as :func:`load_image` returns (other modes are converted to
            RGB the same way; no EXIF orientation is applied here).
        cfg: Sizes, mean and std.

    Returns:
        A C-contiguous float32 array of shape ``(3, cfg.image_size, cfg.image_size)``.

    Example::

        pixels = to_pixel_values(Image.new("RGB", (640, 480)), PreprocessConfig())
    """
    return _pixel_values(image, None, cfg)


def preprocess(source: ImageInput, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Decode (if needed) and preprocess one image into model input.

    :func:`load_image` followed by :func:`to_pixel_values`; see those for the accepted
    inputs and the errors raised.

    Args:
        source: Encoded bytes, a file path, a PIL image or a uint8 array.
        cfg: The model's preprocessing configuration.

    Returns:
        A C-contiguous float32 array of shape ``(3, cfg.image_size, cfg.image_size)``.

    Example::

        batch = np.stack([preprocess(data, cfg) for data in uploads])
    """
    image, drafted = _load(source, cfg)
    return _pixel_values(image, drafted, cfg)


@dataclass(frozen=True)
class _Drafted:
    """Where the picture lies in a JPEG decoded at reduced scale.

    ``box`` is the region of the decoded (upright) image that the full-resolution picture
    maps to, ``size`` that picture's upright size: libjpeg rounds scaled sides up, so the
    last row or column of the decoded image may cover less than a whole pixel.
    """

    box: tuple[float, float, float, float]
    size: tuple[int, int]


def _load(source: ImageInput, cfg: PreprocessConfig) -> tuple[Image.Image, _Drafted | None]:
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(source, cfg)
    if isinstance(source, str | os.PathLike):
        return _decode(_read_file(source), cfg)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, cfg), None
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, cfg), None
    raise InvalidInputError(
        f"unsupported image input of type {type(source).__name__}: expected bytes, a path, "
        "a PIL image or a uint8 numpy array"
    )


def _decode(
    data: bytes | bytearray | memoryview, cfg: PreprocessConfig
) -> tuple[Image.Image, _Drafted | None]:
    size = memoryview(data).nbytes
    if size == 0:
        raise InvalidImageError("image data is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"cannot identify image format ({size} bytes, not an image file Pillow can read)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"image is truncated or corrupt: {exc}") from exc
    with image:
        if image.format in _REFUSED_FORMATS:
            raise InvalidImageError(f"unsupported image format: {image.format}")
        _check_pixels(image.size, cfg)
        try:
            return _decode_pixels(image, cfg)
        except (ClipServeError, MemoryError):
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"image is too large: {exc}") from exc
        except Exception as exc:
            raise InvalidImageError(f"image is truncated or corrupt: {exc}") from exc


def _decode_pixels(
    image: ImageFile.ImageFile, cfg: PreprocessConfig
) -> tuple[Image.Image, _Drafted | None]:
    full_size = image.size
    scale = 1
    if cfg.jpeg_draft and isinstance(image, JpegImagePlugin.JpegImageFile):
        scale = _draft(image, cfg)
    image.load()
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    decoded_size = image.size
    ImageOps.exif_transpose(image, in_place=True)
    rgb = _to_rgb(image)
    if scale == 1:
        return rgb, None
    content = (full_size[0] / scale, full_size[1] / scale)
    box = _upright_box(orientation, decoded_size, content)
    swapped = orientation in (5, 6, 7, 8)
    return rgb, _Drafted(box, (full_size[1], full_size[0]) if swapped else full_size)


def _check_pixels(size: tuple[int, int], cfg: PreprocessConfig) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > cfg.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"more than the limit of {cfg.max_pixels:,}"
        )


def _draft(image: JpegImagePlugin.JpegImageFile, cfg: PreprocessConfig) -> int:
    """Ask libjpeg for DCT-domain downscaling; returns the scale it will decode at."""
    width, height = image.size
    for scale in _DRAFT_SCALES:
        # libjpeg rounds scaled sides up.
        if -(-min(width, height) // scale) >= cfg.draft_factor * cfg.resize_size:
            # Pillow picks the largest scale <= min(w // req_w, h // req_h), which for
            # req = size // scale is ``scale`` itself.
            image.draft(image.mode, (width // scale, height // scale))
            return scale if image.size == (-(-width // scale), -(-height // scale)) else 1
    return 1


def _upright_box(
    orientation: int, decoded: tuple[int, int], content: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Where ``content`` (the top-left part of the stored image) lands after the transpose
    that EXIF ``orientation`` calls for; partial pixels move with their edge."""
    (width, height), (right, bottom) = decoded, content
    boxes = {
        2: (width - right, 0.0, float(width), bottom),  # mirrored left-right
        3: (width - right, height - bottom, float(width), float(height)),  # rotated 180
        4: (0.0, height - bottom, right, float(height)),  # mirrored top-bottom
        5: (0.0, 0.0, bottom, right),  # transposed
        6: (height - bottom, 0.0, float(height), right),  # rotated 90 clockwise
        7: (height - bottom, width - right, float(height), float(width)),  # transversed
        8: (0.0, width - right, bottom, float(width)),  # rotated 90 counter-clockwise
    }
    return boxes.get(orientation, (0.0, 0.0, right, bottom))


def _to_rgb(image: Image.Image) -> Image.Image:
    # Mirrors transformers.image_transforms.convert_to_rgb (transformers 5): anything with
    # transparency is composited onto white; the rest is Image.convert("RGB").
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _pil_to_rgb(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    _check_pixels(image.size, cfg)
    try:
        image.load()
        if image.getexif().get(_ORIENTATION_TAG, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (ClipServeError, MemoryError):
        raise
    except Exception as exc:
        raise InvalidImageError(f"image is truncated or corrupt: {exc}") from exc


def _array_to_rgb(array: npt.NDArray[Any], cfg: PreprocessConfig) -> Image.Image:
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise InvalidImageError(
            f"unsupported image array with shape {array.shape} and dtype {array.dtype}: "
            "expected uint8 HxW, HxWx1, HxWx3 or HxWx4"
        )
    _check_pixels((array.shape[1], array.shape[0]), cfg)
    if array.ndim == 3 and channels == 1:
        array = array[:, :, 0]
    if channels == 4:
        # The reference's array path: float64 blend onto white, rounded to nearest.
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(array))
    return image if image.mode == "RGB" else image.convert("RGB")


def _resized_size(width: int, height: int, shortest: int) -> tuple[int, int]:
    # transformers.image_transforms.get_resize_output_image_size(default_to_square=False).
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (shortest, new_long) if width <= height else (new_long, shortest)


def _crop_window(resized: int, crop: int) -> tuple[int, int, int]:
    """One axis of transformers' center_crop: first kept index, kept length, output offset.

    When the crop is larger than the image, everything is kept and placed at
    ``ceil((crop - resized) / 2)`` on a zero background, as the reference pads.
    """
    offset = (resized - crop) // 2
    if offset >= 0:
        return offset, crop, 0
    return 0, resized, (crop - resized + 1) // 2


def _pixel_values(
    image: Image.Image, drafted: _Drafted | None, cfg: PreprocessConfig
) -> npt.NDArray[np.float32]:
    if image.mode != "RGB":
        image = _to_rgb(image)
    crop = cfg.image_size
    if drafted is None:
        size = _resized_size(image.width, image.height, cfg.resize_size)
        if max(size) <= _FULL_RESIZE_MAX_ASPECT * min(size):
            # The reference's own call: exact by construction, whatever Pillow does inside.
            resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
            return _normalize(_center_crop(resized, crop, kept_only=False), cfg)
        return _normalize(_center_crop(_resize_by_axis(image, size, crop), crop), cfg)
    return _normalize(_resize_region(image, drafted, cfg.resize_size, crop), cfg)


def _center_crop(
    resized: npt.NDArray[np.uint8], crop: int, kept_only: bool = True
) -> npt.NDArray[np.uint8]:
    """transformers' center_crop of ``resized`` (or, with ``kept_only``, of the resized
    image whose kept part ``resized`` already is)."""
    rows = _crop_window(resized.shape[0], crop)
    cols = _crop_window(resized.shape[1], crop)
    if not kept_only:
        resized = resized[rows[0] : rows[0] + rows[1], cols[0] : cols[0] + cols[1]]
    return _pad(resized, rows[2], cols[2], crop)


def _pad(kept: npt.NDArray[np.uint8], top: int, left: int, crop: int) -> npt.NDArray[np.uint8]:
    if kept.shape[:2] == (crop, crop):
        return kept
    canvas = np.zeros((crop, crop, 3), dtype=np.uint8)
    canvas[top : top + kept.shape[0], left : left + kept.shape[1]] = kept
    return canvas


def _resize_region(
    image: Image.Image, drafted: _Drafted, resize_size: int, crop: int
) -> npt.NDArray[np.uint8]:
    """Resize + center crop with the geometry of the full-resolution picture, resampling
    only the part of the draft-decoded image that survives the crop."""
    width, height = _resized_size(*drafted.size, resize_size)
    top, rows, pad_top = _crop_window(height, crop)
    left, cols, pad_left = _crop_window(width, crop)
    x0, y0, x1, y1 = drafted.box
    per_col, per_row = (x1 - x0) / width, (y1 - y0) / height
    box = (
        x0 + left * per_col,
        y0 + top * per_row,
        min(x0 + (left + cols) * per_col, image.width),
        min(y0 + (top + rows) * per_row, image.height),
    )
    kept = np.asarray(image.resize((cols, rows), Image.Resampling.BICUBIC, box=box))
    return _pad(kept, pad_top, pad_left, crop)


def _resize_by_axis(image: Image.Image, size: tuple[int, int], crop: int) -> npt.NDArray[np.uint8]:
    """The kept part of a two-pass resize of a very elongated image, one axis at a time.

    The reference resizes e.g. a 3x4000 image to 224x298666 and then crops. Each pass here
    computes exactly what the same pass of Pillow's two-pass resize computes, in the order
    Pillow runs them, but the crop is applied between the passes, and an upsampled axis is
    evaluated only at the kept samples.
    """
    passes = (True, False) if _pillow_resizes_vertically_first(image.size, size) else (False, True)
    current, offset = _lines_read_by(image, size, crop, vertical=passes[1])
    for vertical in passes:
        # Neither pass changes the other's axis: the source length is the image's.
        length = image.height if vertical else image.width
        target = size[1] if vertical else size[0]
        start, count, _ = _crop_window(target, crop)
        if target > length and count < target:
            axis = 0 if vertical else 1
            skipped = offset if vertical == passes[1] else 0
            pixels = _resample_kept(
                np.asarray(current), axis, (length, target), start, count, skipped=skipped
            )
            current = Image.fromarray(pixels)
            continue
        current = current.resize(
            (current.width, target) if vertical else (target, current.height),
            Image.Resampling.BICUBIC,
        )
        if count < target:
            box = (0, start, current.width, start + count)
            current = current.crop(box if vertical else (start, 0, start + count, current.height))
    return np.asarray(current)


def _lines_read_by(
    image: Image.Image, size: tuple[int, int], crop: int, *, vertical: bool
) -> tuple[Image.Image, int]:
    """``image`` cut to the lines across ``vertical``'s axis that the second pass reads,
    and the index of the first one kept.

    A pass resamples each line on its own, so the first pass may skip the lines the second
    never reads. It matters when the second pass upsamples and keeps a window: a valid
    1x5,000,000 image would otherwise be widened to 224x5,000,000 (4.5 GB) first, to read
    about three of its rows.
    """
    length = image.height if vertical else image.width
    target = size[1] if vertical else size[0]
    start, count, _ = _crop_window(target, crop)
    if not (target > length and count < target):
        return image, 0
    first, _, ksize, _, _ = _kept_taps(length, target, start, count)
    low, high = int(first[0]), min(int(first[-1]) + ksize, length)
    box = (0, low, image.width, high) if vertical else (low, 0, high, image.height)
    return image.crop(box), low


def _pillow_resizes_vertically_first(source: tuple[int, int], target: tuple[int, int]) -> bool:
    # Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
    # shrinks by more than twice as many pixels as the width; before, horizontal always
    # came first. Measured on Pillow 13.0 over 3,000 random size pairs: no exception.
    (width, height), (new_width, new_height) = source, target
    shrink = height - new_height
    return _PILLOW_MAJOR >= 13 and shrink > 0 and shrink > 2 * (width - new_width)


def _resample_kept(
    pixels: npt.NDArray[np.uint8],
    axis: int,
    sizes: tuple[int, int],
    start: int,
    count: int,
    *,
    skipped: int = 0,
) -> npt.NDArray[np.uint8]:
    """Samples ``start .. start + count`` of Pillow's 8-bit bicubic resize of one axis.

    A transcription of Pillow's Resample.c (``precompute_coeffs``, ``normalize_coeffs_8bpc``
    and the 8bpc passes for a whole-axis box) in the same double-precision arithmetic, so
    the samples are bit-identical to those of a full resize without computing the rest.
    Used for upsampled axes only, where the filter has at most 5 taps.

    ``sizes`` are the axis's length before and after the resize. ``pixels`` may hold only
    the lines :func:`_lines_read_by` keeps, the first ``skipped`` ones left out.
    """
    lines = np.moveaxis(pixels, axis, 0)
    in_size, out_size = sizes
    first, taps, ksize, center, filterscale = _kept_taps(in_size, out_size, start, count)
    offsets = np.arange(ksize)
    positions = first[:, None] + offsets[None, :]
    weights = _bicubic(((positions - center[:, None]) + 0.5) * (1.0 / filterscale))
    weights[offsets[None, :] >= taps[:, None]] = 0.0
    total = np.zeros(count, dtype=np.float64)
    for tap in range(ksize):  # summed in Pillow's order
        total += weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    scaled = weights * float(1 << _PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    acc = np.full((count, *lines.shape[1:]), 1 << (_PRECISION_BITS - 1), dtype=np.int32)
    rows = np.minimum(positions, in_size - 1)
    for tap in range(ksize):
        acc += lines[rows[:, tap] - skipped].astype(np.int32) * fixed[:, tap, None, None]
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def _kept_taps(
    in_size: int, out_size: int, start: int, count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int, npt.NDArray[np.float64], float]:
    """Pillow's ``precompute_coeffs`` bounds for output samples ``start .. start + count``:
    each sample's first input line and number of taps, the kernel size, the sample centres
    and the filter scale."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    taps = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    return first, taps, ksize, center, filterscale


def _bicubic(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Pillow's bicubic_filter (a = -0.5), operation for operation.
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _normalize(pixels: npt.NDArray[np.uint8], cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    # A per-channel lookup table computed with the reference's exact arithmetic:
    # float32(uint8 * (1/255) in float64), then (x - mean) / std in float32.
    levels = (np.arange(256, dtype=np.float64) * _RESCALE).astype(np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None]
    table = (levels[None, :] - mean) / std
    height, width = pixels.shape[:2]
    out = np.empty((3, height, width), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInputError(f"cannot read image file {os.fspath(path)!r}: {reason}") from exc


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelUnavailableError(f"{path} does not hold a JSON object")
    return data


def _from_processor_config(config: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    crop = config.get("crop_size")
    if isinstance(crop, dict):
        height, width = crop.get("height"), crop.get("width")
        if height != width or not isinstance(height, int):
            raise ModelUnavailableError(f"unsupported crop_size {crop}: only square crops")
        values["image_size"] = height
    elif isinstance(crop, int):
        values["image_size"] = crop
    size = config.get("size")
    if isinstance(size, dict):
        if not isinstance(size.get("shortest_edge"), int):
            raise ModelUnavailableError(
                f"unsupported size {size}: only a shortest_edge resize is implemented"
            )
        values["resize_size"] = size["shortest_edge"]
    elif isinstance(size, int):
        values["resize_size"] = size
    for key, field in (("image_mean", "mean"), ("image_std", "std")):
        triple = config.get(key)
        if triple is not None:
            if not (isinstance(triple, list) and len(triple) == 3):
                raise ModelUnavailableError(f"unsupported {key} {triple}: expected 3 numbers")
            values[field] = tuple(float(v) for v in triple)
    if "image_size" in values and "resize_size" not in values:
        values["resize_size"] = values["image_size"]
    elif "resize_size" in values and "image_size" not in values:
        values["image_size"] = values["resize_size"]
    return values
