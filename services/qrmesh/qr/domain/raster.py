"""Drawing a scene into pixels (Pillow and numpy), and writing PNG, JPEG and lossless WebP."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from qrmesh.qr.domain import font
from qrmesh.qr.domain.design import WHITE, Color, GradientType, ModuleShape
from qrmesh.qr.domain.geometry import coverage
from qrmesh.qr.domain.scene import Modules, Paint, Picture, Scene, Shapes, Text, code_outline, neighbour_codes

U8 = npt.NDArray[np.uint8]


def rasterize(scene: Scene, scale: int) -> Image.Image:
    """The scene as an RGBA image at `scale` pixels per module."""
    size = (scene.width * scale, scene.height * scale)
    background = scene.background
    canvas = Image.new("RGBA", size, (*background.rgb, background.a) if background else (0, 0, 0, 0))
    for item in scene.items:
        if isinstance(item, Picture):
            _draw_picture(canvas, item, scale)
            continue
        if isinstance(item, Modules):
            left, top, mask = _modules_mask(item, scale)
            paint: Paint = item.paint
        elif isinstance(item, Shapes):
            left, top, mask = _shapes_mask(item, scale)
            paint = item.paint
        else:
            left, top, mask = _text_mask(item, scale)
            paint = item.color
        _composite(canvas, left, top, mask, paint, scale)
    return canvas


@functools.lru_cache(maxsize=512)
def _tiles(shape: ModuleShape, scale: int) -> U8:
    """Coverage of a module in its cell for each neighbour code 0-15, plus an empty tile for code 16."""
    tiles = np.zeros((17, scale, scale), dtype=np.uint8)
    for code in range(16):
        left, top, cover = coverage(code_outline(shape, code), scale)
        tiles[code, top : top + cover.shape[0], left : left + cover.shape[1]] = cover
    tiles.flags.writeable = False
    return tiles


def _modules_mask(item: Modules, scale: int) -> tuple[int, int, U8]:
    n = item.grid.shape[0]
    tiles = _tiles(item.shape, scale)
    mask = tiles[neighbour_codes(item.grid)].transpose(0, 2, 1, 3).reshape(n * scale, n * scale)
    return round(item.x * scale), round(item.y * scale), np.ascontiguousarray(mask)


def _shapes_mask(item: Shapes, scale: int) -> tuple[int, int, U8]:
    parts = [coverage(o, scale) for o in item.outlines]
    holes = [coverage(o, scale) for o in item.holes]
    if len(parts) == 1 and not holes:
        return parts[0]
    left = min(x for x, _, _ in parts)
    top = min(y for _, y, _ in parts)
    right = max(x + cover.shape[1] for x, _, cover in parts)
    bottom = max(y + cover.shape[0] for _, y, cover in parts)
    total = np.zeros((bottom - top, right - left), dtype=np.uint8)
    for x, y, cover in parts:
        region = total[y - top : y - top + cover.shape[0], x - left : x - left + cover.shape[1]]
        np.maximum(region, cover, out=region)
    for x, y, cover in holes:
        region = total[y - top : y - top + cover.shape[0], x - left : x - left + cover.shape[1]]
        region -= np.minimum(region, cover)
    return left, top, total


def _text_mask(item: Text, scale: int) -> tuple[int, int, U8]:
    face = font.pil_font(max(1, round(item.size * scale)))
    x, y = item.center_x * scale, item.baseline * scale
    left, top, right, bottom = face.getbbox(item.text, anchor="ms")
    left, top = int(x + left) - 1, int(y + top) - 1
    width, height = int(x + right) + 2 - left, int(y + bottom) + 2 - top
    mask = Image.new("L", (max(width, 1), max(height, 1)), 0)
    ImageDraw.Draw(mask).text((x - left, y - top), item.text, fill=255, font=face, anchor="ms")
    return left, top, np.asarray(mask)


def _paint_rgba(paint: Paint, left: int, top: int, shape: tuple[int, int], scale: int) -> U8:
    """Straight-alpha RGBA pixels of a paint over a box."""
    if isinstance(paint, Color):
        return np.broadcast_to(np.array([*paint.rgb, paint.a], dtype=np.uint8), (*shape, 4))
    height, width = shape
    xs = (np.arange(left, left + width, dtype=np.float64) + 0.5) / scale
    ys = (np.arange(top, top + height, dtype=np.float64) + 0.5) / scale
    gradient = paint.gradient
    if gradient.type is GradientType.LINEAR:
        x0, y0, x1, y1 = paint.linear_axis()
        dx, dy = x1 - x0, y1 - y0
        length = dx * dx + dy * dy or 1.0
        t = ((xs[None, :] - x0) * dx + (ys[:, None] - y0) * dy) / length
    else:
        cx, cy, r = paint.radial_circle()
        t = np.hypot(xs[None, :] - cx, ys[:, None] - cy) / (r or 1.0)
    offsets = [o for o, _ in gradient.stops]
    channels = [
        np.interp(t, offsets, [float(getattr(c, name)) for _, c in gradient.stops]) for name in ("r", "g", "b", "a")
    ]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _composite(canvas: Image.Image, left: int, top: int, mask: U8, paint: Paint, scale: int) -> None:
    """Paint through `mask` (coverage 0-255) placed at (left, top), alpha-compositing onto the canvas.

    An opaque color over an opaque part of the canvas is simply pasted through the mask (the same result,
    faster).
    """
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + mask.shape[1], canvas.width), min(top + mask.shape[0], canvas.height)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.ascontiguousarray(mask[y0 - top : y1 - top, x0 - left : x1 - left])
    box = (x0, y0, x1, y1)
    extrema = canvas.crop(box).getextrema()
    under: tuple[int, int] = extrema[3]  # type: ignore[misc]
    if isinstance(paint, Color) and paint.opaque and under[0] == 255:
        canvas.paste((*paint.rgb, 255), box, Image.fromarray(mask, "L"))
        return
    if isinstance(paint, Color):
        if paint.a != 255:
            mask = (mask.astype(np.uint16) * paint.a // 255).astype(np.uint8)
        layer_image = Image.new("RGBA", (x1 - x0, y1 - y0), (*paint.rgb, 255))
        layer_image.putalpha(Image.fromarray(mask, "L"))
        if under[1] == 0:  # nothing drawn here yet: the layer is the result
            canvas.paste(layer_image, box)
        else:
            canvas.alpha_composite(layer_image, (x0, y0))
        return
    rgba = _paint_rgba(paint, x0, y0, mask.shape, scale)
    layer = np.empty((*mask.shape, 4), dtype=np.uint8)
    layer[..., :3] = rgba[..., :3]
    layer[..., 3] = (mask.astype(np.uint16) * rgba[..., 3] // 255).astype(np.uint8)
    canvas.alpha_composite(Image.fromarray(layer, "RGBA"), (x0, y0))


def _draw_picture(canvas: Image.Image, item: Picture, scale: int) -> None:
    x0, y0, x1, y1 = (round(v * scale) for v in item.box)
    if x1 <= x0 or y1 <= y0:
        return
    image = item.image.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
    canvas.alpha_composite(image, (x0, y0))


def flatten(image: Image.Image, under: Color = WHITE) -> Image.Image:
    """An RGB image: `image` composited over an opaque color."""
    base = Image.new("RGBA", image.size, (*under.rgb, 255))
    base.alpha_composite(image)
    return base.convert("RGB")


def encode_png(image: Image.Image, dpi: int) -> bytes:
    """PNG bytes (RGB when fully opaque), with the resolution in pHYs and no other metadata.

    Written directly: every row uses the Up filter, which suits flat-colored codes and costs a
    fraction of Pillow's per-row filter search.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 4 and pixels[..., 3].min() == 255:
        pixels = pixels[..., :3]
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    return _png([_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))], filtered, dpi)


