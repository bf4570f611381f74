"""Password hashing: importing hashes nothing, and an unknown user costs a real verification."""

from __future__ import annotations

import subprocess
import sys

from router.auth.passwords import _DUMMY, _hasher, hash_password, verify_password


def test_importing_computes_no_hash():
    """Every ``run.py`` command imports this module; a hash at import cost each 0.4 s."""
    probe = (
        "import argon2\n"
        "def refuse(*args, **kwargs): raise SystemExit('hashed at import')\n"
        "argon2.PasswordHasher.hash = refuse\n"
        "import router.auth.passwords\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_an_unknown_user_costs_what_a_known_one_does():
    """The stand-in hash has the hasher's own cost, so a wrong name is no faster to try."""
    assert not _hasher.check_needs_rehash(_DUMMY)
    assert _hasher.verify(_DUMMY, "tie: no such user")
    assert not verify_password(None, "tie: no such user")
    assert verify_password(hash_password("correct horse battery"), "correct horse battery")
