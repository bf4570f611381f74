"""The MESH test peer itself: mesh-client talks to mesh-sandbox with full HMAC auth."""

from __future__ import annotations

import pytest
from mesh_client import MeshClient
from mesh_testing import DPS, HUB, MeshSandbox
from requests import HTTPError


def test_sandbox_round_trip_with_hmac_auth(mesh_sandbox: MeshSandbox) -> None:
    with mesh_sandbox.client(HUB) as hub, mesh_sandbox.client(DPS) as dps:
        hub.handshake()
        message_id = hub.send_message(DPS, b"hello", workflow_id="TIE_TEST", filename="a.txt")
        assert dps.list_messages() == [message_id]
        received = dps.retrieve_message(message_id)
        assert (received.read(), received.filename, received.sender) == (b"hello", "a.txt", HUB)
        dps.acknowledge_message(message_id)
        assert dps.list_messages() == []


def test_sandbox_rejects_a_wrong_shared_key(mesh_sandbox: MeshSandbox) -> None:
    client = MeshClient(mesh_sandbox.url, HUB, "password", shared_key=b"wrong", max_retries=0)
    with client, pytest.raises(HTTPError) as exc:
        client.handshake()
    assert exc.value.response.status_code == 403
