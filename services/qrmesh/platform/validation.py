"""Request validation from rules written in the protos (`qrmesh.rules.v1`).

`violations(message)` walks a message and returns every broken rule as a
`FieldViolation` whose `field` is the dotted JSON path REST clients see
(`content.url.url`, `items[2].name`). Plans are compiled once per message type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from qrmesh.platform.errors import FieldViolation, InvalidArgument
from qrmesh.rules.v1 import rules_pb2

_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

# A check takes a present value and yields descriptions of what is wrong with it.
Check = Callable[[Any], Iterator[str]]


def validate(message: Message) -> None:
    """Raise InvalidArgument naming every violation in `message`, if any."""
    found = violations(message)
    if found:
        summary = "; ".join(f"{v.field}: {v.description}" for v in found[:5])
        if len(found) > 5:
            summary += f"; and {len(found) - 5} more"
        raise InvalidArgument(summary, violations=found)


def violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every broken rule in `message`, depth first, in field order."""
    out: list[FieldViolation] = []
    _walk(message, prefix, out)
    return out


def _walk(message: Message, prefix: str, out: list[FieldViolation]) -> None:
    plan = _plan(message.DESCRIPTOR)
    for oneof_name, members in plan.required_oneofs:
        if message.WhichOneof(oneof_name) is None:
            where = prefix.rstrip(".") or oneof_name
            out.append(FieldViolation(where, f"exactly one of {', '.join(members)} must be set"))
    for fp in plan.fields:
        path = prefix + fp.json_name
        fd = fp.descriptor
        value = getattr(message, fd.name)
        if fd.is_repeated:
            count = len(value)
            if fp.required and count == 0:
                out.append(FieldViolation(path, "must not be empty"))
            for problem in fp.count_checks:
                out.extend(FieldViolation(path, d) for d in problem(count))
            is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
            if is_map:
                continue
            for index, item in enumerate(value):
                item_path = f"{path}[{index}]"
                for check in fp.value_checks:
                    out.extend(FieldViolation(item_path, d) for d in check(item))
                if fp.recurse:
                    _walk(item, item_path + ".", out)
            continue
        if fd.message_type is not None or fd.has_presence:
            present = message.HasField(fd.name)
        else:
            present = value != fd.default_value
        if not present:
            if fp.required:
                out.append(FieldViolation(path, "is required"))
            continue
        for check in fp.value_checks:
            out.extend(FieldViolation(path, d) for d in check(value))
        if fp.recurse:
            _walk(value, path + ".", out)


class _FieldPlan:
    __slots__ = ("count_checks", "descriptor", "json_name", "recurse", "required", "value_checks")

    def __init__(self, fd: FieldDescriptor) -> None:
        self.descriptor = fd
        self.json_name = fd.json_name
        self.required = False
        self.value_checks: list[Check] = []
        self.count_checks: list[Callable[[int], Iterator[str]]] = []
        self.recurse = fd.message_type is not None and not fd.message_type.GetOptions().map_entry
        if fd.type == FieldDescriptor.TYPE_STRING:
            # No text anywhere may carry NUL: PostgreSQL cannot store it and nothing legitimate sends it.
            self.value_checks.append(_no_nul)
        options = fd.GetOptions()
        if options.HasExtension(rules_pb2.field):
            rules = options.Extensions[rules_pb2.field]
            self.required = rules.required
            self._compile(fd, rules)

    def _compile(self, fd: FieldDescriptor, rules: rules_pb2.FieldRules) -> None:
        kind = rules.WhichOneof("kind")
        if kind == "string":
            if fd.type != FieldDescriptor.TYPE_STRING:
                raise TypeError(f"{fd.full_name}: string rules on a non-string field")
            if (rules.string.HasField("pattern") or rules.string.uri_schemes) and not rules.string.HasField("max_len"):
                raise TypeError(
                    f"{fd.full_name}: a pattern or URI rule needs a max_len, so it never runs on unbounded input"
                )
            self.value_checks.append(_string_check(rules.string))
        elif kind == "integer":
            if fd.type not in _INTEGER_TYPES:
                raise TypeError(f"{fd.full_name}: integer rules on a non-integer field")
            self.value_checks.append(_range_check(rules.integer))
        elif kind == "number":
            if fd.type not in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                raise TypeError(f"{fd.full_name}: number rules on a non-float field")
            self.value_checks.append(_number_check(rules.number))
        elif kind == "enum":
            if fd.enum_type is None:
                raise TypeError(f"{fd.full_name}: enum rules on a non-enum field")
            if rules.enum.defined_only:
                defined = {v.number for v in fd.enum_type.values}
                self.value_checks.append(_enum_check(defined, [v.name for v in fd.enum_type.values[1:]]))
        elif kind == "repeated":
            if not fd.is_repeated:
                raise TypeError(f"{fd.full_name}: repeated rules on a singular field")
            self.count_checks.append(_count_check(rules.repeated))


