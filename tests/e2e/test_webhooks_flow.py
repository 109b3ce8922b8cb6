"""Webhooks through the real edge, as the README shows them: the plan gate, an unsafe URL refused as JSON, a
subscription created by REST whose secret is shown once, and its (empty) deliveries."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_billing_flow import new_organization
from tests.integration.billing_helpers import subscribe_through_edge

pytestmark = pytest.mark.e2e


def test_webhooks_by_rest(edge: str) -> None:
    headers, org = new_organization(edge, "hooks")
    body = {"url": "https://example.com/hooks", "eventTypes": ["qr_code.created", "scan.recorded"]}
    locked = httpx.post(f"{edge}/v1/{org}/webhooks", json=body, headers=headers)
    assert locked.status_code == 403, locked.text
    assert locked.json()["details"][0]["reason"] == "FEATURE_NOT_IN_PLAN"

    subscribe_through_edge(edge, org, "business")
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/"):
        unsafe = httpx.post(f"{edge}/v1/{org}/webhooks", json={**body, "url": url}, headers=headers)
        assert unsafe.status_code == 400, unsafe.text
        assert unsafe.json()["details"][0]["reason"] == "UNSAFE_WEBHOOK_URL"

    created = httpx.post(f"{edge}/v1/{org}/webhooks", json=body, headers=headers)
    assert created.status_code == 200, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    assert hook["state"] == "ACTIVE"
    got = httpx.get(f"{edge}/v1/{hook['name']}", headers=headers)
    assert got.status_code == 200, got.text
    assert got.json().get("secret", "") == ""
    assert got.json()["eventTypes"] == ["qr_code.created", "scan.recorded"]
    listed = httpx.get(f"{edge}/v1/{hook['name']}/deliveries", headers=headers)
    assert listed.status_code == 200, listed.text
    assert listed.json().get("deliveries", []) == []
    rotated = httpx.post(f"{edge}/v1/{hook['name']}:rotateSecret", json={}, headers=headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != hook["secret"]
    assert httpx.delete(f"{edge}/v1/{hook['name']}", headers=headers).status_code == 200
