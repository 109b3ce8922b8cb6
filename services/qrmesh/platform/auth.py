"""Who is calling, and may they: the policy each RPC declares in its proto, enforced.

Every RPC carries a `(qrmesh.auth.v1.policy)` option. `policies_for` reads them
from the descriptors when a server is built and refuses a service with an RPC
that declares none. `Guard` then, for every call:

1. authenticates the caller: an access token (`authorization: Bearer <JWT>`,
   EdDSA, verified locally with the identity service's public keys), an API key
   (`x-api-key: qrm_...` or `authorization: Bearer qrm_...`), or another
   service (`x-qrmesh-service-token`, an HMAC over the service name and time);
2. authorizes it: public, any user, a member of the organization named in the
   request with at least a role (or an API key of that organization with a
   scope), or services only. A caller without access to the organization gets
   PERMISSION_DENIED whether or not the named resource exists;
3. puts a typed `Principal` in the call's context (`current_principal()`).

Keys, API keys and roles come from an `AccessBackend` that the service's spec
provides: the identity service reads its own database; every other service
uses identity's client, which caches API keys and roles briefly in Redis under
the keys defined here (identity forgets entries when they change).
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
import jwt
import redis.asyncio as redis
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from qrmesh.auth.v1 import policy_pb2
from qrmesh.platform.errors import InvalidArgument, PermissionDenied, Unauthenticated

ISSUER = "qrmesh"
AUDIENCE = "qrmesh"
ALGORITHM = "EdDSA"
API_KEY_PREFIX = "qrm_"
SERVICE_TOKEN_HEADER = "x-qrmesh-service-token"  # noqa: S105 - a header name, not a secret
SERVICE_TOKEN_TTL = 300
_ORGANIZATION = re.compile(r"^(organizations/[A-Za-z0-9_-]+)(/|$)")


class Role(enum.Enum):
    """A member's role; `rank` orders them (OWNER highest)."""

    OWNER = 4
    ADMIN = 3
    EDITOR = 2
    VIEWER = 1

    @property
    def rank(self) -> int:
        return self.value

    @classmethod
    def from_proto(cls, value: int) -> Role | None:
        """The role for a `qrmesh.auth.v1.Role` value; None for ROLE_UNSPECIFIED."""
        if value == policy_pb2.ROLE_UNSPECIFIED:
            return None
        return cls[policy_pb2.Role.Name(policy_pb2.Role.ValueType(value))]

    def to_proto(self) -> int:
        """The `qrmesh.auth.v1.Role` value."""
        return policy_pb2.Role.Value(self.name)


