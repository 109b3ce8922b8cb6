"""Identity rules without I/O: passwords, emails, tokens, signing keys, roles, throttling, pagination."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from qrmesh.identity import names
from qrmesh.identity.domain import api_keys, passwords, signing, tokens
from qrmesh.identity.domain.emails import email_key, is_email, normalize_email, same_email
from qrmesh.identity.domain.pagination import Cursor, decode_page_token, encode_page_token, page_size
from qrmesh.identity.domain.roles import MemberRole, check_invitation_role, check_removal, check_role_change
from qrmesh.identity.domain.throttle import ThrottlePolicy
from qrmesh.platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- passwords


def test_common_password_list_is_large_and_lowercase() -> None:
    common = passwords.common_passwords()
    assert len(common) >= 1000
    assert "password" in common
    assert all(word == word.lower() for word in list(common)[:500])


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 10"),
        ("123456789", "at least 10"),
        ("1234567890", "common"),
        ("Qwertyuiop", "common"),
        ("Alice.Smith", "email"),
        ("alice.smith@example.com", "email"),
    ],
)
def test_password_policy_refuses(password: str, problem: str) -> None:
    found = passwords.password_problem(password, "Alice.Smith@Example.com")
    assert found is not None
    assert problem in found


def test_password_policy_accepts_a_long_unusual_password() -> None:
    assert passwords.password_problem("violet-harbor-tractor-91", "alice@example.com") is None


def test_check_password_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        passwords.check_password("short", "a@example.com", field="newPassword")
    assert caught.value.reason == "WEAK_PASSWORD"
    assert caught.value.violations[0].field == "newPassword"


def test_argon2id_hash_and_verify() -> None:
    hashed = passwords.hash_password("violet-harbor-tractor-91")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password(hashed, "violet-harbor-tractor-91")
    assert not passwords.verify_password(hashed, "violet-harbor-tractor-92")
    assert not passwords.verify_password("not a hash", "anything")
    assert not passwords.needs_rehash(hashed)
    assert passwords.hash_password("violet-harbor-tractor-91") != hashed  # salted


def test_dummy_hash_is_a_real_argon2id_hash() -> None:
    assert passwords.dummy_hash().startswith("$argon2id$")
    assert not passwords.verify_password(passwords.dummy_hash(), "violet-harbor-tractor-91")


# ---------------------------------------------------------------- emails


def test_email_normalization_keeps_the_local_part_and_lowercases_the_domain() -> None:
    assert normalize_email("  Alice.Smith@Example.COM ") == "Alice.Smith@example.com"
    assert email_key("  Alice.Smith@Example.COM ") == "alice.smith@example.com"
    assert same_email("ALICE@example.com", "alice@EXAMPLE.com")
    assert not same_email("alice@example.com", "alice2@example.com")


def test_is_email() -> None:
    assert is_email("a@b.io")
    assert not is_email("a@b")
    assert not is_email("a b@c.io")
    assert not is_email("x" * 250 + "@b.io")


# ---------------------------------------------------------------- ids, tokens, API keys


def test_ids_are_short_random_base32() -> None:
    made = {tokens.new_id() for _ in range(200)}
    assert len(made) == 200
    assert all(tokens.is_id(value) and len(value) == 16 for value in made)
    assert not tokens.is_id("1")
    assert not tokens.is_id("ABCDEFGHIJKLMNOP")


def test_token_hashing_is_sha256_hex() -> None:
    token = tokens.new_token()
    assert len(token) >= 43
    assert tokens.hash_token(token) == tokens.hash_token(token)
    assert tokens.hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_api_key_secret_format_and_parse() -> None:
    key_id = tokens.new_id()
    secret = tokens.new_api_key_secret(key_id)
    prefix, got_id, random_part = secret.split("_")
    assert prefix == "qrm"
    assert got_id == key_id
    assert len(random_part) == 43
    assert random_part.isalnum()
    assert tokens.api_key_prefix(key_id) == f"qrm_{key_id}"
    assert secret.startswith(tokens.api_key_prefix(key_id) + "_")
    assert tokens.parse_api_key_secret(secret) == key_id
    assert tokens.parse_api_key_secret(secret + "x") is None
    assert tokens.parse_api_key_secret(" " + secret) is None
    assert tokens.parse_api_key_secret("qrm_short_abc") is None
    assert tokens.new_api_key_secret(key_id) != secret


def test_base62_pads_and_round_trips() -> None:
    assert tokens.base62(b"\x00", 3) == "000"
    assert tokens.base62(b"\x3d", 1) == "z"
    value = tokens.base62(b"\xff" * 32, 43)
    assert len(value) == 43


def test_scopes() -> None:
    assert api_keys.check_scopes(["qr:write", "qr:read", "qr:read"]) == ("qr:read", "qr:write")
    with pytest.raises(InvalidArgument) as caught:
        api_keys.check_scopes([])
    assert caught.value.reason == "INVALID_SCOPE"
    with pytest.raises(InvalidArgument):
        api_keys.check_scopes(["qr:read", "admin"])


def test_api_key_expiry_and_activity() -> None:
    api_keys.check_expiry(None, NOW)
    api_keys.check_expiry(NOW + timedelta(seconds=1), NOW)
    with pytest.raises(InvalidArgument):
        api_keys.check_expiry(NOW, NOW)
    assert api_keys.is_active(revoked_at=None, expires_at=None, now=NOW)
    assert not api_keys.is_active(revoked_at=NOW, expires_at=None, now=NOW)
    assert not api_keys.is_active(revoked_at=None, expires_at=NOW, now=NOW)


# ---------------------------------------------------------------- signing keys and JWTs


def test_issue_and_verify_with_the_current_key() -> None:
    key = signing.generate_key(NOW)
    now = datetime.now(UTC)
    access = signing.issue_access_token(key, user_id="abc", session_id="fam", now=now, ttl=timedelta(minutes=15))
    header = jwt.get_unverified_header(access.token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    claims = signing.verify_access_token(access.token, {key.kid: key.public_key})
    assert claims["sub"] == "users/abc"
    assert claims["sid"] == "fam"
    assert claims["iss"] == claims["aud"] == "qrmesh"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"] == access.jti


def test_tokens_of_a_rotated_key_verify_while_it_is_published() -> None:
    old = signing.generate_key(NOW - timedelta(days=31))
    new = signing.generate_key(NOW)
    now = datetime.now(UTC)
    ttl = timedelta(minutes=15)
    old_token = signing.issue_access_token(old, user_id="u", session_id="s", now=now, ttl=ttl).token
    new_token = signing.issue_access_token(new, user_id="u", session_id="s", now=now, ttl=ttl).token
    published = {old.kid: old.public_key, new.kid: new.public_key}
    assert signing.verify_access_token(old_token, published)["sub"] == "users/u"
    assert signing.verify_access_token(new_token, published)["sub"] == "users/u"
    with pytest.raises(jwt.InvalidTokenError):
        signing.verify_access_token(old_token, {new.kid: new.public_key})
    forged = signing.SigningKey(kid=new.kid, private_key=old.private_key, created_at=NOW)
    with pytest.raises(jwt.InvalidSignatureError):
        signing.verify_access_token(
            signing.issue_access_token(forged, user_id="u", session_id="s", now=now, ttl=ttl).token, published
        )


def test_expired_tokens_are_refused() -> None:
    key = signing.generate_key(NOW)
    then = datetime.now(UTC) - timedelta(hours=1)
    token = signing.issue_access_token(key, user_id="u", session_id="s", now=then, ttl=timedelta(minutes=15)).token
    with pytest.raises(jwt.ExpiredSignatureError):
        signing.verify_access_token(token, {key.kid: key.public_key})


def test_rotation_and_publication_windows() -> None:
    rotation = timedelta(days=30)
    assert signing.needs_rotation(None, NOW, rotation)
    assert not signing.needs_rotation(NOW - timedelta(days=29), NOW, rotation)
    assert signing.needs_rotation(NOW - timedelta(days=30), NOW, rotation)
    ttl = timedelta(minutes=15)
    assert signing.is_published(None, NOW, ttl)
    assert signing.is_published(NOW - ttl, NOW, ttl)  # a token signed just before retiring is still valid
    assert not signing.is_published(NOW - ttl - timedelta(minutes=5), NOW, ttl)


def test_private_keys_round_trip_encrypted_and_plain() -> None:
    key = signing.generate_key(NOW)
    encrypted = signing.private_key_to_pem(key.private_key, b"passphrase")
    assert b"ENCRYPTED PRIVATE KEY" in encrypted
    restored = signing.private_key_from_pem(encrypted, b"passphrase")
    assert signing.public_key_raw(restored.public_key()) == signing.public_key_raw(key.public_key)
    plain = signing.private_key_to_pem(key.private_key, None)
    assert b"ENCRYPTED" not in plain
    assert signing.public_key_raw(signing.private_key_from_pem(plain, b"ignored").public_key()) == (
        signing.public_key_raw(key.public_key)
    )


def test_jwk_is_rfc8037() -> None:
    key = signing.generate_key(NOW)
    jwk = signing.jwk(key.kid, key.public_key)
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["alg"] == "EdDSA"
    assert jwk["use"] == "sig"
    raw = base64.urlsafe_b64decode(jwk["x"] + "=")
    assert raw == signing.public_key_raw(key.public_key)
    assert signing.public_key_raw(signing.public_key_from_raw(raw)) == raw


# ---------------------------------------------------------------- pagination


def test_page_token_round_trip() -> None:
    cursor = Cursor(create_time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), id="abcdefghijklmnop")
    token = encode_page_token(cursor, "members:org1")
    assert decode_page_token(token, "members:org1") == cursor
    assert decode_page_token("", "members:org1") is None


@pytest.mark.parametrize("token", ["garbage!", "e30", base64.urlsafe_b64encode(b'{"s":"x","t":"a","i":1}').decode()])
def test_bad_page_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, "members:org1")
    assert caught.value.violations[0].field == "pageToken"


def test_page_tokens_do_not_cross_listings() -> None:
    token = encode_page_token(Cursor(NOW, "abcdefghijklmnop"), "members:org1")
    with pytest.raises(InvalidArgument):
        decode_page_token(token, "members:org2")


def test_page_size() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(1000) == 100


# ---------------------------------------------------------------- throttling


def test_throttle_delay_grows_after_five_failures() -> None:
    policy = ThrottlePolicy()
    assert [policy.delay(n) for n in range(4, 10)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert policy.delay(40) == policy.max_delay
    assert not policy.locks(9)
    assert policy.locks(10)


def test_throttle_retry_after() -> None:
    policy = ThrottlePolicy()
    assert policy.retry_after(failures=4, last_failure_at=100.0, locked_until=None, now=100.0) is None
    assert policy.retry_after(failures=6, last_failure_at=100.0, locked_until=None, now=100.5) == 1.5
    assert policy.retry_after(failures=6, last_failure_at=100.0, locked_until=None, now=102.0) is None
    assert policy.retry_after(failures=0, last_failure_at=None, locked_until=1000.0, now=100.0) == 900.0
    assert policy.retry_after(failures=0, last_failure_at=None, locked_until=1000.0, now=1000.0) is None


# ---------------------------------------------------------------- roles


def test_only_owners_grant_or_take_ownership() -> None:
    with pytest.raises(PermissionDenied):
        check_role_change(actor=MemberRole.ADMIN, current=MemberRole.EDITOR, new=MemberRole.OWNER, owners=1)
    with pytest.raises(PermissionDenied):
        check_role_change(actor=MemberRole.ADMIN, current=MemberRole.OWNER, new=MemberRole.ADMIN, owners=2)
    check_role_change(actor=MemberRole.OWNER, current=MemberRole.EDITOR, new=MemberRole.OWNER, owners=1)
    check_role_change(actor=MemberRole.ADMIN, current=MemberRole.VIEWER, new=MemberRole.ADMIN, owners=1)


def test_the_last_owner_cannot_be_demoted_or_leave() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_role_change(actor=MemberRole.OWNER, current=MemberRole.OWNER, new=MemberRole.ADMIN, owners=1)
    assert caught.value.reason == "LAST_OWNER"
    check_role_change(actor=MemberRole.OWNER, current=MemberRole.OWNER, new=MemberRole.ADMIN, owners=2)
    with pytest.raises(FailedPrecondition):
        check_removal(actor=MemberRole.OWNER, is_self=True, target=MemberRole.OWNER, owners=1)
    check_removal(actor=MemberRole.OWNER, is_self=True, target=MemberRole.OWNER, owners=2)


def test_removal_rules() -> None:
    check_removal(actor=MemberRole.VIEWER, is_self=True, target=MemberRole.VIEWER, owners=1)
    with pytest.raises(PermissionDenied):
        check_removal(actor=MemberRole.EDITOR, is_self=False, target=MemberRole.VIEWER, owners=1)
    for target in (MemberRole.ADMIN, MemberRole.EDITOR, MemberRole.VIEWER):
        check_removal(actor=MemberRole.ADMIN, is_self=False, target=target, owners=1)
    with pytest.raises(PermissionDenied):
        check_removal(actor=MemberRole.ADMIN, is_self=False, target=MemberRole.OWNER, owners=2)
    check_removal(actor=MemberRole.OWNER, is_self=False, target=MemberRole.OWNER, owners=2)


def test_invitation_roles() -> None:
    check_invitation_role(actor=MemberRole.ADMIN, role=MemberRole.ADMIN)
    check_invitation_role(actor=MemberRole.OWNER, role=MemberRole.OWNER)
    with pytest.raises(PermissionDenied):
        check_invitation_role(actor=MemberRole.ADMIN, role=MemberRole.OWNER)


# ---------------------------------------------------------------- resource names


def test_resource_names() -> None:
    org, key = tokens.new_id(), tokens.new_id()
    assert names.parse(names.api_key_name(org, key), "organizations/{}/apiKeys/{}", field="name") == (org, key)
    assert names.organization_id(names.organization_name(org), field="name") == org
    with pytest.raises(InvalidArgument):
        names.organization_id("organizations/../x", field="name")
    with pytest.raises(InvalidArgument):
        names.parse(f"organizations/{org}/members/{key}", "organizations/{}/apiKeys/{}", field="name")
