"""The rendering engine in-process, one core, against segno and python-qrcode measured in the same run.

    python -m bench.render [--seconds 1.0] [--runs 5]

Figures: a plain URL as PNG (~500 px) against segno and python-qrcode; the same as SVG against segno;
a styled PNG (rounded modules, custom eyes, logo, frame) against python-qrcode's styled image. Each
figure is the median renders/s over several runs, with the spread (max - min) / median.
Prints a table and writes bench/results/render.json (see bench/report.py).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from typing import Any

import qrcode  # type: ignore[import-untyped]
import segno
from PIL import Image as PILImage
from qrcode.image.styledpil import StyledPilImage  # type: ignore[import-untyped]
from qrcode.image.styles.moduledrawers.pil import RoundedModuleDrawer  # type: ignore[import-untyped]
from qrcode.image.svg import SvgPathImage  # type: ignore[import-untyped]

from bench.report import Figure, Sample, emit
from qrmesh.qr.domain.design import (
    Design,
    EyeBallShape,
    EyeFrameShape,
    Frame,
    FrameStyle,
    Logo,
    ModuleShape,
    parse_color,
)
from qrmesh.qr.domain.render import Format, RenderOptions, render

URL = "https://example.com/campaign/spring?utm_source=poster"
SIZE = 512


def _logo_png() -> bytes:
    image = PILImage.new("RGBA", (160, 160), (0, 0, 0, 0))
    image.paste((198, 40, 40, 255), (20, 20, 140, 140))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


LOGO = _logo_png()
LOGO_IMAGE = PILImage.open(io.BytesIO(LOGO)).convert("RGBA")
STYLED = Design(
    foreground=parse_color("#1a237e", "foreground"),
    module_shape=ModuleShape.ROUNDED,
    eye_frame_shape=EyeFrameShape.ROUNDED,
    eye_frame_color=parse_color("#c62828", "eyeFrame.color"),
    eye_ball_shape=EyeBallShape.CIRCLE,
    logo=Logo(LOGO, size_ratio=0.22, margin=1, clear_behind=True),
    frame=Frame(FrameStyle.ROUNDED_BOX, "SCAN ME"),
)


def ours(design: Design, fmt: Format) -> Callable[[], bytes]:
    """Our renderer for one design and format."""
    options = RenderOptions(format=fmt, size=SIZE)
    return lambda: render(URL, design, options).data


def segno_png() -> bytes:
    """segno's PNG at the same size."""
    symbol = segno.make(URL, error="M", micro=False)
    scale = max(1, SIZE // symbol.symbol_size(scale=1, border=4)[0])
    out = io.BytesIO()
    symbol.save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def segno_svg() -> bytes:
    """segno's SVG at the same size."""
    symbol = segno.make(URL, error="M", micro=False)
    scale = max(1, SIZE // symbol.symbol_size(scale=1, border=4)[0])
    out = io.BytesIO()
    symbol.save(out, kind="svg", scale=scale, border=4, xmldecl=True, svgns=True)
    return out.getvalue()


def _qrcode(level: int = qrcode.constants.ERROR_CORRECT_M, **image: Any) -> bytes:
    code = qrcode.QRCode(error_correction=level, border=4)
    code.add_data(URL)
    code.make(fit=True)
    code.box_size = max(1, SIZE // (code.modules_count + 8))
    out = io.BytesIO()
    code.make_image(**image).save(out)
    return out.getvalue()


def qrcode_png() -> bytes:
    """python-qrcode's plain PNG at the same size."""
    return _qrcode()


def qrcode_svg() -> bytes:
    """python-qrcode's SVG (one path) at the same size."""
    return _qrcode(image_factory=SvgPathImage)


def qrcode_styled() -> bytes:
    """python-qrcode's styled PNG: rounded modules and an embedded logo (it has no frames or eye colors;
    it insists on level H with a logo)."""
    return _qrcode(
        qrcode.constants.ERROR_CORRECT_H,
        image_factory=StyledPilImage,
        module_drawer=RoundedModuleDrawer(),
        embedded_image=LOGO_IMAGE,
    )


def rate(fn: Callable[[], bytes], seconds: float) -> float:
    """Renders per second over about `seconds`."""
    fn()  # warm up caches and imports
    count = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        fn()
        count += 1
    return count / elapsed


def measure(fn: Callable[[], bytes], seconds: float, runs: int) -> Sample:
    """Median renders/s over `runs` runs and their spread."""
    return Sample.of([rate(fn, seconds) for _ in range(runs)])


def main() -> None:
    """Run every figure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    # (name, ours, baseline name, baseline, target on the ratio or on our rate)
    cases: list[tuple[str, Callable[[], bytes], str, Callable[[], bytes], float | None, float | None]] = [
        ("plain PNG", ours(Design(), Format.PNG), "segno PNG", segno_png, 7.0, None),
        ("plain PNG", ours(Design(), Format.PNG), "python-qrcode PNG", qrcode_png, None, None),
        ("plain SVG", ours(Design(), Format.SVG), "segno SVG", segno_svg, None, 1000.0),
        ("plain SVG", ours(Design(), Format.SVG), "python-qrcode SVG (path)", qrcode_svg, None, None),
        (
            "styled PNG (logo, frame, eyes)",
            ours(STYLED, Format.PNG),
            "python-qrcode styled",
            qrcode_styled,
            None,
            150.0,
        ),
    ]
    print(f"renders/s on one core, median of {args.runs} runs of {args.seconds:g} s, image ~{SIZE} px")
    figures = []
    for name, mine, base_name, base, ratio_target, rate_target in cases:
        our = measure(mine, args.seconds, args.runs)
        theirs = measure(base, args.seconds, args.runs)
        target, met = "", None
        if ratio_target is not None:
            target, met = f"ratio >= {ratio_target:g}x", our.median / theirs.median >= ratio_target
        elif rate_target is not None:
            target, met = f">= {rate_target:g}/s", our.median >= rate_target
        figures.append(Figure(name, "renders/s", our, base_name, theirs, higher_is_better=True, target=target, met=met))
    emit("render", figures, args=vars(args))


if __name__ == "__main__":
    main()
