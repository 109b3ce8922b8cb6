"""Every path in the OpenAPI document reaches its RPC through the real edge.

Each operation is called as the document describes it (its method, its path with
plausible ids, an empty JSON body where it takes one) without credentials. The
edge must route it to a service: a 404 ROUTE_NOT_FOUND, or any answer Envoy
made without asking a service, would mean the document promises a path the
transcoder does not serve.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from qrmesh.descriptors import OPENAPI_PATH

pytestmark = pytest.mark.e2e

DOCUMENT: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
# Ids shaped like the real ones (16 base32 characters); `users/me` is the caller.
PLAUSIBLE_IDS = {"user": "me"}
PLAUSIBLE_ID = "a2b3c4d5e6f7g2h3"


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in sorted(DOCUMENT["paths"].items())
        for method, operation in sorted(item.items())
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PLAUSIBLE_IDS.get(m.group(1), PLAUSIBLE_ID), path)


def test_the_document_has_operations() -> None:
    assert len(operations()) >= 25


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    operations(),
    ids=[operation["operationId"] for _, _, operation in operations()],
)
def test_every_documented_path_reaches_its_rpc(edge: str, method: str, path: str, operation: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"json": {}} if "requestBody" in operation else {}
    answer = httpx.request(method.upper(), edge + concrete(path), timeout=10, **kwargs)
    text = f"{method.upper()} {concrete(path)} -> {answer.status_code} {answer.text[:300]}"
    assert "ROUTE_NOT_FOUND" not in answer.text, text
    assert answer.status_code != 404, text
    # Only answers that came back from a service carry the upstream timing header.
    assert "x-envoy-upstream-service-time" in answer.headers, text
    if operation["security"]:
        assert answer.status_code == 401, text
        assert answer.json()["details"][0]["reason"] == "UNAUTHENTICATED", text
    else:
        assert answer.status_code in {200, 400}, text
        if answer.status_code == 400:
            # Refused by the service's validation, not by the transcoder's parser.
            assert answer.json()["details"][0]["reason"] != "MALFORMED_REQUEST", text
