"""The small HTML pages a scan sees instead of a redirect."""

from __future__ import annotations

from functools import cache
from html import escape
from urllib.parse import quote

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Send with every page: inline styles only, no scripts, the form posts back to us, no framing."""

PASSWORD = "password"  # noqa: S105 - a page kind, not a secret
THROTTLED = "throttled"
NOT_YET_ACTIVE = "not_yet_active"
EXPIRED = "expired"
UNAVAILABLE = "unavailable"
LIMIT_REACHED = "limit_reached"
PAUSED = "paused"
UNKNOWN = "unknown"

PAGE_STATUS: dict[str, int] = {
    # A form to fill in, not an error (401 would need a WWW-Authenticate challenge).
    PASSWORD: 200,
    THROTTLED: 429,
    # The link exists but refuses now; it may work later (so not 404 or 410).
    NOT_YET_ACTIVE: 403,
    UNAVAILABLE: 403,
    PAUSED: 403,
    # Over for good unless the owner changes the rules: crawlers may forget the link.
    EXPIRED: 410,
    LIMIT_REACHED: 410,
    UNKNOWN: 404,
}
"""The HTTP status each page is sent with."""

_TEXT: dict[str, tuple[str, str]] = {
    PASSWORD: ("Password required", "This QR code is protected. Enter its password to continue."),
    THROTTLED: (
        "Too many attempts",
        "Too many wrong passwords were tried from your network. Please wait a few minutes and try again.",
    ),
    NOT_YET_ACTIVE: ("Not active yet", "This QR code is not active yet. Please try again later."),
    EXPIRED: ("This QR code has expired", "What it pointed to is no longer available."),
    UNAVAILABLE: ("Not available right now", "This QR code only works at certain times. Please try again later."),
    LIMIT_REACHED: ("No longer available", "This QR code has reached the number of scans it allows."),
    PAUSED: ("Paused", "The owner of this QR code has paused it for now. Please try again later."),
    UNKNOWN: (
        "QR code not found",
        "There is no QR code at this address. Check that the code was scanned completely.",
    ),
}

KINDS = frozenset(PAGE_STATUS)

_STYLE = (
    ":root{color-scheme:light dark;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "line-height:1.5}"
    "body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;"
    "background:#f4f5f7;color:#1d2330}"
    "main{max-width:26rem;margin:1rem;padding:2rem;border-radius:12px;background:#fff;"
    "box-shadow:0 1px 4px rgba(0,0,0,.12)}"
    "h1{font-size:1.4rem;margin:0 0 .5rem}p{margin:0 0 1rem}"
    ".error{color:#b3261e;font-weight:600}"
    "label{display:block;font-weight:600;margin-bottom:.25rem}"
    "input{box-sizing:border-box;width:100%;font:inherit;padding:.6rem;border:1px solid #8a90a0;"
    "border-radius:8px;margin-bottom:1rem}"
    "button{font:inherit;width:100%;padding:.65rem;border:0;border-radius:8px;background:#2456d3;"
    "color:#fff;font-weight:600;cursor:pointer}"
    "@media (prefers-color-scheme:dark){body{background:#15181e;color:#e6e8ee}"
    "main{background:#222630;box-shadow:none}.error{color:#ff8a80}}"
)


def _document(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{escape(title)}</h1>\n{body}</main>\n</body>\n</html>\n"
    ).encode()


@cache
def _static(kind: str) -> bytes:
    title, text = _TEXT[kind]
    return _document(title, f"<p>{escape(text)}</p>\n")


def _password(short_code: str, error: str) -> bytes:
    title, text = _TEXT[PASSWORD]
    action = escape("/r/" + quote(short_code, safe=""))
    alert = f'<p class="error" role="alert">{escape(error)}</p>\n' if error else ""
    body = (
        f"<p>{escape(text)}</p>\n{alert}"
        f'<form method="post" action="{action}">\n'
        '<label for="password">Password</label>\n'
        '<input id="password" name="password" type="password" autocomplete="current-password" '
        'maxlength="128" required autofocus>\n'
        '<button type="submit">Continue</button>\n'
        "</form>\n"
    )
    return _document(title, body)


def page(kind: str, *, short_code: str = "", error: str = "") -> bytes:
    """The UTF-8 HTML page `kind` (one of KINDS); send it with PAGE_STATUS[kind] and CONTENT_SECURITY_POLICY.

    Only "password" uses `short_code` (its form posts `password` to
    `/r/{short_code}`) and `error` (shown above the form); every value is
    escaped. The other pages are built once.
    """
    if kind == PASSWORD:
        return _password(short_code, error)
    if kind not in KINDS:
        raise ValueError(f"unknown page kind {kind!r}")
    return _static(kind)