class _MessagePlan:
    __slots__ = ("fields", "required_oneofs")

    def __init__(self, descriptor: Descriptor) -> None:
        self.fields = [_FieldPlan(fd) for fd in descriptor.fields]
        self.required_oneofs: list[tuple[str, list[str]]] = []
        for oneof in descriptor.oneofs:
            options = oneof.GetOptions()
            if options.HasExtension(rules_pb2.oneof) and options.Extensions[rules_pb2.oneof].required:
                self.required_oneofs.append((oneof.name, [f.json_name for f in oneof.fields]))
        # Only keep fields that have something to check or something inside.
        self.fields = [f for f in self.fields if f.required or f.value_checks or f.count_checks or f.recurse]


@cache
def _plan(descriptor: Descriptor) -> _MessagePlan:
    return _MessagePlan(descriptor)


def _no_nul(value: str) -> Iterator[str]:
    if "\x00" in value:
        yield "must not contain NUL characters"


def _string_check(rules: rules_pb2.StringRules) -> Check:
    min_len = rules.min_len if rules.HasField("min_len") else None
    max_len = rules.max_len if rules.HasField("max_len") else None
    pattern = re.compile(rules.pattern) if rules.HasField("pattern") else None
    pattern_text = rules.pattern_description or f"match {rules.pattern}"
    schemes = tuple(rules.uri_schemes)

    def check(value: str) -> Iterator[str]:
        if min_len is not None and len(value) < min_len:
            yield f"must be at least {min_len} characters long"
        if max_len is not None and len(value) > max_len:
            # Nothing more is looked at: patterns and URL parsing only ever see bounded input.
            yield f"must be at most {max_len} characters long (got {len(value)})"
            return
        if pattern is not None and not pattern.fullmatch(value):
            yield f"must {pattern_text}"
        if schemes and not _is_uri(value, schemes):
            listed = " or ".join(f"{s}://" for s in schemes)
            yield f"must be an absolute URL starting with {listed}"

    return check


def _is_uri(value: str, schemes: tuple[str, ...]) -> bool:
    if _CONTROL.search(value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme.lower() in schemes and bool(host)


def _range_check(rules: rules_pb2.IntegerRules) -> Check:
    gte = rules.gte if rules.HasField("gte") else None
    lte = rules.lte if rules.HasField("lte") else None

    def check(value: int) -> Iterator[str]:
        if (gte is not None and value < gte) or (lte is not None and value > lte):
            yield _range_text(gte, lte, value)

    return check


def _number_check(rules: rules_pb2.NumberRules) -> Check:
    gte = rules.gte if rules.HasField("gte") else None
    lte = rules.lte if rules.HasField("lte") else None

    def check(value: float) -> Iterator[str]:
        if not math.isfinite(value):
            yield "must be a finite number"
        elif (gte is not None and value < gte) or (lte is not None and value > lte):
            yield _range_text(gte, lte, value)

    return check


def _range_text(gte: float | None, lte: float | None, value: float) -> str:
    if gte is not None and lte is not None:
        return f"must be between {gte:g} and {lte:g} (got {value:g})"
    if gte is not None:
        return f"must be at least {gte:g} (got {value:g})"
    return f"must be at most {lte:g} (got {value:g})"


def _enum_check(defined: set[int], names: list[str]) -> Check:
    def check(value: int) -> Iterator[str]:
        if value not in defined:
            yield f"must be one of {', '.join(names)} (got {value})"

    return check


def _count_check(rules: rules_pb2.RepeatedRules) -> Callable[[int], Iterator[str]]:
    min_items = rules.min_items if rules.HasField("min_items") else None
    max_items = rules.max_items if rules.HasField("max_items") else None

    def check(count: int) -> Iterator[str]:
        if min_items is not None and count < min_items:
            yield f"must have at least {min_items} items"
        if max_items is not None and count > max_items:
            yield f"must have at most {max_items} items (got {count})"

    return check
