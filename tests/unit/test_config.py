"""engine.yaml and channel files: the documented shapes load, and every error says where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.cli import build_parser, main
from router.config import (
    FILE_NAME_FIELDS,
    TRANSPORTS,
    ChannelConfig,
    ConfigError,
    RetryPolicy,
    load_channel,
    load_channels,
    load_engine,
)
from router.connectors import Delivery
from router.connectors.file import render_name
from router.engine import compile_channels
from router.units import parse_duration, parse_size

# The shapes quoted in issue 2, item 3, verbatim.
ENGINE_YAML = """\
# engine.yaml
store: sqlite:///data/tie.db          # or postgresql+psycopg://user@host/db
channels: ../channels
mappings: ../mappings
http: {host: 127.0.0.1, port: 8080}
"""
LAB_ORDERS_YAML = """\
# channels/lab-orders.yaml
name: lab-orders
source:
  mllp: {host: 127.0.0.1, port: 2575}
filter:
  - field: MSH-9.1
    in: [OML, ORM]
destinations:
  lab:
    mllp: {host: 127.0.0.1, port: 2576}
    retry: {max_attempts: 10, backoff: [1s, 5m]}
"""
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_store_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIE_STORE", raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def layout(tmp_path: Path, channels: dict[str, str] | None = None) -> Path:
    """A checkout-like tree: config/engine.yaml, channels/, mappings/; returns engine.yaml."""
    for name, text in (channels or {"lab-orders": LAB_ORDERS_YAML}).items():
        write(tmp_path / "channels" / f"{name}.yaml", text)
    (tmp_path / "mappings").mkdir(exist_ok=True)
    return write(tmp_path / "config" / "engine.yaml", ENGINE_YAML)


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[tuple[str, str, str]]:
    return [(Path(p.file).name, p.path, p.message) for p in error.value.problems]


def channel_problems(tmp_path: Path, text: str, name: str = "demo") -> list[tuple[str, str]]:
    path = write(tmp_path / f"{name}.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_channel(path)
    assert all(p.file == str(path) for p in caught.value.problems)
    return [(p.path, p.message) for p in caught.value.problems]


# --- the documented shapes -------------------------------------------------------


def test_the_issue_engine_yaml_loads_with_paths_relative_to_its_folder(tmp_path, monkeypatch):
    engine_yaml = layout(tmp_path)
    monkeypatch.chdir(tmp_path / "channels")  # the working folder must not matter
    config = load_engine(engine_yaml)
    config_dir = (tmp_path / "config").resolve()
    assert config.store == f"sqlite:///{config_dir / 'data' / 'tie.db'}"
    assert config.channels == (tmp_path / "channels").resolve()
    assert config.mappings == (tmp_path / "mappings").resolve()
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.base_dir == config_dir


def test_the_issue_channel_yaml_loads(tmp_path):
    config = load_channel(write(tmp_path / "lab-orders.yaml", LAB_ORDERS_YAML))
    assert config.name == "lab-orders"
    assert config.source.kind == "mllp"
    assert (config.source.mllp.host, config.source.mllp.port) == ("127.0.0.1", 2575)
    assert config.source.mllp.max_frame == 10 * 1024 * 1024
    [condition] = config.filter
    assert (condition.field, condition.in_) == ("MSH-9.1", ["OML", "ORM"])
    lab = config.destinations["lab"]
    assert lab.kind == "mllp" and lab.is_ordered
    assert (lab.mllp.host, lab.mllp.port) == ("127.0.0.1", 2576)
    assert lab.retry == RetryPolicy(max_attempts=10, backoff=(1.0, 300.0))


def test_a_channel_without_destinations_loads(tmp_path):
    text = LAB_ORDERS_YAML.split("destinations:")[0] + "destinations: {}\n"
    assert load_channel(write(tmp_path / "lab-orders.yaml", text)).destinations == {}


def test_the_bundled_configuration_loads_and_compiles():
    config = load_engine(REPO / "config" / "engine.yaml")
    channels = load_channels(config.channels)
    assert set(channels) >= {"lab-orders", "lab-results"}
    assert set(compile_channels(config, channels)) >= {"lab-orders", "lab-results"}


def test_postgresql_and_absolute_sqlite_urls_are_kept(tmp_path):
    for url in (
        "postgresql+psycopg://tie@db.example/tie",
        f"sqlite:///{tmp_path / 'abs.db'}",
        "sqlite:///:memory:",
    ):
        path = write(tmp_path / "engine.yaml", f"store: '{url}'\n")
        assert load_engine(path).store == url


def test_tie_store_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TIE_STORE", "postgresql+psycopg://tie@db.example/tie")
    assert load_engine(layout(tmp_path)).store == "postgresql+psycopg://tie@db.example/tie"


def test_a_refused_tie_store_is_named_as_tie_store_not_the_files_store(tmp_path, monkeypatch):
    """The file's store is fine: pointing at it would send the operator to the wrong place."""
    monkeypatch.setenv("TIE_STORE", "mysql://tie@db.example/tie")
    path = write(tmp_path / "engine.yaml", "store: sqlite:///tie.db\nhttp: {prot: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_engine(path)
    assert [(p.path, p.message.split(":")[0]) for p in caught.value.problems] == [
        ("store (from TIE_STORE)", "'mysql' is not a supported store"),
        ("http.prot", "unknown key"),
    ]


def test_a_relative_sqlite_tie_store_resolves_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TIE_STORE", "sqlite:///other.db")
    monkeypatch.chdir(tmp_path)
    config = load_engine(layout(tmp_path))
    assert config.store == f"sqlite:///{(tmp_path / 'config' / 'other.db').resolve()}"


def test_engine_defaults(tmp_path):
    config = load_engine(write(tmp_path / "engine.yaml", "{}\n"))
    assert config.store == f"sqlite:///{(tmp_path / 'data' / 'tie.db').resolve()}"
    assert config.channels == (tmp_path / ".." / "channels").resolve()
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert (config.sqlite.synchronous, config.sqlite.busy_timeout) == ("FULL", 5.0)
    assert (config.dispatch.lease, config.dispatch.batch) == (30.0, 200)
    assert (config.dispatch.poll_interval, config.dispatch.lanes) == (1.0, 8)
    assert config.processing.batch == 500
    assert config.node


def test_batches_are_bounded_by_what_one_statement_can_bind(tmp_path):
    text = "dispatch: {batch: 50000}\nprocessing: {batch: 10001}\n"
    with pytest.raises(ConfigError) as caught:
        load_engine(write(tmp_path / "engine.yaml", text))
    found = [
        (path, "less than or equal to 10000" in message) for _, path, message in problems(caught)
    ]
    assert found == [("dispatch.batch", True), ("processing.batch", True)]


def test_a_file_destination_directory_is_relative_to_the_channel_file(tmp_path):
    config = load_channel(
        write(
            tmp_path / "channels" / "drop.yaml",
            """
            name: drop
            source: {channel: {}}
            destinations:
              out: {file: {directory: ../outbox}}
            """,
        )
    )
    assert config.destinations["out"].file.directory == (tmp_path / "outbox").resolve()


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{mesh: {mailbox: hub}}", "a mesh source always recognises a message MESH offers again"),
        ("{channel: {}}", "a channel source never stores a delivery twice"),
    ],
)
def test_idempotent_is_refused_where_it_is_not_applied(tmp_path, source, problem):
    """A window that deduplicates nothing would be a promise the engine does not keep."""
    found = channel_problems(tmp_path, f"name: demo\nsource: {source}\nidempotent: {{}}\n")
    assert len(found) == 1 and found[0][0] == "idempotent"
    assert found[0][1].startswith(problem) and found[0][1].endswith("remove it")


