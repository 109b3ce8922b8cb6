"""How people organize stored codes: display names, folders and tags, checked and put in canonical form."""

from __future__ import annotations

import re
from collections.abc import Sequence

from qrmesh.platform.errors import InvalidArgument

MAX_TAGS = 20
MAX_TAG_LENGTH = 50
MAX_FOLDER_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_display_name(name: str, *, field: str) -> str:
    """The name without surrounding spaces; InvalidArgument if it holds control characters."""
    if _CONTROL.search(name):
        raise InvalidArgument.field(field, "must not contain control characters", reason="INVALID_DISPLAY_NAME")
    return name.strip()


def normalize_tags(tags: Sequence[str], *, field: str) -> tuple[str, ...]:
    """Tags without surrounding spaces, in the order given; each 1 to 50 characters, unique without case."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument.field(
            field, f"must have at most {MAX_TAGS} items (got {len(tags)})", reason="INVALID_TAG"
        )
    out: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(tags):
        tag = raw.strip()
        where = f"{field}[{index}]"
        if not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise InvalidArgument.field(
                where, f"must be 1 to {MAX_TAG_LENGTH} characters long (got {len(tag)})", reason="INVALID_TAG"
            )
        if _CONTROL.search(tag):
            raise InvalidArgument.field(where, "must not contain control characters", reason="INVALID_TAG")
        key = tag_key(tag)
        if key in seen:
            raise InvalidArgument.field(
                where, f"{tag!r} is already a tag of this code (tags are compared without case)", reason="DUPLICATE_TAG"
            )
        seen.add(key)
        out.append(tag)
    return tuple(out)


def tag_key(tag: str) -> str:
    """The form tags are compared and filtered in."""
    return tag.strip().casefold()


def normalize_folder(folder: str, *, field: str) -> str:
    """A folder path such as `campaigns/2026` ("" is the top); no empty parts, no surrounding spaces per part."""
    path = folder.strip().strip("/")
    if not path:
        return ""
    if len(path) > MAX_FOLDER_LENGTH:
        raise InvalidArgument.field(
            field, f"must be at most {MAX_FOLDER_LENGTH} characters long", reason="INVALID_FOLDER"
        )
    parts = path.split("/")
    if any(not part.strip() or part != part.strip() for part in parts) or _CONTROL.search(path):
        raise InvalidArgument.field(
            field, "must be a folder path like campaigns/2026 (no empty parts)", reason="INVALID_FOLDER"
        )
    return path
