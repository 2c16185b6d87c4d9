"""A small synthetic world of coloured shapes and drawn words, for tests and benchmarks.

Every image shows one shape of one colour at a random position and size, on a random light or
dark background with mild noise; on request an image also carries a short word drawn as text.
Its caption names the colour and the shape (``"a photo of a red circle"``), so a CLIP model
trained on it can be checked by zero-shot classification and text-to-image search.

The variation is deliberately moderate (the shape stays near the centre, its size varies by
about ±20 %, it stands upright; :data:`MAX_ROTATION_DEGREES` can turn it) and words are off
by default: the tiny CLIP of :mod:`clipserve.testing.models` gets about a minute of CPU to
learn this world, and a small ViT learns translation, scale and rotation invariance slowly.

Pure PIL and numpy: no torch needed.

Example::

    import numpy as np
    from clipserve.testing.synthetic import make_dataset, make_item

    items = make_dataset(100, seed=0)
    item = make_item(np.random.default_rng(1), color="red", shape="circle")
    item.caption  # 'a photo of a red circle'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Colour names and their base RGB; each item jitters its colour a little around the base.
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 215, 25),
    "purple": (135, 40, 180),
    "orange": (250, 135, 20),
    "pink": (250, 115, 185),
    "cyan": (20, 200, 215),
}

#: Shape names: four that a tiny model tells apart reliably within its training budget.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")

#: Short words that may be drawn on an image, in a neutral colour, behind the shape.
WORDS: tuple[str, ...] = ("cat", "sun", "box", "tree", "fish", "moon")

#: Shapes are drawn upright (square on an edge, triangle vertex-up) and then turned by a
#: random angle within ± this many degrees (none: upright shapes train fastest).
MAX_ROTATION_DEGREES = 0.0

#: Default side of generated images, in pixels.
DEFAULT_SIZE = 128

_SUPERSAMPLE = 2
# Shape radius (centre to farthest point) as a fraction of the image side.
_MIN_RADIUS = 0.25
_MAX_RADIUS = 0.36
# How far from the centre a shape may sit: 1 = anywhere it fits, 0 = always centred.
_POSITION_SPREAD = 0.3
_COLOR_JITTER = 12
_NOISE_STD = 6.0


@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic image and what it shows.

    ``caption`` names only the colour and shape (one of :func:`class_captions`); ``word`` is the
    text drawn on the image, if any, and :attr:`caption_with_word` mentions it too.
    """

    image: Image.Image
    caption: str
    color: str
    shape: str
    word: str | None = None
    background: str = "light"

    @property
    def label(self) -> int:
        """Index of this item's caption in :func:`class_captions`."""
        return class_index(self.color, self.shape)

    @property
    def caption_with_word(self) -> str:
        """The caption plus the drawn word, e.g. ``"a photo of a red circle and the word cat"``."""
        return self.caption if self.word is None else f"{self.caption} and the word {self.word}"


def caption_for(color: str, shape: str) -> str:
    """The caption of a ``color`` ``shape``: ``"a photo of a red circle"``."""
    article = "an" if color[0] in "aeiou" else "a"
    return f"a photo of {article} {color} {shape}"


def class_captions() -> list[str]:
    """Every colour × shape caption, colour-major: index ``i * len(SHAPES) + j``."""
    return [caption_for(color, shape) for color in COLORS for shape in SHAPES]


def class_index(color: str, shape: str) -> int:
    """Position of ``caption_for(color, shape)`` in :func:`class_captions`."""
    return list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape)


