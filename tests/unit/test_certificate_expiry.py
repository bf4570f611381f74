"""When the certificates the engine presents expire: the dates read from their files, the
``/metrics`` gauge that follows a renewal in place, ``run.py check``'s warning and failure,
and the engine's log at start (router/certificate_expiry.py); and when the CA bundles it
verifies peers with stop verifying some (router/ca_expiry.py)."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from router.ca_expiry import bundle_findings, trusted_bundles
from router.certificate_expiry import log_expiring, not_after, presented_certificates
from router.cli import main
from router.config import load_channel
from router.config.mesh import MeshOptions
from router.metrics import CertificateCollector

GAUGE = "tie_tls_certificate_expiry_timestamp_seconds"
CA_GAUGE = "tie_tls_ca_certificate_expiry_timestamp_seconds"
TRUST_END_GAUGE = "tie_tls_ca_bundle_trust_end_timestamp_seconds"


class Issued(NamedTuple):
    soon: Path  # self-signed, 3 days
    far: Path  # self-signed, 10,000 days (past 2049: a GeneralizedTime)
    chain: Path  # far's certificate, then soon's as if its intermediate
    expired: Path  # valid in January 2025 only
    key: Path  # soon's key (check loads each pair)
    expired_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    folder = tmp_path_factory.mktemp("expiry")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for name, days in (("soon", "3"), ("far", "10000")):
        subject = ["-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem"]
        _openssl("req", "-x509", *new_key, "-days", days, *subject, cwd=folder)
    chain = (folder / "far.pem").read_bytes() + (folder / "soon.pem").read_bytes()
    (folder / "chain.pem").write_bytes(chain)
    # openssl req and x509 take no date in the past: openssl ca does (a throwaway database).
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("01\n")
    (folder / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n"
        "serial = serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n"
    )
    subject = ["-subj", "/CN=expired", "-keyout", "expired.key", "-out", "expired.csr"]
    _openssl("req", *new_key, *subject, cwd=folder)
    signing = ["-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "expired.key", "-notext"]
    dates = ["-startdate", "20250101000000Z", "-enddate", "20250201000000Z"]
    _openssl("ca", *signing, *dates, "-in", "expired.csr", "-out", "expired.pem", cwd=folder)
    names = ("soon.pem", "far.pem", "chain.pem", "expired.pem", "soon.key", "expired.key")
    return Issued(*(folder / name for name in names))


def _openssl_not_after(path: Path) -> datetime:
    """What openssl says, the independent reading."""
    out = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-enddate"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]), UTC)


def test_the_expiry_is_the_earliest_of_the_files_certificates_as_openssl_reads_them(issued):
    soon, far = _openssl_not_after(issued.soon), _openssl_not_after(issued.far)
    assert far.year > 2049 and soon < far
    assert not_after(issued.soon.read_bytes()) == soon
    assert not_after(issued.far.read_bytes()) == far
    assert not_after(issued.chain.read_bytes()) == soon  # the intermediate expires first
    assert not_after(issued.expired.read_bytes()) == datetime(2025, 2, 1, tzinfo=UTC)


def _secure_channel(folder: Path, cert: Path, *, key: Path | None = None) -> Path:
    path = folder / "channels" / "secure.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tls = f"{{cert: {cert}, key: {key}}}" if key else f"{{cert: {cert}}}"
    path.write_text(
        "name: secure\n"
        f"source:\n  mllp: {{port: 2575, tls: {tls}}}\n"
        "destinations:\n"
        f"  lab:\n    mllp: {{host: lab.example.org, port: 2576, tls: {tls}}}\n"
        f"  ris:\n    http: {{url: 'https://ris.example.org/fhir', tls: {{cert: {cert}}}}}\n"
        "  archive:\n    file: {directory: out}\n"
    )
    return path


def test_every_certificate_the_engine_presents_is_named(tmp_path, issued):
    channel = load_channel(_secure_channel(tmp_path, issued.soon))
    mesh = MeshOptions.model_validate(
        {
            "mailboxes": {
                "trust": {
                    "url": "https://mesh.example.org",
                    "mailbox": "X26HUB01",
                    "password": {"env": "P"},
                    "shared_key": {"env": "K"},
                    "cert": str(issued.far),
                }
            }
        }
    )
    found = presented_certificates([channel], mesh)
    assert [(p.channel, p.destination, p.mailbox, p.role, p.setting, p.file) for p in found] == [
        ("secure", "", "", "mllp_server", "source.mllp.tls.cert", issued.soon),
        ("secure", "lab", "", "mllp_client", "destinations.lab.mllp.tls.cert", issued.soon),
        ("secure", "ris", "", "https_client", "destinations.ris.http.tls.cert", issued.soon),
        ("", "", "trust", "mesh_client", "mesh.mailboxes.trust.cert", issued.far),
    ]


def _gauge(collector: CertificateCollector) -> dict[tuple[str, ...], float]:
    family, *_ = collector.collect()
    assert family.name == GAUGE
    return {
        tuple(s.labels[k] for k in ("channel", "destination", "mailbox", "role", "file")): s.value
        for s in family.samples
    }


def test_the_gauge_follows_a_certificate_renewed_in_place(tmp_path, issued):
    """MLLP sources take renewed files without a reload: the gauge reads the file again
    once it changed, and has no sample for a file that is gone."""
    cert = tmp_path / "server.pem"
    shutil.copyfile(issued.soon, cert)
    channel = load_channel(_secure_channel(tmp_path, cert))
    source = [p for p in presented_certificates([channel], MeshOptions()) if not p.destination]
    collector = CertificateCollector(lambda: source)
    labels = ("secure", "", "", "mllp_server", str(cert))

    assert _gauge(collector) == {labels: _openssl_not_after(issued.soon).timestamp()}
    shutil.copyfile(issued.far, cert)
    assert _gauge(collector) == {labels: _openssl_not_after(issued.far).timestamp()}
    cert.unlink()
    assert _gauge(collector) == {}


def _engine_yaml(folder: Path) -> Path:
    (folder / "config").mkdir(exist_ok=True)
    (folder / "mappings").mkdir(exist_ok=True)
    engine_yaml = folder / "config" / "engine.yaml"
    engine_yaml.write_text(
        "store: sqlite:///data/tie.db\nchannels: ../channels\nmappings: ../mappings\n"
    )
    return engine_yaml


def _check(folder: Path, cert: Path, key: Path) -> int:
    _secure_channel(folder, cert, key=key)
    return main(["--config", str(_engine_yaml(folder)), "check"])


def test_check_warns_of_a_certificate_expiring_within_14_days(tmp_path, issued, capsys):
    code = _check(tmp_path, issued.soon, issued.key)
    out, err = capsys.readouterr()
    file = tmp_path / "channels" / "secure.yaml"
    expiry = _openssl_not_after(issued.soon).strftime("%Y-%m-%d %H:%M UTC")
    assert code == 0 and "error" not in err
    assert (
        f"warning  {file}: source.mllp.tls.cert: {issued.soon}: the certificate expires on "
        f"{expiry} (in 2 days)"
    ) in out.splitlines()
    assert f"warning  {file}: destinations.lab.mllp.tls.cert: {issued.soon}" in out


def test_check_fails_on_an_expired_certificate_naming_its_file_and_key(tmp_path, issued, capsys):
    code = _check(tmp_path, issued.expired, issued.expired_key)
    _, err = capsys.readouterr()
    file = tmp_path / "channels" / "secure.yaml"
    assert code == 2
    assert (
        f"{file}: source.mllp.tls.cert: {issued.expired}: the certificate expired on "
        "2025-02-01 00:00 UTC"
    ) in err.splitlines()


def test_an_expired_certificate_of_a_disabled_channel_is_a_warning(tmp_path, issued, capsys):
    """It runs nowhere: the start takes only enabled channels."""
    channel = _secure_channel(tmp_path, issued.expired, key=issued.expired_key)
    channel.write_text(channel.read_text() + "enabled: false\n")
    code = main(["--config", str(_engine_yaml(tmp_path)), "check"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert (
        f"warning  {channel}: source.mllp.tls.cert: {issued.expired}: the certificate expired"
        in out
    )


def test_the_engine_logs_each_certificate_expired_or_expiring_at_its_start(
    tmp_path, issued, caplog
):
    channel = load_channel(_secure_channel(tmp_path, issued.soon))
    found = presented_certificates([channel], MeshOptions())
    soon = _openssl_not_after(issued.soon)
    log = logging.getLogger("tie.test.expiry")
    with caplog.at_level(logging.INFO, logger=log.name):
        log_expiring(log, found[:1], soon - timedelta(days=15))  # not yet within 14 days
        log_expiring(log, found[:1], soon - timedelta(days=3, hours=1))
        log_expiring(log, found[:1], soon + timedelta(seconds=1))
    day = soon.strftime("%Y-%m-%d %H:%M UTC")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"channel secure: source.mllp.tls.cert: {issued.soon}: the certificate expires on "
            f"{day} (in 3 days)",
        ),
        (
            "ERROR",
            f"channel secure: source.mllp.tls.cert: {issued.soon}: the certificate expired on "
            f"{day}",
        ),
    ]


# --- the CA bundles the engine verifies peers with (router/ca_expiry.py) --------------------


def _bundle(folder: Path, *certs: Path) -> Path:
    path = folder / "bundle.pem"
    path.write_bytes(b"".join(c.read_bytes() for c in certs))
    return path


def _trusting_channel(folder: Path, bundle: Path) -> Path:
    path = folder / "channels" / "trusting.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "name: trusting\n"
        f"source:\n  mllp: {{port: 2575, tls: {{cert: {bundle.parent / 'far.pem'}, "
        f"key: {bundle.parent / 'far.key'}, client_ca: {bundle}}}}}\n"
        "destinations:\n"
        f"  lab:\n    mllp: {{host: lab.example.org, port: 2576, tls: {{ca: {bundle}}}}}\n"
        f"  ris:\n    http: {{url: 'https://ris.example.org/fhir', tls: {{ca: {bundle}}}}}\n"
    )
    return path


def _ca_gauges(collector: CertificateCollector) -> tuple[list[tuple[str, float]], list[float]]:
    """(subject, expiry) of each CA certificate, and each bundle's trust end."""
    _, certificates, ends, _ = collector.collect()
    assert (certificates.name, ends.name) == (CA_GAUGE, TRUST_END_GAUGE)
    return (
        [(s.labels["subject"], s.value) for s in certificates.samples],
        [s.value for s in ends.samples],
    )


