"""Outlines shared by every output: each is a path for vector formats and an inside test for raster ones.

Coordinates are in scene units (one unit = one module), y pointing down.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Point = tuple[float, float]
# A path command: ("M", x, y), ("L", x, y), ("C", x1, y1, x2, y2, x, y) or ("Z",).
Command = tuple[str, *tuple[float, ...]]

KAPPA = 4 * (math.sqrt(2) - 1) / 3
"""Control-point distance of a cubic Bezier quarter circle, as a share of the radius."""


@dataclass(frozen=True, slots=True)
class RoundedRect:
    """An axis-aligned rectangle whose corners (top-left, top-right, bottom-right, bottom-left) may be round."""

    x0: float
    y0: float
    x1: float
    y1: float
    radii: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def square(self) -> bool:
        """Whether no corner is rounded."""
        return not any(self.radii)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1)."""
        return (self.x0, self.y0, self.x1, self.y1)

    def commands(self) -> list[Command]:
        """The outline as a closed path, clockwise on screen."""
        x0, y0, x1, y1 = self.x0, self.y0, self.x1, self.y1
        tl, tr, br, bl = self.radii
        out: list[Command] = [("M", x0 + tl, y0), ("L", x1 - tr, y0)]
        if tr:
            k = tr * KAPPA
            out.append(("C", x1 - tr + k, y0, x1, y0 + tr - k, x1, y0 + tr))
        out.append(("L", x1, y1 - br))
        if br:
            k = br * KAPPA
            out.append(("C", x1, y1 - br + k, x1 - br + k, y1, x1 - br, y1))
        out.append(("L", x0 + bl, y1))
        if bl:
            k = bl * KAPPA
            out.append(("C", x0 + bl - k, y1, x0, y1 - bl + k, x0, y1 - bl))
        out.append(("L", x0, y0 + tl))
        if tl:
            k = tl * KAPPA
            out.append(("C", x0, y0 + tl - k, x0 + tl - k, y0, x0 + tl, y0))
        out.append(("Z",))
        return out

    def inside(self, xs: FloatArray, ys: FloatArray, scale: float) -> BoolArray:
        """Which points (in pixels at `scale` pixels per unit) fall inside."""
        x0, y0, x1, y1 = self.x0 * scale, self.y0 * scale, self.x1 * scale, self.y1 * scale
        result: BoolArray = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        for radius, cx_left, cy_top in (
            (self.radii[0], True, True),
            (self.radii[1], False, True),
            (self.radii[2], False, False),
            (self.radii[3], True, False),
        ):
            if not radius:
                continue
            r = radius * scale
            cx = x0 + r if cx_left else x1 - r
            cy = y0 + r if cy_top else y1 - r
            in_corner = ((xs < cx) if cx_left else (xs > cx)) & ((ys < cy) if cy_top else (ys > cy))
            result &= ~(in_corner & ((xs - cx) ** 2 + (ys - cy) ** 2 > r * r))
        return result

    def corner_boxes(self) -> list[tuple[float, float, float, float]]:
        """The squares (x0, y0, x1, y1) where rounding happens; outside them the shape is a plain rectangle."""
        tl, tr, br, bl = self.radii
        boxes = []
        if tl:
            boxes.append((self.x0, self.y0, self.x0 + tl, self.y0 + tl))
        if tr:
            boxes.append((self.x1 - tr, self.y0, self.x1, self.y0 + tr))
        if br:
            boxes.append((self.x1 - br, self.y1 - br, self.x1, self.y1))
        if bl:
            boxes.append((self.x0, self.y1 - bl, self.x0 + bl, self.y1))
        return boxes

    def moved(self, dx: float, dy: float) -> RoundedRect:
        """The same outline shifted by (dx, dy)."""
        return RoundedRect(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.radii)