def test_an_smtp_relays_ca_and_password_file_are_relative_to_the_channel_file(
    tmp_path, monkeypatch
):
    """Not to the working directory: a systemd unit's WorkingDirectory would change them."""
    monkeypatch.chdir(tmp_path)
    config = load_channel(
        write(
            tmp_path / "channels" / "mail.yaml",
            """
            name: mail
            source: {channel: {}}
            destinations:
              email:
                smtp:
                  host: smtp.example.nhs.uk
                  starttls: true
                  ca: certs/relay-ca.pem
                  username: tie
                  password: {file: secrets/smtp}
                  from: tie@example.nhs.uk
                  to: [team@example.nhs.uk]
                  subject: "{subject}"
            """,
        )
    )
    smtp = config.destinations["email"].smtp
    assert smtp is not None and smtp.password is not None
    assert smtp.ca == tmp_path / "channels" / "certs" / "relay-ca.pem"
    assert smtp.password.file == tmp_path / "channels" / "secrets" / "smtp"


def test_a_retention_archive_is_relative_to_the_channel_file(tmp_path):
    config = load_channel(
        write(
            tmp_path / "channels" / "kept.yaml",
            """
            name: kept
            source: {channel: {}}
            retention: {keep: 90d, archive: ../archive}
            """,
        )
    )
    assert config.retention is not None
    assert config.retention.keep == 90 * 86400
    assert config.retention.archive == (tmp_path / "archive").resolve()


