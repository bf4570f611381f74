"""Password hashing with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MAX_LENGTH = 1024  # bounded input: argon2 hashes any length, an attacker should not choose it
MIN_LENGTH = 12
# Verified when the user is unknown, so that a wrong name takes as long as a wrong password.
# A constant, not hashed at import: that took 0.4 s of every ``run.py`` command. Made with
# ``_hasher`` (same cost parameters; a test holds it to them) from "tie: no such user".
_DUMMY = (
    "$argon2id$v=19$m=65536,t=3,p=4$UNN9h7UmxVC+MNDb/oS9CA"
    "$NRC5nH0/59JDrDBRVGFbAEwcxuFi6U7rzlELI1JtVV8"
)


def check_length(password: str) -> None:
    """ValueError unless the password has MIN_LENGTH to MAX_LENGTH characters."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    check_length(password)
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches; a missing hash still costs one verification."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
