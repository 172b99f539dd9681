"""Synthetic Indonesian Rupiah banknote scenes, rendered procedurally and deterministically.

A scene is a pure function of ``(seed, split, index, size, scenario)``: one
to three 2022-series notes of the seven denominations on a varied
background, turned, tilted in perspective, scaled, lit and partly hidden,
with labels in the three SmartCash layers (17 classes, :data:`CLASSES`).
Every random choice comes from ``rng.generator(seed, "render", split_code,
index)``, so the same coordinates give the same bytes in any process, in
any loader worker and in any order::

    image, target = render(seed=0, split="train", index=5, size=256)
    target["boxes"], target["labels"]   # float32 [K, 4] xyxy pixels, int64 [K]
    data = RupiahScenes("train", n=1000, scenario="low_light")

How a note is drawn
-------------------
Each denomination has one design, drawn once per process into a texture
(:data:`TEXTURE_HEIGHT` texels high, halved down to 12 for a mipmap): a
flat "shader" evaluated in note coordinates ``(u, v)`` in ``[0, 1]^2`` (``u``
along the long side) — the dominant colour of :data:`NOTE_COLOURS`, guilloche
waves and a rosette, a watermark field, an emblem, a portrait, "BANK
INDONESIA", the numerals and the words in a built-in 5x7 bitmap font, a
microtext strip, a signature and a dashed security thread. Widths follow
the real notes (121 mm for Rp1.000 up to 151 mm for Rp100.000, all 65 mm
high: aspect 1.86-2.32). In a scene, every pixel of a note's window is
mapped back through the inverse homography and takes the nearest texel of
the mipmap level closest to the note's size on screen.

Labels: boxes and the drop rule
-------------------------------
Each note yields five candidate labels: the note itself (banknote layer),
its numeral region (nominal layer), and its signature, microtext strip and
security thread (security layer). A label's box is the axis-aligned box
enclosing its region's projected quadrilateral, clipped to the image, in
absolute ``xyxy`` pixels. A label is kept when both clipped sides are at
least :data:`MIN_SIDE` pixels and at least :data:`MIN_VISIBLE` of the
region's projected area is visible (inside the image and not covered by a
later note or an occluder); otherwise it is dropped (see :class:`Scene`).
Layers are judged separately: a note mostly hidden may keep a visible numeral.

Bit-exactness
-------------
Pixels are built only from elementwise ``+ - * /``, comparisons, ``floor``,
``sqrt``, gathers and selects — each exactly rounded whatever the number of
threads or the SIMD width — and quantised to 8 bits once at the end.
``F.interpolate`` is avoided (its bilinear mode rounds differently with the
thread count), and so are ``pow`` (the gamma of the tone curve is Schlick's
rational bias curve) and fused multiply-adds (``add(alpha=...)``, fractional
``lerp``), whose vector and scalar paths could round differently. Box
geometry is computed in Python floats. The float image is exactly
``uint8 / 255``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import attrs
import torch
import torch.nn.functional as F

from .. import rng
from ..errors import DataError

# ----------------------------------------------------------------------------- classes and layers

DENOMINATIONS = (1000, 2000, 5000, 10000, 20000, 50000, 100000)
"""The seven 2022-series denominations, in class order."""

CLASSES = (
    "001", "002", "005", "010", "020", "050", "100",
    "l2_001", "l2_002", "l2_005", "l2_010", "l2_020", "l2_050", "l2_100",
    "l3_sign", "l3_text", "l3_thread",
)
"""The 17 SmartCash class names; a class id is its position here (``CLASSES.index("l3_sign") == 14``)."""

LAYERS = {
    "banknote": CLASSES[0:7],
    "nominal": CLASSES[7:14],
    "security": CLASSES[14:17],
}
"""The three label layers and their classes, in class-id order: ``LAYERS["security"][0] == "l3_sign"``."""

SIGN, TEXT, THREAD = 14, 15, 16
"""Class ids of the security layer: signature, microtext, security thread."""

SPLITS = {"train": 0, "val": 1, "test": 2}
"""Split name -> the split code in the render stream ``(seed, "render", code, index)``."""

MIN_SIDE = 2.0
"""A kept box is at least this many pixels wide and high after clipping to the image."""

MIN_VISIBLE = 0.4
"""A kept label has at least this fraction of its projected area visible (in frame, not covered)."""

NOTE_WIDTH_MM = (121, 126, 131, 136, 141, 146, 151)
"""Width of each denomination's note in millimetres, in class order (the notes grow with their value)."""

NOTE_HEIGHT_MM = 65
"""Height of every 2022-series note in millimetres."""

NOTE_COLOURS = (
    (0.55, 0.64, 0.52),  # Rp1.000   grey-green
    (0.59, 0.55, 0.67),  # Rp2.000   grey-purple
    (0.74, 0.50, 0.28),  # Rp5.000   brown-orange
    (0.55, 0.33, 0.63),  # Rp10.000  purple
    (0.30, 0.60, 0.36),  # Rp20.000  green
    (0.22, 0.42, 0.72),  # Rp50.000  blue
    (0.82, 0.26, 0.30),  # Rp100.000 red
)
"""The dominant colour (RGB in [0, 1]) of each denomination, in class order."""

WORDS = (
    "SERIBU RUPIAH", "DUA RIBU RUPIAH", "LIMA RIBU RUPIAH", "SEPULUH RIBU RUPIAH",
    "DUA PULUH RIBU RUPIAH", "LIMA PULUH RIBU RUPIAH", "SERATUS RIBU RUPIAH",
)
"""The value in words, printed under the numerals, in class order."""

# ----------------------------------------------------------------------------- the 5x7 font

_FONT_ROWS = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    " ": "..... ..... ..... ..... ..... ..... .....",
}


def _glyph(ch: str) -> torch.Tensor:
    rows = _FONT_ROWS[ch].split()
    return torch.tensor([[c == "#" for c in row] for row in rows], dtype=torch.bool)


_GLYPHS = {ch: _glyph(ch) for ch in _FONT_ROWS}


