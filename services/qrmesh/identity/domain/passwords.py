"""Password policy and argon2id hashing."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from qrmesh.platform.errors import InvalidArgument

MIN_LENGTH = 10

# argon2id with the library's defaults (RFC 9106's second recommended option:
# t=3, m=64 MiB, p=4). Changing them is safe: old hashes verify and are
# re-hashed at the next login (`needs_rehash`).
_HASHER = PasswordHasher()


@cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords from leaked lists, lowercased (zxcvbn's frequency list)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    words: list[str] = FREQUENCY_LISTS["passwords"]
    return frozenset(word.lower() for word in words)


def password_problem(password: str, email: str) -> str | None:
    """Why `password` is not acceptable for the account `email`, or None if it is."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters long"
    lowered = password.lower()
    if lowered in common_passwords():
        return "is one of the most common passwords; choose another"
    local = email.strip().rpartition("@")[0].lower()
    if local and lowered == local:
        return "must not be the same as your email address"
    if lowered == email.strip().lower():
        return "must not be the same as your email address"
    return None


def check_password(password: str, email: str, *, field: str) -> None:
    """Raise InvalidArgument (reason WEAK_PASSWORD) on `field` if the policy refuses `password`."""
    problem = password_problem(password, email)
    if problem is not None:
        raise InvalidArgument.field(field, problem, reason="WEAK_PASSWORD")


def hash_password(password: str) -> str:
    """An argon2id hash of `password` (PHC string with its own salt and parameters)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; never raises for a wrong or malformed hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with parameters other than today's."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@cache
def dummy_hash() -> str:
    """A hash to verify against when the account does not exist, so timing does not tell."""
    return _HASHER.hash("qrmesh-no-such-account-placeholder")
