"""Writing a scene as true vectors: SVG, PDF and EPS.

Modules, eyes, frames and text are filled paths (one per item, runs of modules merged); only the logo,
a raster image by nature, is embedded as an image. PDF and EPS share one content stream: the EPS
prolog defines the PDF operators it uses.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import zlib
from collections.abc import Iterable

from PIL import Image

from qrmesh.qr.domain.design import WHITE, Color, GradientType, ModuleShape
from qrmesh.qr.domain.geometry import Command, Outline, RoundedRect
from qrmesh.qr.domain.raster import flatten
from qrmesh.qr.domain.scene import (
    GradientPaint,
    Modules,
    Paint,
    Picture,
    Scene,
    Shapes,
    Text,
    module_outlines,
    module_runs,
)

_EMBED_MAX = 512
"""The longest side, in pixels, of a logo embedded in a vector file."""


def _num(value: float) -> str:
    if value == int(value):
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _square_runs(item: Shapes | Modules | Text) -> list[tuple[str, str, str]] | None:
    """For square modules: each run as (x, y, length) text, the fast way to write the most common case."""
    if not isinstance(item, Modules) or item.shape is not ModuleShape.SQUARE:
        return None
    ox, oy = item.x, item.y
    return [(_num(ox + start), _num(oy + row), str(end - start)) for row, start, end in module_runs(item.grid)]


def _paths(item: Shapes | Modules | Text) -> tuple[list[Outline], list[Command]]:
    """An item's outlines (holes included) and free path commands (text)."""
    if isinstance(item, Text):
        return [], item.commands()
    if isinstance(item, Modules):
        return list(module_outlines(item)), []
    return [*item.outlines, *item.holes], []


