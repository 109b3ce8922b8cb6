"""Payload kinds and how each is encoded into the text a QR symbol carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Url:
    """A web address; the URL itself is the payload."""

    url: str


@dataclass(frozen=True, slots=True)
class Text:
    """Free text, encoded as is."""

    text: str


Payload = Url | Text


def encode(payload: Payload) -> str:
    """The exact text to put in the symbol for `payload`."""
    match payload:
        case Url(url=url):
            return url
        case Text(text=text):
            return text
    raise TypeError(f"unknown payload kind: {type(payload).__name__}")
