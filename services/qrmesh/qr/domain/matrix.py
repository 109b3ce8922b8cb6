"""Encoding text into a QR symbol's module matrix (zxing-cpp does the encoding) and its function patterns.

zxing-cpp is the encoder because it is the fastest available by far and encodes the level it is given
exactly (it only raises error correction when no level is given, which never happens here). ASCII text
is encoded as is, with optimal numeric/alphanumeric/byte segments; any other text is encoded as UTF-8
bytes behind an ECI 26 (UTF-8) designator, so readers that honour ECI and those that guess the
charset from the bytes both read it right.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zxingcpp

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain.design import ErrorCorrection

FINDER = 7
"""A finder pattern is 7x7 modules."""

_UTF8_ECI = 26
# What version 40 holds at each level: (numeric digits, alphanumeric characters, bytes).
_CAPACITY_V40 = {
    ErrorCorrection.L: (7089, 4296, 2953),
    ErrorCorrection.M: (5596, 3391, 2331),
    ErrorCorrection.Q: (3993, 2420, 1663),
    ErrorCorrection.H: (3057, 1852, 1273),
}
_ALPHANUMERIC = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Symbol:
    """A QR symbol: `size` x `size` modules (quiet zone excluded), row-major, one byte each (1 = dark)."""

    version: int
    error_correction: ErrorCorrection
    size: int
    modules: bytes
    payload_bytes: int
    """The content's size in bytes as encoded (UTF-8)."""

    def array(self) -> BoolArray:
        """The modules as a read-only `size` x `size` boolean array (True = dark)."""
        view = np.frombuffer(self.modules, dtype=np.bool_).reshape(self.size, self.size)
        view.flags.writeable = False
        return view

    def is_dark(self, x: int, y: int) -> bool:
        """Whether the module in column `x`, row `y` is dark."""
        return self.modules[y * self.size + x] == 1


def encode_symbol(text: str, error_correction: ErrorCorrection, *, field: str = "content") -> Symbol:
    """The smallest QR symbol holding `text` at exactly `error_correction`; CONTENT_TOO_LONG if none does."""
    if not text:
        raise InvalidArgument.field(field, "must not be empty")
    encoded = text.encode()
    options: dict[str, object] = {"ec_level": error_correction.value}
    if not text.isascii():
        options["eci"] = _UTF8_ECI
    try:
        barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, **options)
    except ValueError as error:
        if "too long" not in str(error).lower():
            raise
        raise InvalidArgument.field(
            field, _too_long(text, encoded, error_correction), reason="CONTENT_TOO_LONG"
        ) from None
    pixels = np.asarray(barcode.to_image(scale=1, add_quiet_zones=False))
    size = pixels.shape[0]
    return Symbol(
        version=(size - 17) // 4,
        error_correction=error_correction,
        size=size,
        modules=(pixels == 0).tobytes(),
        payload_bytes=len(encoded),
    )


def _too_long(text: str, encoded: bytes, level: ErrorCorrection) -> str:
    digits, alphanumerics, octets = _CAPACITY_V40[level]
    message = (
        f"is too long for a QR code: it needs {len(encoded)} bytes, and at error correction {level.value} "
        f"at most {octets} bytes fit (version 40)"
    )
    if text.isdigit() and text.isascii():
        message += f", or {digits} digits"
    elif set(text) <= _ALPHANUMERIC:
        message += f", or {alphanumerics} characters of 0-9, A-Z, space and $%*+-./:"
    return message + "; shorten it or lower the error correction"


def alignment_centers(version: int) -> list[int]:
    """Row/column coordinates of the alignment pattern centers of a version (empty for version 1)."""
    if version == 1:
        return []
    size = version * 4 + 17
    count = version // 7 + 2
    step = 26 if version == 32 else (version * 4 + count * 2 + 1) // (count * 2 - 2) * 2
    return [6, *reversed([size - 7 - i * step for i in range(count - 1)])]


def alignment_patterns(version: int) -> list[tuple[int, int]]:
    """Centers (x, y) of the alignment patterns actually present (those not overlapping finders)."""
    centers = alignment_centers(version)
    if not centers:
        return []
    first, last = centers[0], centers[-1]
    corners = {(first, first), (first, last), (last, first)}
    return [(x, y) for y in centers for x in centers if (x, y) not in corners]


def finder_origins(size: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of the three finder patterns."""
    return [(0, 0), (size - FINDER, 0), (0, size - FINDER)]


@functools.lru_cache(maxsize=64)
def function_mask(version: int) -> BoolArray:
    """True where a module belongs to a function pattern: finders and separators, timing, alignment,
    format and version information, and the dark module. Everything else holds data or EC codewords."""
    size = version * 4 + 17
    mask = np.zeros((size, size), dtype=np.bool_)
    mask[:9, :9] = True  # finder, separator, format information
    mask[:9, size - 8 :] = True
    mask[size - 8 :, :9] = True
    mask[6, :] = True  # timing
    mask[:, 6] = True
    for x, y in alignment_patterns(version):
        mask[y - 2 : y + 3, x - 2 : x + 3] = True
    if version >= 7:  # version information
        mask[:6, size - 11 : size - 8] = True
        mask[size - 11 : size - 8, :6] = True
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=64)
def protected_mask(version: int) -> BoolArray:
    """True where a logo must never go: finders with separators, timing and alignment patterns, and
    format/version information, each with a one-module light ring so scanners still see their edges."""
    mask = function_mask(version)
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    grown.flags.writeable = False
    return grown
