"""The OpenAPI document generated from the descriptors: valid, current, and saying what the contracts say."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, text_format
from openapi_spec_validator import validate

from qrmesh.descriptors import DESCRIPTOR_SET_PATH, OPENAPI_PATH
from tools import openapi

Json = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Json:
    loaded: Json = json.loads(OPENAPI_PATH.read_text())
    return loaded


def operation(document: Json, method: str, path: str) -> Json:
    found: Json = document["paths"][path][method]
    return found


def schema(document: Json, name: str) -> Json:
    found: Json = document["components"]["schemas"][name]
    return found


def body_schema(op: Json) -> Json:
    found: Json = op["requestBody"]["content"]["application/json"]["schema"]
    return found


def parameters(op: Json) -> dict[str, Json]:
    return {p["name"]: p for p in op.get("parameters", [])}


def test_the_document_is_valid_openapi(document: Json) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_the_committed_document_is_what_the_descriptors_generate() -> None:
    version, license_id = openapi.project_metadata()
    fresh = openapi.build(DESCRIPTOR_SET_PATH.read_bytes(), version=version, license_id=license_id)
    text = openapi.render(fresh)
    assert text == OPENAPI_PATH.read_text(), "gen/ is stale: run 'make gen'"
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_info_servers_and_security_schemes(document: Json) -> None:
    assert document["info"]["title"] == "qrmesh"
    assert document["info"]["version"] == openapi.project_metadata()[0]
    assert document["servers"] == [{"url": "/"}]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}


def http_rpcs() -> set[str]:
    """`Service_Method` of every outside-callable RPC with an HTTP rule in the qrmesh packages."""
    from google.api import annotations_pb2

    from qrmesh.auth.v1 import policy_pb2

    found = set()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET_PATH.read_bytes()).file
    for file in files:
        if not file.package.startswith("qrmesh."):
            continue
        for service in file.service:
            for method in service.method:
                internal = method.options.Extensions[policy_pb2.policy].WhichOneof("access") == "internal"
                if method.options.HasExtension(annotations_pb2.http) and not internal:
                    found.add(f"{service.name}_{method.name}")
    return found


def test_every_http_rpc_is_an_operation_and_nothing_else(document: Json) -> None:
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == http_rpcs()
    assert "AccessService_AuthenticateApiKey" not in ids


def test_paths_have_one_parameter_per_wildcard_named_after_the_collection(document: Json) -> None:
    paths = set(document["paths"])
    assert "/v1/organizations/{organization}/members/{member}" in paths
    assert "/v1/organizations/{organization}/apiKeys/{apiKey}:rotate" in paths
    assert "/v1/users/{user}" in paths
    assert "/v1/qrCodes:render" in paths
    for path in paths:
        assert "=" not in path
        assert "*" not in path


def test_render_answers_the_image_itself(document: Json) -> None:
    render = operation(document, "post", "/v1/qrCodes:render")
    assert render["operationId"] == "QrCodeService_RenderQrCode"
    assert render["tags"] == ["QrCodeService"]
    assert render["security"] == []
    assert render["summary"] == "Renders content as a QR code image without storing anything."
    assert body_schema(render) == {"$ref": "#/components/schemas/qrmesh.qr.v1.RenderQrCodeRequest"}
    assert render["requestBody"]["required"] is True
    ok = render["responses"]["200"]["content"]
    assert set(ok) == {
        "image/png",
        "image/svg+xml",
        "application/pdf",
        "application/postscript",
        "image/jpeg",
        "image/webp",
    }
    assert all(media["schema"] == {"type": "string", "format": "binary"} for media in ok.values())
    assert {"400", "429", "503", "default"} <= set(render["responses"])
    assert "401" not in render["responses"]
    assert "403" not in render["responses"]


def test_render_request_carries_the_validation_rules(document: Json) -> None:
    request = schema(document, "qrmesh.qr.v1.RenderQrCodeRequest")
    assert request["required"] == ["content"]
    fields = request["properties"]
    assert fields["size"] == {**fields["size"], "type": "integer", "format": "int32", "minimum": 0, "maximum": 4096}
    assert fields["physicalSizeMm"]["type"] == "number"
    assert fields["physicalSizeMm"]["maximum"] == 2000
    assert fields["format"]["$ref"] == "#/components/schemas/qrmesh.qr.v1.RenderQrCodeRequest.Format"
    assert fields["errorCorrection"]["deprecated"] is True
    assert fields["quietZone"]["deprecated"] is True
    assert "deprecated" not in fields["size"]
    formats = schema(document, "qrmesh.qr.v1.RenderQrCodeRequest.Format")
    assert formats["type"] == "string"
    assert formats["enum"] == ["FORMAT_UNSPECIFIED", "PNG", "SVG", "PDF", "EPS", "JPEG", "WEBP"]


def test_oneofs_are_described_and_bounded(document: Json) -> None:
    content = schema(document, "qrmesh.qr.v1.Content")
    assert "Exactly one of `url`, `text`, `email`" in content["description"]
    assert content["minProperties"] == content["maxProperties"] == 1
    assert "oneOf" not in content


def test_string_rules_become_length_and_anchored_patterns(document: Json) -> None:
    email = schema(document, "qrmesh.identity.v1.SignUpRequest")["properties"]["email"]
    assert email["maxLength"] == 254
    assert email["minLength"] == 1  # required: the empty string is "not set"
    assert email["pattern"] == "^(?:[^@\\s]+@[^@\\s.]+(\\.[^@\\s.]+)+)$"
    url = schema(document, "qrmesh.qr.v1.UrlPayload")["properties"]["url"]
    assert url["pattern"].startswith("^(?:[Hh][Tt][Tt][Pp]|[Hh][Tt][Tt][Pp][Ss])://")
    stops = schema(document, "qrmesh.qr.v1.Design.Gradient")["properties"]["stops"]
    assert (stops["type"], stops["minItems"], stops["maxItems"]) == ("array", 2, 8)
    logo = schema(document, "qrmesh.qr.v1.Design.Logo")
    assert logo["properties"]["image"]["format"] == "byte"
    assert logo["required"] == ["image"]


def test_well_known_types_use_their_json_forms(document: Json) -> None:
    user = schema(document, "qrmesh.identity.v1.User")["properties"]
    assert user["createTime"]["type"] == "string"
    assert user["createTime"]["format"] == "date-time"
    # What the edge's JSON parser takes, which is less than RFC 3339 allows.
    timestamp = re.compile(user["createTime"]["pattern"])
    assert timestamp.search("2026-11-23T22:29:32.794513Z")
    assert timestamp.search("2026-11-23T22:29:32+05:30")
    assert not timestamp.search("0000-01-01T00:00:00Z")
    assert not timestamp.search("2026-11-23t22:29:32z")
    assert not timestamp.search("2026-11-23T22:29:32.1234567891Z")
    update = operation(document, "patch", "/v1/organizations/{organization}")
    mask = parameters(update)["updateMask"]["schema"]
    assert mask["type"] == "string"
    assert re.search(mask["pattern"], "displayName,member.role")
    assert not re.search(mask["pattern"], "display(Name")


def test_messages_take_only_their_own_fields(document: Json) -> None:
    for name, found in document["components"]["schemas"].items():
        if found.get("type") == "object" and name != "google.rpc.Status":
            assert found["additionalProperties"] is False, name


def test_login_is_public_and_may_be_throttled(document: Json) -> None:
    login = operation(document, "post", "/v1/auth:login")
    assert login["operationId"] == "AuthService_Login"
    assert login["security"] == []
    assert body_schema(login) == {"$ref": "#/components/schemas/qrmesh.identity.v1.LoginRequest"}
    assert login["responses"]["429"] == {"$ref": "#/components/responses/TooManyRequests"}
    ok = login["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/qrmesh.identity.v1.Session"}
    request = schema(document, "qrmesh.identity.v1.LoginRequest")
    assert request["required"] == ["email", "password"]


def test_listing_members_binds_parent_and_takes_paging_in_the_query(document: Json) -> None:
    members = operation(document, "get", "/v1/organizations/{organization}/members")
    assert members["operationId"] == "OrganizationService_ListMembers"
    assert "requestBody" not in members
    params = parameters(members)
    assert list(params) == ["organization", "pageSize", "pageToken"]
    organization = params["organization"]
    assert (organization["in"], organization["required"]) == ("path", True)
    assert "`parent`" in organization["description"]
    assert "`organizations/{organization}`" in organization["description"]
    assert params["pageSize"]["in"] == "query"
    assert params["pageSize"]["schema"] == {**params["pageSize"]["schema"], "minimum": 0, "maximum": 100}
    assert params["pageToken"]["schema"]["maxLength"] == 500
    assert "required" not in params["pageToken"]
    # Members may read it with a token, API keys with the members:read scope.
    assert members["security"] == [{"bearer": []}, {"apiKey": []}]
    assert {"401", "403", "404"} <= set(members["responses"])


def test_creating_an_api_key_takes_the_api_key_field_as_the_body(document: Json) -> None:
    create = operation(document, "post", "/v1/organizations/{organization}/apiKeys")
    assert create["operationId"] == "ApiKeyService_CreateApiKey"
    assert body_schema(create) == {"$ref": "#/components/schemas/qrmesh.identity.v1.ApiKey"}
    assert create["requestBody"]["required"] is True
    assert list(parameters(create)) == ["organization"]
    assert create["security"] == [{"bearer": []}]  # the policy has no scope: no API keys
    assert "409" in create["responses"]
    ok = create["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/qrmesh.identity.v1.CreateApiKeyResponse"}


def test_a_body_field_bound_in_the_path_leaves_the_body(document: Json) -> None:
    update = operation(document, "patch", "/v1/organizations/{organization}")
    body = body_schema(update)
    assert "name" not in body["properties"]
    assert "displayName" in body["properties"]
    assert "`organization.name`" in parameters(update)["organization"]["description"]
    rotate = operation(document, "post", "/v1/organizations/{organization}/apiKeys/{apiKey}:rotate")
    assert body_schema(rotate)["properties"] == {}
    assert rotate["requestBody"]["required"] is False
    assert list(parameters(rotate)) == ["organization", "apiKey"]


def test_errors_are_google_rpc_status(document: Json) -> None:
    status = schema(document, "google.rpc.Status")
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    assert status["properties"]["details"]["items"]["required"] == ["@type"]
    for item in document["paths"].values():
        for op in item.values():
            assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}
            assert {"400", "503"} <= set(op["responses"])
            public = op["security"] == []
            assert ("401" in op["responses"]) is not public
            assert ("403" in op["responses"]) is not public


@pytest.mark.parametrize(
    ("template", "path", "names"),
    [
        (
            "/v1/{name=organizations/*/members/*}",
            "/v1/organizations/{organization}/members/{member}",
            ["organization", "member"],
        ),
        ("/v1/{name=users/*}", "/v1/users/{user}", ["user"]),
        (
            "/v1/{name=organizations/*/apiKeys/*}:rotate",
            "/v1/organizations/{organization}/apiKeys/{apiKey}:rotate",
            ["organization", "apiKey"],
        ),
        ("/v1/{name=qrCodes/*}", "/v1/qrCodes/{qrCode}", ["qrCode"]),
        ("/v1/qrCodes:render", "/v1/qrCodes:render", []),
        ("/v1/{name=categories/*/boxes/*}", "/v1/categories/{category}/boxes/{box}", ["category", "box"]),
        ("/v1/{parent}/things", "/v1/{parent}/things", ["parent"]),
        ("/v1/{organization.name=organizations/*}", "/v1/organizations/{organization}", ["organization"]),
        ("/v1/{a=users/*}/{b=users/*}", "/v1/users/{user}/users/{user2}", ["user", "user2"]),
        ("/v1/{name=files/**}", "/v1/files/{file}", ["file"]),
    ],
)
def test_path_templates(template: str, path: str, names: list[str]) -> None:
    parsed = openapi.parse_path_template(template)
    assert parsed.path == path
    assert [p.name for p in parsed.parameters] == names


def test_path_parameters_know_their_field_and_value_template() -> None:
    parsed = openapi.parse_path_template("/v1/{member.name=organizations/*/members/*}")
    assert parsed.fields == ["member.name"]
    assert {p.template for p in parsed.parameters} == {"organizations/{organization}/members/{member}"}
    assert not any(p.multi_segment for p in parsed.parameters)
    assert openapi.parse_path_template("/v1/{name=files/**}").parameters[0].multi_segment


@pytest.mark.parametrize("template", ["v1/x", "/v1/*", "/v1/{name=a/*", "/v1//x", "/v1/{Name}", "/v1/x:a:b"])
def test_bad_path_templates_are_refused(template: str) -> None:
    with pytest.raises(openapi.OpenApiError):
        openapi.parse_path_template(template)


SAMPLE = """
name: "qrmesh/sample/v1/sample.proto"
package: "qrmesh.sample.v1"
dependency: ["google/api/annotations.proto", "google/protobuf/timestamp.proto", "qrmesh/auth/v1/policy.proto"]
syntax: "proto3"
message_type {
  name: "Widget"
  field { name: "name" number: 1 type: TYPE_STRING json_name: "name" }
  field { name: "count" number: 2 type: TYPE_INT64 json_name: "count" }
  field { name: "big" number: 3 type: TYPE_UINT64 json_name: "big" }
  field {
    name: "labels" number: 4 label: LABEL_REPEATED type: TYPE_MESSAGE
    type_name: ".qrmesh.sample.v1.Widget.LabelsEntry" json_name: "labels"
  }
  field { name: "tags" number: 5 label: LABEL_REPEATED type: TYPE_STRING json_name: "tags" }
  field { name: "blob" number: 6 type: TYPE_BYTES json_name: "blob" }
  field { name: "seen_at" number: 7 type: TYPE_MESSAGE type_name: ".google.protobuf.Timestamp" json_name: "seenAt" }
  field { name: "kind" number: 8 type: TYPE_ENUM type_name: ".qrmesh.sample.v1.Widget.Kind" json_name: "kind" }
  field { name: "a" number: 9 type: TYPE_STRING oneof_index: 0 json_name: "a" }
  field { name: "b" number: 10 type: TYPE_INT32 oneof_index: 0 json_name: "b" }
  field { name: "old" number: 11 type: TYPE_BOOL json_name: "old" options { deprecated: true } }
  nested_type {
    name: "LabelsEntry"
    field { name: "key" number: 1 type: TYPE_STRING json_name: "key" }
    field { name: "value" number: 2 type: TYPE_INT32 json_name: "value" }
    options { map_entry: true }
  }
  enum_type { name: "Kind" value { name: "KIND_UNSPECIFIED" number: 0 } value { name: "BIG" number: 1 } }
  oneof_decl { name: "choice" }
}
message_type {
  name: "Filter"
  field { name: "text" number: 1 type: TYPE_STRING json_name: "text" }
  field { name: "min_count" number: 2 type: TYPE_INT64 json_name: "minCount" }
  field { name: "inner" number: 3 type: TYPE_MESSAGE type_name: ".qrmesh.sample.v1.Filter" json_name: "inner" }
}
message_type {
  name: "GetWidgetRequest"
  field { name: "name" number: 1 type: TYPE_STRING json_name: "name" }
  field { name: "filter" number: 2 type: TYPE_MESSAGE type_name: ".qrmesh.sample.v1.Filter" json_name: "filter" }
  field {
    name: "kinds" number: 3 label: LABEL_REPEATED type: TYPE_ENUM
    type_name: ".qrmesh.sample.v1.Widget.Kind" json_name: "kinds"
  }
}
service {
  name: "WidgetService"
  method {
    name: "GetWidget" input_type: ".qrmesh.sample.v1.GetWidgetRequest" output_type: ".qrmesh.sample.v1.Widget"
    options {
      [google.api.http] { get: "/v1/{name=stores/*/widgets/*}" additional_bindings { get: "/v1/{name=widgets/*}" } }
      [qrmesh.auth.v1.policy] { authenticated: true }
    }
  }
  method {
    name: "Hidden" input_type: ".qrmesh.sample.v1.GetWidgetRequest" output_type: ".qrmesh.sample.v1.Widget"
    options {
      [google.api.http] { get: "/v1/hidden" }
      [qrmesh.auth.v1.policy] { internal: true }
    }
  }
  method {
    name: "GrpcOnly" input_type: ".qrmesh.sample.v1.GetWidgetRequest" output_type: ".qrmesh.sample.v1.Widget"
    options { [qrmesh.auth.v1.policy] { public: true } }
  }
  method {
    name: "Download" input_type: ".qrmesh.sample.v1.GetWidgetRequest" output_type: ".google.api.HttpBody"
    options {
      [google.api.http] { custom { kind: "GET" path: "/v1/{name=widgets/*}:download" } }
      [qrmesh.auth.v1.policy] { organization { field: "name" role: VIEWER scope: "widgets:read" } }
    }
  }
}
"""


@pytest.fixture(scope="module")
def sample() -> Json:
    """A document for a made-up contract that uses what ours do not (yet): int64, maps, extra bindings.

    Its options parse because the generator imports the modules that declare them.
    """
    real = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET_PATH.read_bytes())
    files = descriptor_pb2.FileDescriptorSet()
    files.file.extend(f for f in real.file if not f.package.startswith("qrmesh.") or f.package == "qrmesh.auth.v1")
    files.file.append(text_format.Parse(SAMPLE, descriptor_pb2.FileDescriptorProto()))
    document = openapi.build(files.SerializeToString(), version="1.2.3")
    validate(document)
    return document


def test_sample_scalars_maps_and_enums(sample: Json) -> None:
    widget = schema(sample, "qrmesh.sample.v1.Widget")["properties"]
    assert widget["count"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    assert widget["big"]["type"] == "string"
    assert widget["labels"] == {"type": "object", "additionalProperties": {**widget["labels"]["additionalProperties"]}}
    assert widget["labels"]["additionalProperties"]["type"] == "integer"
    assert widget["tags"] == {"type": "array", "items": {"type": "string"}}
    assert widget["blob"]["format"] == "byte"
    assert widget["seenAt"]["format"] == "date-time"
    assert widget["kind"] == {"$ref": "#/components/schemas/qrmesh.sample.v1.Widget.Kind"}
    assert widget["old"]["deprecated"] is True
    assert "At most one of `a`, `b` may be set." in schema(sample, "qrmesh.sample.v1.Widget")["description"]
    assert "qrmesh.sample.v1.Widget.LabelsEntry" not in sample["components"]["schemas"]


def test_sample_additional_bindings_and_nested_query_parameters(sample: Json) -> None:
    first = operation(sample, "get", "/v1/stores/{store}/widgets/{widget}")
    second = operation(sample, "get", "/v1/widgets/{widget}")
    assert first["operationId"] == "WidgetService_GetWidget"
    assert second["operationId"] == "WidgetService_GetWidget_2"
    params = parameters(first)
    assert list(params) == ["store", "widget", "filter.text", "filter.minCount", "kinds"]
    assert params["kinds"]["schema"]["type"] == "array"
    assert params["kinds"]["explode"] is True
    assert first["security"] == [{"bearer": []}]


def test_sample_leaves_out_internal_and_grpc_only_rpcs(sample: Json) -> None:
    ids = {op["operationId"] for item in sample["paths"].values() for op in item.values()}
    assert ids == {"WidgetService_GetWidget", "WidgetService_GetWidget_2", "WidgetService_Download"}
    assert sample["info"]["version"] == "1.2.3"


def test_sample_http_body_without_a_format_is_octet_stream(sample: Json) -> None:
    download = operation(sample, "get", "/v1/widgets/{widget}:download")
    assert set(download["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert download["security"] == [{"bearer": []}, {"apiKey": []}]


def test_an_rpc_without_a_policy_is_refused() -> None:
    text = SAMPLE.replace("[qrmesh.auth.v1.policy] { authenticated: true }", "")
    files = descriptor_pb2.FileDescriptorSet()
    files.file.append(text_format.Parse(text, descriptor_pb2.FileDescriptorProto()))
    with pytest.raises(openapi.OpenApiError, match="GetWidget declares no"):
        openapi.build(files.SerializeToString())
