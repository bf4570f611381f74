"""Test support for the console: an engine with one MLLP channel to a lab, users, sign-in.

The lab is python-hl7's MLLP server whose answer the test switches (``Lab.code``), so
a delivery can fail (AR) and then be resent successfully (AA).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import Hl7Receiver, RunningEngine, engine_config, hl7_message, wait_until

from router.auth.users import add_user
from router.console.form_nonce import FIELD, new_nonce
from router.store.schema import deliveries

PASSWORD = "correct horse battery staple"
# Debian's chromium package, as Playwright drives it (never Playwright's own downloads).
CHROMIUM = os.environ.get("TIE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHANNEL = "lab-orders"
CHANNEL_YAML = """\
name: lab-orders
description: orders to the lab
source:
  mllp:
    port: 0
destinations:
  lab:
    mllp:
      host: 127.0.0.1
      port: {port}
"""


class Lab(Hl7Receiver):
    """The downstream lab; ``code`` is the MSA-1 of its next ACKs."""

    def __init__(self) -> None:
        self.code = "AA"
        super().__init__(lambda _message: self.code)


@dataclass
class Site:
    running: RunningEngine
    lab: Lab
    url: str

    def send(self, raw: bytes) -> None:
        with MLLPClient("127.0.0.1", self.running.port(CHANNEL)) as client:
            client.send_message(raw)

    def delivery_status(self, control_id: str) -> list[str]:
        """Statuses of the deliveries of the message with this MSH-10, oldest first."""
        from router.store.schema import messages

        with self.running.store.read() as conn:
            query = (
                select(deliveries.c.status)
                .join(messages, messages.c.id == deliveries.c.message_id)
                .where(messages.c.control_id == control_id)
                .order_by(deliveries.c.id)
            )
            return list(conn.scalars(query))

    def send_and_settle(self, raw: bytes, control_id: str, status: str) -> None:
        self.send(raw)
        wait_until(lambda: self.delivery_status(control_id) == [status])


# A channel "feed" whose MLLP destination retries for an hour: its failures stay in view.
FEED_YAML = """\
name: feed
source:
  mllp:
    port: 0
destinations:
  pas:
    mllp:
      host: 127.0.0.1
      port: {port}
    retry:
      max_attempts: 50
      backoff: [1m, 1h]
"""


def start_site(
    tmp_path: Path,
    store_url: str,
    users: dict[str, list[str]],
    *,
    channels: dict[str, str] | None = None,
    **config: Any,
) -> Site:
    """The engine (HTTP on), its lab and the given users (all with ``PASSWORD``).

    ``channels`` are more channel files (name: YAML) beside lab-orders."""
    lab = Lab()
    folder = tmp_path / "channels"
    folder.mkdir(exist_ok=True)
    (folder / f"{CHANNEL}.yaml").write_text(CHANNEL_YAML.format(port=lab.port))
    for name, text in (channels or {}).items():
        (folder / f"{name}.yaml").write_text(text)
    running = RunningEngine(engine_config(tmp_path, store_url, **config), None, http=True)
    with running.store.begin() as conn:
        for name, roles in users.items():
            add_user(conn, name, roles, PASSWORD, actor="test")
    return Site(running, lab, f"http://127.0.0.1:{running.http_port}")


@contextmanager
def running_site(
    tmp_path: Path, store_url: str, users: dict[str, list[str]], **options: Any
) -> Iterator[Site]:
    """``start_site``'s site, stopped (engine and lab) however the test ends."""
    site = start_site(tmp_path, store_url, users, **options)
    try:
        yield site
    finally:
        site.running.stop()
        site.lab.stop()


def order(sample: bytes, control_id: str, *, name: str | None = None) -> bytes:
    """The OML sample as a new order: its MSH-10 set, and PID-5 replaced when ``name``."""
    raw = hl7_message(sample, control_id)
    if name is None:
        return raw
    segments = raw.split(b"\r")
    for i, segment in enumerate(segments):
        if segment.startswith(b"PID|"):
            fields = segment.split(b"|")
            fields[5] = name.encode()
            segments[i] = b"|".join(fields)
    return b"\r".join(segments)


class ConsoleClient(httpx.Client):
    """A client that sends each console form as if from a page just loaded: a form with the
    session's CSRF token gets a fresh one-time nonce (router/console/form_once.py) unless it
    carries one, the way a test of sending a form twice does."""

    def post(self, url: Any, *, data: Any = None, **options: Any) -> httpx.Response:
        if isinstance(data, dict) and "csrf_token" in data and FIELD not in data:
            data = {**data, FIELD: new_nonce(data["csrf_token"])}
        return super().post(url, data=data, **options)


def sign_in(url: str, name: str) -> ConsoleClient:
    """An HTTP client holding a console session for ``name``."""
    client = ConsoleClient(base_url=url, timeout=10)
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    answer = client.post(
        "/login", data={"username": name, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)
