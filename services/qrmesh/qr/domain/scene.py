"""The drawing model: a design and a symbol laid out as a scene of paints, outlines, a picture and text.

Every output format draws the same scene; units are modules, y points down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from PIL import Image as PILImage

from qrmesh.qr.domain import font
from qrmesh.qr.domain.design import WHITE, Color, Design, EyeBallShape, EyeFrameShape, FrameStyle, Gradient, ModuleShape
from qrmesh.qr.domain.geometry import BoolArray, Command, Diamond, Outline, RoundedRect
from qrmesh.qr.domain.logo import decode_logo
from qrmesh.qr.domain.matrix import FINDER, Symbol, alignment_patterns, finder_origins, protected_mask


@dataclass(frozen=True, slots=True)
class GradientPaint:
    """A gradient spread over a box (x0, y0, x1, y1) of the scene."""

    gradient: Gradient
    box: tuple[float, float, float, float]

    def linear_axis(self) -> tuple[float, float, float, float]:
        """Start and end points (x0, y0, x1, y1) of a linear gradient so that it spans the box at its rotation."""
        x0, y0, x1, y1 = self.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        angle = math.radians(self.gradient.rotation)
        dx, dy = math.cos(angle), math.sin(angle)
        reach = abs(dx) * (x1 - x0) / 2 + abs(dy) * (y1 - y0) / 2
        return (cx - dx * reach, cy - dy * reach, cx + dx * reach, cy + dy * reach)

    def radial_circle(self) -> tuple[float, float, float]:
        """Center and radius (cx, cy, r) of a radial gradient reaching the box's corners."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0) / 2)


Paint: TypeAlias = Color | GradientPaint


@dataclass(frozen=True, slots=True)
class Shapes:
    """Outlines filled with one paint; `holes` are cut out of them (even-odd: they never overlap)."""

    paint: Paint
    outlines: tuple[Outline, ...]
    holes: tuple[Outline, ...] = ()


@dataclass(frozen=True, slots=True)
class Modules:
    """The symbol's dark modules (finder patterns excluded), each drawn as `shape`, at (x, y)."""

    paint: Paint
    grid: BoolArray
    shape: ModuleShape
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Picture:
    """A raster image stretched over the box (x0, y0, x1, y1); `key` identifies the image's pixels (for caches)."""

    image: PILImage.Image
    box: tuple[float, float, float, float]
    key: bytes


@dataclass(frozen=True, slots=True)
class Text:
    """One line of text centered on `center_x` with its baseline at `baseline`, `size` units per em."""

    text: str
    color: Color
    center_x: float
    baseline: float
    size: float

    def commands(self) -> list[Command]:
        """The glyphs as path commands."""
        return font.text_commands(self.text, self.center_x, self.baseline, self.size)


Item: TypeAlias = Shapes | Modules | Picture | Text


@dataclass(frozen=True, slots=True)
class Scene:
    """What to draw: a `width` x `height` canvas (in modules), an optional full background, and items in order."""

    width: int
    height: int
    background: Color | None
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class LogoPlacement:
    """Where the logo goes, in symbol modules: its box and the modules it (with its margin) covers."""

    box: tuple[float, float, float, float]
    covered: BoolArray
    window: tuple[int, int] | None
    """The center alignment pattern left visible through the logo, if the version has one there."""


# Module outlines inside a unit cell, by shape. `n, e, s, w` say whether that neighbour is dark.
_GAP = 0.1
_BAR_INSET = 0.1


