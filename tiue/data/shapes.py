"""The shapes world: flat-coloured shapes on a plain background, with captions and labels.

A caption names what a picture must show (shape, colour, optionally size and background) and
leaves the rest free: position, rotation, exact size and, when unnamed, the background colour
are drawn at random. So one prompt has many right answers, and a sampler's diversity can be
measured. Everything is deterministic given a seed: scene i of seed s is drawn from its own
generator seeded with (s, i), so it does not depend on how many scenes are drawn with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "ShapeSpec",
    "Scene",
    "ShapesBatch",
    "WorldConfig",
    "DEFAULT_WORLD",
    "sample_scene",
    "scene_for_caption",
    "generate",
    "render",
    "caption_for",
    "parse_caption",
    "caption_space",
    "sample_captions",
    "vocabulary",
]

SHAPES = ("circle", "square", "triangle", "cross")
# Saturated, well-separated colours: a 32-pixel image leaves no room for subtle shades.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SIZES = ("small", "large")
# Label value of an attribute the caption leaves free.
UNNAMED = -1


@dataclass(frozen=True)
class WorldConfig:
    """What the world draws.

    resolution: image side in pixels.
    two_shape_probability: chance of a second shape ("a red circle and a blue square").
    size_word_probability, background_word_probability: chance that the caption names the
        size / the background colour (otherwise it is still drawn, but free).
    small_radius, large_radius: ranges of the shape's radius as fractions of the image side.
    supersample: render at this many times the resolution, then box-filter down (anti-aliasing).
    """

    resolution: int = 32
    two_shape_probability: float = 0.0
    size_word_probability: float = 0.5
    background_word_probability: float = 0.5
    small_radius: tuple[float, float] = (0.16, 0.24)
    large_radius: tuple[float, float] = (0.3, 0.42)
    supersample: int = 4


DEFAULT_WORLD = WorldConfig()


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: kind, colour and size class, plus its free geometry (pixels, radians)."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    radius: float
    rotation: float
    size_named: bool = False


@dataclass(frozen=True)
class Scene:
    """One picture and what it shows. labels: integer codes (see `ShapesBatch.labels`)."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    shapes: tuple[ShapeSpec, ...]
    background: str
    background_named: bool
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class ShapesBatch:
    """Many scenes as arrays.

    images: (N, H, W, 3) uint8. captions: N strings. labels: name -> (N,) int64 arrays:
    shape, colour, size, background for the first shape (its index in SHAPES, COLOURS,
    SIZES, COLOURS), size_named and background_named (0/1), num_shapes, and shape2, colour2,
    size2 for a second shape (UNNAMED when there is none).
    """

    images: np.ndarray
    captions: list[str]
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.captions)


# -- captions ------------------------------------------------------------------------------


def _shape_phrase(shape: str, colour: str, size: str | None) -> str:
    return " ".join(["a", *([size] if size else []), colour, shape])


def caption_for(shapes: tuple[ShapeSpec, ...], background: str, background_named: bool) -> str:
    """'a red circle', 'a small blue square on a yellow background', 'a red circle and a ...'."""
    phrases = [_shape_phrase(s.shape, s.colour, s.size if s.size_named else None) for s in shapes]
    caption = " and ".join(phrases)
    if background_named:
        caption += f" on a {background} background"
    return caption


def parse_caption(caption: str) -> dict[str, int]:
    """The labels a caption fixes: shape, colour, size, background (UNNAMED when free) and, for
    'X and Y' captions, shape2, colour2, size2. Raises ValueError for text outside the world."""
    text = " ".join(caption.lower().split())
    labels = {"background": UNNAMED, "shape2": UNNAMED, "colour2": UNNAMED, "size2": UNNAMED}
    if " on a " in text:
        text, background_part = text.rsplit(" on a ", 1)
        words = background_part.split()
        if len(words) != 2 or words[1] != "background" or words[0] not in COLOURS:
            raise ValueError(f"caption: cannot read the background in {caption!r}")
        labels["background"] = list(COLOURS).index(words[0])
    phrases = text.split(" and ")
    if len(phrases) > 2:
        raise ValueError(f"caption: at most two shapes, got {len(phrases)} in {caption!r}")
    for suffix, phrase in zip(("", "2"), phrases):
        words = phrase.split()
        if words[:1] != ["a"] or len(words) not in (3, 4):
            raise ValueError(f"caption: expected 'a [size] colour shape', got {phrase!r} in {caption!r}")
        size = words[1] if len(words) == 4 else None
        colour, shape = words[-2], words[-1]
        if shape not in SHAPES or colour not in COLOURS or (size is not None and size not in SIZES):
            raise ValueError(
                f"caption: unknown words in {phrase!r}; shapes {SHAPES}, colours {tuple(COLOURS)}, sizes {SIZES}"
            )
        labels["shape" + suffix] = SHAPES.index(shape)
        labels["colour" + suffix] = list(COLOURS).index(colour)
        labels["size" + suffix] = UNNAMED if size is None else SIZES.index(size)
    return labels


