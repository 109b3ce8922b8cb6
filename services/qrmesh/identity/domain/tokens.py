"""Random identifiers, opaque tokens and API key secrets, and how they are hashed for storage."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string

ID_LENGTH = 16
_ID_PATTERN = re.compile(r"[a-z2-7]{16}")
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
API_KEY_PREFIX = "qrm_"
API_KEY_SECRET_BYTES = 32
_API_KEY_SECRET_LENGTH = 43  # 62**43 > 256**32 > 62**42
_API_KEY_PATTERN = re.compile(r"qrm_([a-z2-7]{16})_([0-9A-Za-z]{43})")


def new_id() -> str:
    """A resource id: 16 lowercase base32 characters (80 random bits), URL-safe and not guessable."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def is_id(value: str) -> bool:
    """Whether `value` looks like an id `new_id` makes."""
    return _ID_PATTERN.fullmatch(value) is not None


def new_token() -> str:
    """An opaque, URL-safe secret token (256 random bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 (hex) a token is stored as; tokens have enough entropy that no salt or stretching is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def base62(data: bytes, length: int) -> str:
    """`data` as a big-endian number in base 62, left-padded with "0" to `length` characters."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_BASE62[rest])
    return "".join(reversed(digits)).rjust(length, "0")


def new_api_key_secret(key_id: str) -> str:
    """A secret for the key `key_id`: `qrm_<key id>_<32 random bytes in base62>`."""
    return f"{api_key_prefix(key_id)}_{base62(secrets.token_bytes(API_KEY_SECRET_BYTES), _API_KEY_SECRET_LENGTH)}"


def api_key_prefix(key_id: str) -> str:
    """The visible start of a key's secret, by which people recognise it: `qrm_<key id>`."""
    return f"{API_KEY_PREFIX}{key_id}"


def parse_api_key_secret(secret: str) -> str | None:
    """The key id inside a well-formed secret, or None if `secret` cannot be one of ours."""
    match = _API_KEY_PATTERN.fullmatch(secret)
    return match.group(1) if match else None
