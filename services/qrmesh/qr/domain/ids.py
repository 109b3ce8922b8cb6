"""Ids of stored QR codes: random, URL-safe, not guessable."""

from __future__ import annotations

import base64
import re
import secrets

_ID = re.compile(r"[a-z2-7]{16}")


def new_id() -> str:
    """16 lowercase base32 characters (80 random bits)."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def is_id(value: str) -> bool:
    """Whether `value` looks like an id `new_id` makes."""
    return _ID.fullmatch(value) is not None
