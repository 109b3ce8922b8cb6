"""Checking the password of a protected link."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

# Parameters are read from each hash; these only matter for hashing, which the qr service does.
_HASHER = PasswordHasher()

MAX_PASSWORD_LENGTH = 1024
"""Longer input is refused without hashing (link passwords are at most 128 characters)."""


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches the argon2 `password_hash`.

    False for a mismatch, an empty or malformed hash, or input that cannot be
    encoded; never raises. Verifying costs what the hash's parameters say
    (tens of milliseconds for argon2id defaults): call it off the event loop.
    """
    if not password_hash or len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (Argon2Error, ValueError, TypeError):  # ValueError covers InvalidHashError and UnicodeError
        return False
