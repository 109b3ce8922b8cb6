"""Access tokens: Ed25519 signing keys, their rotation and publication, and JWTs signed with them."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "qrmesh"
AUDIENCE = "qrmesh"
ALGORITHM = "EdDSA"
# Verifiers accept this much clock difference between machines.
LEEWAY = timedelta(seconds=30)
# A replica may keep signing with a key it read this long before another one
# retired it (see `KeyRing`); such tokens must still verify.
KEY_CACHE_TIME = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One Ed25519 key pair as kept in the database."""

    kid: str
    private_key: Ed25519PrivateKey
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies what this one signs."""
        return self.private_key.public_key()


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed access token and when it expires."""

    token: str
    expires_at: datetime
    jti: str


def new_kid(now: datetime) -> str:
    """A key id: the creation date (for people reading logs) and random bits."""
    return f"{now:%Y%m%d}-{secrets.token_hex(4)}"


def generate_key(now: datetime) -> SigningKey:
    """A fresh key pair."""
    return SigningKey(kid=new_kid(now), private_key=Ed25519PrivateKey.generate(), created_at=now)


def private_key_to_pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted with `passphrase` when given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def private_key_from_pem(pem: bytes, passphrase: bytes | None) -> Ed25519PrivateKey:
    """The key in `pem`; the passphrase is used only if the PEM is encrypted."""
    encrypted = b"ENCRYPTED PRIVATE KEY" in pem
    key = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("stored signing key is not an Ed25519 key")
    return key


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """A public key from its 32 raw bytes."""
    return Ed25519PublicKey.from_public_bytes(raw)


def needs_rotation(created_at: datetime | None, now: datetime, rotation: timedelta) -> bool:
    """Whether a new key must be made: there is none (`created_at` None) or it is older than `rotation`."""
    return created_at is None or now - created_at >= rotation


def publication_window(access_ttl: timedelta) -> timedelta:
    """How long a retired key stays in the JWKS: past the expiry of every token it signed."""
    return KEY_CACHE_TIME + access_ttl + LEEWAY


def publish_until(retired_at: datetime, access_ttl: timedelta) -> datetime:
    """Until when a key retired at `retired_at` stays in the JWKS."""
    return retired_at + publication_window(access_ttl)


def is_published(retired_at: datetime | None, now: datetime, access_ttl: timedelta) -> bool:
    """Whether a key's public half must still be offered to verifiers."""
    return retired_at is None or now < publish_until(retired_at, access_ttl)


def jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as a JSON Web Key (RFC 8037, OKP / Ed25519)."""
    x = base64.urlsafe_b64encode(public_key_raw(public_key)).rstrip(b"=").decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def issue_access_token(key: SigningKey, *, user_id: str, session_id: str, now: datetime, ttl: timedelta) -> AccessToken:
    """A JWT for `users/{user_id}` in the session family `session_id`, signed with `key`."""
    expires_at = now + ttl
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"users/{user_id}",
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": jti,
        "sid": session_id,
    }
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    return AccessToken(token=token, expires_at=expires_at.replace(microsecond=0), jti=jti)


def verify_access_token(
    token: str, keys: Mapping[str, Ed25519PublicKey], *, now: datetime | None = None
) -> dict[str, Any]:
    """The claims of a valid token signed by one of `keys` (by `kid`); raises jwt.InvalidTokenError otherwise."""
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise jwt.InvalidTokenError("unknown signing key")
    options: dict[str, Any] = {"require": ["iss", "aud", "sub", "iat", "exp", "jti", "sid"]}
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[kid],
        algorithms=[ALGORITHM],
        audience=AUDIENCE,
        issuer=ISSUER,
        leeway=LEEWAY,
        options=options,  # type: ignore[arg-type]
    )
    return claims