class PrincipalKind(enum.Enum):
    """What kind of caller a principal is."""

    USER = "user"
    API_KEY = "api_key"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of the current RPC."""

    kind: PrincipalKind
    user: str | None = None
    """`users/{user}` for a user."""
    organization: str | None = None
    """`organizations/{organization}` the call is scoped to (or the API key's)."""
    role: Role | None = None
    """The user's role in `organization`, for organization-scoped calls."""
    api_key: str | None = None
    """`organizations/{organization}/apiKeys/{key}` for an API key."""
    scopes: frozenset[str] = frozenset()
    """An API key's scopes."""
    service: str | None = None
    """The calling service's name, for service-to-service calls."""
    session: str | None = None
    """The session (refresh-token family) an access token belongs to."""


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What an API key secret resolves to."""

    name: str
    organization: str
    scopes: frozenset[str]
    expires_at: datetime | None


class AccessBackend(Protocol):
    """Where the guard learns public keys, API keys and roles."""

    async def public_keys(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """kid → public key of every key whose tokens may still be valid; `refresh` after an
        unknown kid asks for a fresh set (backends rate-limit that)."""
        ...

    async def authenticate_api_key(self, secret: str) -> ApiKeyInfo | None:
        """The key a secret belongs to, if it is active."""
        ...

    async def role(self, organization: str, user: str) -> Role | None:
        """The user's role in the organization, None if not a member."""
        ...


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("qrmesh_principal", default=None)


def current_principal() -> Principal:
    """The caller of the current RPC; UNAUTHENTICATED if the RPC is public and nobody signed in."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("sign in or send an API key to do this")
    return principal


def optional_principal() -> Principal | None:
    """The caller of the current RPC, if any."""
    return _principal.get()


def secret_digest(secret: str) -> str:
    """The sha256 hex digest under which an API key secret is stored and cached."""
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_cache_key(digest: str) -> str:
    """The Redis key caching the look-up of the API key with this secret digest."""
    return f"qrmesh:auth:api-key:{digest}"


def role_cache_key(organization: str, user: str) -> str:
    """The Redis key caching a user's role in an organization."""
    return f"qrmesh:auth:role:{organization}:{user}"


# How long other services may cache an API key look-up or a role.
CACHE_TTL = 60
# Written over a cache entry when identity changes what it holds. Readers ask identity again and
# cache only with SET NX, so a look-up that raced the change cannot bring the old value back.
TOMBSTONE = "~forgotten~"


def cached_value(raw: bytes | str | None) -> str | None:
    """A cache entry's text, or None when absent or forgotten."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return None if text == TOMBSTONE else text


async def forget_api_key(client: redis.Redis, digest: str) -> None:
    """Forget a cached API key look-up (after a revoke or rotation)."""
    await client.set(api_key_cache_key(digest), TOMBSTONE, ex=CACHE_TTL)


async def forget_role(client: redis.Redis, organization: str, user: str) -> None:
    """Forget a cached role (after a membership changes)."""
    await client.set(role_cache_key(organization, user), TOMBSTONE, ex=CACHE_TTL)


# Service identity -------------------------------------------------------------------------------


def service_token(secret: str, service: str, *, now: float | None = None) -> str:
    """A token proving `service` to other services: `name.timestamp.hmac`."""
    stamp = str(int(now if now is not None else time.time()))
    signature = hmac.new(secret.encode(), f"{service}.{stamp}".encode(), hashlib.sha256).hexdigest()
    return f"{service}.{stamp}.{signature}"


def verify_service_token(secret: str, token: str, *, now: float | None = None) -> str | None:
    """The service a token proves, or None if it is forged or stale."""
    if not secret:
        return None
    try:
        service, stamp, signature = token.rsplit(".", 2)
        issued = int(stamp)
    except ValueError:
        return None
    expected = hmac.new(secret.encode(), f"{service}.{stamp}".encode(), hashlib.sha256).hexdigest()
    current = now if now is not None else time.time()
    if not hmac.compare_digest(expected, signature) or abs(current - issued) > SERVICE_TOKEN_TTL:
        return None
    return service


# Policies from the descriptors ----------------------------------------------------------------------


class PolicyError(RuntimeError):
    """A service has an RPC without a declared policy."""


def policies_for(services: Iterable[str]) -> dict[str, policy_pb2.Policy]:
    """`/package.Service/Method` → its declared policy, for every method of `services`."""
    pool = descriptor_pool.Default()
    out: dict[str, policy_pb2.Policy] = {}
    for name in services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            raise PolicyError(f"{name} has no contract in the descriptor pool, so no declared policies") from None
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(policy_pb2.policy):
                raise PolicyError(f"{name}.{method.name} declares no (qrmesh.auth.v1.policy); every RPC must")
            policy = options.Extensions[policy_pb2.policy]
            if policy.WhichOneof("access") is None:
                raise PolicyError(f"{name}.{method.name} has an empty policy")
            if policy.HasField("organization") and not policy.organization.field:
                raise PolicyError(f"{name}.{method.name}: an organization policy must name its request field")
            out[f"/{name}/{method.name}"] = policy
    return out


def organization_of(request: Message, field: str) -> str:
    """The `organizations/{id}` that the resource name in `field` (dotted proto path) starts with."""
    value: Any = request
    for part in field.split("."):
        value = getattr(value, part)
    json_path = ".".join(_json_name(part) for part in field.split("."))
    match = _ORGANIZATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument.field(json_path, "must be a resource name starting with organizations/{organization}")
    return match.group(1)


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


_LEEWAY = 30
"""Seconds of clock skew allowed around a token's times."""
_VERIFIED_TOKENS = 10_000
"""Verified access tokens remembered per process."""


class Guard:
    """Authenticates and authorizes each call according to its method's policy."""

    def __init__(
        self, policies: Mapping[str, policy_pb2.Policy], backend: AccessBackend, *, service_secret: str
    ) -> None:
        self.policies = dict(policies)
        self.backend = backend
        self.service_secret = service_secret
        self._verified: dict[str, tuple[Principal, str, float]] = {}
        """Access tokens already verified: token -> (principal, signing key id, accepted until). A client
        sends the same token with every call until it refreshes; the signature is checked once."""

    def guards(self, method: str) -> bool:
        """Whether `method` is one of ours (health and reflection are not)."""
        return method in self.policies

    async def check(self, method: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Raise unless the caller may call `method` with `request`; set the principal if it may."""
        policy = self.policies[method]
        access = policy.WhichOneof("access")
        metadata = _metadata(context)
        if access == "public":
            _principal.set(await self._optional_user(metadata))
            return
        if access == "internal":
            service = verify_service_token(self.service_secret, metadata.get(SERVICE_TOKEN_HEADER, ""))
            if service is None:
                raise PermissionDenied("only qrmesh services may call this", reason="SERVICE_ONLY")
            _principal.set(Principal(kind=PrincipalKind.SERVICE, service=service))
            return
        caller = await self._authenticate(metadata)
        if access == "authenticated":
            if caller.kind is not PrincipalKind.USER:
                raise PermissionDenied("this needs a signed-in user; API keys cannot do it", reason="USER_REQUIRED")
            _principal.set(caller)
            return
        rule = policy.organization
        organization = organization_of(request, rule.field)
        _principal.set(await self._authorize(caller, organization, rule))

    async def _optional_user(self, metadata: Mapping[str, str]) -> Principal | None:
        token = _bearer(metadata)
        if token is None or token.startswith(API_KEY_PREFIX):
            return None
        try:
            return await self._verify_jwt(token)
        except Unauthenticated:
            return None

    async def _authenticate(self, metadata: Mapping[str, str]) -> Principal:
        api_key = metadata.get("x-api-key")
        token = _bearer(metadata)
        if api_key is None and token is not None and token.startswith(API_KEY_PREFIX):
            api_key = token
        if api_key is not None:
            info = await self.backend.authenticate_api_key(api_key)
            if info is None or (info.expires_at is not None and info.expires_at <= datetime.now(UTC)):
                raise Unauthenticated(
                    "the API key is not valid (unknown, revoked or expired)", reason="INVALID_API_KEY"
                )
            return Principal(
                kind=PrincipalKind.API_KEY, api_key=info.name, organization=info.organization, scopes=info.scopes
            )
        if token is None:
            raise Unauthenticated(
                "sign in (Authorization: Bearer <access token>) or send an API key (x-api-key)",
                reason="UNAUTHENTICATED",
            )
        return await self._verify_jwt(token)

    async def _verify_jwt(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, cached_kid, until = cached
            # Still within its lifetime, and its key not withdrawn since.
            if time.time() < until and cached_kid in await self.backend.public_keys():
                return principal
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is malformed", reason="INVALID_TOKEN") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("the access token is not signed the way qrmesh signs", reason="INVALID_TOKEN")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthenticated("the access token names no signing key", reason="INVALID_TOKEN")
        keys = await self.backend.public_keys()
        if kid not in keys:  # perhaps a key newer than the cached set
            keys = await self.backend.public_keys(refresh=True)
        if kid not in keys:
            raise Unauthenticated("the access token was signed by an unknown key", reason="INVALID_TOKEN")
        try:
            claims = jwt.decode(
                token,
                keys[kid],
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired; refresh it", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is not valid", reason="INVALID_TOKEN") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.startswith("users/"):
            raise Unauthenticated("the access token names no user", reason="INVALID_TOKEN")
        session = claims.get("sid")
        principal = Principal(
            kind=PrincipalKind.USER, user=subject, session=session if isinstance(session, str) else None
        )
        if len(self._verified) >= _VERIFIED_TOKENS:
            self._verified.pop(next(iter(self._verified)))  # the oldest
        self._verified[token] = (principal, kid, float(claims["exp"]) + _LEEWAY)
        return principal

    async def _authorize(self, caller: Principal, organization: str, rule: policy_pb2.OrganizationAccess) -> Principal:
        denied = PermissionDenied(
            f"you do not have access to {organization}", reason="PERMISSION_DENIED", metadata={"resource": organization}
        )
        if caller.kind is PrincipalKind.API_KEY:
            if caller.organization != organization:
                raise denied
            if not rule.scope:
                raise PermissionDenied("API keys cannot do this; sign in as a member", reason="USER_REQUIRED")
            if rule.scope not in caller.scopes:
                raise PermissionDenied(
                    f"the API key lacks the scope {rule.scope}", reason="SCOPE_REQUIRED", metadata={"scope": rule.scope}
                )
            return caller
        if caller.user is None:
            raise denied
        role = await self.backend.role(organization, caller.user)
        if role is None:
            raise denied
        needed = Role.from_proto(rule.role) or Role.VIEWER
        if role.rank < needed.rank:
            raise PermissionDenied(
                f"this needs the {needed.name} role in {organization}; you are {role.name}",
                reason="ROLE_REQUIRED",
                metadata={"required_role": needed.name, "role": role.name},
            )
        return Principal(
            kind=PrincipalKind.USER, user=caller.user, organization=organization, role=role, session=caller.session
        )


def _bearer(metadata: Mapping[str, str]) -> str | None:
    value = metadata.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def encode_api_key(info: ApiKeyInfo) -> str:
    """An API key look-up as cached in Redis."""
    expires = info.expires_at.isoformat() if info.expires_at else ""
    return "\n".join([info.name, info.organization, " ".join(sorted(info.scopes)), expires])


def decode_api_key(raw: bytes | str) -> ApiKeyInfo:
    """A cached API key look-up."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    name, organization, scopes, expires = text.split("\n")
    return ApiKeyInfo(
        name=name,
        organization=organization,
        scopes=frozenset(scopes.split()),
        expires_at=datetime.fromisoformat(expires) if expires else None,
    )
