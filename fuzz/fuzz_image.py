"""atheris target: image bytes through clipserve's decoder and preprocessing.

Any bytes must become a ``(3, 224, 224)`` float32 array or raise
:class:`~clipserve.errors.InvalidImageError` / :class:`~clipserve.errors.ImageTooLargeError`.
The pixel limit is 4 Mpx here (the server's default is 50 Mpx) so that a mutated header
cannot make one run decode for seconds: the limit's own check is what is being fuzzed,
not the throughput of libjpeg.

Run: ``python fuzz/fuzz_image.py -runs=2000 CORPUS_DIR`` (seeds: ``fuzz/seeds.py image``).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["clipserve"]):
    import fuzzkit
    import numpy as np

    from clipserve.errors import ImageTooLargeError, InvalidImageError
    from clipserve.models.preprocess import PreprocessConfig, preprocess

CONFIG = PreprocessConfig(max_pixels=1 << 22)


def target(data: bytes) -> None:
    """One run: decode and preprocess ``data``."""
    try:
        pixels = preprocess(data, CONFIG)
    except (InvalidImageError, ImageTooLargeError):
        return
    if pixels.shape != (3, 224, 224) or pixels.dtype != np.float32:
        raise AssertionError(f"unexpected pixels {pixels.shape} {pixels.dtype}")
    if not np.isfinite(pixels).all():
        raise AssertionError("non-finite pixel values")


if __name__ == "__main__":
    fuzzkit.run(target)