def text_bitmap(text: str) -> torch.Tensor:
    """The 5x7 bitmap of ``text`` (digits, capital letters, space): bool ``[7, 6 * len(text) - 1]``.

    Glyphs are 5 columns wide with one blank column between them::

        text_bitmap("100").shape    # torch.Size([7, 17])
        text_bitmap("BI")[:, :5]    # the glyph of "B"
    """
    unknown = sorted({c for c in text if c not in _GLYPHS})
    if not text or unknown:
        raise DataError(f"text_bitmap: cannot draw {text!r}; the font has digits, A-Z and space (bad: {unknown})")
    gap = torch.zeros(7, 1, dtype=torch.bool)
    parts: list[torch.Tensor] = []
    for i, ch in enumerate(text):
        if i:
            parts.append(gap)
        parts.append(_GLYPHS[ch])
    return torch.cat(parts, dim=1)


_NUMERALS = tuple(text_bitmap(str(d)) for d in DENOMINATIONS)
_WORDS = tuple(text_bitmap(w) for w in WORDS)
_HEADING = text_bitmap("BANK INDONESIA")
_MICRO = text_bitmap("BANK INDONESIA " * 4)

# ----------------------------------------------------------------------------- scenarios


def _pair(lo_min: float, hi_max: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        ok = (isinstance(value, tuple) and len(value) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
              and lo_min <= value[0] <= value[1] <= hi_max)
        if not ok:
            raise DataError(f"Scenario.{attr.name}: expected a pair (low, high) with {lo_min} <= low <= high "
                            f"<= {hi_max}, got {value!r}")
    return check


def _unit(hi: float = 1.0) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= hi):
            raise DataError(f"Scenario.{attr.name}: expected a number in [0, {hi}], got {value!r}")
    return check


