"""``run.py check``'s second half: warnings about sources open to anyone, and the channel
tests (golden files, router/channel_tests/)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from router.ca_expiry import (
    BundleFinding,
    bundle_findings,
    revocation_lists,
    stale_crls,
    trusted_bundles,
)
from router.certificate_expiry import Finding, expiry_findings, presented_certificates
from router.channel_tests import CaseRunner, compare, discover, update
from router.config import ChannelConfig, ConfigError, EngineConfig
from router.config.loading import LOOPBACK_HOSTS, ConfigProblem, channel_file
from router.directory.seeding import read_endpoints


def open_to_anyone(config: EngineConfig, channels: dict[str, ChannelConfig]) -> list[str]:
    """A warning for each FHIR or proxy source with ``auth: none`` on an HTTP port that
    other hosts can reach: it takes whatever anyone who reaches the port sends."""
    host = config.http.host.strip("[]").lower()
    if host in LOOPBACK_HOSTS:
        return []
    warnings = []
    for name, channel in sorted(channels.items()):
        source = channel.source.http or channel.source.proxy
        if source is not None and source.auth == "none":
            warnings.append(
                f"warning  {name}: source {channel.source.kind} has auth: none on "
                f"{config.http.host}:{config.http.port}, which other hosts can reach: it takes "
                "requests from anyone who reaches the port; give its senders tokens "
                "(auth: token, docs/fhir.md#senders) or keep the port behind network controls"
            )
    return warnings


def expired_or_expiring(
    config: EngineConfig, config_file: Path, channels: dict[str, ChannelConfig], now: datetime
) -> list[str]:
    """A warning for each certificate the engine presents that expires within 14 days;
    raises ConfigError naming each one already expired (no peer accepts it), except a
    disabled channel's, which is a warning (it runs nowhere yet)."""
    findings = expiry_findings(presented_certificates(channels.values(), config.mesh), now)

    def file_of(finding: Finding) -> str:
        channel = finding.presented.channel
        return str(channel_file(config.channels, channel) if channel else config_file)

    def in_use(finding: Finding) -> bool:
        channel = finding.presented.channel
        return not channel or channels[channel].enabled

    expired = [
        ConfigProblem(file_of(f), f.presented.setting, f.text)
        for f in findings
        if f.expired and in_use(f)
    ]
    if expired:
        raise ConfigError(expired)
    return [f"warning  {file_of(f)}: {f.presented.setting}: {f.text}" for f in findings]


def trust_running_out(
    config: EngineConfig, config_file: Path, channels: dict[str, ChannelConfig], now: datetime
) -> list[str]:
    """A warning for each CA bundle with a CA left without a certificate beyond 14 days
    (router/ca_expiry.py): the peers it verifies are refused from then on. Raises
    ConfigError naming each enabled MLLP source's CRL past its nextUpdate: OpenSSL refuses
    every client against it now, as no peer accepts an expired certificate (a disabled
    channel's is a warning)."""

    def file_of(finding: BundleFinding) -> str:
        channel = finding.bundle.channel
        return str(channel_file(config.channels, channel) if channel else config_file)

    stale = stale_crls(revocation_lists(channels.values()), now)
    refusing = [
        ConfigProblem(file_of(f), f.bundle.setting, f.text)
        for f in stale
        if channels[f.bundle.channel].enabled
    ]
    if refusing:
        raise ConfigError(refusing)
    findings = bundle_findings(trusted_bundles(channels.values(), config.mesh), now) + stale
    return [f"warning  {file_of(f)}: {f.bundle.setting}: {f.text}" for f in findings]


def senders_unchecked_or_unknown(
    config: EngineConfig, channels: dict[str, ChannelConfig]
) -> list[str]:
    """A warning for each name in a source's ``senders`` that is not an active user with
    the sender role in the engine's store (router/fhir/senders.py); a note when the store
    cannot be read (not made yet, not reachable from here): check needs no database, so
    that is no failure, and the engine warns again at its start."""
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.exc import SQLAlchemyError

    from router.fhir.senders import unknown_senders

    sources = []
    for name, channel in sorted(channels.items()):
        source = channel.source.http or channel.source.proxy
        if source is not None and source.senders:
            sources.append((name, source))
    if not sources:
        return []
    names = ", ".join(name for name, _ in sources)
    url = make_url(config.store)
    sqlite = url.drivername == "sqlite"
    if sqlite and not (url.database and Path(url.database).is_file()):
        return [f"note  senders of {names} not checked: the store {url.database} is not made yet"]
    options = {} if sqlite else {"connect_args": {"connect_timeout": 5}}
    engine = create_engine(url, **options)
    try:
        with engine.connect() as conn:
            problems = unknown_senders(conn, sources)
    except SQLAlchemyError as exc:
        return [
            f"note  senders of {names} not checked: the store could not be read "
            f"({type(exc).__name__}); the engine checks them when it starts"
        ]
    finally:
        engine.dispose()
    return [f"warning  {problem}" for problem in problems]


def default_cases(config: EngineConfig) -> Path:
    """``tests/channels`` beside the channels folder (the repository's layout)."""
    return config.channels.resolve().parent / "tests" / "channels"


def run_channel_tests(
    config: EngineConfig,
    channels: dict[str, ChannelConfig],
    root: Path,
    *,
    only: list[str] | None = None,
    rewrite: bool = False,
) -> int:
    """Run every case under ``root``; print a unified diff for each that changed (or rewrite
    the golden files with ``rewrite``). The number of cases that failed."""
    if not root.is_dir():
        print(f"no channel test cases: {root} is not a folder (give --cases FOLDER)")
        return 0
    cases = discover(root, set(only) if only else None)
    runner = CaseRunner(channels, config.mappings, read_endpoints(config.endpoints))
    failed = 0
    for case in cases:
        if case.problem is not None:
            failed += 1
            print(f"FAIL {case.id}: {case.problem} ({case.folder})")
            continue
        try:
            actual = runner.run(case)
        except Exception as exc:
            failed += 1
            print(f"FAIL {case.id}: could not run: {type(exc).__name__}: {exc}")
            continue
        if rewrite:
            changed = update(case, actual)
            print(f"{'updated' if changed else 'same':<7} {case.id}" + _names(changed))
            continue
        result = compare(case, actual)
        if result.passed:
            print(f"ok   {case.id}")
        else:
            failed += 1
            print(f"FAIL {case.id}")
            print(result.report())
    verb = "updated" if rewrite else "run"
    print(
        f"{len(cases)} channel test case(s) {verb} from {root}"
        + (f", {failed} failed" if failed else "")
    )
    return failed


def _names(changed: list[str]) -> str:
    return f": {', '.join(changed)}" if changed else ""