def _picture_png(picture: Picture, flatten_on: Color | None = None) -> Image.Image:
    """The picture to embed: a new image, since the picture's own is shared between renders (and saving
    an image sets attributes on it)."""
    image = picture.image
    if max(image.size) > _EMBED_MAX:
        factor = _EMBED_MAX / max(image.size)
        embedded = image.resize(
            (max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.Resampling.LANCZOS
        )
    else:
        embedded = image.copy()
    return flatten(embedded, flatten_on) if flatten_on is not None else embedded


# SVG


def _svg_path_data(outlines: Iterable[Outline], commands: Iterable[Command]) -> str:
    parts: list[str] = []
    for outline in outlines:
        if isinstance(outline, RoundedRect) and outline.square:
            x0, y0 = _num(outline.x0), _num(outline.y0)
            parts.append(f"M{x0} {y0}H{_num(outline.x1)}V{_num(outline.y1)}H{x0}Z")
        else:
            parts.append(_svg_commands(outline.commands()))
    parts.append(_svg_commands(commands))
    return "".join(parts)


def _svg_commands(commands: Iterable[Command]) -> str:
    return "".join(c[0] + " ".join(_num(v) for v in c[1:]) for c in commands)


def _svg_fill(paint: Paint, gradient_ids: dict[int, str]) -> str:
    if isinstance(paint, Color):
        opacity = f' fill-opacity="{_num(paint.a / 255)}"' if paint.a != 255 else ""
        return f'fill="{paint.hex}"{opacity}'
    return f'fill="url(#{gradient_ids[id(paint)]})"'


def _svg_gradient(paint: GradientPaint, ident: str) -> str:
    stops = "".join(
        f'<stop offset="{_num(offset)}" stop-color="{color.hex}"'
        + (f' stop-opacity="{_num(color.a / 255)}"' if color.a != 255 else "")
        + "/>"
        for offset, color in paint.gradient.stops
    )
    if paint.gradient.type is GradientType.LINEAR:
        x0, y0, x1, y1 = (_num(v) for v in paint.linear_axis())
        return (
            f'<linearGradient id="{ident}" gradientUnits="userSpaceOnUse" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}">'
            f"{stops}</linearGradient>"
        )
    cx, cy, r = (_num(v) for v in paint.radial_circle())
    return (
        f'<radialGradient id="{ident}" gradientUnits="userSpaceOnUse" cx="{cx}" cy="{cy}" r="{r}">'
        f"{stops}</radialGradient>"
    )


def to_svg(scene: Scene, width: int, height: int) -> bytes:
    """The scene as a standalone SVG document `width` x `height` pixels."""
    gradient_ids: dict[int, str] = {}
    defs: list[str] = []
    body: list[str] = []
    if scene.background is not None:
        body.append(f'<rect width="{scene.width}" height="{scene.height}" {_svg_fill(scene.background, {})}/>')
    for item in scene.items:
        if isinstance(item, Picture):
            x0, y0, x1, y1 = item.box
            encoded = base64.b64encode(_png_bytes(_picture_png(item))).decode()
            body.append(
                f'<image x="{_num(x0)}" y="{_num(y0)}" width="{_num(x1 - x0)}" height="{_num(y1 - y0)}" '
                f'preserveAspectRatio="none" xlink:href="data:image/png;base64,{encoded}"/>'
            )
            continue
        paint: Paint = item.color if isinstance(item, Text) else item.paint
        if isinstance(paint, GradientPaint) and id(paint) not in gradient_ids:
            gradient_ids[id(paint)] = f"g{len(gradient_ids)}"
            defs.append(_svg_gradient(paint, gradient_ids[id(paint)]))
        runs = _square_runs(item)
        if runs is not None:
            data = "".join(f"M{x} {y}h{w}v1h-{w}z" for x, y, w in runs)
            crisp = True
        else:
            outlines, commands = _paths(item)
            data = _svg_path_data(outlines, commands)
            crisp = not commands and all(isinstance(o, RoundedRect) and o.square for o in outlines)
        if not data:
            continue
        rendering = ' shape-rendering="crispEdges"' if crisp else ""
        body.append(f'<path {_svg_fill(paint, gradient_ids)} fill-rule="evenodd"{rendering} d="{data}"/>')
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" '
        f'width="{width}" height="{height}" viewBox="0 0 {scene.width} {scene.height}">'
    )
    title = "<title>QR code</title>"
    definitions = f"<defs>{''.join(defs)}</defs>" if defs else ""
    return (head + title + definitions + "".join(body) + "</svg>\n").encode()


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


# PDF and EPS: one content stream in PDF operator syntax


def _rgb(color: Color) -> str:
    return " ".join(_num(c / 255) for c in color.rgb)


def _pdf_path(outlines: Iterable[Outline], commands: Iterable[Command]) -> str:
    parts: list[str] = []
    for outline in outlines:
        if isinstance(outline, RoundedRect) and outline.square:
            width, height = outline.x1 - outline.x0, outline.y1 - outline.y0
            parts.append(f"{_num(outline.x0)} {_num(outline.y0)} {_num(width)} {_num(height)} re")
        else:
            parts.append(_pdf_commands(outline.commands()))
    parts.append(_pdf_commands(commands))
    return "\n".join(p for p in parts if p)


_PDF_OPERATORS = {"M": "m", "L": "l", "C": "c", "Z": "h"}


def _pdf_commands(commands: Iterable[Command]) -> str:
    return "\n".join(" ".join([*(_num(v) for v in c[1:]), _PDF_OPERATORS[c[0]]]) for c in commands)


