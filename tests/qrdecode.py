"""Decode QR codes from images the way a scanner would (zxing-cpp)."""

from __future__ import annotations

import io

import zxingcpp
from PIL import Image


def decode_png(data: bytes) -> list[str]:
    """Texts of every QR code found in a PNG."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return [result.text for result in zxingcpp.read_barcodes(image) if result.format == zxingcpp.BarcodeFormat.QRCode]