def _alerting(collector: CertificateCollector, now: datetime) -> bool:
    """TieCaBundleTrustEnds' expression, as Prometheus evaluates it at ``now``."""
    _, ends = _ca_gauges(collector)
    return any(value - now.timestamp() < 14 * 86400 for value in ends)


def test_every_ca_bundle_the_engine_verifies_peers_with_is_named(issued):
    channel = load_channel(_trusting_channel(issued.far.parent, issued.far))
    mesh = MeshOptions.model_validate(
        {
            "mailboxes": {
                "trust": {
                    "url": "https://mesh.example.org",
                    "mailbox": "X26HUB01",
                    "password": {"env": "P"},
                    "shared_key": {"env": "K"},
                    "ca": str(issued.soon),
                }
            }
        }
    )
    found = trusted_bundles([channel], mesh)
    assert [(p.channel, p.destination, p.mailbox, p.role, p.setting, p.file) for p in found] == [
        ("trusting", "", "", "mllp_server", "source.mllp.tls.client_ca", issued.far),
        ("trusting", "lab", "", "mllp_client", "destinations.lab.mllp.tls.ca", issued.far),
        ("trusting", "ris", "", "https_client", "destinations.ris.http.tls.ca", issued.far),
        ("", "", "trust", "mesh_client", "mesh.mailboxes.trust.ca", issued.soon),
    ]


