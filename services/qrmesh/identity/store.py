"""PostgreSQL access for the identity schema: every query the service runs, nothing else.

Each function takes the caller's `session` (keyword-only) and never commits:
the caller's transaction decides what goes together (a token and the email
carrying it, a rotation and the family revocation).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from qrmesh.identity.domain.pagination import Cursor

SCHEMA = "identity"
metadata = sa.MetaData(schema=SCHEMA)
_TS = sa.DateTime(timezone=True)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False, server_default=""),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("email_verified", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("password_changed_at", _TS, nullable=False),
)
sa.Index("users_email_key", sa.func.lower(users.c.email), unique=True)

email_tokens = sa.Table(
    "email_tokens",
    metadata,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=False),
    sa.Column("used_at", _TS),
    sa.CheckConstraint("purpose IN ('verify_email', 'reset_password')", name="email_tokens_purpose_check"),
)
sa.Index("ix_email_tokens_user_id", email_tokens.c.user_id)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("family_id", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=False),
    sa.Column("used_at", _TS),
    sa.Column("revoked_at", _TS),
)
sa.Index("ix_refresh_tokens_family_id", refresh_tokens.c.family_id)
sa.Index("ix_refresh_tokens_user_id", refresh_tokens.c.user_id)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.Text, primary_key=True),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("retired_at", _TS),
)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.CheckConstraint("role IN ('OWNER', 'ADMIN', 'EDITOR', 'VIEWER')", name="memberships_role_check"),
)
sa.Index("ix_memberships_user_id", memberships.c.user_id)

invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=False),
    sa.Column("accepted_by", sa.Text, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("accepted_at", _TS),
    sa.Column("revoked_at", _TS),
    sa.CheckConstraint("role IN ('OWNER', 'ADMIN', 'EDITOR', 'VIEWER')", name="invitations_role_check"),
    sa.CheckConstraint("state IN ('PENDING', 'ACCEPTED', 'REVOKED')", name="invitations_state_check"),
)
sa.Index("invitations_organization_created", invitations.c.organization_id, invitations.c.created_at, invitations.c.id)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.Text, nullable=False, unique=True),
    sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("created_by", sa.Text, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS),
    sa.Column("last_used_at", _TS),
    sa.Column("revoked_at", _TS),
)
sa.Index("api_keys_organization_created", api_keys.c.organization_id, api_keys.c.created_at, api_keys.c.id)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("sent_at", _TS),
    # Migration 0002: what the mailer renders (the subject and body above stay as the plain fallback).
    sa.Column("mail_id", sa.Text),
    sa.Column("template", sa.Text),
    sa.Column("variables", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("organization", sa.Text, nullable=False, server_default=""),
    sa.Column("traceparent", sa.Text, nullable=False, server_default=""),
    sa.Column("tracestate", sa.Text, nullable=False, server_default=""),
)
sa.Index("outbox_unsent", outbox.c.id, postgresql_where=outbox.c.sent_at.is_(None))

request_ids = sa.Table(
    "request_ids",
    metadata,
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)
sa.Index("ix_request_ids_created_at", request_ids.c.created_at)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A row of `users`."""

    id: str
    email: str
    display_name: str
    password_hash: str
    email_verified: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrganizationRecord:
    """A row of `organizations`, with the caller's role when listed for a member."""

    id: str
    display_name: str
    created_at: datetime
    updated_at: datetime
    role: str | None = None


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A membership with its user's email and name."""

    organization_id: str
    user_id: str
    email: str
    display_name: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InvitationRecord:
    """A row of `invitations`."""

    id: str
    organization_id: str
    email: str
    role: str
    state: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A row of `api_keys`."""

    id: str
    organization_id: str
    display_name: str
    prefix: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A row of `signing_keys`."""

    kid: str
    private_key: bytes
    public_key: bytes
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class RefreshUse:
    """What using a refresh token found. `status` is one of OK, UNKNOWN, EXPIRED, REVOKED, REUSED."""

    status: str
    user_id: str | None = None
    family_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshOwner:
    """The user and session family a refresh token belongs to."""

    user_id: str
    family_id: str


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        password_hash=row.password_hash,
        email_verified=row.email_verified,
        created_at=row.created_at,
    )


def _organization(row: Any, role: str | None = None) -> OrganizationRecord:
    return OrganizationRecord(
        id=row.id, display_name=row.display_name, created_at=row.created_at, updated_at=row.updated_at, role=role
    )


