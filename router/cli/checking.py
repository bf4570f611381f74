"""``run.py check``'s second half: the channel tests (golden files, router/channel_tests/)."""

from __future__ import annotations

from pathlib import Path

from router.channel_tests import CaseRunner, compare, discover, update
from router.config import ChannelConfig, EngineConfig
from router.directory.seeding import read_endpoints


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
