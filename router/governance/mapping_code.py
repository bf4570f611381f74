"""The mapping code a channel runs, as a revision records it for approval.

A revision's YAML names mappings (``transform: adt_pas:normalise_adt``) but the code is
Python under the mappings folder: approving the YAML alone would let the code change
unseen. A revision therefore keeps the source of every mapping module its channel names,
and of the modules under the folder those import (``from .er7edit import join``,
``from tie_mappings.v2_to_fhir import ...``), found by reading their import statements.
Its digest changes whenever any of that code does, so the approver sees a code change
as a change, and the engine can tell when the code on disk is not the approved code.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from router.config import ChannelConfig, EngineConfig, channel_file
from router.config.loading import channel_from_text
from router.mappings import PACKAGE


def references(channel: ChannelConfig) -> list[str]:
    """Every ``module:function`` the channel names (transforms and hold summaries)."""
    named = [channel.transform] if channel.transform else []
    for destination in channel.destinations.values():
        if destination.transform:
            named.append(destination.transform)
        if destination.hold is not None and destination.hold.summary:
            named.append(destination.hold.summary)
    return named


def sources(folder: Path, channel: ChannelConfig) -> dict[str, str]:
    """The source of each module file the channel's mappings use, by path relative to
    ``folder`` (``adt_pas.py``, ``v2_to_fhir/__init__.py``); empty when it names none."""
    found: dict[str, str] = {}
    pending = [name.partition(":")[0] for name in references(channel)]
    while pending:
        module = pending.pop()
        for path in _files(folder, module):
            relative = path.relative_to(folder).as_posix()
            if relative in found:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            found[relative] = text
            pending.extend(_imported(module, path, text))
    return dict(sorted(found.items()))


def digest(code: dict[str, str]) -> str | None:
    """One sha256 for the code (None for none): what a revision and the engine compare."""
    if not code:
        return None
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode("utf-8")).hexdigest()


def _files(folder: Path, module: str) -> list[Path]:
    """The files of ``module`` (dotted, relative to the package) and its parent packages."""
    parts = module.split(".")
    files = []
    for n in range(1, len(parts) + 1):
        base = folder.joinpath(*parts[:n])
        init = base / "__init__.py"
        if init.is_file():
            files.append(init)
        elif n == len(parts) and base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
    return files


def _imported(module: str, path: Path, text: str) -> list[str]:
    """The package modules ``text`` imports, relative to the package."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module.split(".")[1:]
            else:
                continue
            # ``from .pkg import sub`` may name a module: try each name as one too.
            found.extend(".".join([*target, alias.name]) for alias in node.names)
            if target:
                found.append(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and alias.name != PACKAGE:
                    found.append(alias.name.split(".", 1)[1])
    return found


def channel_code(config: EngineConfig, channel: str, text: str) -> dict[str, str]:
    """The mapping code ``text`` (a valid channel) names, as it is on disk now."""
    return sources(config.mappings, channel_from_text(text, channel_file(config.channels, channel)))


def code_of(row: Any) -> dict[str, str]:
    """The mapping code a revision row keeps, by path under the mappings folder."""
    code = getattr(row, "mappings", None)
    if not code:
        return {}
    return dict(json.loads(code))


def short(digest: str | None) -> str:
    """A digest as the log and the refusals show it."""
    return digest[:12] if digest else "none"


def folder_state(folder: Path) -> str:
    """A fingerprint of every file under the mappings ``folder`` (path, size, modification
    time): what a compile depends on besides the revision (the modules it names, those they
    load by name, the tables they read), so that one that failed is tried again when it
    changes. Read from the files' metadata only: cheap enough for every watcher round."""
    seen = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if "__pycache__" in path.parts:
            continue
        try:
            stat = path.stat()
        except OSError:  # removed meanwhile
            continue
        seen.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(seen).encode("utf-8")).hexdigest()
