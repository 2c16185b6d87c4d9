"""What the client's calls return: small frozen dataclasses, the same over HTTP and gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RankScore:
    """One candidate's score: ``softmax(logit_scale · cosine)`` over the candidates, and the
    cosine; ``index`` is its position among the candidates given."""

    index: int
    probability: float
    cosine: float


@dataclass(frozen=True)
class RankResult:
    """Candidates scored against a query, best first."""

    model: str
    scores: tuple[RankScore, ...]

    @property
    def best(self) -> RankScore:
        """The best candidate's score."""
        return self.scores[0]


@dataclass(frozen=True)
class LabelScore:
    """One label's score for one image."""

    label: str
    probability: float
    cosine: float


@dataclass(frozen=True)
class Classification:
    """One image's labels, most probable first; ``index`` is its position in the request."""

    index: int
    label: str
    scores: tuple[LabelScore, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves."""

    name: str
    dim: int
    image_size: int
    context_length: int
    precision: str
    logit_scale: float
    default: bool


@dataclass(frozen=True)
class Health:
    """Whether the server is up (``status``: ``"ready"``, ``"loading"``, ``"failed"``, ...)."""

    status: str
    ready: bool
    models: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class EncodeReply:
    """One encode request's answer, as a transport returns it."""

    model: str
    vectors: np.ndarray
    #: Server-side durations in milliseconds by name (``queue``, ``inference``, ...), as far
    #: as the server reports them.
    timing: dict[str, float] = field(default_factory=dict)


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``"queue;dur=1.5, inference;dur=3"`` -> ``{"queue": 1.5, "inference": 3.0}``."""
    timing: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    timing[name] = float(value.strip().strip('"'))
                except ValueError:
                    continue
    return timing
