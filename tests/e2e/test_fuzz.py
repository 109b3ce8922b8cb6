"""Property-based fuzzing of every documented operation through the real edge (schemathesis).

Requests are generated from gen/qrmesh/descriptors/openapi.json and sent as a
signed-in user who owns an organization; part of the cases name that
organization (and its member, API key and invitation) in the path, so
organization-scoped operations get past authorization too. Every answer must:

- not be a server error (5xx),
- be a JSON `google.rpc.Status` (integer `code`, string `message`) when it is a 4xx,
- match the media types and schemas the document gives for it.

When the edge disagrees with the document, the generator (tools/openapi.py) is
wrong, not this test. Generation is bounded and deterministic (a fixed number of
examples per operation, derandomized, no shrinking), so a run takes well under a
minute; QRMESH_FUZZ_EXAMPLES raises the number for a longer hunt.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from qrmesh.descriptors import OPENAPI_PATH
from qrmesh.identity.login_throttle import KEY_PREFIX
from tests.integration.billing_helpers import subscribe_through_edge

pytestmark = pytest.mark.e2e

# Examples per operation: enough for a quick run; QRMESH_FUZZ_EXAMPLES=200 makes a longer campaign.
MAX_EXAMPLES = int(os.environ.get("QRMESH_FUZZ_EXAMPLES", "25"))
PASSWORD = "a-long-and-unusual-passphrase-9"
# Streams that stay open until the client leaves: a fuzzed valid request would never answer in full.
# WatchScans is exercised through the edge by tests/e2e/test_analytics_flow.py instead.
OPEN_ENDED = {"AnalyticsService_WatchScans"}
OPERATION_IDS = sorted(
    operation["operationId"]
    for item in json.loads(OPENAPI_PATH.read_text())["paths"].values()
    for operation in item.values()
    if operation["operationId"] not in OPEN_ENDED
)


@dataclass(frozen=True, slots=True)
class Account:
    """A signed-in owner of an organization, with one API key and one pending invitation in it."""

    token: str
    organization: str
    user: str
    api_key: str
    invitation: str

    def path_parameters(self, names: set[str]) -> dict[str, str] | None:
        """Real values for these path parameters, if this account has one for each of them."""
        known = {
            "organization": self.organization,
            "member": self.user,
            "apiKey": self.api_key,
            "invitation": self.invitation,
            "user": "me",
        }
        if not names or not names <= set(known):
            return None
        return {name: known[name] for name in names}


def last_segment(name: str) -> str:
    return name.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def account(edge: str) -> Account:
    """Sign up and log in over REST (as the README shows), then create what org-scoped operations name."""
    email = f"fuzz-{secrets.token_hex(4)}@example.com"
    signed_up = httpx.post(f"{edge}/v1/auth:signUp", json={"email": email, "password": PASSWORD, "displayName": "Fuzz"})
    assert signed_up.status_code == 200, signed_up.text
    session = httpx.post(f"{edge}/v1/auth:login", json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    token = session.json()["accessToken"]
    auth = {"authorization": f"Bearer {token}"}
    org = httpx.post(f"{edge}/v1/organizations", json={"displayName": "Fuzz"}, headers=auth)
    assert org.status_code == 200, org.text
    name = org.json()["name"]
    # API keys and invitations are Business features.
    subscribe_through_edge(edge, name, "business")
    key = httpx.post(f"{edge}/v1/{name}/apiKeys", json={"displayName": "fuzz", "scopes": ["qr:read"]}, headers=auth)
    assert key.status_code == 200, key.text
    invitation = httpx.post(
        f"{edge}/v1/{name}/invitations", json={"email": "invitee@example.com", "role": "VIEWER"}, headers=auth
    )
    assert invitation.status_code == 200, invitation.text
    return Account(
        token=token,
        organization=last_segment(name),
        user=last_segment(session.json()["user"]["name"]),
        api_key=last_segment(key.json()["apiKey"]["name"]),
        invitation=last_segment(invitation.json()["invitation"]["name"]),
    )


@pytest.fixture(scope="module")
def fuzz_schema(edge: str, account: Account) -> OpenApiSchema:
    """The document, sending the account's access token wherever an operation takes a bearer token."""
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": account.token}}}})
    schema = schemathesis.openapi.from_path(OPENAPI_PATH, config=config)
    schema.config.update(base_url=edge)
    return schema


def login_throttle_counters(client: redis.Redis) -> dict[bytes, Any]:
    """Each throttle key's failure count (lock markers by their expiry time)."""
    return {
        key: client.get(key) if key.endswith(b":lock") else client.hget(key, "failures")
        for key in client.scan_iter(f"{KEY_PREFIX}*")
    }


@pytest.fixture(scope="module")
def forget_fuzzed_login_failures(redis_url: str) -> Iterator[None]:
    """Fuzzing logins fails them on purpose, which throttles this machine's address: undo that afterwards.

    Only counters the run created or raised are removed, so later tests (and later runs, as the
    counters live in Redis for a while) can log in as if no fuzzing had happened.
    """
    client = redis.Redis.from_url(redis_url)
    before = login_throttle_counters(client)
    yield
    after = login_throttle_counters(client)
    touched = [key for key, failures in after.items() if before.get(key) != failures]
    if touched:
        client.delete(*touched, *(key + b":lock" for key in touched))
    client.close()


def error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx is a JSON `google.rpc.Status`: an integer `code` and a string `message`."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict), f"{response.status_code} answered {body!r}"
    code, message = body.get("code"), body.get("message")
    assert isinstance(code, int), f"{response.status_code} has no integer code: {body!r}"
    assert not isinstance(code, bool), f"{response.status_code} has no integer code: {body!r}"
    assert isinstance(message, str), f"{response.status_code} has no string message: {body!r}"
    return True


CHECKS = [not_a_server_error, error_shape, content_type_conformance, response_schema_conformance]


@pytest.mark.usefixtures("forget_fuzzed_login_failures")
@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_fuzz(operation_id: str, fuzz_schema: OpenApiSchema, account: Account) -> None:
    operation = fuzz_schema.find_operation_by_id(operation_id)
    strategies = [operation.as_strategy()]
    names = {parameter.name for parameter in operation.path_parameters}
    real = account.path_parameters(names)
    if real is not None:
        strategies.append(operation.as_strategy(path_parameters=real))

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=[
            hypothesis.HealthCheck.too_slow,
            hypothesis.HealthCheck.filter_too_much,
            hypothesis.HealthCheck.data_too_large,
            hypothesis.HealthCheck.large_base_example,
        ],
        print_blob=False,
    )
    @hypothesis.given(case=st.one_of(strategies))
    def fuzz(case: Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