def _shading(paint: GradientPaint, under: Color) -> str:
    """A shading dictionary (the same syntax in PDF and PostScript 3); stop alpha is flattened onto `under`."""
    stops = [(offset, color.over(under)) for offset, color in paint.gradient.stops]
    if stops[0][0] > 0:
        stops.insert(0, (0.0, stops[0][1]))
    if stops[-1][0] < 1:
        stops.append((1.0, stops[-1][1]))
    functions = [
        f"<< /FunctionType 2 /Domain [0 1] /C0 [{_rgb(c0)}] /C1 [{_rgb(c1)}] /N 1 >>"
        for (_, c0), (_, c1) in itertools.pairwise(stops)
    ]
    if len(functions) == 1:
        function = functions[0]
    else:
        bounds = " ".join(_num(offset) for offset, _ in stops[1:-1])
        encode = " ".join("0 1" for _ in functions)
        function = (
            f"<< /FunctionType 3 /Domain [0 1] /Functions [{' '.join(functions)}] "
            f"/Bounds [{bounds}] /Encode [{encode}] >>"
        )
    if paint.gradient.type is GradientType.LINEAR:
        coords = " ".join(_num(v) for v in paint.linear_axis())
        kind = 2
    else:
        cx, cy, r = paint.radial_circle()
        coords = f"{_num(cx)} {_num(cy)} 0 {_num(cx)} {_num(cy)} {_num(r)}"
        kind = 3
    return (
        f"<< /ShadingType {kind} /ColorSpace /DeviceRGB /Coords [{coords}] /Function {function} /Extend [true true] >>"
    )


class _Content:
    """Builds the content stream; `postscript` switches the few operators PDF and PostScript spell differently."""

    def __init__(self, scene: Scene, postscript: bool) -> None:
        self.postscript = postscript
        self.under = WHITE if scene.background is None else scene.background.over(WHITE)
        self.ops: list[str] = []
        self.shadings: list[str] = []
        self.alphas: list[float] = []
        self.images: list[Image.Image] = []

    def fill(self, paint: Paint, path: str) -> None:
        """Fill a path (even-odd) with a color or a gradient."""
        if not path:
            return
        if isinstance(paint, GradientPaint):
            shading = _shading(paint, self.under)
            if self.postscript:
                self.ops += ["q", path, "W* n", f"{shading} shfill", "Q"]
            else:
                self.shadings.append(shading)
                self.ops += ["q", path, "W* n", f"/Sh{len(self.shadings) - 1} sh", "Q"]
            return
        if paint.a == 0:
            return
        if paint.a == 255:
            color = paint
        elif self.postscript:
            color = paint.over(self.under)
        else:
            self.alphas.append(paint.a / 255)
            self.ops += ["q", f"/GS{len(self.alphas) - 1} gs", f"{_rgb(paint)} rg", path, "f*", "Q"]
            return
        self.ops += [f"{_rgb(color)} rg", path, "f*"]

    def picture(self, item: Picture) -> None:
        """Place the logo image."""
        x0, y0, x1, y1 = item.box
        w, h = x1 - x0, y1 - y0
        if self.postscript:
            image = _picture_png(item, self.under)
            data = image.tobytes().hex()
            lines = "\n".join(data[i : i + 128] for i in range(0, len(data), 128))
            self.ops += [
                "q",
                f"{_num(x0)} {_num(y0)} translate {_num(w)} {_num(h)} scale /DeviceRGB setcolorspace",
                f"<< /ImageType 1 /Width {image.width} /Height {image.height} /BitsPerComponent 8 "
                f"/Decode [0 1 0 1 0 1] /ImageMatrix [{image.width} 0 0 {image.height} 0 0] "
                "/DataSource currentfile /ASCIIHexDecode filter >> image",
                lines + ">",
                "Q",
            ]
        else:
            self.images.append(_picture_png(item))
            self.ops += [
                "q",
                f"{_num(w)} 0 0 {_num(-h)} {_num(x0)} {_num(y1)} cm",
                f"/Im{len(self.images) - 1} Do",
                "Q",
            ]

    def draw(self, scene: Scene) -> None:
        """Draw the whole scene."""
        if scene.background is not None:
            self.fill(scene.background, f"0 0 {scene.width} {scene.height} re")
        for item in scene.items:
            if isinstance(item, Picture):
                self.picture(item)
                continue
            runs = _square_runs(item)
            path = _pdf_path(*_paths(item)) if runs is None else "\n".join(f"{x} {y} {w} 1 re" for x, y, w in runs)
            self.fill(item.color if isinstance(item, Text) else item.paint, path)


