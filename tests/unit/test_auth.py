"""The guard: policies read from the contracts, tokens verified, roles and scopes enforced."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qrmesh.auth.v1 import policy_pb2
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2
from qrmesh.platform.auth import (
    ApiKeyInfo,
    Guard,
    PolicyError,
    PrincipalKind,
    Role,
    current_principal,
    organization_of,
    policies_for,
    service_token,
    verify_service_token,
)
from qrmesh.platform.errors import InvalidArgument, PermissionDenied, Unauthenticated

SERVICES = [
    "qrmesh.identity.v1.AuthService",
    "qrmesh.identity.v1.OrganizationService",
    "qrmesh.identity.v1.ApiKeyService",
    "qrmesh.identity.v1.AccessService",
    "qrmesh.qr.v1.QrCodeService",
]
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
ORG = "organizations/acme"


class Backend:
    """Keys, API keys and memberships held in memory for the guard under test."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"k1": KEY.public_key()}
        self.api_keys: dict[str, ApiKeyInfo] = {}
        self.roles: dict[tuple[str, str], Role] = {}
        self.refreshes = 0
        self.published_since: dict[str, Any] = {}
        """Keys the identity service published after this backend last fetched."""

    async def public_keys(self, *, refresh: bool = False) -> Mapping[str, Any]:
        if refresh:
            self.refreshes += 1
            self.keys.update(self.published_since)
        return self.keys

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        return self.api_keys.get(secret)

    async def role(self, organization: str, user: str) -> Role | None:
        return self.roles.get((organization, user))


class Context:
    """The little of a ServicerContext the guard reads: the call's metadata."""

    def __init__(self, **metadata: str) -> None:
        self.metadata = tuple((k.replace("_", "-"), v) for k, v in metadata.items())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def token(
    *, key: Ed25519PrivateKey = KEY, kid: str = "k1", sub: str = "users/u1", exp: int = 900, **claims: Any
) -> str:
    now = int(time.time())
    body = {"iss": "qrmesh", "aud": "qrmesh", "sub": sub, "iat": now, "exp": now + exp, "jti": "j", "sid": "s"}
    return jwt.encode({**body, **claims}, key, algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def guard() -> Guard:
    return Guard(policies_for(SERVICES), Backend(), service_secret="s3cret")


def backend(guard: Guard) -> Backend:
    assert isinstance(guard.backend, Backend)
    return guard.backend


LIST_MEMBERS = "/qrmesh.identity.v1.OrganizationService/ListMembers"
UPDATE_MEMBER = "/qrmesh.identity.v1.OrganizationService/UpdateMember"
CREATE_ORG = "/qrmesh.identity.v1.OrganizationService/CreateOrganization"
GET_ROLE = "/qrmesh.identity.v1.AccessService/GetRole"


def list_members(org: str = ORG) -> identity_service_pb2.ListMembersRequest:
    return identity_service_pb2.ListMembersRequest(parent=org)


def test_every_rpc_of_our_services_declares_a_policy() -> None:
    policies = policies_for(SERVICES)
    assert policies["/qrmesh.qr.v1.QrCodeService/RenderQrCode"].public
    assert policies[LIST_MEMBERS].organization.field == "parent"


def test_a_service_without_policies_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"grpc\.health\.v1\.Health\.Check declares no"):
        policies_for(["grpc.health.v1.Health"])


def test_organization_comes_from_the_named_field() -> None:
    request = identity_service_pb2.UpdateMemberRequest(member=identity_pb2.Member(name="organizations/o1/members/u9"))
    assert organization_of(request, "member.name") == "organizations/o1"
    with pytest.raises(InvalidArgument) as caught:
        organization_of(identity_service_pb2.ListMembersRequest(parent="users/u1"), "parent")
    assert caught.value.violations[0].field == "parent"


async def test_member_with_enough_role_gets_a_principal(guard: Guard) -> None:
    backend(guard).roles[(ORG, "users/u1")] = Role.VIEWER
    await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {token()}"))  # type: ignore[arg-type]
    principal = current_principal()
    assert (principal.kind, principal.user, principal.organization, principal.role) == (
        PrincipalKind.USER,
        "users/u1",
        ORG,
        Role.VIEWER,
    )


