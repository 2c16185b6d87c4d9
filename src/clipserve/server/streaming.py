"""What the streaming transports (WebSocket ``/v1/stream``, gRPC ``EncodeStream``) share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from clipserve.engine import Engine
from clipserve.errors import OverloadedError
from clipserve.server.inputs import Item

# Waits between tries while the batch queue is full.
_FIRST_PAUSE, _MAX_PAUSE = 0.01, 0.5


async def encode_when_queue_allows(
    engine: Engine, items: Sequence[Item], *, model: str, normalize: bool
) -> np.ndarray:
    """Encode, waiting out a full batch queue (other clients' load) up to the request timeout.

    A unary request answers 503 and lets its client retry; a stream has its own window as
    flow control, so it waits instead of failing items the client would have to resend.
    """
    deadline = time.monotonic() + engine.settings.request_timeout
    pause = _FIRST_PAUSE
    while True:
        try:
            return await engine.aencode(items, model=model, normalize=normalize)
        except OverloadedError:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)
