"""Comparing a case's outputs with its golden files, and rewriting them on purpose."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from router.channel_tests.cases import Case


@dataclass
class Result:
    case: Case
    diffs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.diffs and self.error is None

    def report(self) -> str:
        """What failed, as unified diffs (expected → actual) a reviewer can read."""
        if self.error is not None:
            return f"{self.case.id}: could not run: {self.error}"
        return "\n".join(self.diffs)


def compare(case: Case, actual: dict[str, str]) -> Result:
    expected = case.expected()
    result = Result(case)
    for name in sorted(set(expected) | set(actual)):
        before, after = expected.get(name), actual.get(name)
        if before == after:
            continue
        where = f"{case.folder}/{name}"
        old = f"{where} (expected)" if before is not None else "/dev/null (no golden file)"
        new = f"{where} (actual)" if after is not None else "/dev/null (not produced)"
        diff = difflib.unified_diff(
            (before or "").splitlines(keepends=True),
            (after or "").splitlines(keepends=True),
            old,
            new,
        )
        result.diffs.append("".join(_ended(line) for line in diff))
    return result


def update(case: Case, actual: dict[str, str]) -> list[str]:
    """Make the golden files ``actual``: write changed ones, remove stale ones; names changed."""
    expected = case.expected()
    changed = []
    for name, text in actual.items():
        if expected.get(name) != text:
            (case.folder / name).write_text(text, encoding="utf-8")
            changed.append(name)
    for name in set(expected) - set(actual):
        (case.folder / name).unlink()
        changed.append(name)
    return sorted(changed)


def _ended(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
