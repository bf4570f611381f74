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

    A folder with no ``input.*`` is not a case (it may group cases or hold notes).
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
            if len(present) == 1:
                found.append(Case(channel_dir.name, folder.name, folder, present[0]))
            elif len(present) > 1:
                raise ValueError(f"{folder}: more than one input file")
    return found