def cell_outline(shape: ModuleShape, n: bool, e: bool, s: bool, w: bool) -> RoundedRect:
    """The outline of one dark module in its unit cell, given its dark neighbours.

    Connected shapes round only corners where no neighbour touches, so runs of modules merge into
    solid bars, and everything stays within the module's own cell.
    """
    if shape is ModuleShape.SQUARE:
        return RoundedRect(0, 0, 1, 1)
    if shape is ModuleShape.GAPPED:
        return RoundedRect(_GAP, _GAP, 1 - _GAP, 1 - _GAP)
    if shape is ModuleShape.DOTS:
        return RoundedRect(0.05, 0.05, 0.95, 0.95, (0.45, 0.45, 0.45, 0.45))
    if shape is ModuleShape.VERTICAL_BARS:
        r = 0.5 - _BAR_INSET
        top, bottom = (0.0 if n else r), (0.0 if s else r)
        return RoundedRect(_BAR_INSET, 0, 1 - _BAR_INSET, 1, (top, top, bottom, bottom))
    if shape is ModuleShape.HORIZONTAL_BARS:
        r = 0.5 - _BAR_INSET
        left, right = (0.0 if w else r), (0.0 if e else r)
        return RoundedRect(0, _BAR_INSET, 1, 1 - _BAR_INSET, (left, right, right, left))
    tl, tr, br, bl = (not n and not w), (not n and not e), (not s and not e), (not s and not w)
    if shape is ModuleShape.ROUNDED:
        radius = 0.3
        return RoundedRect(0, 0, 1, 1, (radius * tl, radius * tr, radius * br, radius * bl))
    if shape is ModuleShape.EXTRA_ROUNDED:
        radius = 0.5
        return RoundedRect(0, 0, 1, 1, (radius * tl, radius * tr, radius * br, radius * bl))
    if shape is ModuleShape.CLASSY:
        return RoundedRect(0, 0, 1, 1, (0.45 * tl, 0.0, 0.45 * br, 0.0))
    # CLASSY_ROUNDED
    return RoundedRect(0, 0, 1, 1, (0.5 * tl, 0.15 * tr, 0.5 * br, 0.15 * bl))


def neighbour_codes(grid: BoolArray) -> np.ndarray:
    """Per module: bits n=1, e=2, s=4, w=8 for dark neighbours, or 16 for a light module."""
    padded = np.pad(grid, 1)
    codes = (
        padded[:-2, 1:-1].astype(np.uint8)
        | (padded[1:-1, 2:].astype(np.uint8) << 1)
        | (padded[2:, 1:-1].astype(np.uint8) << 2)
        | (padded[1:-1, :-2].astype(np.uint8) << 3)
    )
    return np.where(grid, codes, np.uint8(16))


def code_outline(shape: ModuleShape, code: int) -> RoundedRect:
    """`cell_outline` for a neighbour code from `neighbour_codes`."""
    return cell_outline(shape, bool(code & 1), bool(code & 2), bool(code & 4), bool(code & 8))


