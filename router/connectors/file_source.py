"""The file source: polls a folder, stores each file's messages, and only then removes it.

A file is taken once it has been left unchanged for ``settle`` (a writer may still be
writing a younger one; writing under a name starting with ``.`` and renaming when done is
safer still: such names are never taken). Only regular files directly in the folder whose
names match ``pattern`` are taken, oldest first; symbolic links and subfolders are not.
Each file is streamed into the store (the blob store beyond its threshold); an HL7 v2
file is split into its messages (an FHS/BHS batch envelope is dropped). Once committed,
the file is deleted, or moved to ``move_to`` (DESIGN.md §3.1: removing it is this source's
acknowledgement). A file that cannot be read as its ``content_type`` or is over
``max_size`` is stored as ``error`` with its reason and moved to ``error_to``.

The engine may die between the commit and the removal: the file is then taken again (at
least once, DESIGN.md §3.3). With the channel's ``idempotent`` receiver on, its messages
are then recognised (HL7 v2 by sender and MSH-10, other content by its SHA-256, which is
its control id) and stored as repeats, not processed twice. On PostgreSQL one node at a
time polls a folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from router.config import ChannelConfig, FilePoll
from router.connectors.hl7_inbound import hl7_inbound
from router.hl7v2.batch import split_messages
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import parse_header
from router.payload import Payload
from router.scheduling import Job, PollSchedule
from router.store.database import Store
from router.store.inbound import Inbound, Receipt
from router.store.leader import leader

log = logging.getLogger(__name__)


class FilePoller:
    """Polls one channel's folder."""

    def __init__(
        self, channel: ChannelConfig, store: Store, submit: Callable[[Inbound], Receipt]
    ) -> None:
        assert channel.source.file is not None
        self.channel = channel.name
        self.poll_config: FilePoll = channel.source.file
        self._window = channel.idempotent.window if channel.idempotent else None
        self._store = store
        self._submit = submit
        self._stopping = threading.Event()
        self._running = threading.Lock()

    def stop(self) -> None:
        """Finish the file in hand and take no more."""
        self._stopping.set()

    def poll(self) -> int:
        """One pass over the folder; how many files were taken."""
        if not self._running.acquire(blocking=False):
            return 0
        try:
            with leader(self._store, f"tie-file:{self.poll_config.directory}") as leading:
                if not leading:
                    return 0
                taken = 0
                for path in self.ready():
                    if self._stopping.is_set():
                        break
                    taken += self._take_logged(path)
                return taken
        except Exception:
            log.exception("polling %s failed; the next poll retries", self.poll_config.directory)
            return 0
        finally:
            self._running.release()

    def ready(self) -> list[Path]:
        """The files to take now, oldest first. None from a folder this engine may not
        remove files from: each would be taken again at every poll."""
        poll = self.poll_config
        now = time.time()
        found = []
        try:
            entries = list(os.scandir(poll.directory))
        except FileNotFoundError:
            log.warning("channel %s: folder %s not found", self.channel, poll.directory)
            return []
        if not os.access(poll.directory, os.W_OK | os.X_OK):
            log.error("channel %s: cannot remove files from %s", self.channel, poll.directory)
            return []
        for entry in entries:
            if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, poll.pattern):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= poll.settle:
                found.append((info.st_mtime, entry.name))
        return [poll.directory / name for _, name in sorted(found)]

    def _take_logged(self, path: Path) -> int:
        try:
            self.take(path)
        except Exception:
            log.exception(
                "channel %s: file %s not taken; the next poll retries", self.channel, path
            )
            return 0
        return 1

    def take(self, path: Path) -> None:
        """Store ``path``'s messages, then remove it (or move it aside)."""
        poll = self.poll_config
        source = {"protocol": "file", "path": str(path), "name": path.name}
        size = path.stat().st_size
        if size > poll.max_size:
            reason = f"file of {size} bytes is over max_size ({poll.max_size})"
            self._submit(self._rejected(b"", source, reason))
            self._set_aside(path, poll.error_to, reason)
            return
        with path.open("rb") as file, self._store.blobs.spool() as spool:
            spool.copy_from(file)
            payload = spool.finish()
        items, reason = self._inbound(payload, source)
        for item in items:
            self._submit(item)
        if reason is not None:
            self._set_aside(path, poll.error_to, reason)
        elif poll.move_to is not None:
            self._set_aside(path, poll.move_to, None)
        else:
            path.unlink()

    def _inbound(
        self, payload: Payload, source: dict[str, str]
    ) -> tuple[list[Inbound], str | None]:
        """The file's messages, or one ``error`` message and the reason it was rejected."""
        poll = self.poll_config
        if poll.content_type != "hl7v2":
            return [
                Inbound(
                    self.channel,
                    payload,
                    content_type=poll.content_type,
                    control_id=payload.sha256 or hashlib.sha256(payload.inline).hexdigest(),
                    control_field="sha256",
                    sender=f"file/{poll.directory.name}",
                    source=source,
                    idempotency_window=self._window,
                )
            ], None
        data = payload.read()
        try:
            messages = split_messages(data)
            if not messages:
                raise Er7Error("no message (no line starts with MSH)")
            items = [
                hl7_inbound(
                    self.channel,
                    raw,
                    parse_header(raw),
                    source=source,
                    idempotency_window=self._window,
                )
                for raw in messages
            ]
        except Er7Error as exc:
            reason = f"not HL7 v2: {exc}"
            return [self._rejected(payload, source, reason)], reason
        return items, None

    def _rejected(self, raw: bytes | Payload, source: dict[str, str], reason: str) -> Inbound:
        return Inbound(
            self.channel,
            raw,
            content_type=self.poll_config.content_type,
            sender=f"file/{self.poll_config.directory.name}",
            source=source,
            status="error",
            error=f"rejected: {reason}",
        )

    def _set_aside(self, path: Path, folder: Path | None, reason: str | None) -> None:
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        if target.exists():
            target = folder / f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
        os.replace(path, target)
        if reason is not None:
            log.warning("channel %s: file %s moved to %s: %s", self.channel, path, target, reason)


def file_schedule(
    channels: list[ChannelConfig], store: Store, submit: Callable[[Inbound], Receipt]
) -> PollSchedule:
    """A poller for each channel with a file source, each at its channel's interval."""
    pollers = [FilePoller(c, store, submit) for c in channels if c.source.file]
    jobs = [Job(f"file-poll:{p.channel}", p.poll, p.poll_config.interval) for p in pollers]
    return PollSchedule(pollers, jobs, "folder(s)")
