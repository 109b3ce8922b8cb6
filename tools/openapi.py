"""Generate the OpenAPI 3.1 document of the REST API from the descriptor set.

The document describes exactly what Envoy's gRPC-JSON transcoder serves: every
RPC of a `qrmesh.*` package that has a `google.api.http` rule (RPCs without one
are gRPC-only and left out, and so are internal ones), with the proto3 JSON
mapping the edge uses (lowerCamelCase names, enums as names, 64-bit integers as
strings). Comments in the protos become summaries and descriptions, the
`qrmesh.rules.v1` validation rules become JSON Schema constraints, and each
RPC's `qrmesh.auth.v1.policy` becomes its security requirement.

Decisions worth knowing:

- Path templates: OpenAPI path parameters cannot hold slashes, so a variable
  such as `{name=organizations/*/members/*}` becomes one parameter per
  wildcard, named after the collection before it in the singular
  (`/v1/organizations/{organization}/members/{member}`); each parameter's
  description names the request field the path is bound to. Custom verbs
  (`:rotate`) stay literal.
- `google.api.HttpBody` answers are raw bytes; their media types come from the
  request's image format enum (`PNG` is `image/png`, ...).
- oneofs are described ("exactly one of ..."), not modelled with `oneOf`; a
  message that is nothing but one oneof also gets `maxProperties: 1` (and
  `minProperties: 1` when the oneof is required).
- Error responses: every operation has a `google.rpc.Status` default answer and
  explicit 400 and 503 entries (any request can be malformed, any service can
  be down), 401/403 when it is not public, 404 when its path names a resource,
  409 for `Create*` RPCs, and 429 for every operation (the edge rate limits);
  a gRPC code named in an RPC's comment (`RESOURCE_EXHAUSTED`, `NOT_FOUND`, ...)
  adds its answer too.

Usage: python tools/openapi.py [DESCRIPTOR_SET] [OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from qrmesh.auth.v1 import policy_pb2
from qrmesh.rules.v1 import rules_pb2

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTORS = ROOT / "gen" / "qrmesh" / "descriptors"

OPENAPI_VERSION = "3.1.0"
PACKAGE_PREFIX = "qrmesh."

Json = dict[str, Any]
FieldProto = descriptor_pb2.FieldDescriptorProto
Type = FieldProto.Type

# Locations in SourceCodeInfo paths (field numbers in descriptor.proto).
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_INT32_RANGE = (-(2**31), 2**31 - 1)
_UINT32_RANGE = (0, 2**32 - 1)

_SCALARS: dict[int, Json] = {
    Type.TYPE_DOUBLE: {"type": "number", "format": "double"},
    Type.TYPE_FLOAT: {"type": "number", "format": "float"},
    Type.TYPE_INT32: {"type": "integer", "format": "int32"},
    Type.TYPE_SINT32: {"type": "integer", "format": "int32"},
    Type.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    Type.TYPE_UINT32: {"type": "integer", "format": "int64"},
    Type.TYPE_FIXED32: {"type": "integer", "format": "int64"},
    Type.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Type.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Type.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Type.TYPE_UINT64: {"type": "string", "format": "int64", "pattern": "^[0-9]+$"},
    Type.TYPE_FIXED64: {"type": "string", "format": "int64", "pattern": "^[0-9]+$"},
    Type.TYPE_BOOL: {"type": "boolean"},
    Type.TYPE_STRING: {"type": "string"},
    Type.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_INTEGER_RANGES: dict[int, tuple[int, int]] = {
    Type.TYPE_INT32: _INT32_RANGE,
    Type.TYPE_SINT32: _INT32_RANGE,
    Type.TYPE_SFIXED32: _INT32_RANGE,
    Type.TYPE_UINT32: _UINT32_RANGE,
    Type.TYPE_FIXED32: _UINT32_RANGE,
}

_FIELD_PATH = "[A-Za-z_][A-Za-z0-9_]*(?:\\.[A-Za-z_][A-Za-z0-9_]*)*"
# Well-known types have their own JSON forms (the proto3 JSON mapping).
_WELL_KNOWN: dict[str, Json] = {
    # The proto3 JSON form is stricter than RFC 3339: years 0001 to 9999, upper-case `T` and `Z`,
    # at most nine fractional digits.
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "pattern": "^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
        "(?:\\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$",
        "description": "An RFC 3339 timestamp, e.g. `2026-01-31T12:00:00Z`.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(?:\\.[0-9]{1,9})?s$",
        "description": "A duration in seconds with an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "pattern": f"^(?:{_FIELD_PATH}(?:,{_FIELD_PATH})*)?$",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. `displayName`.",
    },
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False, "description": "An empty JSON object."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True, "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}, "description": "Any JSON array."},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string", "description": "The type URL of the embedded message."}},
        "required": ["@type"],
        "additionalProperties": True,
        "description": "A message of any type, named by `@type`.",
    },
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "int64", "pattern": "^[0-9]+$"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64", "minimum": 0},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}
# Well-known types that make sense as one query parameter.
_QUERY_WELL_KNOWN = {
    name for name, schema in _WELL_KNOWN.items() if schema.get("type") not in {"object", "array", None}
}

HTTP_BODY = "google.api.HttpBody"
_BINARY: Json = {"type": "string", "format": "binary"}
# Enum value names of a request's output format, and the media types they answer with.
MEDIA_TYPES = {
    "PNG": "image/png",
    "SVG": "image/svg+xml",
    "PDF": "application/pdf",
    "EPS": "application/postscript",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "CSV": "text/csv",
    "JSON": "application/json",
    "TEXT": "text/plain",
}
_FALLBACK_MEDIA_TYPE = "application/octet-stream"

STATUS_SCHEMA = "google.rpc.Status"
# Error answers by HTTP status: the name of the reusable response, and what it means.
_ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is malformed, breaks a rule or does "
        "not fit the current state. `details` carry an ErrorInfo and, for broken field rules, a BadRequest naming "
        "each field at fault.",
    ),
    401: ("Unauthenticated", "UNAUTHENTICATED: no credentials, or invalid or expired ones."),
    403: (
        "PermissionDenied",
        "PERMISSION_DENIED: the caller may not do this (also when the named organization does not exist).",
    ),
    404: ("NotFound", "NOT_FOUND: the named resource does not exist, or no route matches the path."),
    409: ("Conflict", "ALREADY_EXISTS or ABORTED: the resource exists already, or a concurrent change won."),
    429: (
        "TooManyRequests",
        "RESOURCE_EXHAUSTED: too many requests (the edge's rate limit or a per-account throttle); "
        "retry after the `retry-after` header or the RetryInfo delay.",
    ),
    503: ("Unavailable", "UNAVAILABLE: a service is down or overloaded; retry with backoff."),
}
# gRPC codes an RPC comment may name, and the HTTP status the edge answers them with.
_CODE_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


class OpenApiError(ValueError):
    """The descriptors cannot be described (an unsupported template, a missing policy, ...)."""


# ---------------------------------------------------------------------------
# Descriptor index


@dataclass(frozen=True, slots=True)
class _Message:
    """A message, its full name, and where its comments are (file, SourceCodeInfo path)."""

    proto: descriptor_pb2.DescriptorProto
    full_name: str
    file: str
    location: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Enum:
    """An enum, its full name, and where its comments are."""

    proto: descriptor_pb2.EnumDescriptorProto
    full_name: str
    file: str
    location: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Method:
    """An RPC, its service's short and full names, and where its comment is."""

    proto: descriptor_pb2.MethodDescriptorProto
    service: str
    service_full_name: str
    file: str
    location: tuple[int, ...]


