"""``run.py check`` in governed mode: what the running engine would use beside the files.

A governed engine runs each channel's approved revision from the store, not its file, so
the files ``check`` validates are proposals. Where a file and the approved revision differ
(its text or its mapping code), check says so, names the revision the engine runs, and
whether that revision may and can run (router/governance/deploy_checks.py): else an
operator reads "ok" about a file the engine does not run.
"""

from __future__ import annotations

from pathlib import Path

from router.config import ChannelConfig, EngineConfig, channel_file
from router.config.loading import read_text
from router.governance import mapping_code
from router.governance.deploy import RunningText, running_texts, walk_back
from router.governance.mapping_code import short
from router.governance.revisions import sha256
from router.store.database import Store


def governed_differences(config: EngineConfig, channels: dict[str, ChannelConfig]) -> list[str]:
    """Lines saying, per channel whose file is not its running revision, what the engine
    would run and what is on disk; a note when the store cannot be read (check needs none)."""
    if config.governance != "governed":
        return []
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(config.store)
    if url.drivername == "sqlite" and not (url.database and Path(url.database).is_file()):
        return [
            f"note  governed: the store {url.database} is not made yet; on its first start the "
            "engine records these files as the approved revisions"
        ]
    store = Store(config.store)
    try:
        texts = running_texts(store)
        lines = []
        for name in sorted(set(texts) | set(channels)):
            lines.extend(_channel(store, config, name, texts.get(name), name in channels))
    except SQLAlchemyError as exc:
        return [
            f"note  governed: the store could not be read ({type(exc).__name__}): what the "
            "running engine uses (its approved revisions) is not compared with the files"
        ]
    finally:
        store.dispose()
    if not texts:
        return ["note  governed: no revisions yet; the engine's first start records these files"]
    if not lines:
        return [f"governed: each file is its channel's running revision ({len(texts)} channel(s))"]
    return [
        "governed: the engine runs the approved revisions in the store, not these files; the "
        "checks and channel tests above are of the files (proposals where they differ):",
        *lines,
    ]


def _channel(
    store: Store, config: EngineConfig, name: str, text: RunningText | None, has_file: bool
) -> list[str]:
    path = channel_file(config.channels, name)
    if text is None:
        return [f"  {name}: {path} has no revision: the engine does not run it until approved"]
    if not has_file:
        return [f"  {name}: the engine runs revision #{text.number}; there is no {path}"]
    on_disk = read_text(path)
    code = mapping_code.digest(mapping_code.channel_code(config, name, on_disk))
    if (sha256(on_disk), code) == (text.sha256, text.mappings_sha256):
        return []
    what = "its text" if sha256(on_disk) != text.sha256 else "the mapping code it names"
    start = walk_back(store, config, name, text)
    runs = "the running engine uses" if start.number == text.number else "its newest is"
    lines = [
        f"  {name}: {runs} revision #{text.number} ({text.state}, approved "
        f"by {text.approver or '-'}; mapping code {short(text.mappings_sha256)}); on disk "
        f"{what} differs (mapping code {short(code)}): a proposal "
        f"(run.py channel diff {name}; run.py channel propose {name})"
    ]
    if start.number == text.number:
        return lines
    if start.number is None:
        instead = "the channel is left out"
    else:
        instead = (
            f"the engine runs revision #{start.number} instead, a fallback ("
            "/health, the dashboard and tie_channel_revision_fallback show it)"
        )
    lines.append(f"  warning  {name}: revision #{text.number} would not run; {instead}:")
    lines.extend(f"    {problem}" for problem in start.why(text.number).splitlines())
    return lines