def test_channel_defaults(tmp_path):
    config = load_channel(
        write(
            tmp_path / "minimal.yaml",
            """
            name: minimal
            source: {mllp: {port: 2590}}
            destinations:
              lab: {mllp: {host: lab.example, port: 2576}}
              archive: {file: {directory: out}}
              next: {channel: {channel: other}}
            """,
        )
    )
    assert (config.enabled, config.validate_, config.idempotent) == (True, "none", None)
    assert (config.filter, config.transform, config.correlate) == ([], None, {})
    listen = config.source.mllp
    assert (listen.host, listen.idle_timeout, listen.max_connections) == ("127.0.0.1", 300.0, 256)
    lab = config.destinations["lab"].mllp
    assert (lab.connect_timeout, lab.ack_timeout) == (10.0, 30.0)
    assert lab.on_ack == {
        "AA": "sent",
        "CA": "sent",
        "AE": "retry",
        "CE": "retry",
        "AR": "fail",
        "CR": "fail",
    }
    assert config.destinations["lab"].retry == RetryPolicy(max_attempts=10, backoff=(1.0, 300.0))
    assert config.destinations["archive"].file.name == "{channel}-{message_id}-{delivery_id}.hl7"


def test_ordered_defaults_to_true_for_mllp_and_when_order_by_is_given():
    def dest(**d: object) -> bool:
        channel = ChannelConfig.model_validate(
            {"name": "x", "source": {"channel": {}}, "destinations": {"d": d}}
        )
        return channel.destinations["d"].is_ordered

    mllp = {"mllp": {"host": "h", "port": 1}}
    assert dest(**mllp)
    assert not dest(**mllp, ordered=False)
    assert not dest(file={"directory": "out"})
    assert dest(file={"directory": "out"}, order_by="PID-3.1")
    assert dest(channel={"channel": "y"}, ordered=True)


def test_on_ack_changes_only_the_codes_it_names():
    config = ChannelConfig.model_validate(
        {
            "name": "x",
            "source": {"channel": {}},
            "destinations": {
                "lab": {"mllp": {"host": "h", "port": 1, "on_ack": {"AE": "fail", "ar": "retry"}}}
            },
        }
    )
    on_ack = config.destinations["lab"].mllp.on_ack
    assert on_ack["AE"] == "fail"
    assert on_ack["AR"] == "retry"
    assert (on_ack["AA"], on_ack["CA"], on_ack["CE"], on_ack["CR"]) == (
        "sent",
        "sent",
        "retry",
        "fail",
    )


def test_idempotent_and_validate_and_correlate(tmp_path):
    config = load_channel(
        write(
            tmp_path / "results.yaml",
            """
            name: results
            source: {mllp: {port: 0}}
            validate: strict
            idempotent: {window: 2h}
            correlate: {placer_order: OBR-2.1, nhs_number: PID-3(2).1}
            destinations: {}
            """,
        )
    )
    assert config.validate_ == "strict"
    assert config.idempotent.window == 7200.0
    assert config.correlate == {"placer_order": "OBR-2.1", "nhs_number": "PID-3(2).1"}
    assert (
        load_channel(
            write(tmp_path / "x.yaml", "name: x\nsource: {mllp: {port: 1}}\nidempotent: {}\n")
        ).idempotent.window
        == 86400.0
    )


# --- durations and sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (" 30 s ", 30.0),
        ("45", 45.0),
        (45, 45.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "1w", "-1s", "", "s", True, -3])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "hint"),
    [("1h30m", "write 90m"), ("2m30s", "write 150s"), ("1d 12h", "write 36h")],
)
def test_a_combined_duration_says_what_to_write(text, hint):
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"{text!r} is not a duration (one number and one unit: {hint})"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("1MiB", 1_048_576),
        ("512kb", 512_000),
        ("64KiB", 65_536),
        ("1GB", 1_000_000_000),
        ("2GiB", 2 * 1024**3),
        ("1.5MB", 1_500_000),
        ("100b", 100),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10 XB", "0", 0, "-5MB", "MB", False])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_durations_and_sizes_in_a_channel(tmp_path):
    config = load_channel(
        write(
            tmp_path / "units.yaml",
            """
            name: units
            source: {mllp: {port: 2590, max_frame: 1MiB, idle_timeout: 90s}}
            destinations:
              lab:
                mllp: {host: h, port: 1, connect_timeout: 500ms, ack_timeout: 1m}
                retry: {backoff: [250ms, 1h]}
            """,
        )
    )
    assert (config.source.mllp.max_frame, config.source.mllp.idle_timeout) == (1_048_576, 90.0)
    lab = config.destinations["lab"]
    assert (lab.mllp.connect_timeout, lab.mllp.ack_timeout) == (0.5, 60.0)
    assert lab.retry.backoff == (0.25, 3600.0)