def _to_pair(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


@attrs.frozen
class Scenario:
    """The knobs of the renderer: how many notes, how big, how turned, how lit, how hidden.

    Ranges are ``(low, high)`` pairs drawn uniformly per scene (or per note).
    Derive your own from a preset with ``attrs.evolve``::

        dense = attrs.evolve(SCENARIOS["small"], name="dense", notes=(3, 3))
        image, target = render(0, "train", 0, scenario=dense)

    - ``notes``: number of notes (inclusive range); with ``k`` notes each is
      scaled by ``1 / (1 + 0.25 (k - 1))`` so a fan of notes still fits.
    - ``scale``: width of a Rp100.000 note as a fraction of the image side
      (narrower denominations in proportion to their real widths).
    - ``centre``: range of a note centre, as a fraction of the image side.
    - ``rotation``, ``any_angle``: most notes turn by up to ``rotation``
      degrees either way; with probability ``any_angle`` by any angle.
    - ``perspective``: each corner moves by up to this fraction of the note width.
    - ``brightness``, ``contrast``, ``gamma``: the photometric curve;
      ``cast``: per-channel gain deviation (colour cast); ``shading``:
      strength of a linear light gradient across the image; ``glare``:
      probability of a bright specular spot; ``noise``: sensor noise
      standard deviation (on [0, 1] intensities); ``blur``: probability of
      a slight defocus.
    - ``occluders``, ``occluder_size``: number of occluding shapes (fingers,
      cards, round objects) laid over notes, and their size as a fraction
      of the note width.
    """

    name: str = "custom"
    notes: tuple[int, int] = attrs.field(default=(1, 3), converter=_to_pair, validator=_pair(1, 8))
    scale: tuple[float, float] = attrs.field(default=(0.35, 0.7), converter=_to_pair, validator=_pair(0.02, 2.0))
    centre: tuple[float, float] = attrs.field(default=(0.25, 0.75), converter=_to_pair, validator=_pair(-0.5, 1.5))
    rotation: float = attrs.field(default=25.0, validator=_unit(180.0))
    any_angle: float = attrs.field(default=0.1, validator=_unit())
    perspective: float = attrs.field(default=0.06, validator=_unit(0.4))
    brightness: tuple[float, float] = attrs.field(default=(0.85, 1.15), converter=_to_pair, validator=_pair(0.0, 4.0))
    contrast: tuple[float, float] = attrs.field(default=(0.85, 1.15), converter=_to_pair, validator=_pair(0.0, 4.0))
    gamma: tuple[float, float] = attrs.field(default=(0.85, 1.2), converter=_to_pair, validator=_pair(0.1, 4.0))
    cast: float = attrs.field(default=0.05, validator=_unit(0.5))
    shading: float = attrs.field(default=0.2, validator=_unit())
    glare: float = attrs.field(default=0.0, validator=_unit())
    noise: tuple[float, float] = attrs.field(default=(0.0, 0.01), converter=_to_pair, validator=_pair(0.0, 0.5))
    blur: float = attrs.field(default=0.2, validator=_unit())
    occluders: tuple[int, int] = attrs.field(default=(0, 1), converter=_to_pair, validator=_pair(0, 8))
    occluder_size: tuple[float, float] = attrs.field(default=(0.15, 0.35), converter=_to_pair,
                                                     validator=_pair(0.0, 2.0))

    def __attrs_post_init__(self) -> None:
        for name in ("notes", "occluders"):
            if not all(isinstance(x, int) for x in getattr(self, name)):
                raise DataError(f"Scenario.{name}: expected a pair of integers, got {getattr(self, name)!r}")


_POSITION = Scenario(
    name="position", notes=(1, 3), scale=(0.3, 0.6), centre=(0.1, 0.9), rotation=45.0, any_angle=0.5,
    perspective=0.15, occluders=(0, 0))
_LIGHTING = Scenario(
    name="lighting", notes=(1, 2), scale=(0.35, 0.7), brightness=(0.45, 1.7), contrast=(0.55, 1.45),
    gamma=(0.6, 1.7), cast=0.2, shading=0.6, glare=0.5, noise=(0.0, 0.02), occluders=(0, 0))
_LOW_LIGHT = Scenario(
    name="low_light", notes=(1, 2), scale=(0.35, 0.7), brightness=(0.15, 0.4), contrast=(0.7, 1.0),
    gamma=(1.0, 1.5), cast=0.15, shading=0.3, noise=(0.02, 0.06), blur=0.4, occluders=(0, 0))
_SMALL = Scenario(
    name="small", notes=(1, 3), scale=(0.08, 0.2), centre=(0.1, 0.9), rotation=30.0, occluders=(0, 0))
_OCCLUSION = Scenario(
    name="occlusion", notes=(1, 2), scale=(0.35, 0.7), occluders=(1, 3), occluder_size=(0.35, 0.8))

SCENARIOS: dict[str, Scenario | tuple[Scenario, ...]] = {
    "position": _POSITION,
    "lighting": _LIGHTING,
    "low_light": _LOW_LIGHT,
    "small": _SMALL,
    "occlusion": _OCCLUSION,
    "mixed": (_POSITION, _LIGHTING, _LOW_LIGHT, _SMALL, _OCCLUSION),
}
"""The named evaluation scenarios; ``"mixed"`` (the default) draws one of the five per scene, uniformly."""


def resolve_scenario(scenario: str | Scenario | Sequence[Scenario] | None) -> tuple[Scenario, ...]:
    """The scenarios a scene is drawn from: a name of :data:`SCENARIOS`, a :class:`Scenario`, or several.

    ``resolve_scenario("mixed")`` gives the five presets; ``None`` means ``"mixed"``.
    """
    if scenario is None:
        scenario = "mixed"
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise DataError(f"scenario {scenario!r} is unknown; expected one of {', '.join(SCENARIOS)} "
                            "(or a smartcash_fn.smartcash.scenes.Scenario)")
        found = SCENARIOS[scenario]
        return found if isinstance(found, tuple) else (found,)
    if isinstance(scenario, Scenario):
        return (scenario,)
    if isinstance(scenario, Sequence) and scenario and all(isinstance(s, Scenario) for s in scenario):
        return tuple(scenario)
    raise DataError(f"scenario: expected a name ({', '.join(SCENARIOS)}), a Scenario or a sequence of them, "
                    f"got {scenario!r}")


# ----------------------------------------------------------------------------- random draws


class _Draws:
    """Uniform numbers read in order from one generator, fetched in blocks (a draw costs no tensor)."""

    def __init__(self, g: torch.Generator):
        self.g, self.buf, self.i = g, [], 0

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = torch.rand(64, generator=self.g, dtype=torch.float64).tolist(), 0
        x = self.buf[self.i]
        self.i += 1
        return lo + (hi - lo) * x

    def pair(self, r: tuple[float, float]) -> float:
        return self.u(r[0], r[1])

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` inclusive."""
        return lo + min(int(self.u() * (hi - lo + 1)), hi - lo)

    def chance(self, p: float) -> bool:
        return self.u() < p


# ----------------------------------------------------------------------------- geometry


def _homography(q: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """The projective map of the unit square onto quad ``q`` (corners of (0,0), (1,0), (1,1), (0,1)).

    Returns ``(a, b, c, d, e, f, g, h)`` with ``x = (a u + b v + c) / (g u + h v + 1)`` and
    ``y = (d u + e v + f) / (g u + h v + 1)`` (the square-to-quad closed form).
    """
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = q
    sx, sy = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3
    if abs(sx) < 1e-12 and abs(sy) < 1e-12:
        return (x1 - x0, x3 - x0, x0, y1 - y0, y3 - y0, y0, 0.0, 0.0)
    dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
    den = dx1 * dy2 - dx2 * dy1
    g = (sx * dy2 - dx2 * sy) / den
    h = (dx1 * sy - sx * dy1) / den
    return (x1 - x0 + g * x1, x3 - x0 + h * x3, x0, y1 - y0 + g * y1, y3 - y0 + h * y3, y0, g, h)


def _apply(hm: tuple[float, ...], u: float, v: float) -> tuple[float, float]:
    a, b, c, d, e, f, g, h = hm
    w = g * u + h * v + 1.0
    return (a * u + b * v + c) / w, (d * u + e * v + f) / w


def _inverse(hm: tuple[float, ...]) -> tuple[float, ...]:
    """The 3x3 inverse (adjugate; scale is irrelevant) of the homography, row-major, 9 numbers."""
    a, b, c, d, e, f, g, h = hm
    i = 1.0
    return (e * i - f * h, c * h - b * i, b * f - c * e,
            f * g - d * i, a * i - c * g, c * d - a * f,
            d * h - e * g, b * g - a * h, a * e - b * d)


def _quad(hm: tuple[float, ...], u0: float, v0: float, u1: float, v1: float) -> list[tuple[float, float]]:
    return [_apply(hm, u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]


def _area(q: Sequence[tuple[float, float]]) -> float:
    s = 0.0
    for (xa, ya), (xb, yb) in zip(q, list(q[1:]) + [q[0]]):
        s += xa * yb - xb * ya
    return abs(s) / 2.0


def _window(q: Sequence[tuple[float, float]], size: int) -> tuple[int, int, int, int] | None:
    """The pixel window ``(x0, y0, x1, y1)`` covering the points ``q``, cut to the image; None when off it."""
    xs, ys = [p[0] for p in q], [p[1] for p in q]
    x0, x1 = max(0, math.floor(min(xs))), min(size, math.ceil(max(xs)))
    y0, y1 = max(0, math.floor(min(ys))), min(size, math.ceil(max(ys)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _grid(win: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of a window: ``x`` as ``[1, w]``, ``y`` as ``[h, 1]``."""
    x0, y0, x1, y1 = win
    x = torch.arange(x0, x1, dtype=torch.float32).add_(0.5).view(1, -1)
    y = torch.arange(y0, y1, dtype=torch.float32).add_(0.5).view(-1, 1)
    return x, y


# ----------------------------------------------------------------------------- shader helpers


def _wave(x: torch.Tensor) -> torch.Tensor:
    """A smooth periodic wave in [-1, 1] (period 1) from parabolas: no transcendental functions."""
    t = x - torch.floor(x)
    return t * (1.0 - t) * 8.0 - 1.0


def _sq(x: torch.Tensor) -> torch.Tensor:
    return x * x


Box = tuple[float, float, float, float]  # (u0, v0, u1, v1) in note coordinates


def _in_box(u: torch.Tensor, v: torch.Tensor, box: Box) -> torch.Tensor:
    u0, v0, u1, v1 = box
    return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _ink(u: torch.Tensor, v: torch.Tensor, box: Box, bitmap: torch.Tensor) -> torch.Tensor:
    """Where ``bitmap`` stretched over ``box`` (in note coordinates) has ink: nearest-neighbour lookup."""
    u0, v0, u1, v1 = box
    rows, cols = bitmap.shape
    c = torch.floor((u - u0) * (cols / (u1 - u0)))
    r = torch.floor((v - v0) * (rows / (v1 - v0)))
    inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    idx = (r.clamp(0, rows - 1) * cols + c.clamp(0, cols - 1)).long()
    return bitmap.reshape(-1)[idx] & inside


def _rgb(c: torch.Tensor) -> torch.Tensor:
    return c.to(torch.float32).view(3, 1, 1)


def _paint(dst: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, colour, dst)


# ----------------------------------------------------------------------------- the note designs

TEXTURE_HEIGHT = 192
"""Height in texels of the finest note texture; coarser levels halve it down to 12 (a mipmap)."""


def _text_box(right: float, top: float, height: float, bitmap: torch.Tensor, aspect: float,
              left: float | None = None) -> tuple[float, float, float, float]:
    """The note-coordinate box of a text line ``height`` tall (fraction of note height), glyphs square-ish."""
    width = bitmap.shape[1] / 7.0 * height / aspect
    if left is not None:
        return (left, top, left + width, top + height)
    return (right - width, top, right, top + height)


@attrs.frozen
class _Design:
    """One denomination's look: its five label regions in note coordinates and its mipmapped texture.

    ``levels[i] = (texels [4, (h + 2) * (w + 2)], h, w)``: RGB and alpha, with a one-texel
    transparent border so that clamped coordinates fall off the note; ``region`` is the
    region id of each texel of the finest level (same padding), used to count what is visible.
    """

    boxes: tuple[tuple[int, Box], ...]
    levels: tuple[tuple[torch.Tensor, int, int], ...]
    region: torch.Tensor


def _shade(u: torch.Tensor, v: torch.Tensor, k: int, boxes: dict[str, Box],
           d: _Draws) -> torch.Tensor:
    """The colour of note ``k`` at note coordinates ``(u, v)``: ``[3, *u.shape]``."""
    aspect = NOTE_WIDTH_MM[k] / NOTE_HEIGHT_MM
    base = torch.tensor(NOTE_COLOURS[k], dtype=torch.float32)
    light, dark = base * 0.35 + 0.62, base * 0.38
    ua = u * aspect  # u in note-height units, so round shapes stay round
    phase1, phase2, ring_u, ring_v = d.u(), d.u(), d.u(0.8, 0.9), d.u(0.6, 0.75)
    # paper: two crossing guilloche waves, a gradient and a rosette of rings at the right
    m = (0.55 + 0.16 * _wave(u * 9.0 + 0.7 * _wave(v * 2.5 + phase1))
         + 0.10 * _wave(v * 13.0 + 0.6 * _wave(u * 3.0 + phase2)) + (u - 0.5) * 0.25)
    r = torch.sqrt(_sq(ua - ring_u * aspect) + _sq(v - ring_v))
    m = torch.where(r < 0.2, m + 0.18 * _wave(r * 28.0), m)
    col = light.view(3, 1, 1) + (base - light).view(3, 1, 1) * m
    # unprinted margin and frame line
    eu, ev = 0.03 / aspect, 0.03
    core = (u > eu) & (u < 1 - eu) & (v > ev) & (v < 1 - ev)
    frame = (u > eu * 1.5) & (u < 1 - eu * 1.5) & (v > ev * 1.5) & (v < 1 - ev * 1.5)
    col = _paint(col, ~core, _rgb(light * 0.4 + 0.6))
    col = _paint(col, core & ~frame, _rgb(dark))
    # watermark field (a pale oval) and an emblem ring on the left
    wm = _sq((ua - 0.13 * aspect) / 0.16) + _sq((v - 0.52) / 0.26)
    col = _paint(col, wm < 1.0, _rgb(light * 0.5 + 0.5))
    em = torch.sqrt(_sq(ua - 0.13 * aspect) + _sq(v - 0.52))
    col = _paint(col, (em > 0.075) & (em < 0.1), _rgb(base * 0.7))
    # portrait: head and shoulders, hatched in dark tones
    head = _sq((ua - 0.43 * aspect) / 0.14) + _sq((v - 0.47) / 0.19)
    body = _sq((ua - 0.43 * aspect) / 0.32) + _sq((v - 0.97) / 0.3)
    portrait = ((head < 1.0) | (body < 1.0)) & core
    col = torch.where(portrait, base.view(3, 1, 1) * (0.42 + 0.14 * _wave(v * 30.0 + ua * 6.0)), col)
    # printed texts: heading, numerals, words, microtext
    col = _paint(col, _ink(u, v, boxes["heading"], _HEADING), _rgb(dark))
    col = _paint(col, _ink(u, v, boxes["nominal"], _NUMERALS[k]), _rgb(dark * 0.7))
    col = _paint(col, _ink(u, v, boxes["words"], _WORDS[k]), _rgb(dark))
    col = _paint(col, _ink(u, v, boxes["text"], _MICRO), _rgb(dark))
    # signature: a looping zigzag across its box
    sb = boxes["sign"]
    f1, f2, p1, p2, tilt = d.u(2.0, 4.0), d.u(5.0, 9.0), d.u(), d.u(), d.u(-0.4, 0.4)
    mid, amp = (sb[1] + sb[3]) / 2, (sb[3] - sb[1]) / 2 * 0.75
    us = (u - sb[0]) / (sb[2] - sb[0])
    curve = (mid + amp * (0.6 * _wave(us * f1 + p1) + 0.4 * _wave(us * f2 + p2)) * (1 - 0.5 * us)
             + tilt * amp * (us - 0.5))
    col = _paint(col, (torch.abs(v - curve) < 0.02) & (us >= 0.03) & (us <= 0.97), _rgb(dark * 0.5))
    # security thread: a dashed metallic stripe
    in_thread = _in_box(u, v, boxes["thread"])
    dash = (v * 14.0 - torch.floor(v * 14.0)) < 0.55
    col = _paint(col, in_thread & dash, _rgb(torch.tensor((0.62, 0.63, 0.66))))
    col = _paint(col, in_thread & ~dash, _rgb(dark * 0.8))
    return col


def _halve(img: torch.Tensor) -> torch.Tensor:
    """Average 2x2 blocks of ``[C, H, W]`` (an odd side repeats its last row or column first).

    Explicit elementwise sums, bit-exact by construction (like :func:`_upsample`; ``F.interpolate``'s
    bilinear mode rounds differently with the number of threads).
    """
    h, w = img.shape[1:]
    img = F.pad(img[None], (0, w % 2, 0, h % 2), mode="replicate")[0]
    return (img[:, 0::2, 0::2] + img[:, 1::2, 0::2] + (img[:, 0::2, 1::2] + img[:, 1::2, 1::2])) * 0.25


def _upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of ``[C, k, k]`` to ``[C, size, size]`` (pixel centres aligned, edges clamped).

    Separable gathers and elementwise blends, so bit-exact whatever the thread count.
    """
    k = low.shape[-1]
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * (k / size) - 0.5).clamp_(0.0, k - 1.0)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp_(max=k - 1)
    wt = pos - i0.float()
    left = low.index_select(2, i0)
    rows = low.index_select(2, i1).sub_(left).mul_(wt).add_(left)
    top = rows.index_select(1, i0)
    return rows.index_select(1, i1).sub_(top).mul_(wt.view(-1, 1)).add_(top)


def _pack(rgb: torch.Tensor) -> torch.Tensor:
    """RGB and alpha (1 on the note) with a one-texel transparent border, flattened: ``[4, (h + 2) * (w + 2)]``."""
    rgba = torch.cat([rgb, torch.ones(1, *rgb.shape[1:])])
    return F.pad(rgba, (1, 1, 1, 1)).reshape(4, -1).contiguous()


@functools.cache
def _design(k: int) -> _Design:
    """The design of denomination ``k`` (a pure function of ``k``; built once per process)."""
    aspect = NOTE_WIDTH_MM[k] / NOTE_HEIGHT_MM
    d = _Draws(rng.generator(k, "rupiah/design"))
    t0 = d.u(0.245, 0.27)
    boxes = {
        "nominal": _text_box(0.955, 0.12, 0.20, _NUMERALS[k], aspect),
        "words": _text_box(0.955, 0.36, 0.05, _WORDS[k], aspect),
        "heading": _text_box(0.0, 0.07, 0.075, _HEADING, aspect, left=0.045),
        "thread": (t0, 0.03, t0 + 0.03, 0.97),
        "sign": (0.58, 0.62, 0.78, 0.84),
        "text": (0.05, 0.855, 0.235, 0.915),
    }
    h, w = TEXTURE_HEIGHT, round(TEXTURE_HEIGHT * aspect)
    u = torch.arange(w, dtype=torch.float32).add_(0.5).div_(w).view(1, -1).expand(h, w)
    v = torch.arange(h, dtype=torch.float32).add_(0.5).div_(h).view(-1, 1).expand(h, w)
    rgb = _shade(u, v, k, boxes, d).clamp(0, 1)
    region = torch.ones(h, w)  # region ids: 0 off the note, 1 the note, 2-5 nominal, sign, text, thread
    for name, rid in (("nominal", 2), ("sign", 3), ("text", 4), ("thread", 5)):
        region[_in_box(u, v, boxes[name])] = float(rid)
    levels = [(_pack(rgb), h, w)]
    while h > 12:
        h, w = (h + 1) // 2, (w + 1) // 2  # what _halve gives
        rgb = _halve(rgb)
        levels.append((_pack(rgb), h, w))
    labels = ((k, (0.0, 0.0, 1.0, 1.0)), (7 + k, boxes["nominal"]), (SIGN, boxes["sign"]),
              (TEXT, boxes["text"]), (THREAD, boxes["thread"]))
    return _Design(boxes=labels, levels=tuple(levels), region=F.pad(region, (1, 1, 1, 1)).reshape(-1).contiguous())


# ----------------------------------------------------------------------------- one note in a scene


_CODES = 8  # pixel codes per note in the visibility map: region ids 0-5, padded to 8


@attrs.frozen
class _Placed:
    """A note painted in a scene: its id, design, homography and corners."""

    nid: int
    design: _Design
    hm: tuple[float, ...]
    quad: list


def _note_quad(d: _Draws, sc: Scenario, k: int, size: int, shrink: float) -> list[tuple[float, float]]:
    """Corners (TL, TR, BR, BL in note order) of a note placed, turned and tilted in the image."""
    width = d.pair(sc.scale) * size * shrink * NOTE_WIDTH_MM[k] / NOTE_WIDTH_MM[-1]
    height = width * NOTE_HEIGHT_MM / NOTE_WIDTH_MM[k]
    angle = d.u(-180.0, 180.0) if d.chance(sc.any_angle) else d.u(-sc.rotation, sc.rotation)
    cx, cy = d.pair(sc.centre) * size, d.pair(sc.centre) * size
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    corners = []
    for px, py in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
        ox, oy = px * width, py * height
        jx, jy = d.u(-1, 1) * sc.perspective * width, d.u(-1, 1) * sc.perspective * width
        corners.append((cx + ca * ox - sa * oy + jx, cy + sa * ox + ca * oy + jy))
    return corners


def _note(img: torch.Tensor, code: torch.Tensor, nid: int, k: int, quad: list, gain: float,
          size: int) -> _Placed:
    """Paint note ``nid`` of denomination ``k`` onto ``quad`` by sampling its texture (nearest texel).

    ``code`` (float ``[size, size]``) records what each pixel shows: ``8 (nid + 1) + region id``
    for a note, 0 for the background or an occluder; visibility is counted from it.
    """
    design = _design(k)
    hm = _homography(quad)
    win = _window(quad, size)
    if win is None:
        return _Placed(nid, design, hm, quad)
    # colour from the coarsest mipmap level still at least as tall as the note on screen
    tall = max(math.dist(quad[0], quad[3]), math.dist(quad[1], quad[2]))
    tex, h, w = design.levels[0]
    for level in design.levels:
        if level[1] >= tall:
            tex, h, w = level
    h0, w0 = design.levels[0][1], design.levels[0][2]
    x0, y0, x1, y1 = win
    x, y = _grid(win)
    inv = _inverse(hm)
    # finest-level texel coordinates in the padded texture, u * w0 + 1 and v * h0 + 1, as one projective map
    den = x * inv[6] + (y * inv[7] + inv[8])
    tu = (x * (inv[0] * w0 + inv[6]) + (y * (inv[1] * w0 + inv[7]) + (inv[2] * w0 + inv[8]))).div_(den)
    tv = (x * (inv[3] * h0 + inv[6]) + (y * (inv[4] * h0 + inv[7]) + (inv[5] * h0 + inv[8]))).div_(den)
    tu, tv = tu.clamp_(0.0, w0 + 1.0), tv.clamp_(0.0, h0 + 1.0)
    # region ids from the finest level, so that small regions are counted at full precision
    at = torch.floor(tv).mul_(w0 + 2).add_(torch.floor(tu)).view(-1).long()
    region = design.region.index_select(0, at)
    if w != w0:
        su, sv = w / w0, h / h0
        tu, tv = tu.mul_(su).add_(1.0 - su), tv.mul_(sv).add_(1.0 - sv)
        at = tv.floor_().mul_(w + 2).add_(tu.floor_()).view(-1).long()
    texels = tex.index_select(1, at).view(4, y1 - y0, x1 - x0)
    alpha, rgb = texels[3], texels[:3]
    if gain != 1.0:
        rgb.mul_(gain)
    view = img[:, y0:y1, x0:x1]
    view.lerp_(rgb, alpha)  # alpha is 0 or 1: exactly the note or exactly what was there
    code[y0:y1, x0:x1].lerp_(region.view(y1 - y0, x1 - x0).add_(_CODES * (nid + 1)), alpha)
    return _Placed(nid, design, hm, quad)


# ----------------------------------------------------------------------------- background and occluders


def _colour(d: _Draws, lo: float = 0.1, hi: float = 0.9) -> torch.Tensor:
    return torch.tensor([d.u(lo, hi) for _ in range(3)], dtype=torch.float32).view(3, 1, 1)


def _background(d: _Draws, g: torch.Generator, size: int) -> torch.Tensor:
    """A table, cloth or clutter: flat, gradient, smooth noise, wood-like stripes, or shapes. ``[3, size, size]``."""
    kind = d.int(0, 4)
    c1, c2 = _colour(d), _colour(d)
    x = torch.arange(size, dtype=torch.float32).add_(0.5).div_(size).view(1, -1)
    y = torch.arange(size, dtype=torch.float32).add_(0.5).div_(size).view(-1, 1)
    a = d.u(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    if kind == 0:  # flat
        return c1.expand(3, size, size).clone()
    if kind == 1:  # linear gradient
        t = (x * ca + (y * sa - min(0.0, ca) - min(0.0, sa))).mul_(1.0 / (abs(ca) + abs(sa)))
        return ((c2 - c1) * t).add_(c1)
    if kind == 2:  # smooth noise texture
        cells, amount = d.int(3, 12), d.u(0.3, 0.9)
        low = (torch.rand(3, cells, cells, generator=g) - 0.5) * amount + c1
        return _upsample(low, size).clamp_(0, 1)
    if kind == 3:  # wood-like stripes
        f = d.u(4, 20)
        t = _wave((x * (ca * f) + y * (sa * f)) + _wave(y * (ca * 3) - x * (sa * 3)) * 0.3).add_(1.0).mul_(0.5)
        return ((c2 - c1) * t).add_(c1)
    img = c1.expand(3, size, size).clone()  # clutter: rectangles and discs
    for _ in range(d.int(3, 8)):
        col = _colour(d, 0.05, 0.95)
        px, py, rx, ry, box = d.u() * size, d.u() * size, d.u(0.05, 0.3) * size, d.u(0.05, 0.3) * size, d.chance(0.5)
        win = _window([(px - rx, py - ry), (px + rx, py + ry)], size)
        if win is None:
            continue
        x0, y0, x1, y1 = win
        gx, gy = _grid(win)
        if box:
            mask = (torch.abs(gx - px) < rx) & (torch.abs(gy - py) < ry)
        else:
            mask = _sq((gx - px) * (1.0 / rx)) + _sq((gy - py) * (1.0 / ry)) < 1.0
        view = img[:, y0:y1, x0:x1]
        view.copy_(torch.where(mask, col, view))
    return img


_SKIN = ((0.87, 0.68, 0.55), (0.72, 0.52, 0.38), (0.52, 0.36, 0.25))


def _occluder(img: torch.Tensor, code: torch.Tensor, quad: Sequence[tuple[float, float]], d: _Draws,
              scale: float, size: int) -> None:
    """Lay a finger, card or round object over a random point of the note ``quad``, about ``scale`` pixels big."""
    s, t = d.u(0.15, 0.85), d.u(0.15, 0.85)
    (xa, ya), (xb, yb), (xc, yc), (xd, yd) = quad
    px = (1 - s) * (1 - t) * xa + s * (1 - t) * xb + s * t * xc + (1 - s) * t * xd
    py = (1 - s) * (1 - t) * ya + s * (1 - t) * yb + s * t * yc + (1 - s) * t * yd
    kind = d.int(0, 2)
    a = d.u(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    if kind == 0:
        skin = _SKIN[d.int(0, 2)]
        bright = d.u(0.9, 1.1)
        colour = torch.tensor([c * bright for c in skin], dtype=torch.float32).view(3, 1, 1)
    else:
        colour = _colour(d, 0.05, 0.95)
    length, radius = scale, scale * d.u(0.18, 0.3)
    half_w, half_h = scale * 0.5, scale * d.u(0.25, 0.5)
    reach = length + radius if kind == 0 else scale * 0.75
    win = _window([(px - reach, py - reach), (px + reach, py + reach)], size)
    if win is None:
        return
    x0, y0, x1, y1 = win
    x, y = _grid(win)
    dx, dy = x - px, y - py
    along, across = dx * ca + dy * sa, dy * ca - dx * sa
    if kind == 0:  # finger: a capsule from the point outwards, reaching past the note edge
        t_ = along.clamp(0.0, length)
        mask = _sq(dx - t_ * ca) + _sq(dy - t_ * sa) < radius * radius
    elif kind == 1:  # card or phone: a turned rectangle
        mask = (torch.abs(along) < half_w) & (torch.abs(across) < half_h)
    else:  # round object
        mask = _sq(along * (1.0 / half_w)) + _sq(across * (1.0 / half_h)) < 1.0
    shade = 1.0 - 0.25 * (across * (1.0 / max(scale, 1.0))).clamp(-1, 1)
    view = img[:, y0:y1, x0:x1]
    view.copy_(torch.where(mask, colour * shade, view))
    code[y0:y1, x0:x1].masked_fill_(mask, 0.0)


# ----------------------------------------------------------------------------- the camera


def _blur(img: torch.Tensor) -> torch.Tensor:
    """A separable [1, 2, 1] / 4 blur by shifted sums (elementwise, so bit-exact)."""
    p = F.pad(img.unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
    h = torch.add(p[:, :, :-2], p[:, :, 2:]).add_(p[:, :, 1:-1]).add_(p[:, :, 1:-1])
    return torch.add(h[:, :-2], h[:, 2:]).add_(h[:, 1:-1]).add_(h[:, 1:-1]).mul_(1.0 / 16.0)


@functools.cache
def _noise_bank() -> torch.Tensor:
    """A fixed stretch of standard normal noise; a scene's sensor noise is a slice at a random offset.

    Cheaper than drawing ``3 * size * size`` normals per scene (a pure function: built once per process).
    """
    return torch.randn(3 << 20, generator=rng.generator(0, "rupiah/noise"))


def _camera(img: torch.Tensor, d: _Draws, g: torch.Generator, sc: Scenario, size: int) -> torch.Tensor:
    """Optics, light and sensor on the float scene: blur, shading, glare, tone curve, colour cast, noise -> uint8.

    The tone curve is contrast about mid-grey, then Schlick's bias curve
    ``x / ((1/b - 2)(1 - x) + 1)`` with ``b = 0.5 ** gamma`` (equal to
    ``x ** gamma`` at 0, 0.5 and 1, built from ``+ - * /`` only), then
    brightness times a per-channel gain.
    """
    if d.chance(sc.blur):
        img = _blur(img)
    x = torch.arange(size, dtype=torch.float32).add_(0.5).div_(size).view(1, -1)
    y = torch.arange(size, dtype=torch.float32).add_(0.5).div_(size).view(-1, 1)
    a, strength = d.u(0, 2 * math.pi), d.u(0, sc.shading)
    cx, cy = strength * math.cos(a), strength * math.sin(a)
    light = x * cx + (y * cy + (1.0 - 0.5 * cx - 0.5 * cy))
    if d.chance(sc.glare):
        gx, gy, gr, gs = d.u(0.2, 0.8), d.u(0.2, 0.8), d.u(0.1, 0.3), d.u(0.3, 0.8)
        spot = (1.0 - (_sq(x - gx) + _sq(y - gy)) * (1.0 / (gr * gr))).clamp_(min=0.0)
        glare = spot.mul_(spot).mul_(gs)
    else:
        glare = None
    bright, contrast, gamma = d.pair(sc.brightness), d.pair(sc.contrast), d.pair(sc.gamma)
    gains = torch.tensor([bright * (1.0 + d.u(-sc.cast, sc.cast)) for _ in range(3)], dtype=torch.float32)
    sigma = d.pair(sc.noise)

    out = img.mul_(light)  # in place from here on: img is this scene's own canvas, and fresh buffers cost page faults
    if glare is not None:
        out.add_(glare)
    out.mul_(contrast).add_(0.5 - 0.5 * contrast).clamp_(0.0, 1.0)
    k = 1.0 / (0.5 ** gamma) - 2.0
    scratch = torch.empty_like(out)
    if k != 0.0:
        out.div_(torch.mul(out, -k, out=scratch).add_(1.0 + k))
    out.mul_(gains.view(3, 1, 1) * 255.0)
    if sigma > 0.0:
        n, bank = 3 * size * size, _noise_bank()
        start = d.int(0, len(bank) - n) if n <= len(bank) // 2 else -1
        noise = bank[start:start + n].view(3, size, size) if start >= 0 else torch.randn(3, size, size, generator=g)
        out.add_(torch.mul(noise, sigma * 255.0, out=scratch))
    return out.round_().clamp_(0.0, 255.0).to(torch.uint8)


# ----------------------------------------------------------------------------- scenes


Target = dict[str, torch.Tensor]


@attrs.frozen
class Scene:
    """Everything about one rendered scene, including the labels that were dropped.

    ``image`` is uint8 ``[3, size, size]``; ``boxes`` (float32 ``[M, 4]``,
    xyxy pixels, clipped), ``labels`` (int64 ``[M]``), ``visibility``
    (float32 ``[M]``, visible fraction of the projected region) and ``kept``
    (bool ``[M]``) list every candidate label, five per note::

        s = scene(0, "train", 3, scenario="occlusion")
        s.boxes[s.kept], s.labels[s.kept]     # what render() returns
        s.scenario                            # the preset drawn for this scene
    """

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    visibility: torch.Tensor
    kept: torch.Tensor
    scenario: str


def _check_coordinates(seed: Any, split: Any, index: Any, size: Any) -> int:
    if not isinstance(split, str) or split not in SPLITS:
        raise DataError(f"split {split!r} is unknown; expected one of {', '.join(SPLITS)}")
    for name, value, low in (("seed", seed, None), ("index", index, 0), ("size", size, 32)):
        if not (isinstance(value, int) and not isinstance(value, bool)) or (low is not None and value < low):
            want = "an integer" if low is None else f"an integer >= {low}"
            raise DataError(f"render: {name} must be {want}, got {value!r}")
    return SPLITS[split]


def _labels(placed: list[_Placed], code: torch.Tensor, size: int) -> tuple[list, list, list, list]:
    """Every note's five candidate labels: clipped box, class, visible fraction, and whether it is kept."""
    counts = torch.bincount(code.view(-1).long(), minlength=_CODES * (len(placed) + 1)).tolist()
    boxes, classes, vis, kept = [], [], [], []
    for p in placed:
        seen = counts[_CODES * (p.nid + 1):_CODES * (p.nid + 2)]
        for i, (cls, box) in enumerate(p.design.boxes):
            quad = _quad(p.hm, *box)
            xs, ys = [q[0] for q in quad], [q[1] for q in quad]
            bx0, by0 = min(max(min(xs), 0.0), size), min(max(min(ys), 0.0), size)
            bx1, by1 = min(max(max(xs), 0.0), size), min(max(max(ys), 0.0), size)
            area = _area(quad)
            visible = sum(seen) if i == 0 else seen[i + 1]
            fraction = min(1.0, visible / area) if area > 0 else 0.0
            boxes.append((bx0, by0, bx1, by1))
            classes.append(cls)
            vis.append(fraction)
            kept.append(bx1 - bx0 >= MIN_SIDE and by1 - by0 >= MIN_SIDE and fraction >= MIN_VISIBLE)
    return boxes, classes, vis, kept


def scene(seed: int, split: str, index: int, size: int = 256,
          scenario: str | Scenario | Sequence[Scenario] | None = "mixed") -> Scene:
    """Render scene ``index`` of ``split`` with every candidate label: a pure function of its arguments.

    ``scene(0, "val", 12, size=320, scenario="small").image`` is uint8 ``[3, 320, 320]``.
    """
    code = _check_coordinates(seed, split, index, size)
    choices = resolve_scenario(scenario)
    g = rng.generator(seed, "render", code, index)
    d = _Draws(g)
    sc = choices[d.int(0, len(choices) - 1)]  # drawn even for one choice: a mixed scene equals its preset's

    img = _background(d, g, size)
    code = torch.zeros(size, size)
    count = d.int(*sc.notes)
    shrink = 1.0 / (1.0 + 0.25 * (count - 1))
    placed = []
    for nid in range(count):
        k = d.int(0, len(DENOMINATIONS) - 1)
        quad = _note_quad(d, sc, k, size, shrink)
        placed.append(_note(img, code, nid, k, quad, d.u(0.9, 1.08), size))
    for _ in range(d.int(*sc.occluders)):
        q = placed[d.int(0, count - 1)].quad
        _occluder(img, code, q, d, d.pair(sc.occluder_size) * math.dist(q[0], q[1]), size)
    image = _camera(img, d, g, sc, size)
    boxes, classes, vis, kept = _labels(placed, code, size)
    return Scene(
        image=image,
        boxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        labels=torch.tensor(classes, dtype=torch.int64),
        visibility=torch.tensor(vis, dtype=torch.float32),
        kept=torch.tensor(kept, dtype=torch.bool),
        scenario=sc.name,
    )


def render(seed: int, split: str, index: int, size: int = 256,
           scenario: str | Scenario | Sequence[Scenario] | None = "mixed") -> tuple[torch.Tensor, Target]:
    """Scene ``index`` of ``split`` as ``(image float32 [3, size, size] in [0, 1], target)``.

    ``target = {"boxes": float32 [K, 4] xyxy pixels, "labels": int64 [K]}``
    holds the kept labels only (see the drop rule in the module docs)::

        image, target = render(0, "train", 0, size=256, scenario="lighting")
    """
    s = scene(seed, split, index, size, scenario)
    return s.image.float().div_(255.0), {"boxes": s.boxes[s.kept], "labels": s.labels[s.kept]}


# ----------------------------------------------------------------------------- dataset


@attrs.frozen
class Jitter:
    """A photometric augmentation ``(image, target, generator) -> (image, target)``: brightness, contrast, noise.

    Boxes are untouched. Give it to :class:`RupiahScenes` to vary a scene per epoch::

        data = RupiahScenes("train", 1000, augment=Jitter(brightness=0.2, contrast=0.2, noise=0.02))
    """

    brightness: float = 0.2
    contrast: float = 0.2
    noise: float = 0.0

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, c = (torch.rand(2, generator=generator, dtype=torch.float64) * 2.0 - 1.0).tolist()
        out = (image - 0.5) * (1.0 + c * self.contrast) + 0.5
        out = out * (1.0 + b * self.brightness)
        if self.noise > 0:
            out = out + torch.randn(image.shape, generator=generator) * self.noise
        return out.clamp(0.0, 1.0), target


class _IndexOutOfRange(DataError, IndexError):
    """An index past the end of a scene set (an ``IndexError`` too, so iteration stops)."""


@attrs.frozen
class RupiahScenes:
    """A deterministic set of ``n`` synthetic scenes: ``split``, ``seed``, image ``size`` and ``scenario``.

    A map-style dataset: ``scenes[i]`` renders scene ``i`` (the stream
    ``(seed, "render", split, i)``); ``sample(i, generator)`` is what the
    project's loader calls — the same scene, then ``augment`` with that
    generator when one is given. Batch with :func:`collate`::

        data = LoaderData(RupiahScenes("train", 2000, size=256), batch_size=16, workers=2, collate_fn=collate)
        image, target = RupiahScenes("val", 200, scenario="occlusion")[7]
    """

    split: str = "train"
    n: int = 1000
    seed: int = 0
    size: int = 256
    scenario: str | Scenario | tuple[Scenario, ...] = "mixed"
    augment: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None

    def __attrs_post_init__(self) -> None:
        _check_coordinates(self.seed, self.split, 0, self.size)
        if not (isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1):
            raise DataError(f"RupiahScenes: n must be an integer >= 1, got {self.n!r}")
        resolve_scenario(self.scenario)
        if self.augment is not None and not callable(self.augment):
            raise DataError(f"RupiahScenes: augment must be a function (image, target, generator), "
                            f"got {self.augment!r}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index = int(index)
        if not 0 <= index < self.n:
            raise _IndexOutOfRange(f"RupiahScenes({self.split!r}): index {index} is outside 0..{self.n - 1}")
        return render(self.seed, self.split, index, self.size, self.scenario)

    def sample(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scene ``index``, augmented with ``generator`` when the set has an ``augment`` function."""
        image, target = self[index]
        return (image, target) if self.augment is None else self.augment(image, target, generator)


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack the images (``[B, 3, H, W]``) and keep the targets as a list of dicts (as torchvision detectors do).

    ``images, targets = collate([scenes[0], scenes[1]])``; ``flat_targets(targets)`` gives one tensor.
    """
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def flat_targets(targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """All targets of a batch as one float32 ``[sum K, 6]`` tensor of rows ``(image, class, x1, y1, x2, y2)``.

    ``rows = flat_targets(collate(batch)[1]); rows[rows[:, 0] == 2]`` are image 2's labels.
    """
    rows = [torch.cat([torch.full((len(t["labels"]), 1), float(i)), t["labels"].float().view(-1, 1),
                       t["boxes"].float().view(-1, 4)], dim=1) for i, t in enumerate(targets)]
    return torch.cat(rows) if rows else torch.zeros(0, 6)