def to_pdf(scene: Scene, width_pt: float, height_pt: float) -> bytes:
    """A one-page PDF `width_pt` x `height_pt` points drawing the scene with path operators."""
    content = _Content(scene, postscript=False)
    k = width_pt / scene.width
    content.ops.append(f"{_num(k)} 0 0 {_num(-k)} 0 {_num(height_pt)} cm")
    content.draw(scene)
    objects: list[bytes] = [b"", b"", b"", b""]  # catalog, pages, page, contents: filled in below

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    shadings = " ".join(f"/Sh{i} {add(s.encode())} 0 R" for i, s in enumerate(content.shadings))
    states = " ".join(f"/GS{i} {add(f'<< /ca {_num(a)} >>'.encode())} 0 R" for i, a in enumerate(content.alphas))
    xobjects = []
    for i, image in enumerate(content.images):
        smask = add(_pdf_image(image.getchannel("A"), "/DeviceGray"))
        xobjects.append(f"/Im{i} {add(_pdf_image(image.convert('RGB'), '/DeviceRGB', smask))} 0 R")
    stream = zlib.compress("\n".join(content.ops).encode(), 6)
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
    resources = f"/ExtGState << {states} >> /Shading << {shadings} >> /XObject << {' '.join(xobjects)} >>"
    objects[2] = (
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_num(width_pt)} {_num(height_pt)}] "
        f"/Resources << {resources} >> /Contents 4 0 R >>"
    ).encode()
    objects[3] = f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream"
    return _pdf_file(objects)


def _pdf_image(image: Image.Image, space: str, smask: int | None = None) -> bytes:
    data = zlib.compress(image.tobytes(), 6)
    extra = f" /SMask {smask} 0 R" if smask is not None else ""
    head = (
        f"<< /Type /XObject /Subtype /Image /Width {image.width} /Height {image.height} /ColorSpace {space} "
        f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(data)}{extra} >>\nstream\n"
    )
    return head.encode() + data + b"\nendstream"


def _pdf_file(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


_EPS_PROLOG = """/q {gsave} bind def /Q {grestore} bind def
/m {moveto} bind def /l {lineto} bind def /c {curveto} bind def /h {closepath} bind def
/re {4 2 roll moveto exch dup 0 rlineto exch 0 exch rlineto neg 0 rlineto closepath} bind def
/rg {setrgbcolor} bind def /f* {eofill} bind def /W* {eoclip} bind def /n {newpath} bind def"""


def to_eps(scene: Scene, width_pt: float, height_pt: float) -> bytes:
    """An Encapsulated PostScript (level 3) file `width_pt` x `height_pt` points drawing the scene.

    PostScript has no transparency: translucent colors and the logo are flattened onto the background.
    """
    content = _Content(scene, postscript=True)
    k = width_pt / scene.width
    content.ops.append(f"0 {_num(height_pt)} translate {_num(k)} {_num(-k)} scale")
    content.draw(scene)
    lines = [
        "%!PS-Adobe-3.0 EPSF-3.0",
        f"%%BoundingBox: 0 0 {math.ceil(width_pt)} {math.ceil(height_pt)}",
        f"%%HiResBoundingBox: 0 0 {_num(width_pt)} {_num(height_pt)}",
        "%%Title: QR code",
        "%%LanguageLevel: 3",
        "%%Pages: 1",
        "%%EndComments",
        "%%BeginProlog",
        _EPS_PROLOG,
        "%%EndProlog",
        "%%Page: 1 1",
        "save",
        *content.ops,
        "restore",
        "showpage",
        "%%EOF",
    ]
    return ("\n".join(lines) + "\n").encode()
