"""Users, roles, API tokens and console sessions (DESIGN.md §7).

Secrets are kept only as hashes: passwords with argon2 (memory-hard, slow on
purpose), tokens and session ids with SHA-256 (they are long random strings,
so a fast hash is enough and lets a request find its row by index).
"""

from router.auth.roles import ROLES, parse_roles

__all__ = ["ROLES", "parse_roles"]
