"""Fixtures for MESH tests: one mesh-sandbox for the session, mailboxes emptied per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_testing import DPS, HUB, LAB, PCSE, MeshSandbox


@pytest.fixture(scope="session")
def mesh_sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshSandbox]:
    sandbox = MeshSandbox(Path(tmp_path_factory.mktemp("mesh-sandbox")))
    yield sandbox
    sandbox.stop()


@pytest.fixture
def mesh_sandbox(mesh_sandbox_server: MeshSandbox) -> MeshSandbox:
    """The session's sandbox with the test mailboxes emptied."""
    mesh_sandbox_server.reset(HUB, DPS, PCSE, LAB)
    return mesh_sandbox_server
