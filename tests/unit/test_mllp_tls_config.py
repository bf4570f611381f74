"""The ``tls`` settings of MLLP sources and destinations: paths relative to the channel file,
and ``run.py check`` naming the file and key of a certificate that cannot be used."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tie_testing import Certificates, Revocations, make_certificates, make_revocations

from router.cli import main
from router.config import ConfigError, load_channel
from router.connectors.mllp.tls import TlsFileError, channel_tls_problems, server_context

ENGINE_YAML = "store: sqlite:///data/tie.db\nchannels: ../channels\nmappings: ../mappings\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def channel_yaml(source_tls: str, destination_tls: str = "") -> str:
    dest = f", tls: {destination_tls}" if destination_tls else ""
    return (
        "name: secure\n"
        f"source:\n  mllp: {{port: 2575, tls: {source_tls}}}\n"
        f"destinations:\n  lab:\n    mllp: {{host: lab.example.org, port: 2576{dest}}}\n"
    )


def layout(tmp_path: Path, channel: str) -> Path:
    (tmp_path / "channels").mkdir(exist_ok=True)
    (tmp_path / "mappings").mkdir(exist_ok=True)
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "channels" / "secure.yaml").write_text(channel)
    engine_yaml = tmp_path / "config" / "engine.yaml"
    engine_yaml.write_text(ENGINE_YAML)
    return engine_yaml


def check(tmp_path: Path, channel: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--config", str(layout(tmp_path, channel)), "check"])
    return code, capsys.readouterr().err


def test_paths_are_relative_to_the_channel_file(tmp_path):
    path = tmp_path / "channels" / "secure.yaml"
    path.parent.mkdir()
    path.write_text(
        channel_yaml(
            "{cert: tls/server.pem, key: tls/server.key, client_ca: tls/ca.pem}",
            "{ca: ../ca/lab.pem, cert: tls/client.pem, key: tls/client.key}",
        )
    )
    config = load_channel(path)
    source = config.source.mllp.tls
    target = config.destinations["lab"].mllp.tls
    assert (source.cert, source.key, source.client_ca) == tuple(
        path.parent / "tls" / name for name in ("server.pem", "server.key", "ca.pem")
    )
    assert target.ca == tmp_path / "ca" / "lab.pem"
    assert (target.cert, target.key) == (
        path.parent / "tls" / "client.pem",
        path.parent / "tls" / "client.key",
    )


@pytest.mark.parametrize(
    ("tls", "where", "message"),
    [
        (
            "{cert: s.pem, require_client_cert: true}",
            "source.mllp.tls",
            "require_client_cert needs client_ca",
        ),
        ("{cert: s.pem, key_password_env: 'not a name'}", "source.mllp.tls.key_password_env", ""),
        ("{cert: s.pem, passphrase: secret}", "source.mllp.tls.passphrase", "unknown key"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, tls, where, message):
    path = tmp_path / "secure.yaml"
    path.write_text(channel_yaml(tls))
    with pytest.raises(ConfigError) as caught:
        load_channel(path)
    [problem] = caught.value.problems
    assert problem.path == where
    assert message in problem.message


def test_a_destination_key_needs_its_certificate(tmp_path):
    path = tmp_path / "secure.yaml"
    path.write_text(channel_yaml("{cert: s.pem}", "{key: c.key}"))
    with pytest.raises(ConfigError) as caught:
        load_channel(path)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("destinations.lab.mllp.tls", "key and key_password_env need cert: the client certificate")
    ]


def test_check_accepts_certificates_that_load(tmp_path, certs, capsys):
    channel = channel_yaml(
        f"{{cert: {certs.server_cert}, key: {certs.server_key}, client_ca: {certs.ca},"
        " require_client_cert: true}",
        f"{{ca: {certs.ca}, cert: {certs.client_cert}, key: {certs.client_key}}}",
    )
    code, err = check(tmp_path, channel, capsys)
    assert (code, err) == (0, "")


def test_check_names_the_file_and_key_of_each_unusable_certificate(tmp_path, certs, capsys):
    missing = tmp_path / "nowhere.pem"
    channel = channel_yaml(
        f"{{cert: {certs.server_cert}, key: {certs.client_key}}}",  # another certificate's key
        f"{{ca: {missing}}}",
    )
    code, err = check(tmp_path, channel, capsys)
    file = tmp_path / "channels" / "secure.yaml"
    assert code == 2
    assert (
        f"{file}: source.mllp.tls.key: {certs.client_key}: the key does not match "
        f"{certs.server_cert}"
    ) in err
    assert f"{file}: destinations.lab.mllp.tls.ca: {missing}: no such file" in err


def test_check_names_a_file_that_holds_no_certificate(tmp_path, certs, capsys):
    channel = channel_yaml(f"{{cert: {certs.server_key}, key: {certs.server_key}}}")
    code, err = check(tmp_path, channel, capsys)
    assert code == 2
    assert f"source.mllp.tls.cert: {certs.server_key}: no PEM certificate could be read" in err


def test_an_encrypted_key_is_opened_with_the_passphrase_from_the_environment(
    tmp_path, certs, monkeypatch
):
    encrypted = tmp_path / "server.key"
    openssl = ["openssl", "pkey", "-in", str(certs.server_key), "-aes256"]
    openssl += ["-passout", "pass:s3cret", "-out", str(encrypted)]
    subprocess.run(openssl, check=True, capture_output=True)
    path = tmp_path / "secure.yaml"
    path.write_text(
        channel_yaml(
            f"{{cert: {certs.server_cert}, key: {encrypted}, key_password_env: TIE_TEST_KEY}}"
        )
    )
    config = load_channel(path)
    monkeypatch.delenv("TIE_TEST_KEY", raising=False)
    assert channel_tls_problems(config) == [
        ("source.mllp.tls.key_password_env", "environment variable TIE_TEST_KEY is not set")
    ]
    monkeypatch.setenv("TIE_TEST_KEY", "wrong")
    [(key, message)] = channel_tls_problems(config)
    assert key == "source.mllp.tls.key"
    assert "the private key cannot be read" in message
    monkeypatch.setenv("TIE_TEST_KEY", "s3cret")
    assert channel_tls_problems(config) == []
    without = config.source.mllp.tls.model_copy(update={"key_password_env": None})
    with pytest.raises(TlsFileError, match="an encrypted key needs key_password_env"):
        server_context(without)  # never a passphrase prompt on the terminal


@pytest.fixture(scope="module")
def revocations(tmp_path_factory: pytest.TempPathFactory) -> Revocations:
    return make_revocations(tmp_path_factory.mktemp("crl"))


def _crl_source(certs: Certificates, crl: Path) -> str:
    return (
        f"{{cert: {certs.server_cert}, key: {certs.server_key}, client_ca: {certs.ca},"
        f" require_client_cert: true, crl: {crl}}}"
    )


def test_a_crl_needs_client_ca(tmp_path, certs):
    path = tmp_path / "secure.yaml"
    path.write_text(channel_yaml(f"{{cert: {certs.server_cert}, crl: clients.crl}}"))
    with pytest.raises(ConfigError, match="crl needs client_ca"):
        load_channel(path)


def test_check_names_a_crl_file_that_holds_no_crl(tmp_path, revocations, capsys):
    certs = revocations.certs
    code, err = check(tmp_path, channel_yaml(_crl_source(certs, certs.ca)), capsys)
    assert code == 2
    assert f"source.mllp.tls.crl: {certs.ca}: no PEM CRL in it" in err


def test_check_accepts_a_crl_and_fails_on_one_past_its_next_update(tmp_path, revocations, capsys):
    """Past its nextUpdate, OpenSSL refuses every client certificate ("CRL has expired"):
    an error, as an expired certificate is; a warning on a disabled channel."""
    certs = revocations.certs
    assert check(tmp_path, channel_yaml(_crl_source(certs, revocations.listed)), capsys) == (0, "")
    stale = channel_yaml(_crl_source(certs, revocations.stale))
    code, err = check(tmp_path, stale, capsys)
    assert code == 2
    assert (
        f"source.mllp.tls.crl: {revocations.stale}: the CRL's nextUpdate was 2025-01-02 00:00 "
        "UTC: every client certificate is refused until a newer CRL is in place"
    ) in err
    code = main(["--config", str(layout(tmp_path, "enabled: false\n" + stale)), "check"])
    out = capsys.readouterr().out
    file = tmp_path / "channels" / "secure.yaml"
    assert code == 0
    assert (
        f"warning  {file}: source.mllp.tls.crl: {revocations.stale}: the CRL's nextUpdate was "
        "2025-01-02 00:00 UTC: every client certificate is refused until a newer CRL is in place"
    ) in out.splitlines()