def test_zero_timeouts_and_waits_are_refused_with_their_key_path(tmp_path):
    """``ack_timeout: 0`` gives up on every ACK while the receiver keeps each copy."""
    channel = write(
        tmp_path / "channels" / "zero.yaml",
        """
        name: zero
        source: {mllp: {port: 2590, idle_timeout: 0s}}
        destinations:
          lab:
            mllp: {host: h, port: 1, connect_timeout: 0, ack_timeout: -1s}
          api:
            http: {url: "http://h", timeout: 0ms}
        """,
    )
    engine = write(
        tmp_path / "engine.yaml",
        "dispatch: {lease: 0s, poll_interval: 0}\nauth: {session_idle: 0m}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_channel(channel)
    assert [(f, p) for f, p, _ in problems(caught)] == [
        ("zero.yaml", "source.mllp.idle_timeout"),
        ("zero.yaml", "destinations.lab.mllp.connect_timeout"),
        ("zero.yaml", "destinations.lab.mllp.ack_timeout"),
        ("zero.yaml", "destinations.api.http.timeout"),
    ]
    with pytest.raises(ConfigError) as caught:
        load_engine(engine)
    assert problems(caught) == [
        ("engine.yaml", "dispatch.lease", "Input should be greater than 0"),
        ("engine.yaml", "dispatch.poll_interval", "Input should be greater than 0"),
        ("engine.yaml", "auth.session_idle", "Input should be greater than 0"),
    ]


def test_retry_delay_doubles_from_min_up_to_max():
    policy = RetryPolicy(max_attempts=10, backoff=(1.0, 300.0))
    assert [policy.delay(n) for n in range(1, 12)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        64.0,
        128.0,
        256.0,
        300.0,
        300.0,
    ]


# --- file name templates ---------------------------------------------------------------


def test_retry_delay_stays_at_max_however_many_attempts():
    policy = RetryPolicy(max_attempts=100_000, backoff=(1.0, 300.0))
    assert policy.delay(1025) == policy.delay(100_000) == 300.0


def test_every_documented_placeholder_renders():
    template = "-".join("{" + name + "}" for name in FILE_NAME_FIELDS) + ".hl7"
    delivery = Delivery(
        id=7,
        message_id=3,
        message_uuid="0b7f",
        channel="lab-orders",
        destination="archive",
        payload=b"",
        content_type="hl7v2",
        ordering_key="",
        idempotency_key="CTRL/../1",
        attempts=0,
    )
    assert render_name(template, delivery) == "lab-orders-archive-3-0b7f-7-CTRL_.._1.hl7"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("{patient}.hl7", "KeyError: 'patient'"),
        ("{}.hl7", "IndexError"),
        ("{message_id:d}.hl7", "ValueError"),
        ("{message_id.real}.hl7", "AttributeError"),
        ("../{channel}.hl7", "cannot contain a path"),
        (".{channel}", "start with '.'"),
    ],
)
def test_a_bad_file_name_template_is_a_config_error(tmp_path, name, problem):
    found = channel_problems(
        tmp_path,
        f"""
        name: demo
        source: {{channel: {{}}}}
        destinations:
          out: {{file: {{directory: out, name: "{name}"}}}}
        """,
    )
    [(path, message)] = found
    assert path == "destinations.out.file.name"
    assert problem in message