@dataclass(slots=True)
class _Index:
    """Every message, enum, service and comment of a descriptor set, by full name."""

    messages: dict[str, _Message] = field(default_factory=dict)
    enums: dict[str, _Enum] = field(default_factory=dict)
    services: list[tuple[str, str, descriptor_pb2.ServiceDescriptorProto, tuple[int, ...]]] = field(
        default_factory=list
    )
    comments: dict[tuple[str, tuple[int, ...]], str] = field(default_factory=dict)

    @classmethod
    def load(cls, descriptor_set: descriptor_pb2.FileDescriptorSet) -> _Index:
        index = cls()
        for file in descriptor_set.file:
            for location in file.source_code_info.location:
                text = _clean_comment(location.leading_comments or location.trailing_comments)
                if text:
                    index.comments[(file.name, tuple(location.path))] = text
            prefix = f"{file.package}." if file.package else ""
            for i, message in enumerate(file.message_type):
                index._add_message(message, prefix, file.name, (_FILE_MESSAGE, i))
            for i, enum in enumerate(file.enum_type):
                index.enums[prefix + enum.name] = _Enum(enum, prefix + enum.name, file.name, (_FILE_ENUM, i))
            for i, service in enumerate(file.service):
                index.services.append((prefix + service.name, file.name, service, (_FILE_SERVICE, i)))
        return index

    def _add_message(
        self, message: descriptor_pb2.DescriptorProto, prefix: str, file: str, location: tuple[int, ...]
    ) -> None:
        full_name = prefix + message.name
        self.messages[full_name] = _Message(message, full_name, file, location)
        for i, nested in enumerate(message.nested_type):
            self._add_message(nested, full_name + ".", file, (*location, _MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            name = f"{full_name}.{enum.name}"
            self.enums[name] = _Enum(enum, name, file, (*location, _MESSAGE_ENUM, i))

    def comment(self, file: str, location: tuple[int, ...]) -> str:
        return self.comments.get((file, location), "")

    def message(self, type_name: str) -> _Message:
        try:
            return self.messages[type_name.lstrip(".")]
        except KeyError:
            raise OpenApiError(f"message {type_name} is not in the descriptor set") from None

    def enum(self, type_name: str) -> _Enum:
        try:
            return self.enums[type_name.lstrip(".")]
        except KeyError:
            raise OpenApiError(f"enum {type_name} is not in the descriptor set") from None

    def is_map(self, fd: FieldProto) -> bool:
        return (
            fd.label == FieldProto.LABEL_REPEATED
            and fd.type == Type.TYPE_MESSAGE
            and self.message(fd.type_name).proto.options.map_entry
        )


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(?:\s|$)", flat)
    return match.group(1) if match else flat


def _field_location(message: _Message, index: int) -> tuple[int, ...]:
    return (*message.location, _MESSAGE_FIELD, index)


# ---------------------------------------------------------------------------
# Path templates


@dataclass(frozen=True, slots=True)
class PathParameter:
    """One OpenAPI path parameter: a wildcard of a variable bound to a request field."""

    name: str
    field: str
    """The request field (dotted proto names) the variable binds, e.g. `name` or `member.name`."""
    template: str
    """The field's value with parameters in braces, e.g. `organizations/{organization}/members/{member}`."""
    multi_segment: bool = False
    """`**`: the value may span several segments (and so contain slashes)."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """An HttpRule path template as an OpenAPI path and the parameters in it."""

    path: str
    parameters: tuple[PathParameter, ...]

    @property
    def fields(self) -> list[str]:
        """The bound request fields, in order, without repeats."""
        return list(dict.fromkeys(p.field for p in self.parameters))


def singular(word: str) -> str:
    """A collection id in the singular: `organizations` -> `organization`, `apiKeys` -> `apiKey`."""
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    for ending in ("sses", "shes", "ches", "xes", "zes"):
        if word.endswith(ending):
            return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 1:
        return word[:-1]
    return word


def _split_top_level(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise OpenApiError(f"unbalanced braces in {text!r}")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise OpenApiError(f"unbalanced braces in {text!r}")
    parts.append("".join(current))
    return parts


def parse_path_template(template: str) -> PathTemplate:
    """Turn `/v1/{name=organizations/*/apiKeys/*}:rotate` into an OpenAPI path and its parameters."""
    if not template.startswith("/"):
        raise OpenApiError(f"path template {template!r} must start with '/'")
    segments = _split_top_level(template[1:], "/")
    verb = ""
    last = _split_top_level(segments[-1], ":")
    if len(last) == 2:
        segments[-1], verb = last
    elif len(last) > 2:
        raise OpenApiError(f"path template {template!r} has more than one verb")
    taken: dict[str, int] = {}
    out: list[str] = []
    parameters: list[PathParameter] = []
    for segment in segments:
        if not segment:
            raise OpenApiError(f"path template {template!r} has an empty segment")
        if segment in {"*", "**"}:
            raise OpenApiError(f"path template {template!r}: wildcards must be inside a variable")
        if not segment.startswith("{"):
            out.append(segment)
            continue
        if not segment.endswith("}"):
            raise OpenApiError(f"path template {template!r}: a variable must be a whole segment")
        field_path, _, inner = segment[1:-1].partition("=")
        previous_literal = ""  # only a collection inside the variable names its wildcards
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", field_path):
            raise OpenApiError(f"path template {template!r}: {field_path!r} is not a field path")
        value_parts: list[str] = []
        wildcard_names: list[tuple[str, bool]] = []
        for inner_segment in (inner or "*").split("/"):
            if inner_segment in {"*", "**"}:
                base = singular(previous_literal) if previous_literal else _camel_path(field_path)
                count = taken.get(base, 0) + 1
                taken[base] = count
                name = base if count == 1 else f"{base}{count}"
                wildcard_names.append((name, inner_segment == "**"))
                value_parts.append("{" + name + "}")
                out.append("{" + name + "}")
            elif not inner_segment or "{" in inner_segment or "}" in inner_segment:
                raise OpenApiError(f"path template {template!r}: bad segment {inner_segment!r} in a variable")
            else:
                value_parts.append(inner_segment)
                out.append(inner_segment)
                previous_literal = inner_segment
        value_template = "/".join(value_parts)
        parameters.extend(PathParameter(name, field_path, value_template, multi) for name, multi in wildcard_names)
    path = "/" + "/".join(out) + (f":{verb}" if verb else "")
    return PathTemplate(path, tuple(parameters))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_path(field_path: str) -> str:
    return ".".join(_camel(part) for part in field_path.split("."))


# ---------------------------------------------------------------------------
# Schemas


def _anchor(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _case_insensitive(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


def _uri_pattern(schemes: Sequence[str]) -> str:
    scheme = "|".join(_case_insensitive(s) for s in schemes)
    return f"^(?:{scheme})://[^\\x00-\\x20\\x7f/?#]+(?:[/?#][^\\x00-\\x20\\x7f]*)?$"


class _Schemas:
    """Builds schemas for messages, enums and fields; named ones go to `components`."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.components: dict[str, Json] = {}

    # Named schemas

    def ref(self, full_name: str) -> Json:
        """A `$ref` to the component for a message or enum, building it on first use."""
        full_name = full_name.lstrip(".")
        if full_name not in self.components:
            if full_name in self.index.enums:
                self.components[full_name] = self._enum_schema(self.index.enums[full_name])
            else:
                self.components[full_name] = {}  # a placeholder breaks cycles
                self.components[full_name] = self.message_schema(self.index.message(full_name))
        return {"$ref": f"#/components/schemas/{full_name}"}

    def _enum_schema(self, enum: _Enum) -> Json:
        values = []
        for i, value in enumerate(enum.proto.value):
            note = " ".join(self.index.comment(enum.file, (*enum.location, _ENUM_VALUE, i)).split())
            values.append(f"- `{value.name}`: {note}" if note else f"- `{value.name}`")
        schema: Json = {
            "type": "string",
            "enum": [value.name for value in enum.proto.value],
            "description": _join(self.index.comment(enum.file, enum.location), "\n".join(values)),
        }
        if enum.proto.options.deprecated:
            schema["deprecated"] = True
        return schema

    def message_schema(self, message: _Message, exclude: frozenset[str] = frozenset()) -> Json:
        """An object schema for `message`; `exclude` drops fields (dotted proto paths) the path binds."""
        proto = message.proto
        properties: Json = {}
        required: list[str] = []
        for i, fd in enumerate(proto.field):
            if fd.name in exclude:
                continue
            nested_exclude = frozenset(p.partition(".")[2] for p in exclude if p.startswith(fd.name + "."))
            schema = self.field_schema(message, i, nested_exclude)
            if _in_oneof(fd):
                oneof = proto.oneof_decl[fd.oneof_index].name
                note = f"Part of the oneof `{oneof}`: set only one of its fields."
                schema["description"] = _join(schema.get("description", ""), note)
            properties[fd.json_name] = schema
            if _rules(fd).required:
                required.append(fd.json_name)
        # The edge ignores most unknown keys but refuses some (an empty name, a proto field name
        # holding the wrong type), and answers never have any: the document promises exactly these.
        out: Json = {"type": "object", "properties": properties, "additionalProperties": False}
        notes = [self.index.comment(message.file, message.location)]
        oneofs = sorted({fd.oneof_index for fd in proto.field if _in_oneof(fd)})
        for oneof_index in oneofs:
            members = _oneof_members(proto, oneof_index)
            listed = ", ".join(f"`{m}`" for m in members)
            is_required = _oneof_required(proto.oneof_decl[oneof_index])
            notes.append(
                f"Exactly one of {listed} must be set." if is_required else f"At most one of {listed} may be set."
            )
            if len(oneofs) == 1 and len(members) == len(proto.field) and not exclude:
                # The message is nothing but this oneof.
                out["maxProperties"] = 1
                if is_required:
                    out["minProperties"] = 1
        if required:
            out["required"] = required
        description = _join(*notes)
        if description:
            out["description"] = description
        if proto.options.deprecated:
            out["deprecated"] = True
        return out

    def field_schema(self, message: _Message, index: int, exclude: frozenset[str] = frozenset()) -> Json:
        """The schema of one field with its rules, description and deprecation."""
        fd = message.proto.field[index]
        rules = _rules(fd)
        if self.index.is_map(fd):
            entry = self.index.message(fd.type_name).proto
            value = next(f for f in entry.field if f.number == 2)
            schema: Json = {"type": "object", "additionalProperties": self.value_schema(value)}
            if rules.required:
                schema["minProperties"] = 1
        elif fd.label == FieldProto.LABEL_REPEATED:
            schema = {"type": "array", "items": self.value_schema(fd, rules, exclude)}
            if rules.WhichOneof("kind") == "repeated":
                _set_if(schema, "minItems", rules.repeated, "min_items")
                _set_if(schema, "maxItems", rules.repeated, "max_items")
            if rules.required:
                schema["minItems"] = max(1, schema.get("minItems", 0))
        else:
            schema = self.value_schema(fd, rules, exclude)
            if rules.required:
                self._require_set(schema, fd)
        description = self.index.comment(message.file, _field_location(message, index))
        if description:
            schema["description"] = _join(description, schema.get("description", ""))
        if fd.options.deprecated:
            schema["deprecated"] = True
        return schema

    def _require_set(self, schema: Json, fd: FieldProto) -> None:
        """`required` in our rules also refuses the default value of a field without presence."""
        if fd.type == Type.TYPE_MESSAGE or fd.proto3_optional:
            return
        if fd.type in {Type.TYPE_STRING, Type.TYPE_BYTES}:
            schema["minLength"] = max(1, schema.get("minLength", 0))
        elif fd.type == Type.TYPE_BOOL:
            schema["const"] = True
        elif fd.type == Type.TYPE_ENUM:
            zero = next(v.name for v in self.index.enum(fd.type_name).proto.value if v.number == 0)
            schema["not"] = {"const": zero}
        else:
            schema["not"] = {"const": "0" if schema.get("type") == "string" else 0}

    def value_schema(
        self,
        fd: FieldProto,
        rules: rules_pb2.FieldRules | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Json:
        """The schema of one value of a field (an element, for repeated fields)."""
        rules = rules or rules_pb2.FieldRules()
        if fd.type == Type.TYPE_MESSAGE:
            name = fd.type_name.lstrip(".")
            if name in _WELL_KNOWN:
                return dict(_WELL_KNOWN[name])
            if exclude:
                return self.message_schema(self.index.message(name), exclude)
            return self.ref(name)
        if fd.type == Type.TYPE_ENUM:
            return self.ref(fd.type_name)
        if fd.type not in _SCALARS:
            raise OpenApiError(f"{fd.name}: field type {fd.type} has no JSON form here")
        schema = dict(_SCALARS[fd.type])
        kind = rules.WhichOneof("kind")
        if kind == "string":
            string = rules.string
            _set_if(schema, "minLength", string, "min_len")
            _set_if(schema, "maxLength", string, "max_len")
            if string.HasField("pattern"):
                schema["pattern"] = _anchor(string.pattern)
                if string.pattern_description:
                    schema["description"] = f"Must {string.pattern_description}."
            elif string.uri_schemes:
                schema["pattern"] = _uri_pattern(string.uri_schemes)
                listed = " or ".join(string.uri_schemes)
                schema["description"] = f"An absolute URL with a host; its scheme is {listed}."
        low: float | None
        high: float | None
        low, high = _INTEGER_RANGES.get(fd.type, (None, None))
        if kind in {"integer", "number"}:
            bounds = rules.integer if kind == "integer" else rules.number
            if schema["type"] in {"integer", "number"}:
                if bounds.HasField("gte"):
                    low = bounds.gte if low is None else max(low, bounds.gte)
                if bounds.HasField("lte"):
                    high = bounds.lte if high is None else min(high, bounds.lte)
            else:
                parts = [f"at least {bounds.gte}" if bounds.HasField("gte") else ""]
                parts.append(f"at most {bounds.lte}" if bounds.HasField("lte") else "")
                schema["description"] = "Must be " + " and ".join(p for p in parts if p) + "."
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        if fd.type == Type.TYPE_BYTES:
            schema["description"] = "Base64-encoded bytes."
        return schema


def _in_oneof(fd: FieldProto) -> bool:
    """Whether a field is in a real oneof (not the synthetic one of a proto3 `optional` field)."""
    return fd.HasField("oneof_index") and not fd.proto3_optional


def _oneof_members(proto: descriptor_pb2.DescriptorProto, oneof_index: int) -> list[str]:
    """JSON names of the fields in one oneof of a message."""
    return [fd.json_name for fd in proto.field if _in_oneof(fd) and fd.oneof_index == oneof_index]


def _rules(fd: FieldProto) -> rules_pb2.FieldRules:
    options = fd.options
    if options.HasExtension(rules_pb2.field):
        rules: rules_pb2.FieldRules = options.Extensions[rules_pb2.field]
        return rules
    return rules_pb2.FieldRules()


def _oneof_required(decl: descriptor_pb2.OneofDescriptorProto) -> bool:
    options = decl.options
    return bool(options.HasExtension(rules_pb2.oneof) and options.Extensions[rules_pb2.oneof].required)


def _set_if(schema: Json, key: str, message: Any, field_name: str) -> None:
    if message.HasField(field_name):
        schema[key] = getattr(message, field_name)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------
# Operations


@dataclass(frozen=True, slots=True)
class _Binding:
    """One HTTP binding of an RPC: the rule itself or one of its `additional_bindings`."""

    method: str
    template: PathTemplate
    body: str
    response_body: str


def _bindings(rule: http_pb2.HttpRule) -> Iterator[_Binding]:
    rules = [rule, *rule.additional_bindings]
    for one in rules:
        kind = one.WhichOneof("pattern")
        if kind is None:
            raise OpenApiError("an HTTP rule without a method and path")
        if kind == "custom":
            method, path = one.custom.kind.lower(), one.custom.path
        else:
            method, path = kind, getattr(one, kind)
        if method not in _HTTP_METHODS:
            raise OpenApiError(f"HTTP method {method!r} cannot be described")
        yield _Binding(method, parse_path_template(path), one.body, one.response_body)


class _Builder:
    """Collects the operations of every documented RPC and assembles the document."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.schemas = _Schemas(index)
        self.paths: dict[str, Json] = {}
        self.tags: list[Json] = []
        self.responses_used: set[int] = set()

    def add_services(self) -> None:
        for full_name, file, service, location in self.index.services:
            if not full_name.startswith(PACKAGE_PREFIX):
                continue
            documented = False
            for i, method in enumerate(service.method):
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                policy = _policy(method, full_name)
                if policy.WhichOneof("access") == "internal":
                    continue
                rpc = _Method(method, service.name, full_name, file, (*location, _SERVICE_METHOD, i))
                for n, binding in enumerate(_bindings(method.options.Extensions[annotations_pb2.http]), start=1):
                    self._add_operation(rpc, policy, binding, n)
                documented = True
            if documented:
                tag: Json = {"name": service.name}
                description = self.index.comment(file, location)
                if description:
                    tag["description"] = description
                self.tags.append(tag)

    def _add_operation(self, rpc: _Method, policy: policy_pb2.Policy, binding: _Binding, number: int) -> None:
        request = self.index.message(rpc.proto.input_type)
        template = binding.template
        for bound in template.fields:
            _resolve_field(self.index, request, bound)
        comment = self.index.comment(rpc.file, rpc.location)
        operation_id = f"{rpc.service}_{rpc.proto.name}" + (f"_{number}" if number > 1 else "")
        operation: Json = {
            "operationId": operation_id,
            "tags": [rpc.service],
            "parameters": [*_path_parameters(template), *self._query_parameters(request, binding)],
            "responses": self._responses(rpc, request, policy, binding),
            "security": _security(policy),
        }
        if comment:
            operation["summary"] = _first_sentence(comment)
        notes = [comment, _access_text(policy), _binding_text(template)]
        notes.append(f"gRPC: `{rpc.service_full_name}/{rpc.proto.name}`.")
        operation["description"] = _join(*notes)
        if rpc.proto.options.deprecated:
            operation["deprecated"] = True
        if not operation["parameters"]:
            del operation["parameters"]
        body = self._request_body(request, binding)
        if body is not None:
            operation["requestBody"] = body
        item = self.paths.setdefault(template.path, {})
        if binding.method in item:
            raise OpenApiError(f"{binding.method.upper()} {template.path} is bound to two RPCs")
        item[binding.method] = operation

    def _query_parameters(self, request: _Message, binding: _Binding) -> list[Json]:
        if binding.body == "*":
            return []
        bound = set(binding.template.fields)
        if binding.body:
            bound.add(binding.body)
        out: list[Json] = []
        self._collect_query(request, "", "", bound, (request.full_name,), out, top=True)
        return out

    def _collect_query(
        self,
        message: _Message,
        proto_prefix: str,
        json_prefix: str,
        bound: set[str],
        chain: tuple[str, ...],
        out: list[Json],
        *,
        top: bool,
    ) -> None:
        for i, fd in enumerate(message.proto.field):
            proto_path = proto_prefix + fd.name
            if proto_path in bound:
                continue
            name = json_prefix + fd.json_name
            type_name = fd.type_name.lstrip(".")
            if self.index.is_map(fd):
                continue
            if fd.type == Type.TYPE_MESSAGE and type_name not in _QUERY_WELL_KNOWN:
                if fd.label == FieldProto.LABEL_REPEATED or type_name in _WELL_KNOWN or type_name in chain:
                    continue
                nested = self.index.message(type_name)
                self._collect_query(nested, proto_path + ".", name + ".", bound, (*chain, type_name), out, top=False)
                continue
            if any(b.startswith(proto_path + ".") for b in bound):
                continue
            schema = self.schemas.field_schema(message, i)
            parameter: Json = {"name": name, "in": "query", "schema": schema}
            description = schema.pop("description", "")
            if description:
                parameter["description"] = description
            if schema.pop("deprecated", False):
                parameter["deprecated"] = True
            if top and _rules(fd).required:
                parameter["required"] = True
            if schema.get("type") == "array":
                parameter["style"] = "form"
                parameter["explode"] = True
            out.append(parameter)

    def _request_body(self, request: _Message, binding: _Binding) -> Json | None:
        if not binding.body:
            return None
        bound = frozenset(binding.template.fields)
        if request.full_name == HTTP_BODY and binding.body == "*":
            return {"required": True, "content": {"*/*": {"schema": dict(_BINARY)}}}
        if binding.body == "*":
            schema = self.schemas.message_schema(request, bound) if bound else self.schemas.ref(request.full_name)
            required = any(_rules(fd).required for fd in request.proto.field if fd.name not in bound)
            description = "The request message" + (
                " without the fields the path is bound to (" + ", ".join(f"`{b}`" for b in sorted(bound)) + ")."
                if bound
                else "."
            )
        else:
            i, fd = _top_field(request, binding.body)
            if fd.type == Type.TYPE_MESSAGE and fd.type_name.lstrip(".") == HTTP_BODY:
                # The transcoder passes the raw body into an HttpBody field (e.g. a signed webhook).
                comment = self.index.comment(request.file, _field_location(request, i))
                return {"required": True, "description": comment, "content": {"*/*": {"schema": dict(_BINARY)}}}
            exclude = frozenset(p.partition(".")[2] for p in bound if p.startswith(binding.body + "."))
            if fd.type == Type.TYPE_MESSAGE and fd.label != FieldProto.LABEL_REPEATED:
                schema = self.schemas.value_schema(fd, _rules(fd), exclude)
            else:
                schema = self.schemas.field_schema(request, i)
                schema.pop("description", None)
            required = _rules(fd).required
            comment = self.index.comment(request.file, _field_location(request, i))
            description = _join(
                comment,
                f"The request field `{binding.body}`"
                + (" without the fields the path is bound to." if exclude else "."),
            )
        return {"required": required, "description": description, "content": {"application/json": {"schema": schema}}}

    def _responses(self, rpc: _Method, request: _Message, policy: policy_pb2.Policy, binding: _Binding) -> Json:
        response = self.index.message(rpc.proto.output_type)
        if response.full_name == HTTP_BODY and not binding.response_body:
            media_types = _media_types(self.index, request)
            content = {media: {"schema": dict(_BINARY)} for media in media_types}
            ok: Json = {"description": "The body itself, with its media type.", "content": content}
        else:
            if binding.response_body:
                i, _ = _top_field(response, binding.response_body)
                schema = self.schemas.field_schema(response, i)
                schema.pop("description", None)
                description = self.index.comment(response.file, _field_location(response, i))
            elif response.full_name in _WELL_KNOWN:
                schema = dict(_WELL_KNOWN[response.full_name])
                description = schema.pop("description", "")
            else:
                schema = self.schemas.ref(response.full_name)
                description = self.index.comment(response.file, response.location)
            ok = {
                "description": _first_sentence(description) or "Success.",
                "content": {"application/json": {"schema": schema}},
            }
        codes = {400, 429, 503}
        access = policy.WhichOneof("access")
        if access != "public":
            codes |= {401, 403}
        if binding.template.parameters:
            codes.add(404)
        if rpc.proto.name.startswith("Create"):
            codes.add(409)
        comment = self.index.comment(rpc.file, rpc.location)
        codes |= {status for code, status in _CODE_STATUS.items() if re.search(rf"\b{code}\b", comment)}
        if access == "public":
            codes -= {401, 403}
        self.responses_used |= codes
        out: Json = {"200": ok, "default": {"$ref": "#/components/responses/Error"}}
        for status in sorted(codes):
            out[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
        return out

    def document(self, title: str, version: str, license_id: str | None) -> Json:
        info: Json = {
            "title": title,
            "version": version,
            "description": _INFO_DESCRIPTION,
        }
        if license_id:
            info["license"] = {"name": license_id, "identifier": license_id}
        self.schemas.components[STATUS_SCHEMA] = _status_schema()
        responses: Json = {
            "Error": {
                "description": "Any other error, as a `google.rpc.Status`.",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{STATUS_SCHEMA}"}}},
            }
        }
        for status in sorted(self.responses_used):
            name, description = _ERRORS[status]
            responses[name] = {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{STATUS_SCHEMA}"}}},
            }
        return {
            "openapi": OPENAPI_VERSION,
            "info": info,
            "servers": [{"url": "/"}],
            "tags": self.tags,
            "paths": self.paths,
            "components": {
                "schemas": self.schemas.components,
                "responses": responses,
                "securitySchemes": _SECURITY_SCHEMES,
            },
        }


_INFO_DESCRIPTION = """\
The qrmesh REST API, generated from the protobuf contracts; Envoy transcodes it to gRPC.

JSON follows the proto3 JSON mapping: lowerCamelCase names, enums as their names, 64-bit integers as strings, \
timestamps in RFC 3339, bytes in base64. Answers include scalar fields even when they hold their default \
values.

Errors are `google.rpc.Status` objects with an `ErrorInfo` reason (and a `BadRequest` naming the fields at fault \
for invalid input). Public operations need no credentials; others take an access token from `POST /v1/auth:login` \
as `Authorization: Bearer <token>`, and those open to API keys also take a key as `x-api-key` (or as a bearer \
token)."""

_SECURITY_SCHEMES: Json = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from `POST /v1/auth:login` or `POST /v1/auth:refresh` (an EdDSA JWT).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An organization's API key secret (also accepted as `Authorization: Bearer <secret>`).",
    },
}


def _status_schema() -> Json:
    return {
        "type": "object",
        "description": "An error: a gRPC status code, a message for developers, and details a program can read.",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "The gRPC status code, e.g. 3 or 16."},
            "message": {"type": "string", "description": "What went wrong, in English, for developers."},
            "details": {
                "type": "array",
                "description": "Machine-readable details: an `ErrorInfo` always, a `BadRequest` for invalid fields, "
                "a `RetryInfo` when throttled.",
                "items": {
                    "type": "object",
                    "required": ["@type"],
                    "properties": {"@type": {"type": "string", "description": "The detail's type URL."}},
                    "additionalProperties": True,
                },
            },
        },
    }


def _policy(method: descriptor_pb2.MethodDescriptorProto, service: str) -> policy_pb2.Policy:
    options = method.options
    if not options.HasExtension(policy_pb2.policy):
        raise OpenApiError(f"{service}.{method.name} declares no (qrmesh.auth.v1.policy)")
    policy: policy_pb2.Policy = options.Extensions[policy_pb2.policy]
    if policy.WhichOneof("access") is None:
        raise OpenApiError(f"{service}.{method.name} has an empty (qrmesh.auth.v1.policy)")
    return policy


def _security(policy: policy_pb2.Policy) -> list[Json]:
    access = policy.WhichOneof("access")
    if access == "public":
        return []
    if access == "organization" and policy.organization.scope:
        return [{"bearer": []}, {"apiKey": []}]
    return [{"bearer": []}]


def _access_text(policy: policy_pb2.Policy) -> str:
    access = policy.WhichOneof("access")
    if access == "public":
        return "Access: public, no credentials needed."
    if access == "authenticated":
        return "Access: any signed-in user."
    org = policy.organization
    role = policy_pb2.Role.Name(org.role) if org.role else "any role"
    text = f"Access: members of the organization named in `{org.field}` with role {role} or higher"
    if org.scope:
        return text + f", and its API keys with the scope `{org.scope}`."
    return text + "; API keys may not call it."


def _binding_text(template: PathTemplate) -> str:
    by_field = {p.field: p.template for p in template.parameters}
    bound = [f"`{name}` = `{value}`" for name, value in by_field.items()]
    if not bound:
        return ""
    return "Path bound to the request field " + ", ".join(bound) + "."


def _path_parameters(template: PathTemplate) -> list[Json]:
    """One parameter per wildcard, each naming the request field it fills."""
    out = []
    for parameter in template.parameters:
        shape = "one or more path segments" if parameter.multi_segment else "one path segment"
        description = (
            f"The `{{{parameter.name}}}` part of the request field `{parameter.field}` "
            f"(`{parameter.template}`) this path is bound to; {shape}."
        )
        schema: Json = {"type": "string", "minLength": 1}
        if not parameter.multi_segment:
            schema["pattern"] = "^[^/]+$"
        out.append(
            {"name": parameter.name, "in": "path", "required": True, "schema": schema, "description": description}
        )
    return out


def _resolve_field(index: _Index, message: _Message, path: str) -> FieldProto:
    current = message
    fd: FieldProto | None = None
    for part in path.split("."):
        if fd is not None:
            current = index.message(fd.type_name)
        fd = next((f for f in current.proto.field if f.name == part), None)
        if fd is None:
            raise OpenApiError(f"{message.full_name} has no field {path!r}")
    assert fd is not None  # noqa: S101 - a path has at least one part
    return fd


def _top_field(message: _Message, name: str) -> tuple[int, FieldProto]:
    for i, fd in enumerate(message.proto.field):
        if fd.name == name:
            return i, fd
    raise OpenApiError(f"{message.full_name} has no field {name!r}")


def _media_types(index: _Index, request: _Message) -> list[str]:
    """The media types an HttpBody answer can have: from the request's format enum, if it has one."""
    for fd in request.proto.field:
        if fd.type != Type.TYPE_ENUM or fd.label == FieldProto.LABEL_REPEATED:
            continue
        names = [v.name for v in index.enum(fd.type_name).proto.value]
        media = [MEDIA_TYPES[n] for n in names if n in MEDIA_TYPES]
        if media:
            return list(dict.fromkeys(media))
    return [_FALLBACK_MEDIA_TYPE]


# ---------------------------------------------------------------------------
# Entry points


def build(
    descriptor_set: bytes, *, title: str = "qrmesh", version: str = "0.0.0", license_id: str | None = None
) -> Json:
    """The OpenAPI document for a serialized FileDescriptorSet (with source info for the comments)."""
    index = _Index.load(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set))
    builder = _Builder(index)
    builder.add_services()
    return builder.document(title, version, license_id)


def render(document: Mapping[str, Any]) -> str:
    """Deterministic JSON: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def project_metadata(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str | None]:
    """The project's version and license from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    license_id = project.get("license")
    return str(project["version"]), license_id if isinstance(license_id, str) else None


def write(descriptor_path: Path, out: Path) -> None:
    """Write the document for the descriptor set at `descriptor_path` to `out`."""
    version, license_id = project_metadata()
    document = build(descriptor_path.read_bytes(), version=version, license_id=license_id)
    out.write_text(render(document))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("descriptor_set", type=Path, nargs="?", default=DESCRIPTORS / "qrmesh.binpb")
    parser.add_argument("out", type=Path, nargs="?", default=DESCRIPTORS / "openapi.json")
    args = parser.parse_args()
    write(args.descriptor_set, args.out)


if __name__ == "__main__":
    main()
