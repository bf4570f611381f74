"""Shared fixtures: a store on SQLite and on the local PostgreSQL, sample messages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from uuid import uuid4

import pytest
from argon2 import PasswordHasher
from sqlalchemy import create_engine, text
from store_templates import (
    PostgresTemplate,
    copy_sqlite,
    drop_schema,
    migrated_sqlite_file,
    pg_dump_available,
    schema_url,
    vacuum_catalog,
)

from router.auth import passwords
from router.store.database import Store
from router.store.migrate import upgrade

PG_URL = os.environ.get("TIE_TEST_POSTGRES", "postgresql+psycopg://root@127.0.0.1:5432/test")
DATA = Path(__file__).parent / "data"


@cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}: {exc}"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any worker starts, give back the catalog space earlier runs' schemas left
    (tests/store_templates.py says why); each worker keeps it small from then on."""
    if hasattr(session.config, "workerinput") or postgres_problem():
        return
    admin = create_engine(PG_URL)
    try:
        vacuum_catalog(admin, full=True)
    finally:
        admin.dispose()


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashes() -> Iterator[None]:
    """Passwords made in the test process are hashed at argon2's lowest cost, and verified
    at it (a hash carries its parameters): at the engine's own cost (64 MiB, three passes)
    hashing took a fifth of the console tests' time. tests/unit/test_passwords.py holds the
    engine to its real cost; a ``run.py`` started as a process hashes at it."""
    real = passwords._hasher
    passwords._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    yield
    passwords._hasher = real


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This worker's migrated SQLite store, copied for each test (tests/store_templates.py)."""
    return migrated_sqlite_file(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_template() -> PostgresTemplate | None:
    """This worker's migrated PostgreSQL schema as a script, or None without pg_dump."""
    if postgres_problem() or not pg_dump_available():
        return None
    return PostgresTemplate(PG_URL)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_template: PostgresTemplate | None,
) -> Iterator[str]:
    """A fresh store migrated to this version: a SQLite file, or a private schema in
    PostgreSQL. A test of what happens to a store no tie has migrated asks for
    ``empty_store_url``."""
    if request.param == "sqlite":
        yield copy_sqlite(sqlite_template, tmp_path / "tie.db")
        return
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    if postgres_template is None:
        with _empty_schema() as url:
            Store(url).dispose()
            migrated = Store(url)
            upgrade(migrated)
            migrated.dispose()
            yield url
        return
    schema = postgres_template.new_schema()
    try:
        yield schema_url(PG_URL, schema)
    finally:
        postgres_template.drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database no tie has migrated: a SQLite file, or a private schema in
    PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tie.db'}"
        return
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    with _empty_schema() as url:
        yield url


@contextmanager
def _empty_schema() -> Iterator[str]:
    schema = f"t_{uuid4().hex[:16]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(PG_URL, schema)
    finally:
        drop_schema(admin, schema)
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store, disposed after the test."""
    s = Store(store_url, busy_timeout=5.0)
    upgrade(s)
    yield s
    s.dispose()


@pytest.fixture
def hl7_samples() -> dict[str, bytes]:
    """The public HL7 v2 samples in tests/data/hl7v2, by file stem."""
    return {p.stem: p.read_bytes() for p in sorted((DATA / "hl7v2").glob("*.hl7"))}


@pytest.fixture
def postgres_url() -> str:
    """The local PostgreSQL server's URL, for a test that needs a database of its own."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    return PG_URL


@pytest.fixture
def bars_samples() -> dict[str, dict]:
    """The BaRS samples in tests/data/bars (published defects fixed), parsed, by file stem."""
    import json

    return {p.stem: json.loads(p.read_text()) for p in sorted((DATA / "bars").glob("*.json"))}