# --- errors name the file, the key path and the problem ------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("name: demo\nsource: {mllp: {port: 1}}\ncolour: red\n", "colour", "unknown key"),
        ("name: demo\n", "source", "missing: this key is required"),
        ("name: demo\nsource: {}\n", "source", "needs exactly one of mllp, channel"),
        (
            "name: demo\nsource: {mllp: {port: 99999}}\n",
            "source.mllp.port",
            "less than or equal to 65535",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1, max_frame: 10XB}}\n",
            "source.mllp.max_frame",
            "'10XB' is not a size",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1, idle_timeout: soon}}\n",
            "source.mllp.idle_timeout",
            "'soon' is not a duration",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nvalidate: loose\n",
            "validate",
            "Input should be 'none' or 'strict'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nfilter:\n  - field: PID-x\n    equals: A\n",
            "filter[0].field",
            "bad field path 'PID-x'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nfilter:\n  - any:\n      - field: MSH-9\n",
            "filter[0].any[0]",
            "needs exactly one of equals, in, matches, exists, not, any, all",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nfilter:\n  - {field: MSH-9, in: [A, yes]}\n",
            "filter[0].in",
            "YAML boolean",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\ntransform: pathology.normalise\n",
            "transform",
            "is not 'module:function'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\ncorrelate: {order: ORC-two}\n",
            "correlate.order",
            "bad field path 'ORC-two'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nidempotent: {window: 1 day}\n",
            "idempotent.window",
            "is not a duration",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {mllp: {host: h, port: 1}, file: {directory: x}}\n",
            "destinations.lab",
            f"needs exactly one of {', '.join(TRANSPORTS)} (found mllp, file)",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {mllp: {host: h, port: 1}, retry: {max_attempts: 0}}\n",
            "destinations.lab.retry.max_attempts",
            "greater than or equal to 1",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {mllp: {host: h, port: 1}, retry: {backoff: [5m, 1s]}}\n",
            "destinations.lab.retry.backoff",
            "0 < min <= max",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {mllp: {host: h, port: 1, on_ack: {AE: ignore}}}\n",
            "destinations.lab.mllp.on_ack.AE",
            "Input should be 'sent', 'retry' or 'fail'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {mllp: {host: h, port: 1}, ordered: false, order_by: PID-3}\n",
            "destinations.lab",
            "order_by needs an ordered destination",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  Lab: {mllp: {host: h, port: 1}}\n",
            "destinations",
            "destination name 'Lab'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations:\n  lab: {when: [{field: MSH-9}], mllp: {host: h, port: 1}}\n",
            "destinations.lab.when[0]",
            "needs exactly one of",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nretention: {keep: 0s}\n",
            "retention.keep",
            "greater than 0",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nidempotent: {window: 7d}\n"
            "retention: {keep: 1d}\n",
            "",
            "retention.keep is shorter than idempotent.window",
        ),
        ("name: Demo\nsource: {mllp: {port: 1}}\n", "name", "lower-case letters"),
        ("name: other\nsource: {mllp: {port: 1}}\n", "name", "must match the file name 'demo'"),
        ("- just\n- a list\n", "", "expected a mapping of keys at the top"),
        ("name: demo\nsource: {mllp: {port: 1}\n", "line 3, column 1", "invalid YAML"),
        (
            "name: demo\nsource: {mllp: {port: 1}}\n"
            "destinations: {}\nfilter: []\ndestinations: {}\n",
            "line 5, column 1",
            "invalid YAML: 'destinations' is given twice (also on line 3): YAML would keep only "
            "the last; merge them into one",
        ),
        (
            "name: demo\nsource:\n\tmllp: {port: 1}\n",
            "line 3, column 1",
            "invalid YAML: a tab character: YAML is indented with spaces only, replace the tab",
        ),
    ],
)
def test_a_channel_error_names_file_key_path_and_problem(tmp_path, text, path, message):
    found = channel_problems(tmp_path, text)
    assert any(p == path and message in m for p, m in found), found


def test_a_problem_reads_file_colon_path_colon_message(tmp_path):
    path = write(tmp_path / "demo.yaml", "name: demo\nsource: {mllp: {port: 1}}\ncolour: red\n")
    with pytest.raises(ConfigError) as caught:
        load_channel(path)
    assert str(caught.value) == (
        f"{path}: colour: unknown key (keys here: name, description, enabled, source, validate, "
        "idempotent, filter, transform, correlate, unmatched, destinations, retention)"
    )


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("name: demo\nsource: mllp\n", "source", "expected a mapping (key: value lines, or {"),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nfilter: {field: PID-3, equals: x}\n",
            "filter",
            "expected a list ('- ' lines, or [a, b]), not a mapping",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\ndestinations:\n- lab: {file: {directory: o}}\n",
            "destinations",
            "expected a mapping (key: value lines, or {key: value}), not a list",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\ndescription: 7.20\n",
            "description",
            "expected text, not the number 7.2 (quote it to keep it text)",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\nenabled: sometimes\n",
            "enabled",
            "expected true or false, not 'sometimes'",
        ),
        (
            "name: demo\nsource: {mllp: {port: 1}}\ndestinations:\n  on: {file: {directory: o}}\n",
            "destinations.true",
            "expected text, not true (an unquoted yes, no, on, off, true or false: quote text)",
        ),
    ],
)
def test_a_wrong_type_is_said_in_yaml_words(tmp_path, text, path, message):
    """Not pydantic's "a valid dictionary or instance of SourceConfig"."""
    found = channel_problems(tmp_path, text)
    assert any(p == path and message in m for p, m in found), found


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            "destinations:\n  lab:\n    mllp: {host: h, port: 1}\n    retry: {max_attempt: 3}\n",
            "destinations.lab.retry.max_attempt",
            "unknown key: did you mean max_attempts? (keys here: max_attempts, backoff)",
        ),
        (
            "filter:\n  - not: {field: PID-3, equal: x}\n",
            "filter[0].not.equal",
            "unknown key: did you mean equals? (keys here: field, equals, in, matches, exists, "
            "not, any, all)",
        ),
        (
            "destination: {}\n",
            "destination",
            "unknown key: did you mean destinations? (keys here: name,",
        ),
        (
            "destinations:\n  gp:\n    mesh: {mailbox: m, workflow_id: w, to: t, workflow: w}\n",
            "destinations.gp.mesh.workflow",
            "unknown key: did you mean workflow_id? (keys here: mailbox, to, workflow_id, ",
        ),
    ],
)
def test_an_unknown_key_names_the_nearest_and_the_keys_accepted_there(
    tmp_path, text, path, message
):
    """A typo is fixed from the message: the key meant, and what the place accepts."""
    found = channel_problems(tmp_path, "name: demo\nsource: {mllp: {port: 1}}\n" + text)
    assert any(p == path and m.startswith(message) for p, m in found), found


