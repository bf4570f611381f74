"""``run.py check``: config validation, then the channel golden tests, diffs and --update."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "run.py"

MAPPING = """
from router.message import Output

def shout(message):
    return Output(message.raw.upper(), "hl7v2")
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "channels").mkdir()
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "loud.py").write_text(textwrap.dedent(MAPPING))
    (tmp_path / "channels" / "loud.yaml").write_text(
        textwrap.dedent(
            """
            name: loud
            source: {mllp: {port: 0}}
            filter: [{field: MSH-9.1, equals: ADT}]
            transform: loud:shout
            destinations:
              out: {file: {directory: out}}
            """
        )
    )
    case = tmp_path / "tests" / "channels" / "loud" / "admit"
    case.mkdir(parents=True)
    (case / "input.hl7").write_bytes(b"MSH|^~\\&|a|b|c|d|20240101||ADT^A01|X1|P|2.5\rPID|1||p1\r")
    config = tmp_path / "engine.yaml"
    config.write_text(
        f"store: sqlite:///{tmp_path / 'tie.db'}\nchannels: channels\nmappings: mappings\n"
    )
    return config


def _check(config: Path, *extra: str) -> tuple[int, str]:
    """``run.py check`` in its own process, as an integration engineer runs it."""
    done = subprocess.run(
        [sys.executable, str(RUN), "--config", str(config), "check", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_update_writes_goldens_and_check_shows_a_readable_diff_on_change(tmp_path):
    config = _project(tmp_path)
    case = tmp_path / "tests" / "channels" / "loud" / "admit"

    code, out = _check(config, "--update")
    assert code == 0 and "updated loud/admit: out.hl7, outcome.json" in out
    assert (
        case / "out.hl7"
    ).read_text() == "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5\nPID|1||P1\n"
    code, out = _check(config)
    assert code == 0 and "ok   loud/admit" in out

    (tmp_path / "mappings" / "loud.py").write_text(
        textwrap.dedent(MAPPING).replace("message.raw.upper()", "message.raw.lower()")
    )
    code, out = _check(config)
    assert code == 1
    assert "FAIL loud/admit" in out
    assert f"--- {case}/out.hl7 (expected)" in out and f"+++ {case}/out.hl7 (actual)" in out
    assert "-PID|1||P1" in out and "+pid|1||p1" in out
    assert "1 channel test case(s) run" in out and "1 failed" in out

    assert _check(config, "--update")[0] == 0
    assert _check(config)[0] == 0


def test_a_filtered_case_records_its_reason_and_stale_outputs_are_removed(tmp_path):
    config = _project(tmp_path)
    case = tmp_path / "tests" / "channels" / "loud" / "admit"
    _check(config, "--update")
    (case / "input.hl7").write_bytes(b"MSH|^~\\&|a|b|c|d|20240101||ORU^R01|X2|P|2.5\r")

    code, out = _check(config)
    assert code == 1 and "/dev/null (not produced)" in out

    _check(config, "--update")
    assert sorted(p.name for p in case.iterdir()) == ["input.hl7", "outcome.json"]
    assert '"reason": "filter not met: MSH-9.1 = \'ADT\'"' in (case / "outcome.json").read_text()


def test_an_invalid_configuration_still_fails_before_any_case_runs(tmp_path):
    config = _project(tmp_path)
    (tmp_path / "channels" / "loud.yaml").write_text("name: loud\nsource: {}\n")
    code, out = _check(config)
    assert code == 2 and "configuration is not valid" in out


def test_a_case_folder_that_cannot_run_fails_and_says_why(tmp_path):
    """Skipping such a folder would pass with nothing tested: an input renamed or left out
    of a commit, an input.txt, or two inputs."""
    config = _project(tmp_path)
    cases = tmp_path / "tests" / "channels" / "loud"
    assert _check(config, "--update")[0] == 0
    for name in ("no-input", "txt", "two", "notes"):
        (cases / name).mkdir()
    admit = cases / "admit"
    (cases / "no-input" / "outcome.json").write_bytes((admit / "outcome.json").read_bytes())
    (cases / "txt" / "input.txt").write_bytes((admit / "input.hl7").read_bytes())
    (cases / "two" / "input.hl7").write_bytes((admit / "input.hl7").read_bytes())
    (cases / "two" / "input.json").write_text("{}")
    (cases / "notes" / "README.md").write_text("how these cases were made\n")

    code, out = _check(config)

    assert code == 1
    assert "ok   loud/admit" in out
    assert (
        "FAIL loud/no-input: golden files but no input.hl7 or input.json: the message the "
        f"case feeds its channel ({cases / 'no-input'})"
    ) in out
    assert "FAIL loud/txt: input.txt is not read: name it input.hl7 (HL7 v2) or input.json" in out
    assert "FAIL loud/two: more than one input (input.hl7, input.json): keep one" in out
    assert "loud/notes" not in out
    assert "4 channel test case(s) run" in out and "3 failed" in out
    assert "Traceback" not in out


def test_check_warns_of_named_senders_the_store_does_not_have(tmp_path):
    """A typo in ``senders:`` is refused 403 at run time; check says so when it can read
    the store, and says it could not check when there is none yet."""
    from router.auth.users import add_user
    from router.store.database import Store
    from router.store.migrate import upgrade

    config = _project(tmp_path)
    (tmp_path / "channels" / "referrals.yaml").write_text(
        "name: referrals\nsource: {http: {senders: [gp-a, gp-b]}}\ndestinations: {}\n"
    )
    code, out = _check(config, "--update")  # writes the golden files of loud's case
    assert code == 0, out
    assert "note  senders of referrals not checked: the store" in out

    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    upgrade(store)
    with store.begin() as conn:
        add_user(conn, "gp-a", ["sender"], None, actor="test")
    store.dispose()
    code, out = _check(config)
    assert code == 0, out
    assert "warning  channel referrals: sender 'gp-b' is not a user" in out
    assert "gp-a" not in out
