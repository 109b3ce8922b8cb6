"""Signing secrets at rest: AES-256-GCM with a key from the settings (QRMESH_WEBHOOKS_SECRET_KEY), the webhook id
as associated data (a sealed secret copied to another row does not open). Without a key, secrets are stored as
issued (`whsec_...`): deliveries need the secret itself for HMAC, so it cannot be hashed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "v1:"


def parse_key(raw: str) -> bytes | None:
    """The key in QRMESH_WEBHOOKS_SECRET_KEY (base64 of 32 bytes), or None when unset; ValueError if malformed."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of 32 random bytes (e.g. `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise ValueError(f"must be base64 of 32 bytes, got {len(key)}")
    return key


def key_id(key: bytes | None) -> str:
    """A short fingerprint of the key that seals secrets ('' without one): stored next to each sealed secret,
    so a process only takes deliveries whose secret it can open. A hash of a random 32-byte key reveals nothing
    of it."""
    if key is None:
        return ""
    return hashlib.sha256(b"qrmesh-webhooks-secret-key:" + key).hexdigest()[:16]


def seal(key: bytes | None, secret: str, webhook_id: str) -> str:
    """What the database keeps of a signing secret."""
    if key is None:
        return secret
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, secret.encode(), webhook_id.encode())
    return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def unseal(key: bytes | None, stored: str, webhook_id: str) -> str:
    """The signing secret from what the database keeps; ValueError if it is sealed and cannot be opened."""
    if not stored.startswith(SEALED_PREFIX):
        return stored
    if key is None:
        raise ValueError("the secret is sealed but QRMESH_WEBHOOKS_SECRET_KEY is not set")
    raw = base64.b64decode(stored[len(SEALED_PREFIX) :])
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], webhook_id.encode()).decode()
    except InvalidTag:
        raise ValueError("the secret does not open with QRMESH_WEBHOOKS_SECRET_KEY") from None