def test_an_unknown_engine_yaml_key_names_the_nearest(tmp_path):
    path = write(tmp_path / "engine.yaml", "dispatch: {leases: 30s}\n")
    with pytest.raises(ConfigError) as caught:
        load_engine(path)
    assert str(caught.value) == (
        f"{path}: dispatch.leases: unknown key: did you mean lease? "
        "(keys here: lease, batch, poll_interval, lanes)"
    )


def test_an_engine_error_names_the_file_and_key(tmp_path):
    path = write(tmp_path / "engine.yaml", "http: {port: eighty}\nsqlite: {synchronous: OFF}\n")
    with pytest.raises(ConfigError) as caught:
        load_engine(path)
    assert problems(caught) == [
        (
            "engine.yaml",
            "http.port",
            "expected a whole number, not 'eighty'",
        ),
        ("engine.yaml", "sqlite.synchronous", "Input should be 'FULL', 'NORMAL' or 'EXTRA'"),
    ]


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ("mysql://tie:s3cret@db/tie", "'mysql' is not a supported store"),
        ("sqlite://data/tie.db", "sqlite://data/tie.db names a host"),
        ("not a url", "not a url is not a database URL"),
    ],
)
def test_a_store_url_of_the_wrong_form_is_refused(tmp_path, store, problem):
    path = write(tmp_path / "engine.yaml", f"store: '{store}'\n")
    with pytest.raises(ConfigError) as caught:
        load_engine(path)
    [(file, key, message)] = problems(caught)
    assert (file, key) == ("engine.yaml", "store")
    assert message.startswith(problem)
    assert "s3cret" not in message


def test_a_missing_engine_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_engine(tmp_path / "nope.yaml")
    assert problems(caught) == [("nope.yaml", "", "No such file or directory")]


def test_problems_of_every_channel_are_collected(tmp_path):
    folder = tmp_path / "channels"
    write(folder / "a.yaml", "name: a\nsource: {mllp: {port: 1, colour: red}}\n")
    write(folder / "b.yaml", "name: b\nsource: {mllp: {port: 2}}\nfilter: [{field: MSH-9}]\n")
    write(folder / "c.yaml", "name: c\nsource: {mllp: {port: 3}}\n")
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert [(f, p) for f, p, _ in problems(caught)] == [
        ("a.yaml", "source.mllp.colour"),
        ("b.yaml", "filter[0]"),
    ]


def test_cross_channel_problems(tmp_path):
    folder = tmp_path / "channels"
    write(
        folder / "a.yaml",
        """
        name: a
        source: {mllp: {port: 2575}}
        destinations:
          to_b: {channel: {channel: b}}
          to_nowhere: {channel: {channel: nowhere}}
        """,
    )
    write(folder / "b.yaml", "name: b\nsource: {mllp: {port: 2575}}\n")
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert problems(caught) == [
        (
            "a.yaml",
            "destinations.to_b.channel.channel",
            "channel 'b' does not have a 'channel' source",
        ),
        ("a.yaml", "destinations.to_nowhere.channel.channel", "no channel named 'nowhere'"),
        ("b.yaml", "source.mllp.port", "127.0.0.1:2575 is also used by a"),
    ]


@pytest.mark.parametrize(
    ("host_a", "host_b", "clash"),
    [
        ("0.0.0.0", "127.0.0.1", True),
        ("127.0.0.1", "::", True),
        ("localhost", "127.0.0.1", True),
        ("LOCALHOST", "::1", True),
        ("10.0.0.1", "10.0.0.2", False),
    ],
)
def test_listeners_on_one_port_clash_across_names_of_one_address(tmp_path, host_a, host_b, clash):
    """``serve`` cannot bind 127.0.0.1:2575 once 0.0.0.0:2575 is taken: ``check`` says so."""
    folder = tmp_path / "channels"
    write(folder / "a.yaml", f"name: a\nsource: {{mllp: {{host: '{host_a}', port: 2575}}}}\n")
    write(folder / "b.yaml", f"name: b\nsource: {{mllp: {{host: '{host_b}', port: 2575}}}}\n")
    if not clash:
        assert set(load_channels(folder)) == {"a", "b"}
        return
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert problems(caught) == [
        ("b.yaml", "source.mllp.port", f"{host_b}:2575 is also used by a"),
    ]


def test_one_channel_in_a_yaml_and_a_yml_file_is_refused(tmp_path):
    folder = tmp_path / "channels"
    write(folder / "lab.yaml", "name: lab\nsource: {mllp: {port: 2575}}\n")
    write(folder / "lab.yml", "name: lab\nsource: {mllp: {port: 2576}}\n")
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert problems(caught) == [
        ("lab.yaml", "", "channel 'lab' is also in lab.yml"),
        ("lab.yml", "", "channel 'lab' is also in lab.yaml"),
    ]


