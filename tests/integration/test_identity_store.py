"""The identity store and operations against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qrmesh.billing.client import FixedPlans
from qrmesh.billing.domain.entitlements import API_ACCESS, TEAM_MEMBERS, EntitlementSet, Grant
from qrmesh.identity import store
from qrmesh.identity.config import IdentityConfig
from qrmesh.identity.domain import passwords, signing, tokens
from qrmesh.identity.domain.roles import MemberRole
from qrmesh.identity.login_throttle import ADDRESS_POLICY, LoginThrottle, subject_key
from qrmesh.identity.server import SPEC
from qrmesh.identity.service import Identity, SessionTokens
from qrmesh.platform.cache import create_redis
from qrmesh.platform.database import create_engine, migrate
from qrmesh.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)

PASSWORD = "violet-harbor-tractor-91"
# This file tests identity alone (no billing service): every organization may have a team and API keys.
TEAMS = FixedPlans(
    EntitlementSet.of(
        "organizations/any", "business", [Grant.quantity(TEAM_MEMBERS, None), Grant.feature(API_ACCESS, True)]
    )
)


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session's database with the identity schema migrated."""
    assert SPEC.migrations is not None
    created = create_engine(database_url, schema="identity", pool_size=4)
    await migrate(created, SPEC.migrations, "identity")
    await migrate(created, SPEC.migrations, "identity")  # idempotent
    yield created
    await created.dispose()