async def test_too_low_a_role_is_denied_with_the_role_needed(guard: Guard) -> None:
    backend(guard).roles[(ORG, "users/u1")] = Role.EDITOR
    request = identity_service_pb2.UpdateMemberRequest(member=identity_pb2.Member(name=f"{ORG}/members/u2"))
    with pytest.raises(PermissionDenied) as caught:
        await guard.check(UPDATE_MEMBER, request, Context(authorization=f"Bearer {token()}"))  # type: ignore[arg-type]
    assert caught.value.reason == "ROLE_REQUIRED"
    assert caught.value.metadata["required_role"] == "ADMIN"


async def test_non_member_is_denied_the_same_whether_or_not_the_org_exists(guard: Guard) -> None:
    messages = set()
    for org in (ORG, "organizations/does-not-exist"):
        with pytest.raises(PermissionDenied) as caught:
            await guard.check(LIST_MEMBERS, list_members(org), Context(authorization=f"Bearer {token()}"))  # type: ignore[arg-type]
        messages.add((caught.value.reason, caught.value.message.replace(org, "X")))
    assert messages == {("PERMISSION_DENIED", "you do not have access to X")}


def forged_tokens() -> dict[str, str]:
    good = token()
    head, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "users/admin"
    tampered_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"k1"}').decode().rstrip("=")
    return {
        "tampered": f"{head}.{tampered_body}.{signature}",
        "alg-none": f"{none_header}.{body}.",
        "wrong-kid": token(kid="k2"),
        "other-key": token(key=OTHER_KEY),
        "expired": token(exp=-120),
        "wrong-audience": token(aud="someone-else"),
        "hs256": jwt.encode({"sub": "users/u1"}, "k1" * 16, algorithm="HS256", headers={"kid": "k1"}),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize("kind", sorted(forged_tokens()))
async def test_bad_tokens_are_unauthenticated(guard: Guard, kind: str) -> None:
    backend(guard).roles[(ORG, "users/u1")] = Role.OWNER
    backend(guard).roles[(ORG, "users/admin")] = Role.OWNER
    context = Context(authorization=f"Bearer {forged_tokens()[kind]}")
    with pytest.raises(Unauthenticated) as caught:
        await guard.check(LIST_MEMBERS, list_members(), context)  # type: ignore[arg-type]
    expected = "TOKEN_EXPIRED" if kind == "expired" else "INVALID_TOKEN"
    assert caught.value.reason == expected


async def test_no_credentials_is_unauthenticated(guard: Guard) -> None:
    with pytest.raises(Unauthenticated):
        await guard.check(LIST_MEMBERS, list_members(), Context())  # type: ignore[arg-type]


async def test_api_keys_need_their_org_and_scope(guard: Guard) -> None:
    info = ApiKeyInfo(name=f"{ORG}/apiKeys/k", organization=ORG, scopes=frozenset({"members:read"}), expires_at=None)
    backend(guard).api_keys["qrm_k_secret"] = info
    await guard.check(LIST_MEMBERS, list_members(), Context(x_api_key="qrm_k_secret"))  # type: ignore[arg-type]
    assert current_principal().kind is PrincipalKind.API_KEY
    # The same key as a bearer token works too.
    await guard.check(LIST_MEMBERS, list_members(), Context(authorization="Bearer qrm_k_secret"))  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied) as caught:
        await guard.check(LIST_MEMBERS, list_members("organizations/other"), Context(x_api_key="qrm_k_secret"))  # type: ignore[arg-type]
    assert caught.value.reason == "PERMISSION_DENIED"
    request = identity_service_pb2.UpdateMemberRequest(member=identity_pb2.Member(name=f"{ORG}/members/u2"))
    with pytest.raises(PermissionDenied) as caught:
        await guard.check(UPDATE_MEMBER, request, Context(x_api_key="qrm_k_secret"))  # type: ignore[arg-type]
    assert caught.value.reason == "USER_REQUIRED"


async def test_expired_or_unknown_api_keys_are_unauthenticated(guard: Guard) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    backend(guard).api_keys["qrm_old"] = ApiKeyInfo("n", ORG, frozenset({"members:read"}), past)
    for secret in ("qrm_old", "qrm_unknown"):
        with pytest.raises(Unauthenticated) as caught:
            await guard.check(LIST_MEMBERS, list_members(), Context(x_api_key=secret))  # type: ignore[arg-type]
        assert caught.value.reason == "INVALID_API_KEY"


