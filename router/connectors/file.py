"""The file destination: an atomic write (temporary file, fsync, rename) under one folder."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path

from router.config import FileTarget
from router.connectors import Delivery, SendResult
from router.payload import CHUNK

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def render_name(template: str, delivery: Delivery) -> str:
    """Fill the name template; every value is reduced to safe characters, so no path escapes."""
    values = {
        "channel": delivery.channel,
        "destination": delivery.destination,
        "message_id": delivery.message_id,
        "message_uuid": delivery.message_uuid,
        "delivery_id": delivery.id,
        "control_id": delivery.idempotency_key or "",
    }
    safe = {k: _UNSAFE.sub("_", str(v))[:100] for k, v in values.items()}
    name = template.format(**safe)
    if name in ("", ".", "..") or name.startswith("."):
        raise ValueError(f"file name {name!r} from template {template!r} is not allowed")
    return name


class FileSender:
    def __init__(self, target: FileTarget) -> None:
        self._target = target

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            path = await asyncio.to_thread(self._write, delivery)
        except (KeyError, ValueError) as exc:
            return SendResult("fail", error=f"file name: {exc}")
        except OSError as exc:
            return SendResult("retry", error=f"{exc.strerror or exc}: {exc.filename or ''}".strip())
        return SendResult("sent", response=str(path).encode())

    def _write(self, delivery: Delivery) -> Path:
        directory = self._target.directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / render_name(self._target.name, delivery)
        if path.resolve().parent != directory.resolve():
            raise ValueError(f"{path} is outside {directory}")
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tie-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                with delivery.body.open() as body:
                    shutil.copyfileobj(body, handle, CHUNK)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    async def close(self) -> None:
        return None
