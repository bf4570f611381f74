"""Migrated stores for tests, copied from a template instead of migrated one by one.

Every store test used to run all the migrations from nothing: about 0.2 s a test on
SQLite and 0.5 s or more on PostgreSQL, where the migration lock also makes the test
workers wait for one another. Each worker migrates one template per dialect and every
test then gets a copy: a file copy on SQLite, the template schema's dump replayed into a
new schema on PostgreSQL. The migrations themselves are still run from nothing, here and by
the tests that ask for an empty store (the ``empty_store_url`` fixture)."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from uuid import uuid4

from psycopg.errors import DeadlockDetected
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from router.store.database import Store
from router.store.migrate import upgrade


def migrated_sqlite_file(folder: Path) -> Path:
    """A SQLite store migrated to this version's heads, to be copied for each test."""
    path = folder / "template.db"
    store = Store(f"sqlite:///{path}")
    upgrade(store)
    store.dispose()  # the last connection checkpoints the WAL into the file: one file to copy
    return path


def copy_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def schema_url(base_url: str, schema: str) -> str:
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}"


class PostgresTemplate:
    """A migrated schema's dump, replayed into a fresh schema for each test."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.placeholder = f"tpl_{uuid4().hex[:16]}"
        self.admin = create_engine(base_url)
        with self.admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.placeholder}"'))
        try:
            store = Store(schema_url(base_url, self.placeholder))
            upgrade(store)
            store.dispose()
            self.script = self._dump()
        finally:
            with self.admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.placeholder}" CASCADE'))

    def _dump(self) -> str:
        url = make_url(self.base_url)
        dumped = subprocess.run(
            [
                "pg_dump",
                "--no-owner",
                "--no-privileges",
                "--inserts",
                f"--schema={self.placeholder}",
                f"--host={url.host or '127.0.0.1'}",
                f"--port={url.port or 5432}",
                f"--username={url.username or 'postgres'}",
                url.database or "postgres",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={"PGPASSWORD": url.password or "", "PATH": "/usr/bin:/bin"},
        ).stdout
        # psql's meta-commands (\restrict) are not SQL; the schema is made by the caller.
        lines = [
            line
            for line in dumped.splitlines()
            if not line.startswith("\\") and not line.startswith("CREATE SCHEMA")
        ]
        return "\n".join(lines)

    def new_schema(self) -> str:
        """Create a schema holding a copy of the migrated template; returns its name."""
        schema = f"t_{uuid4().hex[:16]}"
        script = re.sub(rf"\b{self.placeholder}\b", schema, self.script)
        with self.admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.exec_driver_sql(script)
        return schema

    def drop_schema(self, schema: str) -> None:
        drop_schema(self.admin, schema)


def drop_schema(admin: Engine, schema: str, tries: int = 3) -> None:
    """Drop a test's schema. A session the test left finishing its work (an engine's last
    round) can deadlock with the drop, and PostgreSQL then ends one of the two: the drop,
    tried again, finds the schema free (seen once in a whole run at b327401)."""
    for attempt in range(tries):
        try:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            break
        except OperationalError as exc:
            if attempt == tries - 1 or not isinstance(exc.orig, DeadlockDetected):
                raise
    _dropped[0] += 1
    if _dropped[0] % DROPS_BETWEEN_VACUUMS == 0:
        vacuum_catalog(admin)


# Each test schema leaves about a thousand dead rows in the system catalogs. A server run
# with autovacuum off (CI's is) never reclaims them: one whole run left pg_attribute at
# 200 MB with a million dead rows, and the next run took a quarter longer.
CATALOG = (
    "pg_attribute",
    "pg_attrdef",
    "pg_class",
    "pg_constraint",
    "pg_depend",
    "pg_index",
    "pg_namespace",
    "pg_sequence",
    "pg_statistic",
    "pg_trigger",
    "pg_type",
)
DROPS_BETWEEN_VACUUMS = 100
_dropped = [0]


def vacuum_catalog(admin: Engine, *, full: bool = False) -> None:
    """Reclaim the catalog rows dropped schemas left; ``full`` also gives the space back
    (it locks the catalog a moment: for the start of a run, before the workers)."""
    tables = ", ".join(f"pg_catalog.{table}" for table in CATALOG)
    with admin.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"VACUUM {'FULL ' if full else ''}{tables}")


@cache
def pg_dump_available() -> bool:
    return shutil.which("pg_dump") is not None
