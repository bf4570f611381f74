"""Channel files with HTTP sources: what a synchronous source refuses, one proxy at most."""

from __future__ import annotations

import textwrap

import pytest

from router.cli.checking import open_to_anyone
from router.config import ChannelConfig, ConfigError, EngineConfig, load_channels


@pytest.mark.parametrize("source", [{"http": {"bars": {}}}, {"proxy": {}}], ids=["bars", "proxy"])
@pytest.mark.parametrize(
    "extra",
    [
        {"destinations": {"x": {"http": {"url": "http://a"}}}},
        {"filter": [{"field": "MessageHeader.id", "exists": True}]},
        {"transform": "m:f"},
    ],
    ids=["destinations", "filter", "transform"],
)
def test_synchronous_sources_route_themselves(source, extra):
    with pytest.raises(ValueError, match="takes no filter, transform or destinations"):
        ChannelConfig.model_validate({"name": "sync", "source": source, **extra})


@pytest.mark.parametrize("source", [{"http": {"bars": {}}}, {"proxy": {}}], ids=["bars", "proxy"])
def test_synchronous_sources_do_not_promise_an_idempotent_receiver(source):
    with pytest.raises(ValueError, match="idempotent is not applied"):
        ChannelConfig.model_validate({"name": "sync", "source": source, "idempotent": {}})


def test_only_one_channel_is_the_booking_proxy(tmp_path):
    for name in ("proxy-a", "proxy-b"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nsource: {{proxy: {{}}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    [problem] = caught.value.problems
    assert (problem.file.endswith("proxy-b.yaml"), problem.path) == (True, "source.proxy")
    assert "only one channel can be the booking proxy (also proxy-a)" in problem.message


def test_certificate_paths_are_relative_to_the_channel_file(tmp_path):
    (tmp_path / "out.yaml").write_text(
        textwrap.dedent(
            """
            name: out
            source: {http: {bars: {tls: {ca: certs/ca.pem}}}}
            """
        )
    )
    (tmp_path / "dest.yaml").write_text(
        textwrap.dedent(
            """
            name: dest
            source: {mllp: {port: 0}}
            destinations:
              rx: {http: {url: "https://rx", tls: {cert: c.pem, key: k.pem}}}
            """
        )
    )
    channels = load_channels(tmp_path)
    assert channels["out"].source.http.bars.tls.ca == tmp_path / "certs" / "ca.pem"
    tls = channels["dest"].destinations["rx"].http.tls
    assert (tls.cert, tls.key) == (tmp_path / "c.pem", tmp_path / "k.pem")


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({"resources": ["immunization"]}, "not a FHIR resource type"),
        ({"fhir": "R5"}, "'R4' or 'STU3'"),
        ({"max_body": "lots"}, "is not a size"),
    ],
)
def test_bad_http_sources_are_refused(http, problem):
    with pytest.raises(ValueError, match=problem):
        ChannelConfig.model_validate({"name": "c", "source": {"http": http}})


@pytest.mark.parametrize("source", ["http", "proxy"])
def test_http_sources_take_senders_tokens_unless_told_otherwise(source):
    """Secure by default: a source without ``auth`` takes senders' tokens only."""
    made = ChannelConfig.model_validate({"name": "in", "source": {source: {}}})
    options = getattr(made.source, source)
    assert (options.auth, options.senders) == ("token", [])
    named = {source: {"senders": ["gp-a", "gp-b"]}}
    assert getattr(ChannelConfig.model_validate({"name": "in", "source": named}).source, source)
    with pytest.raises(ValueError, match="they need auth: token"):
        ChannelConfig.model_validate(
            {"name": "in", "source": {source: {"auth": "none", "senders": ["gp-a"]}}}
        )
    with pytest.raises(ValueError, match="auth"):
        ChannelConfig.model_validate({"name": "in", "source": {source: {"auth": "basic"}}})


@pytest.mark.parametrize(
    ("host", "warned"), [("0.0.0.0", ["open"]), ("10.1.2.3", ["open"]), ("127.0.0.1", [])]
)
def test_check_warns_of_a_source_open_to_anyone_off_loopback(tmp_path, host, warned):
    config = EngineConfig.model_validate(
        {"store": "sqlite://", "channels": str(tmp_path), "http": {"host": host, "port": 8080}}
    )
    channels = {
        name: ChannelConfig.model_validate({"name": name, "source": source})
        for name, source in (
            ("open", {"http": {"auth": "none"}}),
            ("tokens", {"http": {}}),
            ("proxy", {"proxy": {"senders": ["gp-a"]}}),
            ("orders", {"mllp": {"port": 2575}}),
        )
    }
    warnings = open_to_anyone(config, channels)
    assert [w.split()[1].rstrip(":") for w in warnings] == warned
    if warned:
        assert f"auth: none on {host}:8080" in warnings[0]
