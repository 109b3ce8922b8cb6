"""Turning rendered images of every format back into pixels, and reading them with two independent decoders.

SVG is rasterized with resvg, PDF with PDFium. No PostScript interpreter installs from PyPI without
Ghostscript, so EPS files are read structurally: `eps_to_svg` interprets the small operator subset our
EPS writer uses (paths, fills, clips, shadings as their first color, images skipped) and resvg draws that.
"""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pypdfium2  # type: ignore[import-untyped]
import quirc  # type: ignore[import-untyped]
import resvg_py
import zxingcpp
from PIL import Image

from qrmesh.qr.domain.render import Format


def to_pixels(data: bytes, fmt: Format) -> Image.Image:
    """The image as RGB pixels, transparency flattened onto white."""
    if fmt is Format.SVG:
        image = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=data.decode(), skip_system_fonts=True))))
    elif fmt is Format.PDF:
        document = pypdfium2.PdfDocument(data)
        try:
            image = document[0].render(scale=300 / 72).to_pil()
        finally:
            document.close()
    elif fmt is Format.EPS:
        return to_pixels(eps_to_svg(data, zoom=300 / 72), Format.SVG)
    else:
        image = Image.open(io.BytesIO(data))
    image.load()
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    base.alpha_composite(rgba)
    return base.convert("RGB")


def decode_zxing(image: Image.Image) -> list[str]:
    """Texts of the QR codes zxing-cpp finds."""
    return [r.text for r in zxingcpp.read_barcodes(image) if r.format == zxingcpp.BarcodeFormat.QRCode]


def decode_opencv(image: Image.Image) -> list[str]:
    """Texts OpenCV's QR detector finds (its classic detector, then its ArUco-based one)."""
    gray = np.asarray(image.convert("L"))
    for detector in (cv2.QRCodeDetector(), cv2.QRCodeDetectorAruco()):
        text = detector.detectAndDecode(gray)[0]
        if text:
            return [text]
    return []


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def eps_to_svg(data: bytes, zoom: float = 1.0) -> bytes:
    """Our EPS drawn as an SVG (`zoom` pixels per point): interprets m l c h re rg f* W* n q Q translate
    scale shfill and image."""
    text = data.decode("ascii")
    box = re.search(r"%%HiResBoundingBox: 0 0 (\S+) (\S+)", text)
    assert box is not None
    width, height = float(box.group(1)), float(box.group(2))
    body = text.split("%%Page: 1 1\n", 1)[1].split("showpage", 1)[0]
    ctm: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    color = "#000000"
    clip = ""
    saved: list[tuple[tuple[float, ...], str, str]] = []
    path: list[str] = []
    stack: list[float] = []
    out: list[str] = []
    clips: list[str] = []

    def point(x: float, y: float) -> str:
        a, b, c, d, e, f = ctm
        px, py = a * x + c * y + e, b * x + d * y + f
        return f"{px:.3f} {height - py:.3f}"

    def emit(fill: str) -> None:
        clipping = f' clip-path="url(#{clip})"' if clip else ""
        out.append(f'<path fill-rule="evenodd" fill="{fill}"{clipping} d="{"".join(path)}"/>')

    lines = iter(body.splitlines())
    for line in lines:
        if line.endswith(" image"):
            for data_line in lines:  # skip the hex data up to its end marker
                if data_line.endswith(">"):
                    break
            continue
        if line.endswith(" shfill"):
            c0 = re.search(r"/C0 \[(\S+) (\S+) (\S+)\]", line)
            assert c0 is not None
            first = "".join(f"{round(float(v) * 255):02x}" for v in c0.groups())
            path = [f"M0 0H{width}V{height}H0Z"]
            emit(f"#{first}")
            path = []
            continue
        for token in line.split():
            if _NUMBER.fullmatch(token):
                stack.append(float(token))
                continue
            if token == "m":
                y, x = stack.pop(), stack.pop()
                path.append("M" + point(x, y))
            elif token == "l":
                y, x = stack.pop(), stack.pop()
                path.append("L" + point(x, y))
            elif token == "c":
                coords = stack[-6:]
                del stack[-6:]
                path.append("C" + " ".join(point(coords[i], coords[i + 1]) for i in (0, 2, 4)))
            elif token == "h":
                path.append("Z")
            elif token == "re":
                h, w, y, x = stack.pop(), stack.pop(), stack.pop(), stack.pop()
                path.append(f"M{point(x, y)}L{point(x + w, y)}L{point(x + w, y + h)}L{point(x, y + h)}Z")
            elif token == "rg":
                blue, green, red = stack.pop(), stack.pop(), stack.pop()
                color = f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
            elif token == "f*":
                emit(color)
                path = []
            elif token == "W*":
                clips.append(f'<clipPath id="c{len(clips)}"><path clip-rule="evenodd" d="{"".join(path)}"/></clipPath>')
                clip = f"c{len(clips) - 1}"
            elif token == "n":
                path = []
            elif token == "q":
                saved.append((ctm, color, clip))
            elif token == "Q":
                ctm, color, clip = saved.pop()
            elif token == "translate":
                ty, tx = stack.pop(), stack.pop()
                a, b, c, d, e, f = ctm
                ctm = (a, b, c, d, e + a * tx + c * ty, f + b * tx + d * ty)
            elif token == "scale":
                sy, sx = stack.pop(), stack.pop()
                a, b, c, d, e, f = ctm
                ctm = (a * sx, b * sx, c * sy, d * sy, e, f)
            elif token in ("save", "restore", "setcolorspace", "/DeviceRGB"):
                continue
            else:
                raise AssertionError(f"unexpected EPS operator {token!r}")
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{round(width * zoom)}" height="{round(height * zoom)}" '
        f'viewBox="0 0 {width} {height}"><defs>{"".join(clips)}</defs>{"".join(out)}</svg>'
    )
    return svg.encode()


_FORMATS_BY_TYPE = {fmt.value: fmt for fmt in Format}


def decode_quirc(image: Image.Image) -> list[str]:
    """Texts quirc finds (its bytes read as UTF-8, which is what we encode)."""
    return [data.payload.decode("utf-8") for _, data in quirc.decode(image.convert("L"))]


def decode_all(data: bytes, content_type: str) -> dict[str, list[str]]:
    """What each independent decoder (zxing-cpp, quirc) reads in an image of any format we serve."""
    pixels = to_pixels(data, _FORMATS_BY_TYPE[content_type])
    return {"zxing-cpp": decode_zxing(pixels), "quirc": decode_quirc(pixels)}


def decode_png(data: bytes) -> list[str]:
    """Texts zxing-cpp finds in a PNG."""
    return decode_zxing(to_pixels(data, Format.PNG))