def _png(head: list[bytes], raw: npt.NDArray[np.uint8], dpi: int) -> bytes:
    ppm = round(dpi / 0.0254)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            *head,
            _chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 3)),
            _chunk(b"IEND", b""),
        ]
    )


def encode_jpeg(image: Image.Image, dpi: int) -> bytes:
    """Baseline JPEG bytes at high quality with the resolution in the JFIF header (no alpha)."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92, subsampling=0, dpi=(dpi, dpi))
    return out.getvalue()


def encode_webp(image: Image.Image, dpi: int) -> bytes:
    """Lossless WebP bytes; the resolution goes into EXIF (WebP has no field of its own for it)."""
    exif = Image.Exif()
    exif[0x011A] = float(dpi)  # XResolution
    exif[0x011B] = float(dpi)  # YResolution
    exif[0x0128] = 2  # ResolutionUnit: inches
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="WEBP", lossless=True, quality=50, method=1, exact=True, exif=exif.tobytes())
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def two_color_png(dark: npt.NDArray[np.bool_], scale: int, light: Color | None, ink: Color, dpi: int) -> bytes:
    """A 1-bit palette PNG of a boolean module matrix (quiet zone included), each module `scale` pixels.

    The fast path for plain codes: written directly with zlib, pixel for pixel what `rasterize` draws.
    """
    pixels = np.repeat(np.repeat(dark, scale, axis=0), scale, axis=1)
    height, width = pixels.shape
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), np.packbits(pixels, axis=1)])
    light_rgba = (*light.rgb, light.a) if light else (0, 0, 0, 0)
    head = [
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)),
        _chunk(b"PLTE", bytes([*light_rgba[:3], *ink.rgb])),
    ]
    if light_rgba[3] != 255:
        head.append(_chunk(b"tRNS", bytes([light_rgba[3]])))
    return _png(head, raw, dpi)