def module_runs(grid: BoolArray) -> list[tuple[int, int, int]]:
    """Horizontal runs of dark modules as (row, first column, column after the last)."""
    steps = np.diff(np.pad(grid.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return list(zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True))


def module_outlines(item: Modules) -> list[RoundedRect]:
    """The modules as few outlines as possible: runs of connected modules merge into one outline each."""
    grid = item.grid
    shape = item.shape
    codes = neighbour_codes(grid)
    out: list[RoundedRect] = []
    if shape in (ModuleShape.DOTS, ModuleShape.GAPPED):
        cell = cell_outline(shape, False, False, False, False)
        ys, xs = np.nonzero(grid)
        return [cell.moved(item.x + x, item.y + y) for y, x in zip(ys.tolist(), xs.tolist(), strict=True)]
    vertical = shape is ModuleShape.VERTICAL_BARS
    for row, start, end in module_runs(grid.T if vertical else grid):
        if vertical:
            first = code_outline(shape, int(codes[start, row]))
            last = code_outline(shape, int(codes[end - 1, row]))
            x, y0, y1 = item.x + row, item.y + start, item.y + end
            out.append(
                RoundedRect(
                    x + first.x0,
                    y0 + first.y0,
                    x + first.x1,
                    y1 - 1 + last.y1,
                    (first.radii[0], first.radii[1], last.radii[2], last.radii[3]),
                )
            )
        else:
            if shape is ModuleShape.SQUARE:
                out.append(RoundedRect(item.x + start, item.y + row, item.x + end, item.y + row + 1))
                continue
            first = code_outline(shape, int(codes[row, start]))
            last = code_outline(shape, int(codes[row, end - 1]))
            x0, x1, y = item.x + start, item.x + end, item.y + row
            out.append(
                RoundedRect(
                    x0 + first.x0,
                    y + first.y0,
                    x1 - 1 + last.x1,
                    y + first.y1,
                    (first.radii[0], last.radii[1], last.radii[2], first.radii[3]),
                )
            )
    return out


# Corner radii (outer, hole) of the eye frames. ROUNDED stays gentle enough for detectors that look
# for four-cornered finder patterns (OpenCV's); EXTRA_ROUNDED and CIRCLE suit phone scanners (ZXing,
# ML Kit, iOS) but not those detectors.
_EYE_FRAME_RADII = {
    EyeFrameShape.SQUARE: (0.0, 0.0),
    EyeFrameShape.ROUNDED: (1.0, 0.5),
    EyeFrameShape.EXTRA_ROUNDED: (3.0, 2.0),
    EyeFrameShape.CIRCLE: (3.5, 2.5),
}


def eye_frame(shape: EyeFrameShape, x: float, y: float) -> tuple[RoundedRect, RoundedRect]:
    """The finder pattern's 7x7 ring at (x, y): its outer outline and the hole."""
    outer, inner = _EYE_FRAME_RADII[shape]
    return (
        RoundedRect(x, y, x + 7, y + 7, (outer,) * 4),
        RoundedRect(x + 1, y + 1, x + 6, y + 6, (inner,) * 4),
    )


def eye_ball(shape: EyeBallShape, x: float, y: float) -> Outline:
    """The finder pattern's 3x3 center for a pattern at (x, y)."""
    if shape is EyeBallShape.DIAMOND:
        return Diamond(x + 3.5, y + 3.5, 1.75)
    radius = {EyeBallShape.SQUARE: 0.0, EyeBallShape.ROUNDED: 0.75, EyeBallShape.CIRCLE: 1.5}[shape]
    return RoundedRect(x + 2, y + 2, x + 5, y + 5, (radius,) * 4)


def place_logo(symbol: Symbol, ratio: float, margin: int, aspect: float) -> LogoPlacement:
    """The largest logo box up to `ratio` of the symbol width, centered, whose covered modules (box plus
    `margin`, shrunk if need be) touch no finder, separator, timing, format or version module and no
    alignment pattern but a central one (which stays visible through a window in the logo).
    """
    size = symbol.size
    protected = protected_mask(symbol.version).copy()
    center = size / 2
    window = None
    for x, y in alignment_patterns(symbol.version):
        if x == y == (size - 1) // 2:
            window = (x, y)
            protected[y - 3 : y + 4, x - 3 : x + 4] = False
    # Shrink the logo first, then its margin, until it fits; a symbol too small for any logo gets none.
    width = height = 0.0
    x0 = y0 = center
    covered = np.zeros((size, size), dtype=np.bool_)
    for pad in range(margin, -1, -1):
        side = ratio * size
        while side >= 0.5:
            w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
            bx, by = center - w / 2, center - h / 2
            candidate = np.zeros((size, size), dtype=np.bool_)
            cy0, cy1 = math.floor(by + 1e-9) - pad, math.ceil(by + h - 1e-9) + pad
            cx0, cx1 = math.floor(bx + 1e-9) - pad, math.ceil(bx + w - 1e-9) + pad
            candidate[max(cy0, 0) : cy1, max(cx0, 0) : cx1] = True
            if not (candidate & protected).any():
                width, height, x0, y0, covered = w, h, bx, by, candidate
                break
            side -= 0.25
        if width:
            break
    if window is not None:
        x, y = window
        covered[y - 3 : y + 4, x - 3 : x + 4] = False
    return LogoPlacement(box=(x0, y0, x0 + width, y0 + height), covered=covered, window=window)


def build_scene(symbol: Symbol, design: Design) -> tuple[Scene, LogoPlacement | None]:
    """Lay out `symbol` drawn as `design`; also says where the logo went."""
    quiet = design.quiet_zone
    code_side = symbol.size + 2 * quiet
    frame = design.frame if design.frame and design.frame.style is not FrameStyle.NONE else None
    items: list[Item] = []
    code_x = code_y = 0.0
    width = height = code_side
    background = design.background
    if frame is not None:
        frame_color = frame.color or design.foreground
        banner = max(3, round(code_side * 0.2))
        if frame.style in (FrameStyle.BANNER_BOTTOM, FrameStyle.BANNER_TOP):
            height = code_side + banner
            round_ = banner * 0.25
            if frame.style is FrameStyle.BANNER_BOTTOM:
                band = RoundedRect(0, code_side, width, height, (0, 0, round_, round_))
            else:
                code_y = banner
                band = RoundedRect(0, 0, width, banner, (round_, round_, 0, 0))
            items.append(Shapes(frame_color, (band,)))
            text_box = band.bounds
        else:
            border = max(1, round(code_side / 25))
            width, height = code_side + 2 * border, code_side + border + banner
            code_x = code_y = float(border)
            rounded = frame.style is FrameStyle.ROUNDED_BOX
            outer_radius = 2.0 * border if rounded else 0.0
            inner_radius = min(float(border), quiet * 0.5) if rounded else 0.0
            hole = RoundedRect(border, border, border + code_side, border + code_side, (inner_radius,) * 4)
            outer = RoundedRect(0, 0, width, height, (outer_radius,) * 4)
            if background is not None and background.opaque:
                items += [Shapes(frame_color, (outer,)), Shapes(background, (hole,))]
            else:  # the code shows through a hole in the frame
                items.append(Shapes(frame_color, (outer,), (hole,)))
                if background is not None:
                    items.append(Shapes(background, (hole,)))
            background = None
            text_box = (0.0, border + code_side, float(width), float(height))
        if frame.text:
            items.append(_banner_text(frame.text, frame.text_color, text_box))
    ox, oy = code_x + quiet, code_y + quiet
    grid = np.array(symbol.array())
    for fx, fy in finder_origins(symbol.size):
        grid[fy : fy + FINDER, fx : fx + FINDER] = False
    module_paint: Paint = (
        GradientPaint(design.gradient, (ox, oy, ox + symbol.size, oy + symbol.size))
        if design.gradient
        else design.foreground
    )
    placement = None
    picture = None
    if design.logo is not None:
        logo = decode_logo(design.logo.image)
        image = logo.image
        placement = place_logo(symbol, design.logo.size_ratio, design.logo.margin, image.width / image.height)
        if design.logo.clear_behind:
            grid &= ~placement.covered
        bx0, by0, bx1, by1 = placement.box
        if bx1 > bx0:
            picture = Picture(image, (ox + bx0, oy + by0, ox + bx1, oy + by1), logo.digest)
    items.append(Modules(module_paint, grid, design.module_shape, ox, oy))
    for fx, fy in finder_origins(symbol.size):
        outer, hole = eye_frame(design.eye_frame_shape, ox + fx, oy + fy)
        items.append(Shapes(design.eye_frame_paint or module_paint, (outer,), (hole,)))
        items.append(
            Shapes(design.eye_ball_paint or module_paint, (eye_ball(design.eye_ball_shape, ox + fx, oy + fy),))
        )
    if picture is not None and placement is not None and design.logo is not None:
        if design.logo.margin and not design.logo.clear_behind:
            pad = _covered_box(placement.covered)
            items.append(Shapes(design.background or WHITE, (pad.moved(ox, oy),)))
        items.append(picture)
        if placement.window is not None:
            items += _alignment_window(placement.window, ox, oy, design.background or WHITE, module_paint)
    return Scene(width=width, height=height, background=background, items=tuple(items)), placement


def _covered_box(covered: BoolArray) -> RoundedRect:
    rows = np.nonzero(covered.any(axis=1))[0]
    cols = np.nonzero(covered.any(axis=0))[0]
    return RoundedRect(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _alignment_window(center: tuple[int, int], ox: float, oy: float, light: Color, dark: Paint) -> list[Item]:
    x, y = ox + center[0], oy + center[1]
    return [
        Shapes(light, (RoundedRect(x - 3, y - 3, x + 4, y + 4),)),
        Shapes(
            dark,
            (RoundedRect(x - 2, y - 2, x + 3, y + 3), RoundedRect(x, y, x + 1, y + 1)),
            (RoundedRect(x - 1, y - 1, x + 2, y + 2),),
        ),
    ]


def _banner_text(text: str, color: Color, box: tuple[float, float, float, float]) -> Text:
    x0, y0, x1, y1 = box
    size = (y1 - y0) * 0.5
    available = (x1 - x0) * 0.9
    width = font.text_width(text) * size
    if width > available:
        size *= available / width
    baseline = (y0 + y1) / 2 + font.cap_height() * size / 2
    return Text(text, color, (x0 + x1) / 2, baseline, size)