@dataclass(frozen=True, slots=True)
class Diamond:
    """A square turned 45 degrees around (cx, cy), reaching `half` units from the center."""

    cx: float
    cy: float
    half: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1)."""
        return (self.cx - self.half, self.cy - self.half, self.cx + self.half, self.cy + self.half)

    def commands(self) -> list[Command]:
        """The outline as a closed path."""
        cx, cy, h = self.cx, self.cy, self.half
        return [("M", cx, cy - h), ("L", cx + h, cy), ("L", cx, cy + h), ("L", cx - h, cy), ("Z",)]

    def moved(self, dx: float, dy: float) -> Diamond:
        """The same outline shifted by (dx, dy)."""
        return Diamond(self.cx + dx, self.cy + dy, self.half)

    def inside(self, xs: FloatArray, ys: FloatArray, scale: float) -> BoolArray:
        """Which points (in pixels at `scale` pixels per unit) fall inside."""
        result: BoolArray = np.abs(xs - self.cx * scale) + np.abs(ys - self.cy * scale) <= self.half * scale
        return result


Outline: TypeAlias = RoundedRect | Diamond

_SUPERSAMPLE = 4
_CACHE_LIMIT = 256 * 256
"""Coverage of outlines up to this many pixels is cached (eyes, module tiles); larger ones are computed."""

U8Array = npt.NDArray[np.uint8]


def coverage(outline: Outline, scale: int) -> tuple[int, int, U8Array]:
    """Anti-aliased coverage (0-255) of an outline on the pixel grid: (left, top, rows x columns array).

    Straight edges get their exact area coverage; rounded or slanted parts are supersampled. Results
    for small outlines are cached by their position within a module, so repeated shapes cost nothing.
    """
    x0, y0, x1, y1 = outline.bounds
    if (x1 - x0) * (y1 - y0) * scale * scale > _CACHE_LIMIT:
        return _coverage(outline, scale)
    dx, dy = math.floor(x0), math.floor(y0)
    moved = outline.moved(-dx, -dy)
    left, top, result = _cached_coverage(moved, scale)
    return left + dx * scale, top + dy * scale, result


@functools.lru_cache(maxsize=1024)
def _cached_coverage(outline: Outline, scale: int) -> tuple[int, int, U8Array]:
    left, top, result = _coverage(outline, scale)
    result.flags.writeable = False
    return left, top, result


def _coverage(outline: Outline, scale: int) -> tuple[int, int, U8Array]:
    bx0, by0, bx1, by1 = (v * scale for v in outline.bounds)
    left, top = math.floor(bx0 + 1e-9), math.floor(by0 + 1e-9)
    right, bottom = math.ceil(bx1 - 1e-9), math.ceil(by1 - 1e-9)
    if isinstance(outline, RoundedRect) and all(v == int(v) for v in (bx0, by0, bx1, by1)):
        result = np.full((bottom - top, right - left), 255, dtype=np.uint8)
        boxes = [tuple(v * scale for v in box) for box in outline.corner_boxes()]
    elif isinstance(outline, RoundedRect):
        px = np.arange(left, right, dtype=np.float32)
        py = np.arange(top, bottom, dtype=np.float32)
        cover_x = np.clip(np.minimum(px + 1, bx1) - np.maximum(px, bx0), 0, 1) * 255
        cover_y = np.clip(np.minimum(py + 1, by1) - np.maximum(py, by0), 0, 1)
        result = np.rint(np.outer(cover_y, cover_x)).astype(np.uint8)
        boxes = [tuple(v * scale for v in box) for box in outline.corner_boxes()]
    else:
        result = np.zeros((bottom - top, right - left), dtype=np.uint8)
        boxes = [(bx0, by0, bx1, by1)]
    for cx0, cy0, cx1, cy1 in boxes:
        ix0, iy0 = max(left, math.floor(cx0)), max(top, math.floor(cy0))
        ix1, iy1 = min(right, math.ceil(cx1)), min(bottom, math.ceil(cy1))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        local = outline.moved(-ix0 / scale, -iy0 / scale)
        result[iy0 - top : iy1 - top, ix0 - left : ix1 - left] = _supersampled(local, scale, ix1 - ix0, iy1 - iy0)
    return left, top, result


@functools.lru_cache(maxsize=4096)
def _supersampled(outline: Outline, scale: int, w: int, h: int) -> U8Array:
    """Supersampled coverage of the pixels (0, 0) to (w, h) by an outline placed relative to them."""
    n = _SUPERSAMPLE
    offsets = (np.arange(n) + 0.5) / n
    xs = (np.arange(w)[:, None] + offsets[None, :]).ravel()
    ys = (np.arange(h)[:, None] + offsets[None, :]).ravel()
    inside = outline.inside(xs[None, :], ys[:, None], scale)
    counts = inside.reshape(h, n, w, n).sum(axis=(1, 3), dtype=np.uint16)
    result: U8Array = ((counts * 255 + (n * n) // 2) // (n * n)).astype(np.uint8)
    result.flags.writeable = False
    return result