def make_item(
    rng: np.random.Generator,
    color: str | None = None,
    shape: str | None = None,
    word: str | None = None,
    *,
    word_probability: float = 0.0,
    size: int = DEFAULT_SIZE,
) -> SyntheticItem:
    """Draw one synthetic image.

    Args:
        rng: source of every random choice (position, size, rotation, background, noise).
        color: one of :data:`COLORS`; random if ``None``.
        shape: one of :data:`SHAPES`; random if ``None``.
        word: text to draw on the image; if ``None``, a random word from :data:`WORDS` is drawn
            with probability ``word_probability``.
        word_probability: chance of a random word when ``word`` is ``None``.
        size: side of the square RGB image, in pixels.

    Returns:
        The image with its caption, colour, shape and word.

    Example::

        item = make_item(np.random.default_rng(0), color="blue", word="cat")
    """
    color = color if color is not None else str(rng.choice(list(COLORS)))
    shape = shape if shape is not None else str(rng.choice(SHAPES))
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour or shape: {color!r}, {shape!r}")
    if word is None and rng.random() < word_probability:
        word = str(rng.choice(WORDS))
    dark = bool(rng.random() < 0.5)
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), _background_rgb(rng, dark))
    draw = ImageDraw.Draw(canvas)
    if word is not None:
        _draw_word(draw, rng, word, big, dark)
    _draw_shape(draw, rng, shape, _jittered(rng, COLORS[color]), big)
    image = _add_noise(canvas.reduce(_SUPERSAMPLE), rng)
    return SyntheticItem(
        image=image,
        caption=caption_for(color, shape),
        color=color,
        shape=shape,
        word=word,
        background="dark" if dark else "light",
    )


def make_dataset(
    n: int, seed: int, *, word_probability: float = 0.0, size: int = DEFAULT_SIZE
) -> list[SyntheticItem]:
    """``n`` items with classes balanced (each colour × shape equally often, in shuffled order).

    The same ``(n, seed, word_probability, size)`` always gives the same images.

    Example::

        train = make_dataset(4800, seed=0)
        held_out = make_dataset(200, seed=12345)
    """
    rng = np.random.default_rng(seed)
    pairs = [(color, shape) for color in COLORS for shape in SHAPES]
    order: list[int] = []
    while len(order) < n:
        order.extend(int(i) for i in rng.permutation(len(pairs)))
    return [
        make_item(rng, *pairs[i], word_probability=word_probability, size=size) for i in order[:n]
    ]


def _background_rgb(rng: np.random.Generator, dark: bool) -> tuple[int, int, int]:
    level = int(rng.integers(10, 60)) if dark else int(rng.integers(195, 250))
    tint = rng.integers(-8, 9, size=3)
    r, g, b = (_byte(level + int(t)) for t in tint)
    return (r, g, b)


def _jittered(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
    r, g, b = (_byte(c + int(j)) for c, j in zip(rgb, jitter, strict=True))
    return (r, g, b)


def _byte(value: int) -> int:
    return min(255, max(0, value))


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    shape: str,
    fill: tuple[int, int, int],
    side: int,
) -> None:
    radius = side * float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS))
    reach = (side / 2 - radius) * _POSITION_SPREAD
    cx, cy = (side / 2 + float(rng.uniform(-reach, reach)) for _ in range(2))
    angle = math.radians(float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(radius * 0.35)))
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=fill)


def _polygon(
    shape: str, cx: float, cy: float, radius: float, angle: float
) -> list[tuple[float, float]]:
    if shape == "square":
        points = [(radius * 0.8 * math.cos(a), radius * 0.8 * math.sin(a)) for a in _angles(4, 45)]
    elif shape == "triangle":
        points = [(radius * math.cos(a), radius * math.sin(a)) for a in _angles(3, -90)]
    elif shape == "star":
        points = [
            (r * math.cos(a), r * math.sin(a))
            for i, a in enumerate(_angles(10, -90))
            for r in [radius if i % 2 == 0 else radius * 0.42]
        ]
    elif shape == "cross":
        arm, half = radius, radius * 0.3
        points = [
            (half, half), (arm, half), (arm, -half), (half, -half),
            (half, -arm), (-half, -arm), (-half, -half), (-arm, -half),
            (-arm, half), (-half, half), (-half, arm), (half, arm),
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown shape: {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _angles(n: int, start_degrees: float) -> list[float]:
    """``n`` evenly spaced angles from ``start_degrees`` (-90: a vertex points up)."""
    return [math.radians(start_degrees) + 2.0 * math.pi * i / n for i in range(n)]


def _draw_word(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, word: str, side: int, dark: bool
) -> None:
    font = ImageFont.load_default(size=max(8, round(side * float(rng.uniform(0.16, 0.22)))))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = float(rng.uniform(0, max(1.0, side - (right - left)))) - left
    y = float(rng.uniform(0, max(1.0, side - (bottom - top)))) - top
    level = int(rng.integers(170, 240)) if dark else int(rng.integers(20, 90))
    draw.text((x, y), word, fill=(level, level, level), font=font)


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * _NOISE_STD
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
