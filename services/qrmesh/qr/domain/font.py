"""The frame's typeface: Noto Sans Bold (SIL Open Font License 1.1) from the `fontpkg-noto-sans` package.

Vector formats draw the text as glyph outlines (so viewers need no font); raster formats let FreeType
(through Pillow) draw the same font at the same size and position.
"""

from __future__ import annotations

import functools
import io
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fontTools.pens.basePen import BasePen  # type: ignore[import-untyped]
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from PIL import ImageFont

from qrmesh.qr.domain.geometry import Command

_PACKAGE = "fontpkg_noto_sans"
_FILE = "NotoSans[wdth,wght].ttf"
_LOCATION = {"wght": 700.0, "wdth": 100.0}
# fontTools loads glyphs lazily and FreeType faces are not thread-safe; renders run on worker threads.
_LOCK = threading.Lock()
_PER_THREAD = threading.local()


@dataclass(frozen=True, slots=True)
class _Face:
    glyphs: Any
    cmap: dict[int, str]
    units_per_em: int
    cap_height: int


@functools.cache
def _font_bytes() -> bytes:
    return resources.files(_PACKAGE).joinpath("files", _FILE).read_bytes()


@functools.cache
def _face() -> _Face:
    font = TTFont(io.BytesIO(_font_bytes()), lazy=True)
    return _Face(
        glyphs=font.getGlyphSet(location=_LOCATION),
        cmap=font.getBestCmap(),
        units_per_em=font["head"].unitsPerEm,
        cap_height=font["OS/2"].sCapHeight,
    )


def _glyph_names(text: str) -> list[str]:
    face = _face()
    return [face.cmap.get(ord(ch), ".notdef") for ch in text]


def cap_height() -> float:
    """The height of capital letters as a share of the em."""
    face = _face()
    return face.cap_height / face.units_per_em


def text_width(text: str) -> float:
    """The advance width of `text` in ems (no kerning)."""
    return sum(_glyph(name)[1] for name in _glyph_names(text)) / _face().units_per_em


class _CommandPen(BasePen):  # type: ignore[misc]
    """Collects a glyph's outline as path commands in font units, flipped to y-down."""

    def __init__(self, glyph_set: Any) -> None:
        super().__init__(glyph_set)
        self.commands: list[Command] = []

    def _moveTo(self, pt: tuple[float, float]) -> None:
        self.commands.append(("M", pt[0], -pt[1]))

    def _lineTo(self, pt: tuple[float, float]) -> None:
        self.commands.append(("L", pt[0], -pt[1]))

    def _curveToOne(self, pt1: tuple[float, float], pt2: tuple[float, float], pt3: tuple[float, float]) -> None:
        self.commands.append(("C", pt1[0], -pt1[1], pt2[0], -pt2[1], pt3[0], -pt3[1]))

    def _closePath(self) -> None:
        self.commands.append(("Z",))


@functools.lru_cache(maxsize=1024)
def _glyph(name: str) -> tuple[tuple[Command, ...], float]:
    """A glyph's outline in font units (y up) and its advance width."""
    face = _face()
    with _LOCK:
        glyph = face.glyphs[name]
        pen = _CommandPen(face.glyphs)
        glyph.draw(pen)
        return tuple(pen.commands), float(glyph.width)


def text_commands(text: str, center_x: float, baseline: float, size: float) -> list[Command]:
    """Glyph outlines of `text` centered on `center_x` with its baseline at `baseline`, `size` units per em."""
    scale = size / _face().units_per_em
    x = center_x - text_width(text) * size / 2
    commands: list[Command] = []
    for name in _glyph_names(text):
        outline, advance = _glyph(name)
        for command in outline:
            points = command[1:]
            moved = [x + v * scale if i % 2 == 0 else baseline + v * scale for i, v in enumerate(points)]
            commands.append((command[0], *moved))
        x += advance * scale
    return commands


def pil_font(pixels: int) -> ImageFont.FreeTypeFont:
    """The same face for Pillow at `pixels` per em (one instance per thread and size)."""
    fonts: dict[int, ImageFont.FreeTypeFont] = _PER_THREAD.__dict__.setdefault("fonts", {})
    font = fonts.get(pixels)
    if font is None:
        if len(fonts) > 32:
            fonts.clear()
        font = ImageFont.truetype(io.BytesIO(_font_bytes()), pixels)
        names = [axis["name"] for axis in font.get_variation_axes()]
        font.set_variation_by_axes([_LOCATION["wght"] if name == b"Weight" else _LOCATION["wdth"] for name in names])
        fonts[pixels] = font
    return font
