"""The identity service's operations: each runs domain rules and store calls in one transaction.

The servicer translates protos to these calls and back; nothing here knows gRPC.
Caches elsewhere (API key look-ups, roles) are told about changes through the
`forget_api_key` and `forget_role` hooks, after the change is committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar
from urllib.parse import quote

import redis.asyncio as redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qrmesh.billing.client import Plans, UnconfiguredPlans, require_feature, require_room
from qrmesh.billing.domain.entitlements import API_ACCESS, TEAM_MEMBERS
from qrmesh.identity import store
from qrmesh.identity.config import IdentityConfig
from qrmesh.identity.domain import api_keys as key_rules
from qrmesh.identity.domain import passwords, signing, tokens
from qrmesh.identity.domain.emails import email_key, normalize_email, same_email
from qrmesh.identity.domain.pagination import Cursor, decode_page_token, encode_page_token, page_size
from qrmesh.identity.domain.roles import MemberRole, check_invitation_role, check_removal, check_role_change
from qrmesh.identity.login_throttle import LoginThrottle, subject_key
from qrmesh.identity.outbox_relay import mail_origin
from qrmesh.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

ForgetApiKey = Callable[[str], Awaitable[None]]
"""Called with the sha256 (hex) of a key's secret once the key is revoked."""
ForgetRole = Callable[[str, str], Awaitable[None]]
"""Called with (`organizations/{id}`, `users/{id}`) once a membership changed or went away."""

REQUEST_ID_TTL = timedelta(days=1)
T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


