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
from qrmesh.qr.domain.memo import BoundedCache
from qrmesh.qr.domain.scene import Modules, Paint, Picture, Scene, Shapes, Text, code_outline, neighbour_codes

U8 = npt.NDArray[np.uint8]


def rasterize(scene: Scene, scale: int) -> Image.Image:
    """The scene as an RGBA image at `scale` pixels per module."""
    return Image.fromarray(draw(scene, scale))


def draw(scene: Scene, scale: int) -> U8:
    """The scene as straight-alpha RGBA pixels (rows x columns x 4) at `scale` pixels per module.

    Items are composited in order with numpy: fully covered pixels of an opaque paint are simply
    overwritten, and only partly covered (anti-aliased) pixels are blended, so the cost follows the
    edges rather than the area.
    """
    canvas = np.empty((scene.height * scale, scene.width * scale, 4), dtype=np.uint8)
    background = scene.background
    canvas.view(np.uint32)[...] = _word(background.rgb, background.a) if background else 0
    for item in scene.items:
        if isinstance(item, Picture):
            _draw_picture(canvas, item, scale)
        elif isinstance(item, Modules):
            _fill(canvas, *_modules_mask(item, scale), item.paint, scale)
        elif isinstance(item, Shapes):
            _fill(canvas, *_shapes_mask(item, scale), item.paint, scale)
        else:
            _fill(canvas, *_text_mask(item, scale), item.color, scale)
    return canvas


def _word(rgb: tuple[int, int, int], alpha: int) -> np.uint32:
    """An RGBA pixel's bytes as one native-endian word, to fill a canvas viewed as uint32 pixels."""
    word: np.uint32 = np.array([*rgb, alpha], dtype=np.uint8).view(np.uint32)[0]
    return word


# Module tiles by (shape, pixels per module): pure functions of their key, read-only once made.
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
    return round(item.x * scale), round(item.y * scale), mask


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
    pixels = max(1, round(item.size * scale))
    x, y = item.center_x * scale, item.baseline * scale
    return _TEXT.get((item.text, pixels, x, y), lambda: _text_coverage(item.text, pixels, x, y), lambda c: c[2].nbytes)


# Text coverage by (text, pixels per em, anchor in pixels): FreeType draws the same mask for the same key
# (the color is applied later), so a frame's call to action is drawn once; bounded to 128 masks and 16 MiB,
# read-only once made.
_TEXT: BoundedCache[tuple[str, int, float, float], tuple[int, int, U8]] = BoundedCache(
    max_entries=128, max_cost=16 * 1024 * 1024
)


def _text_coverage(text: str, pixels: int, x: float, y: float) -> tuple[int, int, U8]:
    """Coverage (0-255) of `text` centered on x with its baseline at y: (left, top, rows x columns)."""
    face = font.pil_font(pixels)
    left, top, right, bottom = face.getbbox(text, anchor="ms")
    left, top = int(x + left) - 1, int(y + top) - 1
    width, height = int(x + right) + 2 - left, int(y + bottom) + 2 - top
    mask = Image.new("L", (max(width, 1), max(height, 1)), 0)
    ImageDraw.Draw(mask).text((x - left, y - top), text, fill=255, font=face, anchor="ms")
    drawn = np.array(mask)
    drawn.flags.writeable = False
    return left, top, drawn


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


