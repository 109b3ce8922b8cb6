"""Email addresses: how they are stored and how they are looked up."""

from __future__ import annotations

import re


def normalize_email(email: str) -> str:
    """The address as stored and shown: trimmed, domain lowercased (the local part is kept as typed)."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return email.strip()
    return f"{local}@{domain.lower()}"


def email_key(email: str) -> str:
    """The address as compared: trimmed and lowercased whole (one account per address, whatever its case)."""
    return email.strip().lower()


def same_email(a: str, b: str) -> bool:
    """Whether two addresses name the same mailbox for qrmesh (case-insensitive)."""
    return email_key(a) == email_key(b)


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_LENGTH = 254


def is_email(email: str) -> bool:
    """Whether `email` looks like an address (the same rule the API applies at sign-up)."""
    value = email.strip()
    return len(value) <= MAX_LENGTH and _EMAIL.fullmatch(value) is not None
