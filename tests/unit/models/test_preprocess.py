"""Image decoding and preprocessing against the reference: transformers' PIL-backed
CLIPImageProcessor applied to ``ImageOps.exif_transpose(Image.open(data))``.

Pixel parity is exact (1e-5) without JPEG draft decoding; with it, embeddings of a
random-initialised ViT-B/32 stay within cosine 0.9999 of the reference's.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecases
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from clipserve.errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    ModelUnavailableError,
)
from clipserve.models.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    PreprocessConfig,
    decode_image,
    load_image,
    preprocess,
    to_pixel_values,
)

EXACT = PreprocessConfig(jpeg_draft=False)


@pytest.fixture(scope="module")
def reference() -> Callable[..., np.ndarray]:
    """The reference preprocessing: CLIPImageProcessor on the PIL backend (its class is
    CLIPImageProcessorPil in transformers 5; CLIPImageProcessor is the PIL one in 4.x)."""
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    processor = (processor_class or transformers.CLIPImageProcessor)()

    def run(image: Any, **overrides: Any) -> np.ndarray:
        if isinstance(image, bytes):
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(image)))
        pixels = processor(images=image, return_tensors="np", **overrides)["pixel_values"]
        return np.asarray(pixels[0])

    return run


# --- pixel parity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", imagecases.PARITY_CASES)
def test_pixels_match_the_reference_without_draft(
    name: str, reference: Callable[..., np.ndarray]
) -> None:
    data = imagecases.parity_case(name)
    ours = preprocess(data, EXACT)
    assert ours.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    assert ours.flags.c_contiguous
    np.testing.assert_allclose(ours, reference(data), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("resize_size", "image_size"), [(256, 224), (200, 224), (336, 336)], ids=str
)
@pytest.mark.parametrize(
    "name", ["jpeg-photo-coffee", "png-rgb-333x1001", "png-extreme-5x600", "png-extreme-240x2400"]
)
def test_other_sizes_crop_and_pad_like_the_reference(
    name: str, resize_size: int, image_size: int, reference: Callable[..., np.ndarray]
) -> None:
    data = imagecases.parity_case(name)
    cfg = PreprocessConfig(resize_size=resize_size, image_size=image_size, jpeg_draft=False)
    expected = reference(
        data,
        size={"shortest_edge": resize_size},
        crop_size={"height": image_size, "width": image_size},
    )
    np.testing.assert_allclose(preprocess(data, cfg), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_uint8_arrays_match_the_reference(
    channels: int | None, reference: Callable[..., np.ndarray]
) -> None:
    rgba = np.asarray(imagecases._rgba(300, 200, 2))
    array = {None: rgba[..., 0], 1: rgba[..., :1], 3: rgba[..., :3], 4: rgba}[channels]
    # The reference rejects 2-D arrays; it treats them as the equivalent "L" image.
    expected = reference(Image.fromarray(array) if channels is None else array)
    np.testing.assert_allclose(preprocess(array, EXACT), expected, rtol=0, atol=1e-5)


def test_pil_images_get_orientation_applied_without_being_modified(
    reference: Callable[..., np.ndarray],
) -> None:
    data = imagecases.parity_case("jpeg-exif-orientation-6")
    image = Image.open(io.BytesIO(data))
    ours = preprocess(image, EXACT)
    assert image.size == (320, 200)
    assert image.getexif().get(0x0112) == 6
    np.testing.assert_array_equal(ours, preprocess(data, EXACT))
    np.testing.assert_allclose(ours, reference(data), rtol=0, atol=1e-5)


def test_paths_and_buffers_decode_like_bytes(tmp_path: Path) -> None:
    data = imagecases.parity_case("webp-lossy")
    path = tmp_path / "photo.webp"
    path.write_bytes(data)
    expected = preprocess(data, EXACT)
    for source in (str(path), path, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(preprocess(source, EXACT), expected)


def test_animated_images_give_their_first_frame() -> None:
    data = imagecases.parity_case("gif-animated")
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 3
        first = image.convert("RGB")
    np.testing.assert_array_equal(np.asarray(decode_image(data, EXACT)), np.asarray(first))


def test_to_pixel_values_composes_with_load_image() -> None:
    data = imagecases.parity_case("png-rgba")
    composed = to_pixel_values(load_image(data, EXACT), EXACT)
    np.testing.assert_array_equal(composed, preprocess(data, EXACT))


# --- JPEG draft decoding ------------------------------------------------------------------


def test_draft_engages_for_large_jpegs_and_not_for_png() -> None:
    photo = imagecases.upscaled_photo("astronaut", 1920, 1280)
    jpeg = imagecases.encode(photo, "JPEG", quality=90)
    png = imagecases.encode(photo, "PNG", compress_level=1)
    cfg = PreprocessConfig()
    drafted = decode_image(jpeg, cfg)
    # 1280 / 4 = 320 >= 224 * draft_factor (1.0), 1280 / 8 = 160 is not.
    assert drafted.size == (480, 320)
    assert decode_image(jpeg, EXACT).size == (1920, 1280)
    assert decode_image(png, cfg).size == (1920, 1280)
    assert decode_image(jpeg, PreprocessConfig(draft_factor=2.0)).size == (960, 640)
    small = imagecases.encode(imagecases.photo("chelsea"), "JPEG")  # 451x300: no room
    assert decode_image(small, cfg).size == (451, 300)


def test_draft_geometry_follows_every_exif_orientation(
    reference: Callable[..., np.ndarray],
) -> None:
    """At 1/4 scale the decoded image has half a pixel of padding on its right and bottom,
    which each transpose moves to another edge; misplacing it shifts the whole picture
    (the mean error then grows 2.5-3.5x)."""
    cfg = PreprocessConfig()
    errors = []
    for orientation in range(1, 9):
        data = imagecases.orientation_case(orientation)
        expected = reference(data)
        errors.append(float(np.abs(preprocess(data, cfg) - expected).mean()))
    assert max(errors) < 1.1 * min(errors), errors


# --- errors -------------------------------------------------------------------------------


def test_empty_data_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match=r"empty \(0 bytes\)"):
        preprocess(b"", EXACT)


def test_unidentifiable_data_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match="cannot identify image format") as info:
        preprocess(b"this is not an image, just some text" * 10, EXACT)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("name", ["jpeg-photo-astronaut", "png-rgb-640x480", "webp-lossy"])
@pytest.mark.parametrize("cfg", [EXACT, PreprocessConfig()], ids=["exact", "draft"])
def test_truncated_files_are_invalid_images(name: str, cfg: PreprocessConfig) -> None:
    data = imagecases.parity_case(name)
    with pytest.raises(InvalidImageError, match="truncated or corrupt") as info:
        preprocess(data[: len(data) * 2 // 3], cfg)
    assert info.value.__cause__ is not None


def test_corrupt_jpeg_payload_is_an_invalid_image() -> None:
    data = bytearray(imagecases.parity_case("jpeg-photo-coffee"))
    data[600:] = bytes(len(data) - 600)
    with pytest.raises(InvalidImageError):
        preprocess(bytes(data), EXACT)


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG of the given size whose IDAT holds a single empty row: the
    header is valid, decoding it would fail (and allocate width*height bytes first)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_are_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError, match="10000x10000 = 100,000,000 pixels") as info:
        preprocess(_png_header_only(10_000, 10_000), PreprocessConfig())
    assert "50,000,000" in str(info.value)
    with pytest.raises(ImageTooLargeError, match="2,000,000"):
        preprocess(_png_header_only(2000, 1001), PreprocessConfig(max_pixels=2_000_000))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_decompression_bomb_checks_never_escape() -> None:
    # With warnings as errors, Pillow's own check fires inside Image.open (> 89M pixels);
    # past 2x that it always raises DecompressionBombError. Both become ImageTooLargeError.
    limit = PreprocessConfig(max_pixels=10**9)
    for width, height in [(10_000, 10_000), (15_000, 15_000)]:
        with pytest.raises(ImageTooLargeError) as info:
            preprocess(_png_header_only(width, height), limit)
        assert isinstance(
            info.value.__cause__, Image.DecompressionBombWarning | Image.DecompressionBombError
        )


def test_ghostscript_formats_are_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    with pytest.raises(InvalidImageError, match="unsupported image format: EPS"):
        preprocess(eps, EXACT)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((32, 32, 3), dtype=np.float64),
        np.zeros((2, 32, 32, 3), dtype=np.uint8),
        np.zeros((32, 32, 2), dtype=np.uint8),
        np.zeros((32, 32, 5), dtype=np.uint8),
        np.zeros((32,), dtype=np.uint8),
        np.zeros((0, 32, 3), dtype=np.uint8),
    ],
    ids=["float64", "4d", "2-channels", "5-channels", "1d", "empty"],
)
def test_non_image_arrays_are_invalid_images(array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match=r"shape|pixels") as info:
        preprocess(array, EXACT)
    message = str(info.value)
    assert str(array.shape) in message or "no pixels" in message


def test_unreadable_paths_are_invalid_input(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.jpg", str(tmp_path / "missing.jpg"), tmp_path):
        with pytest.raises(InvalidInputError, match="cannot read image file") as info:
            preprocess(path, EXACT)
        assert type(info.value) is InvalidInputError


def test_unsupported_input_types_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="int"):
        preprocess(42, EXACT)  # type: ignore[arg-type]


# --- configuration ------------------------------------------------------------------------


def _write(directory: Path, name: str, content: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps(content), encoding="utf-8")


def test_from_hf_dir_reads_the_openai_preprocessor_config(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "preprocessor_config.json",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3,
            "size": {"shortest_edge": 224},
        },
    )
    assert PreprocessConfig.from_hf_dir(tmp_path) == PreprocessConfig()


def test_from_hf_dir_reads_the_older_int_forms(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "preprocessor_config.json",
        {"crop_size": 336, "size": 336, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5] * 3},
    )
    cfg = PreprocessConfig.from_hf_dir(str(tmp_path), max_pixels=1000, jpeg_draft=False)
    assert (cfg.image_size, cfg.resize_size) == (336, 336)
    assert (cfg.mean, cfg.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert (cfg.max_pixels, cfg.jpeg_draft) == (1000, False)


def test_from_hf_dir_falls_back_to_the_vision_config_then_defaults(tmp_path: Path) -> None:
    assert PreprocessConfig.from_hf_dir(tmp_path) == PreprocessConfig()
    _write(tmp_path, "config.json", {"vision_config": {"image_size": 288, "patch_size": 16}})
    cfg = PreprocessConfig.from_hf_dir(tmp_path)
    assert (cfg.image_size, cfg.resize_size) == (288, 288)
    assert (cfg.mean, cfg.std) == (OPENAI_MEAN, OPENAI_STD)


@pytest.mark.parametrize(
    "config",
    [
        {"crop_size": {"height": 224, "width": 256}},
        {"size": {"height": 224, "width": 224}},
        {"image_mean": [0.5, 0.5]},
    ],
)
def test_from_hf_dir_rejects_preprocessing_it_does_not_implement(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    _write(tmp_path, "preprocessor_config.json", config)
    with pytest.raises(ModelUnavailableError):
        PreprocessConfig.from_hf_dir(tmp_path)


def test_from_hf_dir_takes_missing_sizes_from_the_vision_config(tmp_path: Path) -> None:
    _write(tmp_path, "config.json", {"vision_config": {"image_size": 336}})
    _write(tmp_path, "preprocessor_config.json", {"image_mean": [0.5, 0.5, 0.5]})
    cfg = PreprocessConfig.from_hf_dir(tmp_path)
    assert (cfg.image_size, cfg.resize_size, cfg.mean) == (336, 336, (0.5, 0.5, 0.5))


def test_from_hf_dir_rejects_unknown_overrides_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="crop"):
        PreprocessConfig.from_hf_dir(tmp_path, crop=3)
    with pytest.raises(ValueError, match="positive"):
        PreprocessConfig.from_hf_dir(tmp_path, max_pixels=0)