def _fill(canvas: U8, left: int, top: int, mask: U8, paint: Paint, scale: int) -> None:
    """Paint through `mask` (coverage 0-255) placed at (left, top), compositing over the canvas."""
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + mask.shape[1], canvas.shape[1]), min(top + mask.shape[0], canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    mask = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    if isinstance(paint, Color):
        if paint.a != 255:
            mask = _scaled(mask, paint.a)
        _over(canvas, x0, y0, np.array(paint.rgb, dtype=np.uint8), mask)
        return
    rgba = _paint_rgba(paint, x0, y0, mask.shape, scale)
    _over(canvas, x0, y0, rgba[..., :3], _scaled(mask, rgba[..., 3]))


def _scaled(alpha: U8, factor: int | U8) -> U8:
    """alpha * factor / 255, rounded."""
    product = alpha.astype(np.uint16) * factor + 128
    scaled: U8 = ((product + (product >> 8)) >> 8).astype(np.uint8)
    return scaled


def _over(canvas: U8, x0: int, y0: int, rgb: U8, alpha: U8) -> None:
    """Composite straight-alpha pixels (colors `rgb`, one color or one per pixel; opacity `alpha`) over the
    canvas at (x0, y0) with Porter-Duff "over".

    Opaque pixels are copied; only the partly transparent ones go through the blend arithmetic.
    """
    height, width = alpha.shape
    region = canvas[y0 : y0 + height, x0 : x0 + width]
    opaque = alpha == 255
    if rgb.ndim == 1:
        np.copyto(region.view(np.uint32)[..., 0], _word((int(rgb[0]), int(rgb[1]), int(rgb[2])), 255), where=opaque)
    else:
        np.copyto(region[..., :3], rgb, where=opaque[..., None])
        region[..., 3][opaque] = 255
    partial = np.flatnonzero(alpha - np.uint8(1) < 254)  # 0 < alpha < 255 (uint8 arithmetic wraps 0 to 255)
    if not partial.size:
        return
    rows, cols = np.divmod(partial, width)
    source = (rgb if rgb.ndim == 1 else rgb[rows, cols]).astype(np.int32)
    src_a = alpha.ravel()[partial].astype(np.int32)
    under = region[rows, cols].astype(np.int32)
    kept = under[:, 3] * (255 - src_a)  # the canvas's weight, times 255
    total = src_a * 255 + kept  # the resulting alpha, times 255
    divisor = np.maximum(total, 1)[:, None]
    out = np.empty((partial.size, 4), dtype=np.uint8)
    out[:, :3] = (source * (src_a * 255)[:, None] + under[:, :3] * kept[:, None] + divisor // 2) // divisor
    out[:, 3] = (total + 127) // 255
    region[rows, cols] = out


# Logos resized for drawing, by (logo digest, width, height): the digest fixes the pixels, so the same
# key always resizes to the same result; bounded to 32 images and 64 MiB, read-only once made.
_RESIZED: BoundedCache[tuple[bytes, int, int], U8] = BoundedCache(max_entries=32, max_cost=64 * 1024 * 1024)


def _resized(item: Picture, width: int, height: int) -> U8:
    """The picture resized (Lanczos) to width x height as read-only RGBA pixels, cached."""

    def compute() -> U8:
        pixels = np.array(item.image.resize((width, height), Image.Resampling.LANCZOS).convert("RGBA"))
        pixels.flags.writeable = False
        return pixels

    return _RESIZED.get((item.key, width, height), compute, lambda pixels: pixels.nbytes)


def _draw_picture(canvas: U8, item: Picture, scale: int) -> None:
    x0, y0, x1, y1 = (round(v * scale) for v in item.box)
    if x1 <= x0 or y1 <= y0:
        return
    pixels = _resized(item, x1 - x0, y1 - y0)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, canvas.shape[1]), min(y1, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    pixels = pixels[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    _over(canvas, cx0, cy0, pixels[..., :3], pixels[..., 3])


def flatten(image: Image.Image, under: Color = WHITE) -> Image.Image:
    """An RGB image: `image` composited over an opaque color."""
    base = Image.new("RGBA", image.size, (*under.rgb, 255))
    base.alpha_composite(image)
    return base.convert("RGB")


def encode_png(image: Image.Image | U8, dpi: int) -> bytes:
    """PNG bytes of an image or RGBA pixels (RGB when fully opaque), with the resolution in pHYs and no other
    metadata.

    Written directly: every row uses the Up filter, which suits flat-colored codes and costs a
    fraction of Pillow's per-row filter search.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 4 and pixels[..., 3].min() == 255:
        pixels = pixels[..., :3]
    height, width, channels = pixels.shape
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # Up
    body = filtered[:, 1:].reshape(height, width, channels)  # a view: each row's bytes after its filter byte
    body[0] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=body[1:])
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    return _png([_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))], filtered, dpi)


def _png(head: list[bytes], raw: npt.NDArray[np.uint8], dpi: int) -> bytes:
    ppm = round(dpi / 0.0254)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            *head,
            _chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
            _chunk(b"IDAT", zlib.compress(np.ascontiguousarray(raw).data, 3)),
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
