"""Reading and preprocessing one image, in a worker process: bytes in, model input out.

Nothing here raises for a bad item: a file that cannot be read or decoded becomes a
:class:`Decoded` with ``error`` set, which the job records in its metadata and moves on.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipserve.embed.records import TarMember
from clipserve.errors import ClipServeError
from clipserve.models.preprocess import PreprocessConfig, preprocess

#: EXIF orientations that turn the picture by 90 degrees (width and height swap).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Decoded:
    """One image ready for the model, or why it is not.

    ``width``/``height`` are the upright picture's (EXIF orientation applied), ``sha256`` the
    hex digest of the encoded bytes; each is ``None`` when it could not be determined.
    """

    pixels: np.ndarray | None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    error: str | None = None


def read_bytes(location: str | TarMember) -> bytes:
    """The encoded image at ``location``: a file path or a tar member."""
    if isinstance(location, TarMember):
        with open(location.path, "rb") as handle:
            handle.seek(location.offset)
            data = handle.read(location.size)
        if len(data) != location.size:
            raise OSError(f"{location.path}: truncated tar member")
        return data
    with open(location, "rb") as handle:
        return handle.read()


def decode(image: bytes | str | TarMember, cfg: PreprocessConfig) -> Decoded:
    """Read (unless given bytes) and preprocess one image; never raises for bad input."""
    try:
        data = image if isinstance(image, bytes) else read_bytes(image)
    except OSError as exc:
        return Decoded(None, error=f"unreadable: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    width, height = upright_size(data)
    try:
        pixels = preprocess(data, cfg)
    except ClipServeError as exc:
        return Decoded(None, width, height, digest, error=str(exc))
    except Exception as exc:  # a decoder bug must cost one item, not the job
        return Decoded(None, width, height, digest, error=f"{type(exc).__name__}: {exc}")
    return Decoded(pixels, width, height, digest)


def upright_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height of the upright picture, from the header alone (no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # undecodable: decode() reports why
        return None, None
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


#: Niceness added to decode workers: inference gets the cores first, decoding the rest.
WORKER_NICENESS = 19


def init_worker(parent: int) -> None:
    """Decode-worker initializer: yield the CPU to inference, and exit with the job.

    Decoding needs a small share of the CPU (about 10 ms per 1920-pixel JPEG against about
    140 ms of model time); at equal priority it preempts the inference threads mid-matmul, which
    then wait for each other. A lower priority lets it use the gaps instead.
    """
    os.nice(WORKER_NICENESS)
    exit_with(parent)


def warm_up() -> None:
    """A task that does nothing: submitting one per worker starts them ahead of the work."""


def exit_with(parent: int, interval: float = 1.0) -> None:
    """End this worker when the job's process ``parent`` is gone.

    A job killed with SIGKILL cannot stop its pool, and an idle worker would wait for work
    forever (it holds its task queue's write end itself, so it never sees end of file).
    """

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # the pid exists (someone else's): keep watching

    threading.Thread(target=watch, name="clipserve-parent-watch", daemon=True).start()
