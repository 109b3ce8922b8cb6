"""Export cells that spreadsheets cannot mistake for formulas (OWASP, CSV injection)."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""A cell starting with one of these (or their fullwidth forms, which some spreadsheets fold to them) may
be run as a formula by Excel, LibreOffice or Google Sheets."""


def neutralize(text: str) -> str:
    """`text`, with a single quote in front when a spreadsheet would read it as a formula, also after
    leading spaces, which imports may trim."""
    return (
        "'" + text
        if text.lstrip(" \t\r\n\u00a0\u3000").startswith(FORMULA_STARTS) or text.startswith(FORMULA_STARTS)
        else text
    )
