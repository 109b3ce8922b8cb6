"""The rendering engine in-process, one core, against segno and python-qrcode measured in the same run.

    python -m bench.render [--seconds 1.0] [--runs 5]

Figures: a plain URL as PNG (~500 px) against segno and python-qrcode; the same as SVG against segno;
a styled PNG (rounded modules, custom eyes, logo, frame) against python-qrcode's styled image. Each
figure is the median renders/s over several runs, with the spread (max - min) / median.
Prints a table and writes bench/results/render.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qrcode  # type: ignore[import-untyped]
import segno
from PIL import Image as PILImage
from qrcode.image.styledpil import StyledPilImage  # type: ignore[import-untyped]
from qrcode.image.styles.moduledrawers.pil import RoundedModuleDrawer  # type: ignore[import-untyped]

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


def measure(fn: Callable[[], bytes], seconds: float, runs: int) -> dict[str, float]:
    """Median renders/s over `runs` runs and their spread."""
    samples = [rate(fn, seconds) for _ in range(runs)]
    median = statistics.median(samples)
    return {"rps": median, "spread": (max(samples) - min(samples)) / median, "runs": float(runs)}


def main() -> None:
    """Run every figure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    figures = [
        ("plain PNG vs segno", ours(Design(), Format.PNG), "segno PNG", segno_png, 7.0),
        ("plain PNG vs python-qrcode", ours(Design(), Format.PNG), "python-qrcode PNG", qrcode_png, None),
        ("plain SVG vs segno", ours(Design(), Format.SVG), "segno SVG", segno_svg, None),
        ("styled PNG vs python-qrcode", ours(STYLED, Format.PNG), "python-qrcode styled", qrcode_styled, None),
    ]
    targets = {"plain SVG vs segno": 1000.0, "styled PNG vs python-qrcode": 150.0}
    results: dict[str, Any] = {}
    print(f"renders/s on one core, median of {args.runs} runs of {args.seconds:g} s, image ~{SIZE} px")
    print(f"{'figure':30}{'ours':>10}{'spread':>8}{'baseline':>24}{'rps':>9}{'spread':>8}{'ratio':>8}  target")
    for name, mine, base_name, base, ratio_target in figures:
        our = measure(mine, args.seconds, args.runs)
        theirs = measure(base, args.seconds, args.runs)
        ratio = our["rps"] / theirs["rps"]
        target = f">= {ratio_target:g}x" if ratio_target else f">= {targets[name]:g}/s" if name in targets else "-"
        results[name] = {"ours": our, "baseline": {"name": base_name, **theirs}, "ratio": ratio, "target": target}
        print(
            f"{name:30}{our['rps']:10.0f}{our['spread']:8.1%}{base_name:>24}{theirs['rps']:9.0f}"
            f"{theirs['spread']:8.1%}{ratio:7.1f}x  {target}"
        )
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    document = {"machine": platform.platform(), "python": platform.python_version(), "args": vars(args), **results}
    (out / "render.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
