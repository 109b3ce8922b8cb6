"""Short codes of dynamic QR codes: random base62 codes, custom aliases and the words no code may be.

A random code is 7 base62 characters (62**7, about 3.5e12 codes) drawn with
`secrets`; the store retries on a collision and, after a few collisions at one
length, draws longer codes. Aliases are chosen by people and checked against
the reserved words (without case, so `Admin` is refused like `admin`). Codes
themselves are case-sensitive: `Promo` and `promo` are two codes.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterator

from qrmesh.platform.errors import InvalidArgument

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 7
ATTEMPTS_PER_LENGTH = 3
MAX_RANDOM_LENGTH = 12
PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,63}")

RESERVED = frozenset(
    {
        "about", "account", "accounts", "admin", "administrator", "analytics", "api", "app", "apps", "assets",
        "auth", "billing", "blog", "cdn", "code", "codes", "contact", "css", "dashboard", "dev", "docs", "download",
        "edge", "edit", "email", "favicon", "files", "ftp", "graphql", "health", "healthz", "help", "home", "img",
        "images", "internal", "js", "legal", "link", "links", "livez", "login", "logout", "mail", "metrics", "new",
        "null", "oauth", "openapi", "password", "pricing", "privacy", "public", "qr", "qrcode", "qrcodes", "qrmesh",
        "r", "readyz", "redirect", "register", "reset", "robots", "root", "scan", "scans", "security", "settings",
        "signin", "signup", "sitemap", "static", "status", "support", "swagger", "system", "terms", "undefined",
        "user", "users", "v1", "v2", "v3", "verify", "webhook", "webhooks", "well-known", "www",
    }
)  # fmt: skip
"""Words no short code may be, compared without case: paths of the platform and words people would mistrust."""


def is_reserved(code: str) -> bool:
    """Whether `code` is a reserved word (any case)."""
    return code.lower() in RESERVED


def looks_like_short_code(code: str) -> bool:
    """Whether `code` has the shape of a short code (3 to 64 letters, digits, `-` or `_`)."""
    return PATTERN.fullmatch(code) is not None


def check_alias(alias: str, *, field: str) -> str:
    """`alias` if people may choose it; InvalidArgument (SHORT_CODE_RESERVED) for a reserved word."""
    if not looks_like_short_code(alias):
        raise InvalidArgument.field(
            field,
            "must be 3 to 64 letters, digits, '-' or '_', starting with a letter or digit",
            reason="INVALID_SHORT_CODE",
        )
    if is_reserved(alias):
        raise InvalidArgument.field(
            field, f"{alias!r} is a reserved word; choose another short code", reason="SHORT_CODE_RESERVED"
        )
    return alias


def random_short_code(length: int = RANDOM_LENGTH) -> str:
    """A random base62 code of `length` characters that is not a reserved word."""
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(length))
        if not is_reserved(code):
            return code


def candidate_lengths() -> Iterator[int]:
    """The length of each attempt: 7 a few times, then longer after repeated collisions (finite)."""
    for length in range(RANDOM_LENGTH, MAX_RANDOM_LENGTH + 1):
        for _ in range(ATTEMPTS_PER_LENGTH):
            yield length


def short_url(public_base_url: str, code: str) -> str:
    """The link a dynamic code's image encodes: `{base}/r/{code}`."""
    return f"{public_base_url.rstrip('/')}/r/{code}"
