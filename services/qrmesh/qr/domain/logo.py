"""Reading a logo safely: sniff the real type, bound bytes and pixels before decoding anything."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain.memo import BoundedCache

FIELD = "design.logo.image"
MAX_BYTES = 1024 * 1024
MAX_SIDE = 4096

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def sniff(data: bytes) -> str | None:
    """The image type the bytes really are (PNG, JPEG, GIF or WEBP), or None."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _refuse(description: str) -> InvalidArgument:
    return InvalidArgument.field(FIELD, description, reason="INVALID_LOGO")


@dataclass(frozen=True, slots=True)
class DecodedLogo:
    """A logo decoded to RGBA (shared: never change `image`) and the SHA-256 of its bytes, a key for caches."""

    digest: bytes
    image: Image.Image


# Decoded logos by the SHA-256 of their bytes: the same bytes always decode to the same pixels, so a
# repeated logo is decoded once; bounded to 64 logos and 64 MiB of pixels.
_DECODED: BoundedCache[bytes, DecodedLogo] = BoundedCache(max_entries=64, max_cost=64 * 1024 * 1024)


def decode_logo(data: bytes) -> DecodedLogo:
    """`load_logo`, cached: the image is shared between renders and threads, so treat it as read-only."""
    if len(data) > MAX_BYTES:
        raise _refuse(f"must be at most {MAX_BYTES} bytes (got {len(data)})")
    digest = hashlib.sha256(data).digest()
    return _DECODED.get(
        digest, lambda: DecodedLogo(digest, load_logo(data)), lambda logo: logo.image.width * logo.image.height * 4
    )


def load_logo(data: bytes) -> Image.Image:
    """The logo decoded to RGBA; INVALID_LOGO for non-images, over 1 MiB, over 4096x4096 px, or bombs."""
    if len(data) > MAX_BYTES:
        raise _refuse(f"must be at most {MAX_BYTES} bytes (got {len(data)})")
    kind = sniff(data)
    if kind is None:
        raise _refuse("must be a PNG, JPEG, WebP or GIF image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                raise _refuse(f"must be at most {MAX_SIDE}x{MAX_SIDE} pixels (declares {width}x{height})")
            image.seek(0)
            image.load()
            return image.convert("RGBA")
    except InvalidArgument:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse("is too large once decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise _refuse(f"could not be decoded as {kind} ({type(error).__name__})") from None