def _invitation(row: Any) -> InvitationRecord:
    return InvitationRecord(
        id=row.id,
        organization_id=row.organization_id,
        email=row.email,
        role=row.role,
        state=row.state,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


def _api_key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        organization_id=row.organization_id,
        display_name=row.display_name,
        prefix=row.prefix,
        secret_hash=row.secret_hash,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _after(
    columns: tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]], cursor: Cursor | None, *, descending: bool
) -> Any:
    """The keyset condition for rows after `cursor` in (created_at, id) order."""
    if cursor is None:
        return sa.true()
    key = sa.tuple_(*columns)
    point = sa.tuple_(sa.literal(cursor.create_time, _TS), sa.literal(cursor.id))
    return key < point if descending else key > point


async def advisory_lock(name: str, *, session: AsyncSession) -> None:
    """Hold a transaction-scoped advisory lock on `name` (released at commit or rollback)."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(f"identity:{name}".encode()))))


# ---------------------------------------------------------------- users


async def insert_user(
    *, session: AsyncSession, user_id: str, email: str, display_name: str, password_hash: str, now: datetime
) -> UserRecord | None:
    """Create a user; None if the address (case-insensitively) has an account already."""
    statement = (
        pg.insert(users)
        .values(
            id=user_id,
            email=email,
            display_name=display_name,
            password_hash=password_hash,
            email_verified=False,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        .on_conflict_do_nothing()
        .returning(*users.c)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _user(row)


async def get_user(user_id: str, *, session: AsyncSession) -> UserRecord | None:
    """The user with this id."""
    row = (await session.execute(sa.select(users).where(users.c.id == user_id))).one_or_none()
    return None if row is None else _user(row)


async def find_user_by_email(email_key: str, *, session: AsyncSession) -> UserRecord | None:
    """The user whose address is `email_key` (already lowercased)."""
    statement = sa.select(users).where(sa.func.lower(users.c.email) == email_key)
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _user(row)


async def lock_user(user_id: str, *, session: AsyncSession) -> bool:
    """Lock a user's row until the transaction ends; False if there is no such user.

    Every change to a user's refresh tokens (rotation, revocation) takes this lock first, so a
    revocation sees every token a concurrent rotation inserted. It is FOR NO KEY UPDATE: rows
    referencing the user (a new token, a membership) can still be inserted meanwhile.
    """
    statement = sa.select(users.c.id).where(users.c.id == user_id).with_for_update(key_share=True)
    return (await session.execute(statement)).one_or_none() is not None


async def set_email_verified(user_id: str, *, session: AsyncSession, now: datetime) -> UserRecord | None:
    """Mark the user's address as proven."""
    statement = (
        sa.update(users).where(users.c.id == user_id).values(email_verified=True, updated_at=now).returning(*users.c)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _user(row)


async def set_password_hash(user_id: str, password_hash: str, *, session: AsyncSession, now: datetime) -> None:
    """Store a new password hash."""
    await session.execute(
        sa.update(users)
        .where(users.c.id == user_id)
        .values(password_hash=password_hash, updated_at=now, password_changed_at=now)
    )


# ---------------------------------------------------------------- email tokens and outbox


async def insert_email_token(
    *,
    session: AsyncSession,
    token_hash: str,
    user_id: str,
    purpose: str,
    email: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Store a verification or reset token (hashed)."""
    await session.execute(
        sa.insert(email_tokens).values(
            token_hash=token_hash, user_id=user_id, purpose=purpose, email=email, created_at=now, expires_at=expires_at
        )
    )


async def consume_email_token(
    token_hash: str, purpose: str, *, session: AsyncSession, now: datetime
) -> tuple[str, str] | None:
    """Use a token once: (user id, email it was sent to), or None if unknown, used, expired or of another purpose."""
    statement = (
        sa.update(email_tokens)
        .where(
            email_tokens.c.token_hash == token_hash,
            email_tokens.c.purpose == purpose,
            email_tokens.c.used_at.is_(None),
            email_tokens.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(email_tokens.c.user_id, email_tokens.c.email)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else (row.user_id, row.email)


async def expire_email_tokens(user_id: str, purpose: str, *, session: AsyncSession, now: datetime) -> None:
    """Make every unused token of the user for `purpose` unusable."""
    await session.execute(
        sa.update(email_tokens)
        .where(email_tokens.c.user_id == user_id, email_tokens.c.purpose == purpose, email_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )


async def enqueue_email(
    *,
    session: AsyncSession,
    recipient: str,
    subject: str,
    body: str,
    kind: str,
    now: datetime,
    variables: dict[str, str] | None = None,
    organization: str = "",
    mail_id: str = "",
    traceparent: str = "",
    tracestate: str = "",
) -> int:
    """Queue an email in the outbox: the template `kind` with `variables` (the subject and body are the plain
    fallback); the outbox relay hands it to the mailer once the transaction commits."""
    statement = (
        sa.insert(outbox)
        .values(
            recipient=recipient,
            subject=subject,
            body=body,
            kind=kind,
            created_at=now,
            mail_id=mail_id or None,
            template=kind,
            variables=dict(variables or {}),
            organization=organization,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        .returning(outbox.c.id)
    )
    return int((await session.execute(statement)).scalar_one())


@dataclass(frozen=True, slots=True)
class OutboxMail:
    """An unsent outbox row, as the relay hands it on."""

    id: int
    mail_id: str | None
    recipient: str
    template: str
    variables: dict[str, str]
    subject: str
    body: str
    organization: str
    created_at: datetime
    traceparent: str
    tracestate: str


async def lock_unsent_mail(*, session: AsyncSession, limit: int) -> list[OutboxMail]:
    """The oldest unsent rows (by id), locked for this transaction; rows another relay holds are skipped."""
    statement = (
        sa.select(outbox)
        .where(outbox.c.sent_at.is_(None))
        .order_by(outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = (await session.execute(statement)).all()
    return [
        OutboxMail(
            id=row.id,
            mail_id=row.mail_id,
            recipient=row.recipient,
            template=row.template or row.kind,
            variables={str(k): str(v) for k, v in (row.variables or {}).items()},
            subject=row.subject,
            body=row.body,
            organization=row.organization,
            created_at=row.created_at,
            traceparent=row.traceparent,
            tracestate=row.tracestate,
        )
        for row in rows
    ]


async def mark_mail_sent(ids: Sequence[int], *, session: AsyncSession, now: datetime) -> None:
    """Mark outbox rows as handed to the mail stream."""
    if ids:
        await session.execute(sa.update(outbox).where(outbox.c.id.in_(list(ids))).values(sent_at=now))


# ---------------------------------------------------------------- refresh tokens


async def insert_refresh_token(
    *, session: AsyncSession, token_hash: str, family_id: str, user_id: str, now: datetime, expires_at: datetime
) -> None:
    """Store a refresh token (hashed) in its session family."""
    await session.execute(
        sa.insert(refresh_tokens).values(
            token_hash=token_hash, family_id=family_id, user_id=user_id, created_at=now, expires_at=expires_at
        )
    )


async def use_refresh_token(token_hash: str, *, session: AsyncSession, now: datetime) -> RefreshUse:
    """Spend a refresh token. Spending one twice revokes its whole family (status REUSED); commit that too.

    Lock the token's user (`lock_user`) first.
    """
    statement = sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash).with_for_update()
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        return RefreshUse("UNKNOWN")
    if row.revoked_at is not None:
        return RefreshUse("REVOKED", row.user_id, row.family_id)
    if row.used_at is not None:
        await revoke_family(row.family_id, session=session, now=now)
        return RefreshUse("REUSED", row.user_id, row.family_id)
    if row.expires_at <= now:
        return RefreshUse("EXPIRED", row.user_id, row.family_id)
    await session.execute(
        sa.update(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash).values(used_at=now)
    )
    return RefreshUse("OK", row.user_id, row.family_id)


async def find_refresh_token(token_hash: str, *, session: AsyncSession) -> RefreshOwner | None:
    """Whose a refresh token is (user and family), whatever its state; without locking anything."""
    statement = sa.select(refresh_tokens.c.user_id, refresh_tokens.c.family_id).where(
        refresh_tokens.c.token_hash == token_hash
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else RefreshOwner(user_id=row.user_id, family_id=row.family_id)


async def revoke_family(family_id: str, *, session: AsyncSession, now: datetime) -> None:
    """End a session: every token of the family stops working. Lock the family's user (`lock_user`) first."""
    await session.execute(
        sa.update(refresh_tokens)
        .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_user_sessions(
    user_id: str, *, session: AsyncSession, now: datetime, keep_family: str | None = None
) -> None:
    """End every session of a user (but `keep_family`, if given). Lock the user (`lock_user`) first."""
    condition = sa.and_(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
    if keep_family is not None:
        condition = sa.and_(condition, refresh_tokens.c.family_id != keep_family)
    await session.execute(sa.update(refresh_tokens).where(condition).values(revoked_at=now))


async def delete_stale_refresh_tokens(*, session: AsyncSession, before: datetime) -> int:
    """Delete tokens that expired before `before`; returns how many."""
    result = await session.execute(sa.delete(refresh_tokens).where(refresh_tokens.c.expires_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- signing keys


async def list_signing_keys(*, session: AsyncSession) -> list[SigningKeyRecord]:
    """Every signing key, newest first."""
    statement = sa.select(signing_keys).order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
    return [
        SigningKeyRecord(
            kid=row.kid,
            private_key=row.private_key,
            public_key=row.public_key,
            created_at=row.created_at,
            retired_at=row.retired_at,
        )
        for row in await session.execute(statement)
    ]


async def insert_signing_key(
    *, session: AsyncSession, kid: str, private_key: bytes, public_key: bytes, now: datetime
) -> None:
    """Store a new key and retire every other one still active."""
    await session.execute(sa.update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now))
    await session.execute(
        sa.insert(signing_keys).values(kid=kid, private_key=private_key, public_key=public_key, created_at=now)
    )


async def delete_signing_keys_retired_before(before: datetime, *, session: AsyncSession) -> None:
    """Forget keys retired before `before` (no token they signed can still be valid)."""
    await session.execute(sa.delete(signing_keys).where(signing_keys.c.retired_at < before))


# ---------------------------------------------------------------- organizations and members


async def count_owned_organizations(user_id: str, *, session: AsyncSession) -> int:
    """How many organizations `user_id` owns."""
    statement = (
        sa.select(sa.func.count())
        .select_from(memberships)
        .where(memberships.c.user_id == user_id, memberships.c.role == "OWNER")
    )
    return int((await session.execute(statement)).scalar_one())


async def insert_organization(
    *, session: AsyncSession, organization_id: str, display_name: str, owner_id: str, now: datetime
) -> OrganizationRecord:
    """Create an organization with `owner_id` as its owner."""
    row = (
        await session.execute(
            sa.insert(organizations)
            .values(id=organization_id, display_name=display_name, created_at=now, updated_at=now)
            .returning(*organizations.c)
        )
    ).one()
    await session.execute(
        sa.insert(memberships).values(organization_id=organization_id, user_id=owner_id, role="OWNER", created_at=now)
    )
    return _organization(row, "OWNER")


async def find_request(user_id: str, request_id: str, *, session: AsyncSession, since: datetime) -> str | None:
    """The organization an earlier CreateOrganization with this request id made, if made after `since`."""
    statement = sa.select(request_ids.c.organization_id).where(
        request_ids.c.user_id == user_id, request_ids.c.request_id == request_id, request_ids.c.created_at >= since
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def remember_request(
    *, session: AsyncSession, user_id: str, request_id: str, organization_id: str, now: datetime, stale: datetime
) -> None:
    """Record which organization a request id made; replaces a record older than `stale`, drops old ones."""
    await session.execute(sa.delete(request_ids).where(request_ids.c.created_at < stale))
    await session.execute(
        sa.insert(request_ids).values(
            user_id=user_id, request_id=request_id, organization_id=organization_id, created_at=now
        )
    )


async def get_organization(
    organization_id: str, *, session: AsyncSession, for_update: bool = False
) -> OrganizationRecord | None:
    """An organization; `for_update` locks it, serializing membership changes in it."""
    statement = sa.select(organizations).where(organizations.c.id == organization_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _organization(row)


async def update_organization(
    organization_id: str, *, session: AsyncSession, display_name: str, now: datetime
) -> OrganizationRecord | None:
    """Rename an organization."""
    statement = (
        sa.update(organizations)
        .where(organizations.c.id == organization_id)
        .values(display_name=display_name, updated_at=now)
        .returning(*organizations.c)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _organization(row)


async def list_organizations(
    user_id: str, *, session: AsyncSession, after: Cursor | None, limit: int
) -> list[OrganizationRecord]:
    """The user's organizations with the user's role, oldest first, after `after`."""
    statement = (
        sa.select(organizations, memberships.c.role)
        .join(memberships, memberships.c.organization_id == organizations.c.id)
        .where(
            memberships.c.user_id == user_id,
            _after((organizations.c.created_at, organizations.c.id), after, descending=False),
        )
        .order_by(organizations.c.created_at, organizations.c.id)
        .limit(limit)
    )
    return [_organization(row, row.role) for row in await session.execute(statement)]


def _member_query() -> sa.Select[Any]:
    return sa.select(
        memberships.c.organization_id,
        memberships.c.user_id,
        memberships.c.role,
        memberships.c.created_at,
        users.c.email,
        users.c.display_name,
    ).join(users, users.c.id == memberships.c.user_id)


def _member(row: Any) -> MemberRecord:
    return MemberRecord(
        organization_id=row.organization_id,
        user_id=row.user_id,
        email=row.email,
        display_name=row.display_name,
        role=row.role,
        created_at=row.created_at,
    )


async def get_member(organization_id: str, user_id: str, *, session: AsyncSession) -> MemberRecord | None:
    """A membership, with its user."""
    statement = _member_query().where(
        memberships.c.organization_id == organization_id, memberships.c.user_id == user_id
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _member(row)


async def get_role(organization_id: str, user_id: str, *, session: AsyncSession) -> str | None:
    """The user's role in the organization, or None if not a member."""
    statement = sa.select(memberships.c.role).where(
        memberships.c.organization_id == organization_id, memberships.c.user_id == user_id
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def list_members(
    organization_id: str, *, session: AsyncSession, after: Cursor | None, limit: int
) -> list[MemberRecord]:
    """An organization's members, oldest first, after `after` (the cursor id is the user id)."""
    statement = (
        _member_query()
        .where(
            memberships.c.organization_id == organization_id,
            _after((memberships.c.created_at, memberships.c.user_id), after, descending=False),
        )
        .order_by(memberships.c.created_at, memberships.c.user_id)
        .limit(limit)
    )
    return [_member(row) for row in await session.execute(statement)]


async def count_owners(organization_id: str, *, session: AsyncSession) -> int:
    """How many owners the organization has."""
    statement = sa.select(sa.func.count()).where(
        memberships.c.organization_id == organization_id, memberships.c.role == "OWNER"
    )
    return int((await session.execute(statement)).scalar_one())


async def count_members(organization_id: str, *, session: AsyncSession) -> int:
    """How many members the organization has."""
    statement = sa.select(sa.func.count()).where(memberships.c.organization_id == organization_id)
    return int((await session.execute(statement)).scalar_one())


async def count_pending_invitations(organization_id: str, *, session: AsyncSession, now: datetime) -> int:
    """How many of the organization's invitations can still be accepted."""
    statement = sa.select(sa.func.count()).where(
        invitations.c.organization_id == organization_id,
        invitations.c.state == "PENDING",
        invitations.c.expires_at > now,
    )
    return int((await session.execute(statement)).scalar_one())


async def add_member(*, session: AsyncSession, organization_id: str, user_id: str, role: str, now: datetime) -> bool:
    """Add a membership; False if the user is a member already."""
    statement = (
        pg.insert(memberships)
        .values(organization_id=organization_id, user_id=user_id, role=role, created_at=now)
        .on_conflict_do_nothing()
        .returning(memberships.c.user_id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def set_member_role(organization_id: str, user_id: str, role: str, *, session: AsyncSession) -> None:
    """Change a member's role."""
    await session.execute(
        sa.update(memberships)
        .where(memberships.c.organization_id == organization_id, memberships.c.user_id == user_id)
        .values(role=role)
    )


async def delete_member(organization_id: str, user_id: str, *, session: AsyncSession) -> bool:
    """Remove a membership; False if there was none."""
    result = await session.execute(
        sa.delete(memberships).where(memberships.c.organization_id == organization_id, memberships.c.user_id == user_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- invitations


async def insert_invitation(
    *,
    session: AsyncSession,
    invitation_id: str,
    organization_id: str,
    email: str,
    role: str,
    token_hash: str,
    created_by: str | None,
    now: datetime,
    expires_at: datetime,
) -> InvitationRecord:
    """Create a pending invitation."""
    statement = (
        sa.insert(invitations)
        .values(
            id=invitation_id,
            organization_id=organization_id,
            email=email,
            role=role,
            token_hash=token_hash,
            state="PENDING",
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
        )
        .returning(*invitations.c)
    )
    return _invitation((await session.execute(statement)).one())


async def find_invitation_by_token(token_hash: str, *, session: AsyncSession) -> InvitationRecord | None:
    """The invitation a token belongs to, locked for accepting."""
    statement = sa.select(invitations).where(invitations.c.token_hash == token_hash).with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _invitation(row)


async def mark_invitation_accepted(invitation_id: str, user_id: str, *, session: AsyncSession, now: datetime) -> None:
    """Record who accepted an invitation."""
    await session.execute(
        sa.update(invitations)
        .where(invitations.c.id == invitation_id)
        .values(state="ACCEPTED", accepted_by=user_id, accepted_at=now)
    )


async def list_invitations(
    organization_id: str, *, session: AsyncSession, after: Cursor | None, limit: int
) -> list[InvitationRecord]:
    """An organization's invitations, newest first, after `after`."""
    statement = (
        sa.select(invitations)
        .where(
            invitations.c.organization_id == organization_id,
            _after((invitations.c.created_at, invitations.c.id), after, descending=True),
        )
        .order_by(invitations.c.created_at.desc(), invitations.c.id.desc())
        .limit(limit)
    )
    return [_invitation(row) for row in await session.execute(statement)]


async def revoke_invitation(
    organization_id: str, invitation_id: str, *, session: AsyncSession, now: datetime
) -> InvitationRecord | None:
    """Withdraw an invitation of this organization if pending; the invitation as it now stands, None if unknown."""
    statement = (
        sa.select(invitations)
        .where(invitations.c.organization_id == organization_id, invitations.c.id == invitation_id)
        .with_for_update()
    )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        return None
    if row.state != "PENDING":
        return _invitation(row)
    updated = await session.execute(
        sa.update(invitations)
        .where(invitations.c.id == invitation_id)
        .values(state="REVOKED", revoked_at=now)
        .returning(*invitations.c)
    )
    return _invitation(updated.one())


# ---------------------------------------------------------------- API keys


async def insert_api_key(
    *,
    session: AsyncSession,
    key_id: str,
    organization_id: str,
    display_name: str,
    prefix: str,
    secret_hash: str,
    scopes: Sequence[str],
    expires_at: datetime | None,
    created_by: str | None,
    now: datetime,
) -> ApiKeyRecord:
    """Create an API key (only the hash of its secret is kept)."""
    statement = (
        sa.insert(api_keys)
        .values(
            id=key_id,
            organization_id=organization_id,
            display_name=display_name,
            prefix=prefix,
            secret_hash=secret_hash,
            scopes=list(scopes),
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
        )
        .returning(*api_keys.c)
    )
    return _api_key((await session.execute(statement)).one())


async def get_api_key(
    organization_id: str, key_id: str, *, session: AsyncSession, for_update: bool = False
) -> ApiKeyRecord | None:
    """A key of this organization (a key of another one is simply not found)."""
    statement = sa.select(api_keys).where(api_keys.c.organization_id == organization_id, api_keys.c.id == key_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _api_key(row)


async def list_api_keys(
    organization_id: str, *, session: AsyncSession, after: Cursor | None, limit: int
) -> list[ApiKeyRecord]:
    """An organization's keys, newest first, after `after`."""
    statement = (
        sa.select(api_keys)
        .where(
            api_keys.c.organization_id == organization_id,
            _after((api_keys.c.created_at, api_keys.c.id), after, descending=True),
        )
        .order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
        .limit(limit)
    )
    return [_api_key(row) for row in await session.execute(statement)]


async def revoke_api_key(
    organization_id: str, key_id: str, *, session: AsyncSession, now: datetime
) -> ApiKeyRecord | None:
    """Revoke a key of this organization (idempotent: a revoked key stays as it was); None if unknown."""
    statement = (
        sa.update(api_keys)
        .where(api_keys.c.organization_id == organization_id, api_keys.c.id == key_id)
        .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, now))
        .returning(*api_keys.c)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _api_key(row)


async def find_active_api_key(secret_hash: str, *, session: AsyncSession, now: datetime) -> ApiKeyRecord | None:
    """The key whose secret hashes to `secret_hash`, if it is neither revoked nor expired."""
    statement = sa.select(api_keys).where(
        api_keys.c.secret_hash == secret_hash,
        api_keys.c.revoked_at.is_(None),
        sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else _api_key(row)


async def touch_api_key(key_id: str, *, session: AsyncSession, now: datetime, resolution: timedelta) -> bool:
    """Record a use of the key, unless one was recorded less than `resolution` ago; True if written."""
    result = await session.execute(
        sa.update(api_keys)
        .where(
            api_keys.c.id == key_id,
            sa.or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at <= now - resolution),
        )
        .values(last_used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