@pytest.fixture
async def own_engine(postgres_admin_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database of its own, for tests that change what every other user of the schema sees."""
    assert SPEC.migrations is not None
    admin = make_url(postgres_admin_url).set(drivername="postgresql")
    name = f"qrmesh_identity_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    created = create_engine(admin.set(database=name).render_as_string(hide_password=False), schema="identity")
    await migrate(created, SPEC.migrations, "identity")
    yield created
    await created.dispose()
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A Redis client for the session's server."""
    created = create_redis(redis_url)
    yield created
    await created.aclose()


@pytest.fixture(scope="module")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Forgotten:
    """Records the cache invalidations an `Identity` asks for."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.roles: list[tuple[str, str]] = []

    async def key(self, digest: str) -> None:
        self.keys.append(digest)

    async def role(self, organization: str, user: str) -> None:
        self.roles.append((organization, user))


@pytest.fixture
def forgotten() -> Forgotten:
    return Forgotten()


@pytest.fixture
def identity(engine: AsyncEngine, client: redis.Redis, forgotten: Forgotten) -> Identity:
    return Identity(
        engine, client, IdentityConfig(), forget_api_key=forgotten.key, forget_role=forgotten.role, plans=TEAMS
    )


def new_email(label: str = "user") -> str:
    return f"{label}-{secrets.token_hex(5)}@Example.com"


async def outbox_for(sessions: async_sessionmaker[AsyncSession], recipient: str) -> list[tuple[str, str]]:
    """(kind, body) of every email queued for `recipient`, oldest first."""
    async with sessions.begin() as session:
        result = await session.execute(
            sa.select(store.outbox.c.kind, store.outbox.c.body)
            .where(store.outbox.c.recipient == recipient)
            .order_by(store.outbox.c.id)
        )
        return [(row.kind, row.body) for row in result]


def token_in(body: str) -> str:
    return body.split("token=", 1)[1].split()[0]


# ---------------------------------------------------------------- sign-up, verification, login


async def test_sign_up_is_unique_case_insensitively(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    email = new_email()
    user = await identity.sign_up(email, PASSWORD, "  Alice  ")
    assert user.email == email.replace("Example.com", "example.com")
    assert user.display_name == "Alice"
    assert tokens.is_id(user.id)
    assert user.password_hash.startswith("$argon2id$")
    with pytest.raises(AlreadyExists) as caught:
        await identity.sign_up(email.upper(), PASSWORD, "")
    assert caught.value.reason == "EMAIL_TAKEN"
    async with sessions.begin() as session:
        duplicate = await store.insert_user(
            session=session,
            user_id=tokens.new_id(),
            email=email.lower(),
            display_name="",
            password_hash="x",
            now=datetime.now(UTC),
        )
    assert duplicate is None


async def test_sign_up_refuses_weak_passwords(identity: Identity) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await identity.sign_up(new_email(), "password123", "")
    assert caught.value.reason == "WEAK_PASSWORD"


async def test_verification_email_is_queued_with_the_user_and_works_once(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    mails = await outbox_for(sessions, user.email)
    assert [kind for kind, _ in mails] == ["verify_email"]
    token = token_in(mails[0][1])
    async with sessions.begin() as session:
        stored = await session.scalar(
            sa.select(sa.func.count()).where(store.email_tokens.c.token_hash == tokens.hash_token(token))
        )
        raw = await session.scalar(sa.select(sa.func.count()).where(store.email_tokens.c.token_hash == token))
    assert (stored, raw) == (1, 0)  # stored hashed only
    verified = await identity.verify_email(token)
    assert verified.email_verified
    with pytest.raises(FailedPrecondition):
        await identity.verify_email(token)


async def test_failed_sign_up_leaves_no_user_and_no_email(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    email = new_email().lower()
    now = datetime.now(UTC)

    async def fail_after_queueing() -> None:
        async with sessions.begin() as session:
            user = await store.insert_user(
                session=session, user_id=tokens.new_id(), email=email, display_name="", password_hash="x", now=now
            )
            assert user is not None
            await store.enqueue_email(session=session, recipient=email, subject="s", body="b", kind="k", now=now)
            raise RuntimeError("the transaction fails after the email was queued")

    with pytest.raises(RuntimeError):
        await fail_after_queueing()
    assert await outbox_for(sessions, email) == []
    async with sessions.begin() as session:
        assert await store.find_user_by_email(email, session=session) is None


async def test_email_tokens_expire_and_keep_their_purpose(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        user = await store.insert_user(
            session=session, user_id=tokens.new_id(), email=new_email(), display_name="", password_hash="x", now=now
        )
        assert user is not None
        for token, expires in (("fresh", now + timedelta(hours=1)), ("stale", now - timedelta(seconds=1))):
            await store.insert_email_token(
                session=session,
                token_hash=tokens.hash_token(token + user.id),
                user_id=user.id,
                purpose="reset_password",
                email=user.email,
                now=now,
                expires_at=expires,
            )
    async with sessions.begin() as session:
        fresh, stale = tokens.hash_token("fresh" + user.id), tokens.hash_token("stale" + user.id)
        assert await store.consume_email_token(fresh, "verify_email", session=session, now=now) is None
        assert await store.consume_email_token(stale, "reset_password", session=session, now=now) is None
        assert await store.consume_email_token(fresh, "reset_password", session=session, now=now) == (
            user.id,
            user.email,
        )
        assert await store.consume_email_token(fresh, "reset_password", session=session, now=now) is None


async def test_login_answers_the_same_for_unknown_email_and_wrong_password(identity: Identity) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    answers = []
    for email, password in ((user.email, "wrong-password-123"), (new_email("nobody"), PASSWORD)):
        with pytest.raises(Unauthenticated) as caught:
            await identity.login(email, password, f"198.51.100.1-{secrets.token_hex(4)}")
        answers.append((caught.value.message, caught.value.reason))
    assert answers[0] == answers[1] == ("email or password is wrong", "INVALID_CREDENTIALS")
    session = await identity.login(user.email.upper(), PASSWORD, None)
    claims = signing.verify_access_token(session.access_token, await identity.public_keys())
    assert claims["sub"] == f"users/{user.id}"
    assert session.user.id == user.id


async def test_login_throttling_delays_then_locks(engine: AsyncEngine, client: redis.Redis) -> None:
    identity = Identity(engine, client, IdentityConfig())
    clock = [1_000_000.0]
    throttle = identity.throttle

    async def attempt(email: str) -> str:
        try:
            admission = await throttle.attempt([f"t:{email}"], clock[0])
        except ResourceExhausted as exc:
            return f"{exc.reason} {exc.retry_after:g}"
        await throttle.failed(admission, clock[0])
        return "failed"

    subject = secrets.token_hex(4)
    outcomes = [await attempt(subject) for _ in range(5)]
    assert outcomes == ["failed"] * 5
    assert await attempt(subject) == "LOGIN_THROTTLED 2"  # refused, yet counted: the next one waits 2 s
    clock[0] += 2
    assert await attempt(subject) == "failed"  # 7th attempt, made when told
    clock[0] += 1
    assert await attempt(subject) == "LOGIN_THROTTLED 8"  # too early: the 8th, and the next waits longer
    clock[0] += 8
    assert await attempt(subject) == "failed"  # 9th
    clock[0] += 16
    assert await attempt(subject) == "failed"  # 10th
    clock[0] += 60
    assert await attempt(subject) == "LOGIN_THROTTLED 840"  # locked 15 minutes from the 10th failure
    clock[0] += 840
    assert await attempt(subject) == "failed"
    await client.delete(f"t:{subject}", f"t:{subject}:lock")


async def test_login_throttle_does_not_tell_whether_the_account_exists(identity: Identity) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    nobody = new_email("nobody")
    for email in (user.email, nobody):
        for _ in range(5):
            with pytest.raises(Unauthenticated):
                await identity.login(email, "wrong-password-123", None)
        with pytest.raises(ResourceExhausted) as caught:
            await identity.login(email, "wrong-password-123", None)
        assert caught.value.reason == "LOGIN_THROTTLED"
    # A correct password does not get past the delay either.
    with pytest.raises(ResourceExhausted):
        await identity.login(user.email, PASSWORD, None)


async def test_login_throttles_per_client_address(identity: Identity, client: redis.Redis) -> None:
    # Password spraying: one wrong password per account, many accounts, one address.
    address = f"203.0.113.{secrets.randbelow(250)}-{secrets.token_hex(3)}"
    for _ in range(ADDRESS_POLICY.delay_after):
        with pytest.raises(Unauthenticated):
            await identity.login(new_email("spray"), "wrong-password-123", address)
    with pytest.raises(ResourceExhausted):
        await identity.login(new_email("spray"), "wrong-password-123", address)


@pytest.mark.parametrize("exists", [True, False], ids=["account", "no-account"])
async def test_concurrent_wrong_passwords_get_no_more_tries_than_the_limit(identity: Identity, exists: bool) -> None:
    email = (await identity.sign_up(new_email(), PASSWORD, "")).email if exists else new_email("nobody")
    address = f"192.0.2.1-{secrets.token_hex(4)}"

    async def guess(number: int) -> str | None:
        try:
            await identity.login(email, f"wrong-password-{number:03d}", address)
        except (Unauthenticated, ResourceExhausted) as exc:
            return exc.reason
        return None

    outcomes = await asyncio.gather(*(guess(number) for number in range(40)))
    checked = outcomes.count("INVALID_CREDENTIALS")  # the attempts that got to the password check
    assert 1 <= checked <= identity.throttle.policy.lock_after
    assert outcomes.count("LOGIN_THROTTLED") == len(outcomes) - checked
    with pytest.raises(ResourceExhausted):
        await identity.login(email, PASSWORD, address)


# ---------------------------------------------------------------- sessions


async def test_refresh_rotates_and_reuse_revokes_the_family(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    first = await identity.login(user.email, PASSWORD, None)
    second = await identity.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    sid = signing.verify_access_token(second.access_token, await identity.public_keys())["sid"]
    assert signing.verify_access_token(first.access_token, await identity.public_keys())["sid"] == sid
    third = await identity.refresh(second.refresh_token)

    with pytest.raises(Unauthenticated) as caught:
        await identity.refresh(first.refresh_token)  # stolen and replayed
    assert caught.value.reason == "REFRESH_TOKEN_REUSED"
    with pytest.raises(Unauthenticated) as caught:
        await identity.refresh(third.refresh_token)  # the legitimate holder is signed out too
    assert caught.value.reason == "INVALID_REFRESH_TOKEN"
    async with sessions.begin() as session:
        live = await session.scalar(
            sa.select(sa.func.count()).where(
                store.refresh_tokens.c.family_id == sid, store.refresh_tokens.c.revoked_at.is_(None)
            )
        )
    assert live == 0

    other = await identity.login(user.email, PASSWORD, None)
    assert (await identity.refresh(other.refresh_token)).user.id == user.id  # other sessions unaffected


async def test_refresh_tokens_expire_and_logout_ends_the_session(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        await store.insert_refresh_token(
            session=session,
            token_hash=tokens.hash_token("old" + user.id),
            family_id=tokens.new_id(),
            user_id=user.id,
            now=now - timedelta(days=31),
            expires_at=now - timedelta(days=1),
        )
    with pytest.raises(Unauthenticated):
        await identity.refresh("old" + user.id)
    with pytest.raises(Unauthenticated):
        await identity.refresh("never-issued")
    live = await identity.login(user.email, PASSWORD, None)
    await identity.logout(live.refresh_token)
    await identity.logout("never-issued")
    with pytest.raises(Unauthenticated):
        await identity.refresh(live.refresh_token)


async def test_password_reset_is_single_use_and_signs_everyone_out(
    identity: Identity, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    live = await identity.login(user.email, PASSWORD, None)
    await identity.request_password_reset(user.email.upper())
    await identity.request_password_reset(new_email("nobody"))  # answers the same, queues nothing
    mails = await outbox_for(sessions, user.email)
    assert [kind for kind, _ in mails] == ["verify_email", "reset_password"]
    token = token_in(mails[-1][1])
    with pytest.raises(InvalidArgument):
        await identity.reset_password(token, "short")
    new_password = "copper-lantern-meadow-42"
    await identity.reset_password(token, new_password)
    with pytest.raises(FailedPrecondition):
        await identity.reset_password(token, "another-long-password-77")
    with pytest.raises(Unauthenticated):
        await identity.refresh(live.refresh_token)
    with pytest.raises(Unauthenticated):
        await identity.login(user.email, PASSWORD, None)
    assert (await identity.login(user.email, new_password, None)).user.email_verified


async def test_change_password_keeps_the_current_session_only(identity: Identity) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    mine = await identity.login(user.email, PASSWORD, None)
    other = await identity.login(user.email, PASSWORD, None)
    sid = signing.verify_access_token(mine.access_token, await identity.public_keys())["sid"]
    with pytest.raises(PermissionDenied):
        await identity.change_password(user.id, "not-the-password-1", "copper-lantern-meadow-42", keep_session=sid)
    await identity.change_password(user.id, PASSWORD, "copper-lantern-meadow-42", keep_session=sid)
    await identity.refresh(mine.refresh_token)
    with pytest.raises(Unauthenticated):
        await identity.refresh(other.refresh_token)


async def test_change_password_guesses_are_throttled(identity: Identity) -> None:
    """A stolen access token cannot be used to guess the current password without limit."""
    user = await identity.sign_up(new_email(), PASSWORD, "")
    outcomes = []
    for attempt in range(12):
        try:
            await identity.change_password(
                user.id, f"wrong-guess-{attempt:04d}", "copper-lantern-meadow-42", keep_session=None
            )
            outcomes.append("CHANGED")
        except (PermissionDenied, ResourceExhausted) as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == "INVALID_CREDENTIALS"
    assert "LOGIN_THROTTLED" in outcomes
    assert "CHANGED" not in outcomes
    # The account's own login is throttled too: the guesses counted against it.
    with pytest.raises(ResourceExhausted):
        await identity.login(user.email, PASSWORD, None)


async def live_refresh_tokens(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with sessions.begin() as session:
        count = await session.scalar(
            sa.select(sa.func.count()).where(
                store.refresh_tokens.c.user_id == user_id, store.refresh_tokens.c.revoked_at.is_(None)
            )
        )
    return int(count or 0)


@pytest.mark.parametrize("revocation", ["logout", "reset_password"])
async def test_revocation_ends_a_session_refreshed_meanwhile(
    identity: Identity, sessions: async_sessionmaker[AsyncSession], revocation: str
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    password = PASSWORD
    for round_ in range(30 if revocation == "logout" else 10):
        live = await identity.login(user.email, password, None)
        if revocation == "logout":
            revoke = identity.logout(live.refresh_token)
        else:
            await identity.request_password_reset(user.email)
            token = token_in((await outbox_for(sessions, user.email))[-1][1])
            password = f"copper-lantern-meadow-{round_:02d}"
            revoke = identity.reset_password(token, password)
        refreshed, revoked = await asyncio.gather(identity.refresh(live.refresh_token), revoke, return_exceptions=True)
        assert revoked is None
        assert isinstance(refreshed, SessionTokens | Unauthenticated), refreshed
        assert await live_refresh_tokens(sessions, user.id) == 0, f"a token outlived the {revocation} in round {round_}"


@pytest.mark.parametrize("revocation", ["logout", "reset_password"])
async def test_revocation_waits_for_a_refresh_in_progress(
    identity: Identity, sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch, revocation: str
) -> None:
    user = await identity.sign_up(new_email(), PASSWORD, "")
    live = await identity.login(user.email, PASSWORD, None)
    await identity.request_password_reset(user.email)
    token = token_in((await outbox_for(sessions, user.email))[-1][1])
    inserted, go = asyncio.Event(), asyncio.Event()
    insert = store.insert_refresh_token

    async def insert_then_wait(**kwargs: Any) -> None:
        await insert(**kwargs)
        inserted.set()
        await go.wait()  # the refresh holds its locks, its successor not committed yet

    monkeypatch.setattr(store, "insert_refresh_token", insert_then_wait)
    refresh = asyncio.create_task(identity.refresh(live.refresh_token))
    await asyncio.wait_for(inserted.wait(), 10)
    if revocation == "logout":
        revoke = asyncio.create_task(identity.logout(live.refresh_token))
    else:
        revoke = asyncio.create_task(identity.reset_password(token, "copper-lantern-meadow-42"))
    await asyncio.sleep(0.5)  # time for the revocation to get as far as it can
    assert not revoke.done()
    go.set()
    await refresh
    await revoke
    assert await live_refresh_tokens(sessions, user.id) == 0  # the successor is revoked too


# ---------------------------------------------------------------- signing keys


async def test_signing_key_is_made_once_stored_and_rotated(own_engine: AsyncEngine, client: redis.Redis) -> None:
    engine, sessions = own_engine, async_sessionmaker(own_engine, expire_on_commit=False)
    config = IdentityConfig(key_passphrase=b"test-passphrase")
    first, second = Identity(engine, client, config), Identity(engine, client, config)
    now = datetime.now(UTC)
    key = await first.keys.current(now)
    assert (await second.keys.current(now)).kid == key.kid  # replicas share it
    async with sessions.begin() as session:
        records = await store.list_signing_keys(session=session)
    active = [record for record in records if record.retired_at is None]
    assert [record.kid for record in active] == [key.kid]
    token = signing.issue_access_token(key, user_id="u", session_id="s", now=now, ttl=timedelta(minutes=15)).token

    # A month later the key is replaced; its tokens verify until they expire.
    later = now + timedelta(days=30, seconds=1)
    rotated = await Identity(engine, client, config).keys.current(later)
    assert rotated.kid != key.kid
    published = dict(await first.keys.published(datetime.now(UTC)))
    published_later = dict(await Identity(engine, client, config).keys.published(later))
    assert key.kid in published_later
    assert rotated.kid in published_later
    assert signing.verify_access_token(token, published_later)["sub"] == "users/u"
    much_later = later + timedelta(hours=1)
    gone = dict(await Identity(engine, client, config).keys.published(much_later))
    assert key.kid not in gone
    with pytest.raises(jwt.InvalidTokenError):
        signing.verify_access_token(token, gone)
    assert published  # the cached ring of `first` still answers
    jwks = await Identity(engine, client, config).json_web_keys()
    assert all(entry["kty"] == "OKP" and entry["alg"] == "EdDSA" for entry in jwks)


# ---------------------------------------------------------------- organizations and members


async def make_user(identity: Identity, label: str = "user") -> store.UserRecord:
    return await identity.sign_up(new_email(label), PASSWORD, label)


async def join(identity: Identity, organization: str, user: store.UserRecord, role: MemberRole) -> None:
    _, token = await identity.create_invitation(organization, user.email, role, actor_id=None, actor=MemberRole.OWNER)
    await identity.accept_invitation(user.id, token)


async def test_create_organization_is_idempotent_per_request_id(identity: Identity) -> None:
    owner = await make_user(identity, "owner")
    first = await identity.create_organization(owner.id, " Acme ", "req-1")
    again = await identity.create_organization(owner.id, "Acme", "req-1")
    other = await identity.create_organization(owner.id, "Acme", "req-2")
    assert first.id == again.id != other.id
    assert first.display_name == "Acme"
    assert first.role == again.role == "OWNER"
    someone = await make_user(identity, "someone")
    assert (await identity.create_organization(someone.id, "Acme", "req-1")).id != first.id
    page = await identity.list_organizations(owner.id, 1, "")
    assert [item.id for item in page.items] == [first.id]
    assert page.next_page_token
    rest = await identity.list_organizations(owner.id, 10, page.next_page_token)
    assert [item.id for item in rest.items] == [other.id]
    assert rest.next_page_token == ""
    with pytest.raises(InvalidArgument):
        await identity.list_organizations(someone.id, 10, page.next_page_token)


async def test_one_person_owns_a_bounded_number_of_organizations(
    engine: AsyncEngine, client: redis.Redis, forgotten: Forgotten
) -> None:
    capped = Identity(
        engine,
        client,
        IdentityConfig(max_owned_organizations=3),
        forget_api_key=forgotten.key,
        forget_role=forgotten.role,
        plans=TEAMS,
    )
    owner = await make_user(capped, "collector")
    # Four at once against a cap of three: exactly one is refused, whatever the interleaving.
    results = await asyncio.gather(
        *(capped.create_organization(owner.id, f"Org {n}", "") for n in range(4)), return_exceptions=True
    )
    refusals = [result for result in results if isinstance(result, BaseException)]
    assert len(refusals) == 1
    assert isinstance(refusals[0], ResourceExhausted)
    assert refusals[0].reason == "ORGANIZATION_LIMIT"
    assert dict(refusals[0].metadata) == {"limit": "3", "usage": "3"}
    assert len({result.id for result in results if isinstance(result, store.OrganizationRecord)}) == 3
    someone = await make_user(capped, "someone")
    await capped.create_organization(someone.id, "Theirs", "")  # the cap is per person


async def test_update_organization_honours_the_mask(identity: Identity) -> None:
    owner = await make_user(identity)
    organization = await identity.create_organization(owner.id, "Before", "")
    updated = await identity.update_organization(organization.id, ["display_name"], "After", MemberRole.OWNER)
    assert updated.display_name == "After"
    assert updated.updated_at > organization.updated_at
    unchanged = await identity.update_organization(organization.id, [], "Ignored", MemberRole.OWNER)
    assert unchanged.display_name == "After"
    with pytest.raises(InvalidArgument):
        await identity.update_organization(organization.id, ["create_time"], "x", MemberRole.OWNER)
    with pytest.raises(NotFound):
        await identity.get_organization(tokens.new_id(), None)


async def test_last_owner_protection(identity: Identity, forgotten: Forgotten) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    admin = await make_user(identity, "admin")
    await join(identity, organization, admin, MemberRole.ADMIN)

    for attempt in (
        identity.update_member(organization, owner.id, MemberRole.ADMIN, actor=MemberRole.OWNER),
        identity.delete_member(organization, owner.id, actor_id=owner.id, actor=MemberRole.OWNER),
    ):
        with pytest.raises(FailedPrecondition) as caught:
            await attempt
        assert caught.value.reason == "LAST_OWNER"
    with pytest.raises(PermissionDenied):
        await identity.update_member(organization, admin.id, MemberRole.OWNER, actor=MemberRole.ADMIN)
    with pytest.raises(PermissionDenied):
        await identity.delete_member(organization, owner.id, actor_id=admin.id, actor=MemberRole.ADMIN)

    promoted = await identity.update_member(organization, admin.id, MemberRole.OWNER, actor=MemberRole.OWNER)
    assert promoted.role == "OWNER"
    assert (f"organizations/{organization}", f"users/{admin.id}") in forgotten.roles
    await identity.delete_member(organization, owner.id, actor_id=owner.id, actor=MemberRole.OWNER)  # may leave now
    assert await identity.role(organization, owner.id) is None
    assert await identity.role(organization, admin.id) == MemberRole.OWNER
    with pytest.raises(NotFound):
        await identity.delete_member(organization, owner.id, actor_id=admin.id, actor=MemberRole.OWNER)


async def test_members_remove_themselves_and_admins_remove_others(identity: Identity) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    admin, editor, viewer = [await make_user(identity, label) for label in ("admin", "editor", "viewer")]
    await join(identity, organization, admin, MemberRole.ADMIN)
    await join(identity, organization, editor, MemberRole.EDITOR)
    await join(identity, organization, viewer, MemberRole.VIEWER)
    with pytest.raises(PermissionDenied):
        await identity.delete_member(organization, viewer.id, actor_id=editor.id, actor=MemberRole.EDITOR)
    await identity.delete_member(organization, viewer.id, actor_id=viewer.id, actor=MemberRole.VIEWER)
    await identity.delete_member(organization, editor.id, actor_id=admin.id, actor=MemberRole.ADMIN)
    page = await identity.list_members(organization, 0, "")
    assert [(member.user_id, member.role) for member in page.items] == [(owner.id, "OWNER"), (admin.id, "ADMIN")]


# ---------------------------------------------------------------- invitations


async def test_invitations(identity: Identity, sessions: async_sessionmaker[AsyncSession]) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    invitee = await make_user(identity, "invitee")
    with pytest.raises(PermissionDenied):
        await identity.create_invitation(
            organization, invitee.email, MemberRole.OWNER, actor_id=None, actor=MemberRole.ADMIN
        )
    invitation, token = await identity.create_invitation(
        organization, invitee.email.upper(), MemberRole.EDITOR, actor_id=owner.id, actor=MemberRole.OWNER
    )
    assert invitation.state == "PENDING"
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    mails = await outbox_for(sessions, invitation.email)
    assert mails[-1][0] == "invitation"
    assert token_in(mails[-1][1]) == token

    stranger = await make_user(identity, "stranger")
    with pytest.raises(PermissionDenied) as caught:
        await identity.accept_invitation(stranger.id, token)
    assert caught.value.reason == "INVITATION_EMAIL_MISMATCH"
    member = await identity.accept_invitation(invitee.id, token)  # email matches case-insensitively
    assert (member.user_id, member.role) == (invitee.id, "EDITOR")
    with pytest.raises(FailedPrecondition):
        await identity.accept_invitation(invitee.id, token)
    with pytest.raises(NotFound):
        await identity.accept_invitation(invitee.id, "not-a-token")


async def test_expired_and_revoked_invitations(identity: Identity, sessions: async_sessionmaker[AsyncSession]) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    invitee = await make_user(identity, "invitee")
    invitation, token = await identity.create_invitation(
        organization, invitee.email, MemberRole.VIEWER, actor_id=owner.id, actor=MemberRole.OWNER
    )
    async with sessions.begin() as session:
        await session.execute(
            sa.update(store.invitations)
            .where(store.invitations.c.id == invitation.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(FailedPrecondition) as caught:
        await identity.accept_invitation(invitee.id, token)
    assert caught.value.reason == "INVITATION_EXPIRED"

    second, second_token = await identity.create_invitation(
        organization, invitee.email, MemberRole.VIEWER, actor_id=owner.id, actor=MemberRole.OWNER
    )
    other_organization = (await identity.create_organization(owner.id, "Other", "")).id
    with pytest.raises(NotFound):
        await identity.delete_invitation(other_organization, second.id)  # not found from another organization
    await identity.delete_invitation(organization, second.id)
    await identity.delete_invitation(organization, second.id)
    with pytest.raises(FailedPrecondition):
        await identity.accept_invitation(invitee.id, second_token)
    listed = await identity.list_invitations(organization, 1, "")
    assert [item.id for item in listed.items] == [second.id]  # newest first
    rest = await identity.list_invitations(organization, 1, listed.next_page_token)
    assert [item.id for item in rest.items] == [invitation.id]


# ---------------------------------------------------------------- API keys


async def test_api_keys_create_authenticate_revoke(
    identity: Identity, sessions: async_sessionmaker[AsyncSession], forgotten: Forgotten
) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    with pytest.raises(InvalidArgument):
        await identity.create_api_key(organization, "ci", ["qr:read", "root"], None, actor_id=owner.id)
    with pytest.raises(InvalidArgument):
        await identity.create_api_key(
            organization, "ci", ["qr:read"], datetime.now(UTC) - timedelta(days=1), actor_id=owner.id
        )
    key, secret = await identity.create_api_key(organization, "ci", ["qr:write", "qr:read"], None, actor_id=owner.id)
    assert key.prefix == f"qrm_{key.id}"
    assert secret.startswith(key.prefix + "_")
    assert key.scopes == ("qr:read", "qr:write")
    assert key.secret_hash == tokens.hash_token(secret)
    async with sessions.begin() as session:
        leaked = await session.scalar(sa.select(sa.func.count()).where(store.api_keys.c.secret_hash == secret))
    assert leaked == 0

    found = await identity.authenticate_api_key(secret)
    assert found is not None
    assert found.id == key.id
    async with sessions.begin() as session:
        first_use = (await store.get_api_key(organization, key.id, session=session)).last_used_at  # type: ignore[union-attr]
        assert first_use is not None
        touched = await store.touch_api_key(
            key.id, session=session, now=first_use + timedelta(seconds=10), resolution=timedelta(seconds=60)
        )
    assert not touched  # at most once a minute
    assert await identity.authenticate_api_key(secret[:-1] + ("a" if secret[-1] != "a" else "b")) is None
    assert await identity.authenticate_api_key("nonsense") is None

    other_organization = (await identity.create_organization(owner.id, "Other", "")).id
    with pytest.raises(NotFound):
        await identity.delete_api_key(other_organization, key.id)
    await identity.delete_api_key(organization, key.id)
    await identity.delete_api_key(organization, key.id)  # idempotent
    assert forgotten.keys == [key.secret_hash, key.secret_hash]
    assert await identity.authenticate_api_key(secret) is None
    with pytest.raises(FailedPrecondition):
        await identity.rotate_api_key(organization, key.id, actor_id=owner.id)


async def test_api_keys_rotate_and_expire(
    identity: Identity, sessions: async_sessionmaker[AsyncSession], forgotten: Forgotten
) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    expires = datetime.now(UTC) + timedelta(days=90)
    old, old_secret = await identity.create_api_key(organization, "deploy", ["qr:read"], expires, actor_id=owner.id)
    new, new_secret = await identity.rotate_api_key(organization, old.id, actor_id=owner.id)
    assert new.id != old.id
    assert (new.display_name, new.scopes, new.expires_at) == (old.display_name, old.scopes, old.expires_at)
    assert forgotten.keys == [old.secret_hash]
    assert await identity.authenticate_api_key(old_secret) is None
    assert (found := await identity.authenticate_api_key(new_secret)) is not None
    assert found.id == new.id
    page = await identity.list_api_keys(organization, 0, "")
    assert [(item.id, item.revoked_at is None) for item in page.items] == [(new.id, True), (old.id, False)]

    async with sessions.begin() as session:
        await session.execute(
            sa.update(store.api_keys)
            .where(store.api_keys.c.id == new.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await identity.authenticate_api_key(new_secret) is None


async def test_roles_for_access(identity: Identity) -> None:
    owner = await make_user(identity, "owner")
    organization = (await identity.create_organization(owner.id, "Acme", "")).id
    assert await identity.role(organization, owner.id) == MemberRole.OWNER
    assert await identity.role(organization, tokens.new_id()) is None
    assert await identity.role(tokens.new_id(), owner.id) is None


async def test_dummy_hash_verification_costs_like_a_real_one() -> None:
    assert passwords.verify_password(passwords.dummy_hash(), PASSWORD) is False


async def test_login_throttle_keys_hide_the_subject(client: redis.Redis) -> None:
    throttle = LoginThrottle(client)
    email, address = f"{secrets.token_hex(8)}@example.com", f"198.51.100.{secrets.randbelow(250)}"
    account_key, address_key = subject_key("account", email), subject_key("address", address)
    assert account_key.startswith("qrmesh:identity:login:account:")
    assert email not in account_key
    assert address not in address_key
    first = await throttle.attempt([account_key, address_key], 1.0)
    assert first.failures == (1, 1)  # counted before the password is checked
    assert await client.hget(account_key, "failures") == b"1"
    assert 0 < await client.ttl(account_key) <= 900
    await throttle.failed(first, 1.0)
    second = await throttle.attempt([account_key, address_key], 2.0)
    assert second.failures == (2, 2)
    await throttle.succeeded(second)
    assert await client.exists(account_key) == 0  # the account's failures are forgotten
    assert await client.hget(address_key, "failures") == b"1"  # the address only gets this attempt back
    await client.delete(address_key)
    await throttle.succeeded(second)
    assert await client.hget(address_key, "failures") == b"0"  # never below 0
    await client.delete(address_key)