async def test_authenticated_rpcs_refuse_api_keys(guard: Guard) -> None:
    backend(guard).api_keys["qrm_k"] = ApiKeyInfo("n", ORG, frozenset({"qr:read"}), None)
    request = identity_service_pb2.CreateOrganizationRequest(organization=identity_pb2.Organization(display_name="x"))
    with pytest.raises(PermissionDenied):
        await guard.check(CREATE_ORG, request, Context(x_api_key="qrm_k"))  # type: ignore[arg-type]
    await guard.check(CREATE_ORG, request, Context(authorization=f"Bearer {token()}"))  # type: ignore[arg-type]
    assert current_principal().user == "users/u1"


async def test_internal_rpcs_need_a_service_token(guard: Guard) -> None:
    request = identity_service_pb2.GetRoleRequest(organization=ORG, user="users/u1")
    with pytest.raises(PermissionDenied):
        await guard.check(GET_ROLE, request, Context(authorization=f"Bearer {token()}"))  # type: ignore[arg-type]
    forged = service_token("wrong-secret", "qr")
    with pytest.raises(PermissionDenied):
        await guard.check(GET_ROLE, request, Context(x_qrmesh_service_token=forged))  # type: ignore[arg-type]
    await guard.check(GET_ROLE, request, Context(x_qrmesh_service_token=service_token("s3cret", "qr")))  # type: ignore[arg-type]
    assert current_principal().service == "qr"


def test_service_tokens_expire_and_bind_the_name() -> None:
    now = time.time()
    issued = service_token("k", "qr", now=now)
    assert verify_service_token("k", issued, now=now + 10) == "qr"
    assert verify_service_token("k", issued, now=now + 301) is None
    assert verify_service_token("k", issued.replace("qr.", "analytics.", 1), now=now) is None
    assert verify_service_token("", issued, now=now) is None


def test_role_ranks_follow_the_contract() -> None:
    assert Role.from_proto(policy_pb2.OWNER) is Role.OWNER
    assert Role.from_proto(policy_pb2.ROLE_UNSPECIFIED) is None
    assert Role.OWNER.rank > Role.ADMIN.rank > Role.EDITOR.rank > Role.VIEWER.rank
    assert Role.EDITOR.to_proto() == policy_pb2.EDITOR


async def test_an_unknown_kid_asks_for_fresh_keys(guard: Guard) -> None:
    backend(guard).roles[(ORG, "users/u1")] = Role.VIEWER
    with pytest.raises(Unauthenticated):
        await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {token(kid='k9')}"))  # type: ignore[arg-type]
    assert backend(guard).refreshes == 1
    # A key published since the last fetch (a rotation) is found on the refresh.
    backend(guard).published_since["k9"] = OTHER_KEY.public_key()
    rotated = token(kid="k9", key=OTHER_KEY)
    await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {rotated}"))  # type: ignore[arg-type]
    assert backend(guard).refreshes == 2
    # Known keys need no refresh.
    await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {rotated}"))  # type: ignore[arg-type]
    assert backend(guard).refreshes == 2


async def test_a_verified_token_is_remembered_until_it_expires_or_its_key_goes(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend(guard).roles[(ORG, "users/u1")] = Role.VIEWER
    good = token(exp=60)
    context = Context(authorization=f"Bearer {good}")
    verified = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal verified
        verified += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    for _ in range(3):
        await guard.check(LIST_MEMBERS, list_members(), context)  # type: ignore[arg-type]
    assert verified == 1  # the signature is checked once per token
    assert current_principal().user == "users/u1"

    # Past its lifetime (and the leeway) by the guard's clock, the token is verified again
    # (the library's own clock decides then whether it has expired).
    later = time.time() + 60 + 31
    monkeypatch.setattr(time, "time", lambda: later)
    await guard.check(LIST_MEMBERS, list_members(), context)  # type: ignore[arg-type]
    assert verified == 2
    monkeypatch.undo()

    # A withdrawn signing key ends what was remembered under it.
    fresh = token()
    await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {fresh}"))  # type: ignore[arg-type]
    del backend(guard).keys["k1"]
    with pytest.raises(Unauthenticated):
        await guard.check(LIST_MEMBERS, list_members(), Context(authorization=f"Bearer {fresh}"))  # type: ignore[arg-type]