def caption_space(world: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Every one-shape caption the world can write (two-shape captions are not enumerated:
    there are too many), in a fixed order."""
    captions = []
    sizes = [None, *SIZES] if world.size_word_probability > 0 else [None]
    for shape, colour, size in itertools.product(SHAPES, COLOURS, sizes):
        captions.append(_shape_phrase(shape, colour, size))
        if world.background_word_probability > 0:
            for background in COLOURS:
                if background != colour:
                    captions.append(f"{_shape_phrase(shape, colour, size)} on a {background} background")
    return captions


def sample_captions(n: int, seed: int, world: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """The captions of the first n scenes of `seed` (the world's own caption distribution)."""
    return [sample_scene(seed, i, world, render_image=False).caption for i in range(n)]


def vocabulary(world: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Every word a caption of this world can contain."""
    return ["a", "and", "on", "background", *SIZES, *COLOURS, *SHAPES]


# -- drawing -------------------------------------------------------------------------------


def _draw_shape_spec(
    rng: np.random.Generator,
    world: WorldConfig,
    exclude_colours: set[str],
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
) -> ShapeSpec:
    """A random shape; `shape`, `colour`, `size` fix those attributes (size then counts as named).
    The same draws happen whether or not an attribute is fixed, so fixing one leaves the others'
    random stream unchanged."""
    drawn_shape = SHAPES[rng.integers(len(SHAPES))]
    colours = [c for c in COLOURS if c not in exclude_colours]
    drawn_colour = colours[rng.integers(len(colours))]
    drawn_size = SIZES[rng.integers(len(SIZES))]
    shape, colour = shape or drawn_shape, colour or drawn_colour
    low, high = world.small_radius if (size or drawn_size) == "small" else world.large_radius
    side = world.resolution
    radius = rng.uniform(low, high) * side
    # Keep the whole shape (its circumscribed circle) inside the picture.
    centre = tuple(rng.uniform(radius, side - radius, size=2))
    rotation = rng.uniform(0.0, 2 * np.pi)
    size_named = bool(rng.random() < world.size_word_probability)
    if size is not None:
        size_named = True
    return ShapeSpec(shape, colour, size or drawn_size, (float(centre[0]), float(centre[1])), float(radius), float(rotation), size_named)


def sample_scene(seed: int, index: int = 0, world: WorldConfig = DEFAULT_WORLD, render_image: bool = True) -> Scene:
    """Scene `index` of `seed`: the same arguments always give the same scene."""
    if index < 0:
        raise ValueError(f"index: expected an integer >= 0, got {index}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    first = _draw_shape_spec(rng, world, exclude_colours=set())
    shapes = [first]
    if rng.random() < world.two_shape_probability:
        shapes.append(_draw_shape_spec(rng, world, exclude_colours={first.colour}))
    used = {s.colour for s in shapes}
    backgrounds = [c for c in COLOURS if c not in used]
    background = backgrounds[rng.integers(len(backgrounds))]
    background_named = bool(rng.random() < world.background_word_probability)
    shapes = tuple(shapes)
    image = render(shapes, background, world) if render_image else np.zeros((0, 0, 3), np.uint8)
    labels = _labels(shapes, background, background_named)
    return Scene(image, caption_for(shapes, background, background_named), shapes, background, background_named, labels)


def scene_for_caption(caption: str, seed: int, index: int = 0, world: WorldConfig = DEFAULT_WORLD) -> Scene:
    """A picture that `caption` describes, its free attributes (position, rotation, exact size,
    and size or background when unnamed) drawn from (seed, index): the world's right answers
    to a prompt. The returned caption is `caption`, normalised."""
    wanted = parse_caption(caption)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 1])
    colours = list(COLOURS)
    shapes: list[ShapeSpec] = []
    for suffix in ("", "2"):
        if wanted.get("shape" + suffix, UNNAMED) == UNNAMED:
            continue
        size = wanted["size" + suffix]
        spec = _draw_shape_spec(
            rng, world, exclude_colours={s.colour for s in shapes},
            shape=SHAPES[wanted["shape" + suffix]], colour=colours[wanted["colour" + suffix]],
            size=None if size == UNNAMED else SIZES[size],
        )
        if size == UNNAMED:
            spec = ShapeSpec(spec.shape, spec.colour, spec.size, spec.centre, spec.radius, spec.rotation, False)
        shapes.append(spec)
    used = {s.colour for s in shapes}
    if wanted["background"] != UNNAMED:
        background, named = colours[wanted["background"]], True
    else:
        choices = [c for c in COLOURS if c not in used]
        background, named = choices[rng.integers(len(choices))], False
    specs = tuple(shapes)
    return Scene(render(specs, background, world), caption_for(specs, background, named), specs, background, named, _labels(specs, background, named))


def _labels(shapes: tuple[ShapeSpec, ...], background: str, background_named: bool) -> dict[str, int]:
    colours = list(COLOURS)
    first = shapes[0]
    second = shapes[1] if len(shapes) > 1 else None
    return {
        "shape": SHAPES.index(first.shape),
        "colour": colours.index(first.colour),
        "size": SIZES.index(first.size),
        "size_named": int(first.size_named),
        "background": colours.index(background),
        "background_named": int(background_named),
        "num_shapes": len(shapes),
        "shape2": SHAPES.index(second.shape) if second else UNNAMED,
        "colour2": colours.index(second.colour) if second else UNNAMED,
        "size2": SIZES.index(second.size) if second else UNNAMED,
    }


def generate(n: int, seed: int, world: WorldConfig = DEFAULT_WORLD, start: int = 0) -> ShapesBatch:
    """Scenes start .. start+n-1 of `seed` as arrays."""
    if n < 0:
        raise ValueError(f"n: expected an integer >= 0, got {n}")
    scenes = [sample_scene(seed, start + i, world) for i in range(n)]
    side = world.resolution
    images = np.stack([s.image for s in scenes]) if scenes else np.zeros((0, side, side, 3), np.uint8)
    keys = _labels(*_placeholder_scene()).keys()
    labels = {k: np.array([s.labels[k] for s in scenes], dtype=np.int64) for k in keys}
    return ShapesBatch(images, [s.caption for s in scenes], labels)


def _placeholder_scene():
    spec = ShapeSpec(SHAPES[0], next(iter(COLOURS)), SIZES[0], (0.0, 0.0), 1.0, 0.0)
    return (spec,), next(iter(COLOURS)), False


# -- rendering -----------------------------------------------------------------------------


def _shape_mask(spec: ShapeSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of `spec` over pixel-centre coordinates (xs, ys), in output pixels."""
    cos, sin = np.cos(spec.rotation), np.sin(spec.rotation)
    dx, dy = xs - spec.centre[0], ys - spec.centre[1]
    # Coordinates in the shape's own rotated frame, in units of its radius.
    u = (cos * dx + sin * dy) / spec.radius
    v = (-sin * dx + cos * dy) / spec.radius
    if spec.shape == "circle":
        return u * u + v * v <= 1.0
    if spec.shape == "square":
        half = 1.0 / np.sqrt(2.0)  # inscribed in the unit circle
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if spec.shape == "triangle":
        # Equilateral, vertices on the unit circle: inside all three edge half-planes.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            angle = 2 * np.pi * k / 3
            inside &= np.cos(angle) * u + np.sin(angle) * v <= 0.5
        return inside
    if spec.shape == "cross":
        arm, length = 0.3, 0.95
        return ((np.abs(u) <= arm) & (np.abs(v) <= length)) | ((np.abs(v) <= arm) & (np.abs(u) <= length))
    raise ValueError(f"shape: expected one of {SHAPES}, got {spec.shape!r}")


def render(shapes: tuple[ShapeSpec, ...], background: str, world: WorldConfig = DEFAULT_WORLD) -> np.ndarray:
    """Paint the shapes (later ones on top) over the background: (H, W, 3) uint8."""
    side, factor = world.resolution, world.supersample
    fine = side * factor
    coords = (np.arange(fine) + 0.5) / factor
    xs, ys = np.meshgrid(coords, coords)
    canvas = np.empty((fine, fine, 3), np.float32)
    canvas[:] = COLOURS[background]
    for spec in shapes:
        canvas[_shape_mask(spec, xs, ys)] = COLOURS[spec.colour]
    # Box filter: the mean of each factor x factor block, an anti-aliased edge.
    canvas = canvas.reshape(side, factor, side, factor, 3).mean(axis=(1, 3))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
