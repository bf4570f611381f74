"""MESH mailbox configuration: secrets are named (env or file), never written in YAML."""

from __future__ import annotations

import pytest
import yaml
from tie_testing import channel, engine_config

from router.config import ConfigError, load_engine
from router.config.mesh import SecretUnavailable
from router.connectors.mesh.build import check_mailboxes


def _engine_yaml(tmp_path, password):
    path = tmp_path / "engine.yaml"
    mailbox = {
        "url": "https://mesh.example",
        "mailbox": "x26hub01",
        "password": password,
        "shared_key": {"file": "secrets/key"},
        "cert": "certs/client.pem",
        "key": "certs/client.key",
        "ca": "certs/ca.pem",
    }
    path.write_text(yaml.safe_dump({"mesh": {"mailboxes": {"hub": mailbox}}}))
    return path


def test_a_literal_password_is_refused_with_the_key_path(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_engine(_engine_yaml(tmp_path, "password"))
    (problem,) = exc.value.problems
    assert problem.path == "mesh.mailboxes.hub.password"
    assert "never written in configuration" in problem.message


def test_secrets_come_from_the_environment_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("BackBone\n")
    config = load_engine(_engine_yaml(tmp_path, {"env": "TIE_HUB_PASSWORD"}))
    box = config.mesh.mailboxes["hub"]
    assert box.mailbox == "X26HUB01"
    assert box.ca == tmp_path / "certs" / "ca.pem" and box.key == tmp_path / "certs/client.key"
    assert box.shared_key.value() == "BackBone"
    with pytest.raises(SecretUnavailable, match="TIE_HUB_PASSWORD is not set"):
        box.password.value()
    monkeypatch.setenv("TIE_HUB_PASSWORD", "s3cret")
    assert box.password.value() == "s3cret"


def test_a_channel_naming_an_unknown_mailbox_is_a_config_error(tmp_path):
    config = engine_config(tmp_path, "sqlite://")
    feed = channel(
        {
            "name": "in",
            "source": {"mesh": {"mailbox": "nope"}},
            "destinations": {
                "out": {"mesh": {"mailbox": "nope", "to": "X26DPS01", "workflow_id": "W"}}
            },
        }
    )
    with pytest.raises(ConfigError) as exc:
        check_mailboxes(config, {"in": feed})
    assert [p.path for p in exc.value.problems] == [
        "source.mesh.mailbox",
        "destinations.out.mesh.mailbox",
    ]