def test_a_problem_between_channels_names_a_yml_file_as_it_is(tmp_path):
    folder = tmp_path / "channels"
    write(folder / "a.yml", "name: a\nsource: {mllp: {port: 2575}}\n")
    write(folder / "b.yml", "name: b\nsource: {mllp: {port: 2575}}\n")
    with pytest.raises(ConfigError) as caught:
        load_channels(folder)
    assert problems(caught) == [
        ("b.yml", "source.mllp.port", "127.0.0.1:2575 is also used by a"),
    ]


@pytest.mark.parametrize(
    "engine_yaml",
    sorted((REPO / "examples").glob("*/engine.yaml")),
    ids=lambda p: p.parent.name,
)
def test_an_example_configuration_passes_check(engine_yaml, monkeypatch):
    """The docs send readers to ``run.py --config examples/<name>/engine.yaml serve``."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    config = load_engine(engine_yaml)
    compile_channels(config, load_channels(config.channels))


@pytest.mark.parametrize(
    ("host", "clash"), [("127.0.0.1", True), ("0.0.0.0", True), ("10.1.2.3", False)]
)
def test_an_mllp_port_that_is_the_http_port_is_refused_by_check(tmp_path, host, clash):
    """``serve`` could not bind both; ``check`` says so before a start fails on it."""
    engine_yaml = layout(
        tmp_path, {"a": f"name: a\nsource: {{mllp: {{host: {host}, port: 8080}}}}\n"}
    )
    config = load_engine(engine_yaml)  # http: 127.0.0.1:8080, the default
    channels = load_channels(config.channels)
    if not clash:
        compile_channels(config, channels)
        return
    with pytest.raises(ConfigError) as caught:
        compile_channels(config, channels)
    assert problems(caught) == [
        (
            "a.yaml",
            "source.mllp.port",
            f"{host}:8080 is the engine's HTTP port (http in engine.yaml)",
        )
    ]


def test_a_missing_channels_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path / "nowhere")
    assert problems(caught) == [
        (
            "nowhere",
            "",
            "channels folder not found (engine.yaml's channels: names it, relative to "
            "engine.yaml's folder)",
        )
    ]


def test_a_mapping_that_cannot_be_loaded_names_the_channel_file_and_key(tmp_path):
    engine_yaml = layout(
        tmp_path,
        {
            "a": "name: a\nsource: {channel: {}}\ntransform: missing:fn\n",
            "b": "name: b\nsource: {channel: {}}\n"
            "destinations:\n  out: {file: {directory: out}, transform: helpers:nope}\n",
        },
    )
    write(tmp_path / "mappings" / "helpers.py", "def other(message, output):\n    return output\n")
    config = load_engine(engine_yaml)
    with pytest.raises(ConfigError) as caught:
        compile_channels(config, load_channels(config.channels))
    assert problems(caught) == [
        (
            "a.yaml",
            "transform",
            f"missing:fn: no mapping module 'missing': {tmp_path / 'mappings' / 'missing.py'} "
            "does not exist",
        ),
        (
            "b.yaml",
            "destinations.out.transform",
            f"helpers:nope: no function 'nope' in helpers ({tmp_path / 'mappings' / 'helpers.py'})",
        ),
    ]


def test_a_misspelt_mapping_function_names_the_file_and_the_nearest(tmp_path):
    engine_yaml = layout(
        tmp_path, {"a": "name: a\nsource: {channel: {}}\ntransform: lab:normalise\n"}
    )
    write(tmp_path / "mappings" / "lab.py", "def normalise_order(message):\n    return None\n")
    config = load_engine(engine_yaml)
    with pytest.raises(ConfigError) as caught:
        compile_channels(config, load_channels(config.channels))
    assert problems(caught) == [
        (
            "a.yaml",
            "transform",
            f"lab:normalise: no function 'normalise' in lab ({tmp_path / 'mappings' / 'lab.py'}): "
            "did you mean normalise_order?",
        )
    ]


def test_a_mapping_whose_own_import_fails_names_the_import_and_its_line(tmp_path):
    """Not "cannot import mapping module": the module is there, a package it needs is not."""
    engine_yaml = layout(tmp_path, {"a": "name: a\nsource: {channel: {}}\ntransform: lab:fn\n"})
    write(tmp_path / "mappings" / "lab.py", "import not_installed_here\n")
    config = load_engine(engine_yaml)
    with pytest.raises(ConfigError) as caught:
        compile_channels(config, load_channels(config.channels))
    assert problems(caught) == [
        (
            "a.yaml",
            "transform",
            "lab:fn: mapping module failed to load: ModuleNotFoundError: No module named "
            f"'not_installed_here' ({tmp_path / 'mappings' / 'lab.py'}, line 1)",
        )
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "name: a\nsource: {channel: {}}\ntransform: missing:fn\n",
            ("a.yml", "transform", "missing:fn: no mapping module 'missing': "),
        ),
        (
            "name: a\nsource: {mesh: {mailbox: nosuch}}\n",
            ("a.yml", "source.mesh.mailbox", "no mailbox 'nosuch' under mesh.mailboxes"),
        ),
    ],
)
def test_a_channel_that_cannot_run_names_its_yml_file_as_it_is(tmp_path, text, problem):
    """Start-up (open mode) and deploying a stored revision (governed) name ``a.yml``, the
    file the engineer edits, not an ``a.yaml`` that does not exist."""
    from router.governance.deploy import runnable

    engine_yaml = layout(tmp_path, {"a": text})
    (tmp_path / "channels" / "a.yaml").rename(tmp_path / "channels" / "a.yml")
    config = load_engine(engine_yaml)
    for attempt in (
        lambda: compile_channels(config, load_channels(config.channels)),
        lambda: runnable(config, "a", text),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        [(file, where, message)] = problems(caught)
        assert (file, where) == problem[:2] and message.startswith(problem[2])


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("def fn(message):\n    return (\n", "SyntaxError: '(' was never closed ({file}, line 2)"),
        (
            "LIMIT = 1 / 0\n\ndef fn(message):\n    return None\n",
            "ZeroDivisionError: division by zero ({file}, line 1)",
        ),
    ],
)
def test_a_mapping_module_that_fails_to_load_is_a_config_error(tmp_path, source, problem):
    engine_yaml = layout(tmp_path, {"a": "name: a\nsource: {channel: {}}\ntransform: broken:fn\n"})
    module = write(tmp_path / "mappings" / "broken.py", source)
    config = load_engine(engine_yaml)
    with pytest.raises(ConfigError) as caught:
        compile_channels(config, load_channels(config.channels))
    expected = "broken:fn: mapping module failed to load: " + problem.format(file=module.resolve())
    assert problems(caught) == [("a.yaml", "transform", expected)]


def test_a_disabled_channel_is_not_compiled(tmp_path):
    engine_yaml = layout(
        tmp_path, {"paused": "name: paused\nenabled: false\nsource: {channel: {}}\n"}
    )
    config = load_engine(engine_yaml)
    assert compile_channels(config, load_channels(config.channels)) == {}


def test_check_validates_a_disabled_channels_mappings_the_engine_skips(tmp_path, capsys):
    """ "Validated but not run": enabling it later must not be the first time its mapping
    is loaded (a start that then fails). The engine itself still runs without it."""
    engine_yaml = layout(
        tmp_path,
        {"paused": "name: paused\nenabled: false\nsource: {channel: {}}\ntransform: gone:fn\n"},
    )
    config = load_engine(engine_yaml)
    assert compile_channels(config, load_channels(config.channels)) == {}
    assert main(["--config", str(engine_yaml), "check"]) == 2
    assert (
        f"{tmp_path / 'channels' / 'paused.yaml'}: transform: gone:fn: no mapping module 'gone'"
    ) in capsys.readouterr().err


# --- run.py check ----------------------------------------------------------------------


@pytest.mark.parametrize("before", [True, False])
def test_config_is_accepted_before_or_after_the_command(before):
    argv = ["--config", "x.yaml", "serve"] if before else ["serve", "--config", "x.yaml"]
    assert build_parser().parse_args(argv).config == "x.yaml"
    assert build_parser().parse_args(["db", "upgrade", "--config", "y.yaml"]).config == "y.yaml"


def test_check_reports_valid_channels(tmp_path, capsys):
    engine_yaml = layout(tmp_path)
    assert main(["check", "--config", str(engine_yaml)]) == 0
    out = capsys.readouterr().out
    assert "ok  lab-orders: source mllp, destinations lab(mllp)" in out
    assert "1 channel(s) valid" in out


def test_check_exits_2_and_lists_every_problem(tmp_path, capsys):
    bad = LAB_ORDERS_YAML.replace("in: [OML, ORM]", "equals: [OML]").replace(
        "max_attempts: 10", "max_attempts: ten"
    )
    engine_yaml = layout(tmp_path, {"lab-orders": bad})
    assert main(["--config", str(engine_yaml), "check"]) == 2
    err = capsys.readouterr().err
    channel_file = tmp_path / "channels" / "lab-orders.yaml"
    assert err.startswith("error: configuration is not valid:\n")
    assert f"{channel_file}: filter[0].equals: expected text, not a list" in err
    assert (
        f"{channel_file}: destinations.lab.retry.max_attempts: expected a whole number, not 'ten'"
    ) in err