def test_an_expired_old_root_beside_a_valid_one_is_reported_and_raises_no_alarm(tmp_path, issued):
    """The old root is on /metrics with its date, but the bundle verifies its peers for
    years yet: no alert, no warning."""
    bundle = _bundle(tmp_path, issued.expired, issued.far)
    channel = load_channel(_trusting_channel(tmp_path, bundle))
    collector = CertificateCollector(lambda: [], lambda: trusted_bundles([channel], MeshOptions()))
    certificates, ends = _ca_gauges(collector)
    far = _openssl_not_after(issued.far).timestamp()
    assert certificates[:2] == [
        ("CN=expired", datetime(2025, 2, 1, tzinfo=UTC).timestamp()),
        ("CN=far", far),
    ]
    assert ends == [far, far, far]
    assert not _alerting(collector, datetime.now(UTC))
    assert bundle_findings(trusted_bundles([channel], MeshOptions()), datetime.now(UTC)) == []


def test_a_bundle_whose_only_ca_expires_soon_alerts_and_check_warns(tmp_path, issued, capsys):
    bundle = _bundle(tmp_path, issued.soon)
    channel_file = _trusting_channel(tmp_path, bundle)
    channel = load_channel(channel_file)
    collector = CertificateCollector(lambda: [], lambda: trusted_bundles([channel], MeshOptions()))
    assert _alerting(collector, datetime.now(UTC))

    shutil.copyfile(issued.far, tmp_path / "far.pem")
    shutil.copyfile(issued.far.with_suffix(".key"), tmp_path / "far.key")
    code = main(["--config", str(_engine_yaml(tmp_path)), "check"])
    out, _ = capsys.readouterr()
    day = _openssl_not_after(issued.soon).strftime("%Y-%m-%d %H:%M UTC")
    assert code == 0
    assert (
        f"warning  {channel_file}: source.mllp.tls.client_ca: {bundle}: the CA CN=soon expires "
        f"on {day}, and the bundle holds no later certificate of it"
    ) in out.splitlines()


