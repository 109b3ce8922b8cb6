"""How a QR code looks: colors, gradients, shapes, logo and frame (pure values, no drawing)."""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass

from qrmesh.platform.errors import InvalidArgument


class ErrorCorrection(enum.Enum):
    """Error correction levels (the value is the level's letter)."""

    L = "L"
    M = "M"
    Q = "Q"
    H = "H"

    @property
    def restorable(self) -> float:
        """The nominal share of codewords this level can restore."""
        return _RESTORABLE[self]

    def __ge__(self, other: ErrorCorrection) -> bool:
        return _RANK[self] >= _RANK[other]

    def __gt__(self, other: ErrorCorrection) -> bool:
        return _RANK[self] > _RANK[other]

    def __le__(self, other: ErrorCorrection) -> bool:
        return _RANK[self] <= _RANK[other]

    def __lt__(self, other: ErrorCorrection) -> bool:
        return _RANK[self] < _RANK[other]


_RESTORABLE = {ErrorCorrection.L: 0.07, ErrorCorrection.M: 0.15, ErrorCorrection.Q: 0.25, ErrorCorrection.H: 0.30}
_RANK = {level: rank for rank, level in enumerate(ErrorCorrection)}


class ModuleShape(enum.Enum):
    """How each dark module is drawn."""

    SQUARE = "square"
    ROUNDED = "rounded"
    DOTS = "dots"
    CLASSY = "classy"
    CLASSY_ROUNDED = "classy-rounded"
    EXTRA_ROUNDED = "extra-rounded"
    GAPPED = "gapped"
    VERTICAL_BARS = "vertical-bars"
    HORIZONTAL_BARS = "horizontal-bars"


class EyeFrameShape(enum.Enum):
    """Shape of the outer 7x7 ring of a finder pattern."""

    SQUARE = "square"
    ROUNDED = "rounded"
    EXTRA_ROUNDED = "extra-rounded"
    CIRCLE = "circle"


class EyeBallShape(enum.Enum):
    """Shape of the inner 3x3 center of a finder pattern."""

    SQUARE = "square"
    ROUNDED = "rounded"
    CIRCLE = "circle"
    DIAMOND = "diamond"


class FrameStyle(enum.Enum):
    """A frame with a call to action around the code."""

    NONE = "none"
    BANNER_BOTTOM = "banner-bottom"
    BANNER_TOP = "banner-top"
    BOX = "box"
    ROUNDED_BOX = "rounded-box"


class GradientType(enum.Enum):
    """Geometry of a gradient."""

    LINEAR = "linear"
    RADIAL = "radial"


_COLOR = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


@dataclass(frozen=True, slots=True)
class Color:
    """An sRGB color with straight (not premultiplied) alpha, each channel 0-255."""

    r: int
    g: int
    b: int
    a: int = 255

    @property
    def hex(self) -> str:
        """`#rrggbb` without alpha."""
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"

    @property
    def opaque(self) -> bool:
        """Whether alpha is 255."""
        return self.a == 255

    def over(self, under: Color) -> Color:
        """This color composited over an opaque `under` color."""
        a = self.a / 255
        return Color(*(round(c * a + u * (1 - a)) for c, u in zip(self.rgb, under.rgb, strict=True)))

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The color channels without alpha."""
        return (self.r, self.g, self.b)

    def luminance(self) -> float:
        """WCAG 2 relative luminance of the color channels (alpha ignored), 0 to 1."""

        def linear(channel: int) -> float:
            c = channel / 255
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

        return 0.2126 * linear(self.r) + 0.7152 * linear(self.g) + 0.0722 * linear(self.b)


BLACK = Color(0, 0, 0)
WHITE = Color(255, 255, 255)


def contrast_ratio(first: Color, second: Color) -> float:
    """WCAG 2 contrast ratio between two opaque colors, 1 to 21."""
    high, low = sorted((first.luminance(), second.luminance()), reverse=True)
    return (high + 0.05) / (low + 0.05)


def parse_color(text: str, field: str) -> Color:
    """`#RGB`, `#RRGGBB` or `#RRGGBBAA` (any case) as a Color; InvalidArgument on `field` otherwise."""
    match = _COLOR.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument.field(field, "must be a color like #1A2B3C", reason="INVALID_COLOR")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    channels = [int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)]
    return Color(*channels)


@dataclass(frozen=True, slots=True)
class Gradient:
    """A gradient for the dark modules: stops are (offset 0-1, color) in increasing offset."""

    type: GradientType
    rotation: float
    stops: tuple[tuple[float, Color], ...]

    def color_at(self, t: float) -> Color:
        """The interpolated color at position `t` (clamped to the stops)."""
        stops = self.stops
        if t <= stops[0][0]:
            return stops[0][1]
        for (o0, c0), (o1, c1) in itertools.pairwise(stops):
            if t <= o1:
                f = 0.0 if o1 == o0 else (t - o0) / (o1 - o0)
                return Color(*(round(a + (b - a) * f) for a, b in zip((*c0.rgb, c0.a), (*c1.rgb, c1.a), strict=True)))
        return stops[-1][1]


@dataclass(frozen=True, slots=True)
class Logo:
    """An image (PNG, JPEG, WebP or GIF bytes) in the middle of the code."""

    image: bytes
    size_ratio: float = 0.2
    """The logo's width (or height, if taller) as a share of the symbol width, quiet zone excluded."""
    margin: int = 0
    """Space around the logo, in modules."""
    clear_behind: bool = False
    """Remove the modules behind the logo and its margin instead of drawing over them."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame with a call to action; `color` None means the foreground color."""

    style: FrameStyle
    text: str
    text_color: Color = WHITE
    color: Color | None = None


@dataclass(frozen=True, slots=True)
class Design:
    """Everything about how a code looks. `background` None is transparent."""

    foreground: Color = BLACK
    background: Color | None = WHITE
    gradient: Gradient | None = None
    module_shape: ModuleShape = ModuleShape.SQUARE
    eye_frame_shape: EyeFrameShape = EyeFrameShape.SQUARE
    eye_frame_color: Color | None = None
    eye_ball_shape: EyeBallShape = EyeBallShape.SQUARE
    eye_ball_color: Color | None = None
    logo: Logo | None = None
    frame: Frame | None = None
    quiet_zone: int = 4
    error_correction: ErrorCorrection | None = None

    @property
    def eye_frame_paint(self) -> Color | None:
        """The eye frame's own color, or None to use the module paint (foreground or gradient)."""
        return self.eye_frame_color

    @property
    def eye_ball_paint(self) -> Color | None:
        """The eye ball's own color (falling back to the eye frame's), or None for the module paint."""
        return self.eye_ball_color or self.eye_frame_color

    def dark_colors(self) -> list[Color]:
        """Every color used for dark modules: foreground or gradient stops, and eye colors."""
        colors = [c for _, c in self.gradient.stops] if self.gradient else [self.foreground]
        colors += [c for c in (self.eye_frame_color, self.eye_ball_color) if c is not None]
        return colors

    @property
    def effective_background(self) -> Color:
        """The background a scanner sees: transparent counts as white, alpha is composited over white."""
        return WHITE if self.background is None else self.background.over(WHITE)
