"""Finding channel test cases: ``<root>/<channel>/<case>/input.<ext>``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from router.fhir import FHIR_JSON

# The content type a case's input is received as, by its file's suffix.
INPUT_TYPES = {".hl7": "hl7v2", ".json": FHIR_JSON}


@dataclass(frozen=True)
class Case:
    channel: str
    name: str
    folder: Path
    input: Path
    # Why the folder cannot run (no input, or two): it fails, rather than not being a case.
    problem: str | None = None

    @property
    def id(self) -> str:
        return f"{self.channel}/{self.name}"

    @property
    def content_type(self) -> str:
        return INPUT_TYPES[self.input.suffix]

    def expected(self) -> dict[str, str]:
        """The golden files: every file of the folder but the input, by name."""
        return {
            p.name: p.read_text(encoding="utf-8")
            for p in sorted(self.folder.iterdir())
            if p.is_file() and p != self.input and not p.name.startswith(".")
        }


def discover(root: Path, channels: set[str] | None = None) -> list[Case]:
    """Every case under ``root``, by channel and case name; ``channels`` limits the search.

    A folder with no ``input.*`` and no ``outcome.json`` is not a case (it may group cases
    or hold notes). One with golden files but no input (renamed, or left out of a commit),
    an input of another suffix (``input.txt``) or two inputs is a case with a ``problem``:
    it fails, where skipping it would pass with nothing tested.
    """
    found = []
    if not root.is_dir():
        return found
    for channel_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if channels is not None and channel_dir.name not in channels:
            continue
        for folder in sorted(p for p in channel_dir.iterdir() if p.is_dir()):
            inputs = [folder / f"input{suffix}" for suffix in INPUT_TYPES]
            present = [p for p in inputs if p.is_file()]
            problem = _problem(folder, present)
            if present or problem:
                found.append(
                    Case(channel_dir.name, folder.name, folder, (present or inputs)[0], problem)
                )
    return found


def _problem(folder: Path, present: list[Path]) -> str | None:
    expected = " or ".join(f"input{suffix}" for suffix in INPUT_TYPES)
    if len(present) > 1:
        return f"more than one input ({', '.join(p.name for p in present)}): keep one"
    if present:
        return None
    others = sorted(p.name for p in folder.glob("input.*") if p.is_file())
    if others:
        return f"{others[0]} is not read: name it input.hl7 (HL7 v2) or input.json (FHIR)"
    if (folder / "outcome.json").is_file():
        return f"golden files but no {expected}: the message the case feeds its channel"
    return None