def test_a_ca_of_the_bundle_expiring_alerts_though_another_is_valid(tmp_path, issued):
    """Two senders' CAs in one client_ca: the one that expires soon refuses its senders
    then, whatever the other's date."""
    bundle = _bundle(tmp_path, issued.far, issued.soon)
    channel = load_channel(_trusting_channel(tmp_path, bundle))
    collector = CertificateCollector(lambda: [], lambda: trusted_bundles([channel], MeshOptions()))
    soon = _openssl_not_after(issued.soon)
    assert _ca_gauges(collector)[1] == [soon.timestamp()] * 3
    assert _alerting(collector, datetime.now(UTC))
    [first, *_] = bundle_findings(trusted_bundles([channel], MeshOptions()), datetime.now(UTC))
    assert "the CA CN=soon expires" in first.text


def test_a_bundle_with_every_ca_expired_alerts_and_check_warns(tmp_path, issued, capsys):
    bundle = _bundle(tmp_path, issued.expired)
    channel = load_channel(_trusting_channel(tmp_path, bundle))
    collector = CertificateCollector(lambda: [], lambda: trusted_bundles([channel], MeshOptions()))
    assert _alerting(collector, datetime.now(UTC))
    [first, *_] = bundle_findings(trusted_bundles([channel], MeshOptions()), datetime.now(UTC))
    assert first.text == (
        f"{bundle}: every CA certificate in it has expired (the last on 2025-02-01 00:00 UTC): "
        "no peer can be verified"
    )