async def _nothing(*_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SessionTokens:
    """What a login or refresh answers."""

    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    refresh_token_expires_at: datetime
    user: store.UserRecord


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the token of the next ("" on the last)."""

    items: list[T]
    next_page_token: str


class KeyRing:
    """The signing keys: the current one (rotated when too old) and the public keys verifiers need."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], config: IdentityConfig) -> None:
        self._sessions = sessions
        self._config = config
        self._records: list[store.SigningKeyRecord] = []
        self._current: signing.SigningKey | None = None
        self._loaded_at = -1e18
        self._lock = asyncio.Lock()

    async def _load(self, now: datetime) -> None:
        config = self._config
        async with self._sessions.begin() as session:
            records = await store.list_signing_keys(session=session)
            if self._needs_new_key(records, now):
                await store.advisory_lock("signing-keys", session=session)
                records = await store.list_signing_keys(session=session)
                if self._needs_new_key(records, now):
                    key = signing.generate_key(now)
                    await store.insert_signing_key(
                        session=session,
                        kid=key.kid,
                        private_key=signing.private_key_to_pem(key.private_key, config.key_passphrase),
                        public_key=signing.public_key_raw(key.public_key),
                        now=now,
                    )
                    unpublished = now - signing.publication_window(config.access_token_ttl)
                    await store.delete_signing_keys_retired_before(unpublished, session=session)
                    records = await store.list_signing_keys(session=session)
        active = next(record for record in records if record.retired_at is None)
        if self._current is None or self._current.kid != active.kid:
            private = signing.private_key_from_pem(active.private_key, config.key_passphrase)
            self._current = signing.SigningKey(kid=active.kid, private_key=private, created_at=active.created_at)
        self._records = records
        self._loaded_at = time.monotonic()

    def _needs_new_key(self, records: list[store.SigningKeyRecord], now: datetime) -> bool:
        active = next((record for record in records if record.retired_at is None), None)
        return signing.needs_rotation(None if active is None else active.created_at, now, self._config.key_rotation)

    def _stale(self, now: datetime) -> bool:
        if self._current is None or signing.needs_rotation(self._current.created_at, now, self._config.key_rotation):
            return True
        return time.monotonic() - self._loaded_at >= signing.KEY_CACHE_TIME.total_seconds()

    async def _fresh(self, now: datetime) -> None:
        if not self._stale(now):
            return
        async with self._lock:
            if self._stale(now):
                await self._load(now)

    async def current(self, now: datetime) -> signing.SigningKey:
        """The key to sign with now (made on first use, replaced when older than the rotation period)."""
        await self._fresh(now)
        assert self._current is not None  # noqa: S101 - _fresh always loads one
        return self._current

    async def published(self, now: datetime) -> list[tuple[str, Ed25519PublicKey]]:
        """(kid, public key) of every key whose tokens may still be valid, newest first."""
        await self._fresh(now)
        ttl = self._config.access_token_ttl
        return [
            (record.kid, signing.public_key_from_raw(record.public_key))
            for record in self._records
            if signing.is_published(record.retired_at, now, ttl)
        ]


class Identity:
    """Every identity operation, over one database engine and one Redis client."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        config: IdentityConfig,
        *,
        forget_api_key: ForgetApiKey = _nothing,
        forget_role: ForgetRole = _nothing,
        throttle: LoginThrottle | None = None,
        plans: Plans | None = None,
    ) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.mail_queued = asyncio.Event()
        """Set after a commit that queued mail in the outbox; the outbox relay waits on it."""
        self.plans: Plans = plans or UnconfiguredPlans("QRMESH_IDENTITY_BILLING_ADDR")
        """What each organization's plan allows (team members, API access)."""
        self.config = config
        self.keys = KeyRing(self.sessions, config)
        self.throttle = throttle or LoginThrottle(client)
        self._forget_api_key = forget_api_key
        self._forget_role = forget_role

    # ------------------------------------------------------------ accounts

    async def _queue_email_token(
        self, session: AsyncSession, user: store.UserRecord, purpose: str, now: datetime
    ) -> None:
        token = tokens.new_token()
        if purpose == "verify_email":
            expires, path, kind = now + self.config.email_token_ttl, "verify-email", "verify_email"
            subject = "Confirm your email address for qrmesh"
            intro = "Please confirm that this address is yours by opening this link"
        else:
            expires, path, kind = now + self.config.reset_token_ttl, "reset-password", "reset_password"
            subject = "Reset your qrmesh password"
            intro = "Someone asked to reset the password of your qrmesh account. If it was you, open this link"
        await store.insert_email_token(
            session=session,
            token_hash=tokens.hash_token(token),
            user_id=user.id,
            purpose=purpose,
            email=user.email,
            now=now,
            expires_at=expires,
        )
        link = f"{self.config.public_base_url}/{path}?token={quote(token)}"
        body = f"{intro} before {expires:%Y-%m-%d %H:%M} UTC:\n\n{link}\n\nIf it was not you, ignore this email.\n"
        variables = {"link": link, "expires_at": f"{expires:%Y-%m-%d %H:%M} UTC", "display_name": user.display_name}
        await store.enqueue_email(
            session=session,
            recipient=user.email,
            subject=subject,
            body=body,
            kind=kind,
            now=now,
            variables=variables,
            **mail_origin(),
        )

    async def sign_up(self, email: str, password: str, display_name: str) -> store.UserRecord:
        """Create an account and queue the email that verifies its address."""
        address = normalize_email(email)
        passwords.check_password(password, address, field="password")
        password_hash = await asyncio.to_thread(passwords.hash_password, password)
        now = utcnow()
        async with self.sessions.begin() as session:
            user = await store.insert_user(
                session=session,
                user_id=tokens.new_id(),
                email=address,
                display_name=display_name.strip(),
                password_hash=password_hash,
                now=now,
            )
            if user is None:
                # Sign-up tells that an address has an account: every sign-up form
                # does, and hiding it would need an email round trip for every
                # sign-up. Login and password reset never tell.
                raise AlreadyExists("an account with this email address exists already", reason="EMAIL_TAKEN")
            await self._queue_email_token(session, user, "verify_email", now)
        self.mail_queued.set()
        return user

    async def verify_email(self, token: str) -> store.UserRecord:
        """Mark an address as proven with the single-use token sent to it."""
        now = utcnow()
        async with self.sessions.begin() as session:
            found = await store.consume_email_token(tokens.hash_token(token), "verify_email", session=session, now=now)
            user = None
            if found is not None:
                user_id, sent_to = found
                current = await store.get_user(user_id, session=session)
                if current is not None and same_email(current.email, sent_to):
                    user = await store.set_email_verified(user_id, session=session, now=now)
        if user is None:
            raise FailedPrecondition("the verification link is invalid, used or expired", reason="INVALID_TOKEN")
        return user

    async def login(self, email: str, password: str, client_address: str | None) -> SessionTokens:
        """Check the password and open a session; failures are throttled per account and per address."""
        account = subject_key("account", email_key(email))
        keys = [account] if not client_address else [account, subject_key("address", client_address)]
        # Counted before the password is checked, so concurrent guesses cannot all get past the limit.
        admission = await self.throttle.attempt(keys, time.time())
        async with self.sessions.begin() as session:
            user = await store.find_user_by_email(email_key(email), session=session)
        stored_hash = user.password_hash if user is not None else passwords.dummy_hash()
        matches = await asyncio.to_thread(passwords.verify_password, stored_hash, password)
        if user is None or not matches:
            await self.throttle.failed(admission, time.time())
            raise Unauthenticated("email or password is wrong", reason="INVALID_CREDENTIALS")
        await self.throttle.succeeded(admission)
        if passwords.needs_rehash(user.password_hash):
            new_hash = await asyncio.to_thread(passwords.hash_password, password)
            async with self.sessions.begin() as session:
                await store.set_password_hash(user.id, new_hash, session=session, now=utcnow())
        return await self._open_session(user, family_id=tokens.new_id())

    async def _open_session(self, user: store.UserRecord, *, family_id: str) -> SessionTokens:
        now = utcnow()
        refresh = tokens.new_token()
        refresh_expires = now + self.config.refresh_token_ttl
        async with self.sessions.begin() as session:
            await store.insert_refresh_token(
                session=session,
                token_hash=tokens.hash_token(refresh),
                family_id=family_id,
                user_id=user.id,
                now=now,
                expires_at=refresh_expires,
            )
        return await self._session_tokens(user, family_id, refresh, refresh_expires, now)

    async def _session_tokens(
        self, user: store.UserRecord, family_id: str, refresh: str, refresh_expires: datetime, now: datetime
    ) -> SessionTokens:
        key = await self.keys.current(now)
        access = signing.issue_access_token(
            key, user_id=user.id, session_id=family_id, now=now, ttl=self.config.access_token_ttl
        )
        return SessionTokens(
            access_token=access.token,
            access_token_expires_at=access.expires_at,
            refresh_token=refresh,
            refresh_token_expires_at=refresh_expires,
            user=user,
        )

    async def refresh(self, refresh_token: str) -> SessionTokens:
        """Spend a refresh token for a new session; a token spent twice ends its whole session."""
        now = utcnow()
        refresh = tokens.new_token()
        refresh_expires = now + self.config.refresh_token_ttl
        token_hash = tokens.hash_token(refresh_token)
        async with self.sessions.begin() as session:
            # Revocations lock the user first too: none can miss the successor inserted here.
            owner = await store.find_refresh_token(token_hash, session=session)
            if owner is not None:
                await store.lock_user(owner.user_id, session=session)
            use = await store.use_refresh_token(token_hash, session=session, now=now)
            user = None
            if use.status == "OK" and use.user_id is not None and use.family_id is not None:
                user = await store.get_user(use.user_id, session=session)
                if user is not None:
                    await store.insert_refresh_token(
                        session=session,
                        token_hash=tokens.hash_token(refresh),
                        family_id=use.family_id,
                        user_id=user.id,
                        now=now,
                        expires_at=refresh_expires,
                    )
        # The transaction is committed: a reuse has revoked the family for good.
        if use.status == "REUSED":
            raise Unauthenticated(
                "this refresh token was used already; the session is ended, sign in again",
                reason="REFRESH_TOKEN_REUSED",
            )
        if user is None or use.family_id is None:
            raise Unauthenticated(
                "the refresh token is invalid or expired; sign in again", reason="INVALID_REFRESH_TOKEN"
            )
        return await self._session_tokens(user, use.family_id, refresh, refresh_expires, now)

    async def logout(self, refresh_token: str) -> None:
        """End the session a refresh token belongs to (silently nothing if the token is unknown)."""
        async with self.sessions.begin() as session:
            found = await store.find_refresh_token(tokens.hash_token(refresh_token), session=session)
            if found is not None:
                await store.lock_user(found.user_id, session=session)
                await store.revoke_family(found.family_id, session=session, now=utcnow())

    async def request_password_reset(self, email: str) -> None:
        """Queue a reset email if the address has an account; the same answer (and about the same time) either way."""
        now = utcnow()
        async with self.sessions.begin() as session:
            user = await store.find_user_by_email(email_key(email), session=session)
            if user is not None:
                await store.expire_email_tokens(user.id, "reset_password", session=session, now=now)
                await self._queue_email_token(session, user, "reset_password", now)
        self.mail_queued.set()

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a reset token; every session of the account ends."""
        now = utcnow()
        async with self.sessions.begin() as session:
            found = await store.consume_email_token(
                tokens.hash_token(token), "reset_password", session=session, now=now
            )
            user = None if found is None else await store.get_user(found[0], session=session)
            if user is None:
                raise FailedPrecondition("the reset link is invalid, used or expired", reason="INVALID_TOKEN")
            passwords.check_password(new_password, user.email, field="newPassword")
            new_hash = await asyncio.to_thread(passwords.hash_password, new_password)
            await store.lock_user(user.id, session=session)
            await store.set_password_hash(user.id, new_hash, session=session, now=now)
            await store.revoke_user_sessions(user.id, session=session, now=now)
            # Following the link proves the address too.
            if not user.email_verified:
                await store.set_email_verified(user.id, session=session, now=now)

    async def change_password(
        self, user_id: str, current_password: str, new_password: str, *, keep_session: str | None
    ) -> None:
        """Change a password knowing the current one; other sessions end."""
        async with self.sessions.begin() as session:
            user = await store.get_user(user_id, session=session)
        if user is None:
            raise NotFound("the user does not exist")
        # Guessing the current password with a stolen access token meets the login throttle.
        admission = await self.throttle.attempt([subject_key("account", email_key(user.email))], time.time())
        if not await asyncio.to_thread(passwords.verify_password, user.password_hash, current_password):
            await self.throttle.failed(admission, time.time())
            raise PermissionDenied("the current password is wrong", reason="INVALID_CREDENTIALS")
        await self.throttle.succeeded(admission)
        passwords.check_password(new_password, user.email, field="newPassword")
        new_hash = await asyncio.to_thread(passwords.hash_password, new_password)
        now = utcnow()
        async with self.sessions.begin() as session:
            await store.lock_user(user.id, session=session)
            await store.set_password_hash(user.id, new_hash, session=session, now=now)
            await store.revoke_user_sessions(user.id, session=session, now=now, keep_family=keep_session)

    async def get_user(self, user_id: str) -> store.UserRecord:
        """A user by id."""
        async with self.sessions.begin() as session:
            user = await store.get_user(user_id, session=session)
        if user is None:
            raise NotFound("the user does not exist")
        return user

    async def json_web_keys(self) -> list[dict[str, str]]:
        """The JWKS: every public key whose tokens may still be valid, newest first."""
        return [signing.jwk(kid, key) for kid, key in await self.keys.published(utcnow())]

    async def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """{kid: public key} of every key whose tokens may still be valid."""
        return dict(await self.keys.published(utcnow()))

    # ------------------------------------------------------------ organizations

    async def create_organization(self, user_id: str, display_name: str, request_id: str) -> store.OrganizationRecord:
        """Create an organization owned by the caller; a repeated request id answers the first result."""
        name = display_name.strip()
        if not name:
            raise InvalidArgument.field("organization.displayName", "must not be empty")
        now = utcnow()
        async with self.sessions.begin() as session:
            if request_id:
                await store.advisory_lock(f"request:{user_id}:{request_id}", session=session)
                earlier = await store.find_request(user_id, request_id, session=session, since=now - REQUEST_ID_TTL)
                if earlier is not None:
                    organization = await store.get_organization(earlier, session=session)
                    if organization is not None:
                        role = await store.get_role(earlier, user_id, session=session)
                        return store.OrganizationRecord(
                            id=organization.id,
                            display_name=organization.display_name,
                            created_at=organization.created_at,
                            updated_at=organization.updated_at,
                            role=role,
                        )
            await store.advisory_lock(f"owned-organizations:{user_id}", session=session)
            owned = await store.count_owned_organizations(user_id, session=session)
            limit = self.config.max_owned_organizations
            if owned >= limit:
                raise ResourceExhausted(
                    f"you already own {owned} organizations, the most one person may own ({limit});"
                    " delete one or ask to be invited to an existing one",
                    reason="ORGANIZATION_LIMIT",
                    metadata={"limit": str(limit), "usage": str(owned)},
                )
            organization = await store.insert_organization(
                session=session, organization_id=tokens.new_id(), display_name=name, owner_id=user_id, now=now
            )
            if request_id:
                await store.remember_request(
                    session=session,
                    user_id=user_id,
                    request_id=request_id,
                    organization_id=organization.id,
                    now=now,
                    stale=now - REQUEST_ID_TTL,
                )
        return organization

    async def list_organizations(self, user_id: str, size: int, token: str) -> Page[store.OrganizationRecord]:
        """The caller's organizations, oldest first."""
        scope = f"organizations:{user_id}"
        limit = page_size(size)
        async with self.sessions.begin() as session:
            items = await store.list_organizations(
                user_id, session=session, after=decode_page_token(token, scope), limit=limit + 1
            )
        return _page(items, limit, scope, lambda item: Cursor(item.created_at, item.id))

    async def get_organization(self, organization_id: str, role: MemberRole | None) -> store.OrganizationRecord:
        """An organization, with the caller's role."""
        async with self.sessions.begin() as session:
            organization = await store.get_organization(organization_id, session=session)
        if organization is None:
            raise NotFound("the organization does not exist")
        return _with_role(organization, role)

    async def update_organization(
        self, organization_id: str, paths: list[str], display_name: str, role: MemberRole | None
    ) -> store.OrganizationRecord:
        """Change the fields the mask names (only `display_name`)."""
        unknown = [path for path in paths if path not in {"display_name", "displayName"}]
        if unknown:
            raise InvalidArgument.field("updateMask", f"cannot update {unknown[0]!r}; only display_name can change")
        async with self.sessions.begin() as session:
            if not paths:
                organization = await store.get_organization(organization_id, session=session)
            else:
                name = display_name.strip()
                if not name:
                    raise InvalidArgument.field("organization.displayName", "must not be empty")
                organization = await store.update_organization(
                    organization_id, session=session, display_name=name, now=utcnow()
                )
        if organization is None:
            raise NotFound("the organization does not exist")
        return _with_role(organization, role)

    # ------------------------------------------------------------ members

    async def list_members(self, organization_id: str, size: int, token: str) -> Page[store.MemberRecord]:
        """An organization's members, oldest first."""
        scope = f"members:{organization_id}"
        limit = page_size(size)
        async with self.sessions.begin() as session:
            items = await store.list_members(
                organization_id, session=session, after=decode_page_token(token, scope), limit=limit + 1
            )
        return _page(items, limit, scope, lambda item: Cursor(item.created_at, item.user_id))

    async def update_member(
        self, organization_id: str, user_id: str, new_role: MemberRole, *, actor: MemberRole
    ) -> store.MemberRecord:
        """Change a member's role under the owner rules."""
        async with self.sessions.begin() as session:
            await store.get_organization(organization_id, session=session, for_update=True)
            member = await store.get_member(organization_id, user_id, session=session)
            if member is None:
                raise NotFound("the member does not exist")
            owners = await store.count_owners(organization_id, session=session)
            check_role_change(actor=actor, current=MemberRole(member.role), new=new_role, owners=owners)
            await store.set_member_role(organization_id, user_id, new_role.value, session=session)
            updated = await store.get_member(organization_id, user_id, session=session)
        assert updated is not None  # noqa: S101 - the row is locked by our transaction
        await self._forget_role(f"organizations/{organization_id}", f"users/{user_id}")
        return updated

    async def delete_member(self, organization_id: str, user_id: str, *, actor_id: str, actor: MemberRole) -> None:
        """Remove a member or let one leave, under the owner rules."""
        async with self.sessions.begin() as session:
            await store.get_organization(organization_id, session=session, for_update=True)
            member = await store.get_member(organization_id, user_id, session=session)
            if member is None:
                raise NotFound("the member does not exist")
            owners = await store.count_owners(organization_id, session=session)
            check_removal(actor=actor, is_self=user_id == actor_id, target=MemberRole(member.role), owners=owners)
            await store.delete_member(organization_id, user_id, session=session)
        await self._forget_role(f"organizations/{organization_id}", f"users/{user_id}")

    # ------------------------------------------------------------ invitations

    async def create_invitation(
        self, organization_id: str, email: str, role: MemberRole, *, actor_id: str | None, actor: MemberRole
    ) -> tuple[store.InvitationRecord, str]:
        """Invite an address; answers the invitation and its one-time token, which the queued email carries too."""
        check_invitation_role(actor=actor, role=role)
        address = normalize_email(email)
        token = tokens.new_token()
        now = utcnow()
        async with self.sessions.begin() as session:
            # Locked, so two invitations at the plan's member limit cannot both pass.
            organization = await store.get_organization(organization_id, session=session, for_update=True)
            if organization is None:
                raise NotFound("the organization does not exist")
            seats = await store.count_members(organization_id, session=session)
            seats += await store.count_pending_invitations(organization_id, session=session, now=now)
            await require_room(self.plans, f"organizations/{organization_id}", TEAM_MEMBERS, usage=seats)
            invitation = await store.insert_invitation(
                session=session,
                invitation_id=tokens.new_id(),
                organization_id=organization_id,
                email=address,
                role=role.value,
                token_hash=tokens.hash_token(token),
                created_by=actor_id,
                now=now,
                expires_at=now + self.config.invitation_ttl,
            )
            link = f"{self.config.public_base_url}/accept-invitation?token={quote(token)}"
            body = (
                f"You are invited to join {organization.display_name} on qrmesh as {role.value.lower()}.\n\n"
                f"Accept before {invitation.expires_at:%Y-%m-%d %H:%M} UTC:\n\n{link}\n"
            )
            inviter = await store.get_user(actor_id, session=session) if actor_id else None
            await store.enqueue_email(
                session=session,
                recipient=address,
                subject=f"Join {organization.display_name} on qrmesh",
                body=body,
                kind="invitation",
                now=now,
                variables={
                    "link": link,
                    "expires_at": f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC",
                    "organization_name": organization.display_name,
                    "role": role.value.lower(),
                    "inviter": inviter.display_name if inviter is not None else "",
                },
                organization=f"organizations/{organization_id}",
                **mail_origin(),
            )
        self.mail_queued.set()
        return invitation, token

    async def list_invitations(self, organization_id: str, size: int, token: str) -> Page[store.InvitationRecord]:
        """An organization's invitations, newest first."""
        scope = f"invitations:{organization_id}"
        limit = page_size(size)
        async with self.sessions.begin() as session:
            items = await store.list_invitations(
                organization_id, session=session, after=decode_page_token(token, scope), limit=limit + 1
            )
        return _page(items, limit, scope, lambda item: Cursor(item.created_at, item.id))

    async def delete_invitation(self, organization_id: str, invitation_id: str) -> None:
        """Withdraw a pending invitation; withdrawing one no longer pending changes nothing."""
        async with self.sessions.begin() as session:
            found = await store.revoke_invitation(organization_id, invitation_id, session=session, now=utcnow())
        if found is None:
            raise NotFound("the invitation does not exist")

    async def accept_invitation(self, user_id: str, token: str) -> store.MemberRecord:
        """Join the organization an invitation is for, if it was sent to the caller's address."""
        now = utcnow()
        async with self.sessions.begin() as session:
            invitation = await store.find_invitation_by_token(tokens.hash_token(token), session=session)
            if invitation is None:
                raise NotFound("the invitation does not exist", reason="INVITATION_NOT_FOUND")
            if invitation.state != "PENDING":
                raise FailedPrecondition(
                    f"the invitation is {invitation.state.lower()}", reason="INVITATION_NOT_PENDING"
                )
            if invitation.expires_at <= now:
                raise FailedPrecondition("the invitation has expired", reason="INVITATION_EXPIRED")
            user = await store.get_user(user_id, session=session)
            if user is None or not same_email(user.email, invitation.email):
                raise PermissionDenied(
                    "this invitation was sent to another email address", reason="INVITATION_EMAIL_MISMATCH"
                )
            await store.get_organization(invitation.organization_id, session=session, for_update=True)
            existing = await store.get_member(invitation.organization_id, user_id, session=session)
            if existing is not None:
                raise AlreadyExists("you are a member of this organization already", reason="ALREADY_MEMBER")
            # The invitation held a seat; a downgrade since may have taken it away.
            members = await store.count_members(invitation.organization_id, session=session)
            await require_room(self.plans, f"organizations/{invitation.organization_id}", TEAM_MEMBERS, usage=members)
            await store.add_member(
                session=session,
                organization_id=invitation.organization_id,
                user_id=user_id,
                role=invitation.role,
                now=now,
            )
            await store.mark_invitation_accepted(invitation.id, user_id, session=session, now=now)
            member = await store.get_member(invitation.organization_id, user_id, session=session)
        assert member is not None  # noqa: S101 - inserted in this transaction
        await self._forget_role(f"organizations/{invitation.organization_id}", f"users/{user_id}")
        return member

    # ------------------------------------------------------------ API keys

    async def create_api_key(
        self,
        organization_id: str,
        display_name: str,
        scopes: list[str],
        expires_at: datetime | None,
        *,
        actor_id: str | None,
    ) -> tuple[store.ApiKeyRecord, str]:
        """Create a key; answers it and its secret (shown this once, stored only hashed)."""
        checked = key_rules.check_scopes(scopes)
        now = utcnow()
        key_rules.check_expiry(expires_at, now)
        await require_feature(self.plans, f"organizations/{organization_id}", API_ACCESS)
        async with self.sessions.begin() as session:
            if await store.get_organization(organization_id, session=session) is None:
                raise NotFound("the organization does not exist")
            return await self._insert_key(
                session, organization_id, display_name.strip(), checked, expires_at, actor_id, now
            )

    async def _insert_key(
        self,
        session: AsyncSession,
        organization_id: str,
        display_name: str,
        scopes: tuple[str, ...],
        expires_at: datetime | None,
        actor_id: str | None,
        now: datetime,
    ) -> tuple[store.ApiKeyRecord, str]:
        key_id = tokens.new_id()
        secret = tokens.new_api_key_secret(key_id)
        record = await store.insert_api_key(
            session=session,
            key_id=key_id,
            organization_id=organization_id,
            display_name=display_name,
            prefix=tokens.api_key_prefix(key_id),
            secret_hash=tokens.hash_token(secret),
            scopes=scopes,
            expires_at=expires_at,
            created_by=actor_id,
            now=now,
        )
        return record, secret

    async def list_api_keys(self, organization_id: str, size: int, token: str) -> Page[store.ApiKeyRecord]:
        """An organization's keys, newest first."""
        scope = f"api-keys:{organization_id}"
        limit = page_size(size)
        async with self.sessions.begin() as session:
            items = await store.list_api_keys(
                organization_id, session=session, after=decode_page_token(token, scope), limit=limit + 1
            )
        return _page(items, limit, scope, lambda item: Cursor(item.created_at, item.id))

    async def delete_api_key(self, organization_id: str, key_id: str) -> None:
        """Revoke a key (idempotent)."""
        async with self.sessions.begin() as session:
            record = await store.revoke_api_key(organization_id, key_id, session=session, now=utcnow())
        if record is None:
            raise NotFound("the API key does not exist")
        await self._forget_api_key(record.secret_hash)

    async def rotate_api_key(
        self, organization_id: str, key_id: str, *, actor_id: str | None
    ) -> tuple[store.ApiKeyRecord, str]:
        """Replace a key by a new one with the same name, scopes and expiry; the old one is revoked."""
        now = utcnow()
        await require_feature(self.plans, f"organizations/{organization_id}", API_ACCESS)
        async with self.sessions.begin() as session:
            old = await store.get_api_key(organization_id, key_id, session=session, for_update=True)
            if old is None:
                raise NotFound("the API key does not exist")
            if not key_rules.is_active(revoked_at=old.revoked_at, expires_at=old.expires_at, now=now):
                raise FailedPrecondition("only an active key can be rotated", reason="API_KEY_NOT_ACTIVE")
            await store.revoke_api_key(organization_id, key_id, session=session, now=now)
            created = await self._insert_key(
                session, organization_id, old.display_name, old.scopes, old.expires_at, actor_id, now
            )
        await self._forget_api_key(old.secret_hash)
        return created

    async def authenticate_api_key(self, secret: str) -> store.ApiKeyRecord | None:
        """The active key a secret belongs to (its last use recorded at most once a minute), or None."""
        if tokens.parse_api_key_secret(secret) is None:
            return None
        now = utcnow()
        async with self.sessions.begin() as session:
            record = await store.find_active_api_key(tokens.hash_token(secret), session=session, now=now)
            if record is None:
                return None
            resolution = timedelta(seconds=key_rules.LAST_USE_RESOLUTION_SECONDS)
            if record.last_used_at is None or now - record.last_used_at >= resolution:
                await store.touch_api_key(record.id, session=session, now=now, resolution=resolution)
        return record

    async def usage(self, organization_id: str) -> dict[str, int]:
        """What the organization uses of its plan's limits that identity counts (for the billing service):
        team members, pending invitations included."""
        async with self.sessions.begin() as session:
            seats = await store.count_members(organization_id, session=session)
            seats += await store.count_pending_invitations(organization_id, session=session, now=utcnow())
        return {TEAM_MEMBERS: seats}

    async def role(self, organization_id: str, user_id: str) -> MemberRole | None:
        """A user's role in an organization, or None if not a member."""
        async with self.sessions.begin() as session:
            role = await store.get_role(organization_id, user_id, session=session)
        return None if role is None else MemberRole(role)


def _with_role(organization: store.OrganizationRecord, role: MemberRole | None) -> store.OrganizationRecord:
    return store.OrganizationRecord(
        id=organization.id,
        display_name=organization.display_name,
        created_at=organization.created_at,
        updated_at=organization.updated_at,
        role=None if role is None else role.value,
    )


def _page(items: list[T], limit: int, scope: str, cursor: Callable[[T], Cursor]) -> Page[T]:
    """A page from `limit + 1` fetched items: the extra one only says there is a next page."""
    if len(items) <= limit:
        return Page(items, "")
    shown = items[:limit]
    return Page(shown, encode_page_token(cursor(shown[-1]), scope))
