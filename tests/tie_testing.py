"""Test support: an engine running in a background thread, and a python-hl7 MLLP receiver.

Tests stay synchronous and talk to the engine over real sockets, the way a
sending system or a laboratory would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hl7
import hl7.mllp
import httpx
import uvicorn

from router.auth.tokens import digest, issue_token
from router.auth.users import add_user, find_user
from router.config import ChannelConfig, EngineConfig
from router.directory import Endpoint, put_endpoint
from router.engine import Engine
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.migrate import upgrade
from router.store.schema import api_tokens


def engine_config(tmp_path: Path, store_url: str, **overrides: Any) -> EngineConfig:
    """An EngineConfig for tests: fast polling, mappings under tmp_path, HTTP on a free port,
    relative paths (a PostgreSQL store's default blob folder) under tmp_path, not the
    working folder, which a restore there would replace."""
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "store": store_url,
        "channels": str(tmp_path / "channels"),
        "mappings": str(mappings),
        "http": {"host": "127.0.0.1", "port": 0},
        "node": "test-node",
        "dispatch": {"poll_interval": "100ms", "lease": "30s"},
        "base_dir": tmp_path,
    }
    data.update(overrides)
    return EngineConfig.model_validate(data)


def channel(data: dict[str, Any]) -> ChannelConfig:
    return ChannelConfig.model_validate(data)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class LoopThread:
    """An asyncio loop in a daemon thread, for running servers beside synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class RunningEngine:
    """An Engine started in its own loop thread; ``stop`` shuts it down cleanly.

    ``channels`` None starts the engine as ``run.py serve`` does: from the channel files,
    or in governed mode from the approved revisions. ``options`` go to the Engine
    (``stop_grace``)."""

    def __init__(
        self,
        config: EngineConfig,
        channels: dict[str, ChannelConfig] | None,
        http: bool = False,
        **options: Any,
    ):
        self.engine = Engine(config, channels, **options)
        self._loop = LoopThread()
        self._loop.run(self.engine.start(http=http))

    @property
    def store(self) -> Any:
        return self.engine.store

    def port(self, channel_name: str) -> int:
        for listener in self.engine.listeners:
            if listener.channel.name == channel_name:
                return listener.port
        raise KeyError(channel_name)

    @property
    def http_port(self) -> int:
        assert self.engine.http is not None
        return self.engine.http.servers[0].sockets[0].getsockname()[1]

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the engine's loop; its result."""
        return self._loop.run(coro)

    def stop(self) -> None:
        self._loop.run(self.engine.stop())
        self._loop.close()

    def run_until_stopped(self) -> None:
        """Wait for the engine to stop by itself (as ``run.py serve`` does); what it raised."""
        try:
            self._loop.run(self.engine.run_until_stopped())
        finally:
            self._loop.close()

    def register(self, endpoints: Iterable[Endpoint]) -> None:
        """Put ``endpoints`` in the directory and make the engine's lookups see them now."""
        endpoints = list(endpoints)
        if not endpoints:
            return
        with self.store.begin() as conn:
            for endpoint in endpoints:
                put_endpoint(conn, endpoint, actor="test")
        self.engine.gateway.directory.refresh()


@contextlib.contextmanager
def engine_over_http(
    config: EngineConfig,
    channels: dict[str, ChannelConfig],
    *,
    endpoints: Iterable[Endpoint] = (),
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    """The engine with its HTTP side, ``endpoints`` in its directory, and an httpx client for it.

    Start the peers the engine talks to before this (as fixtures it depends on), so they
    outlive its connections.
    """
    running = RunningEngine(config, channels, http=True)
    try:
        running.register(endpoints)
        with httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=10) as client:
            yield running, client
    finally:
        running.stop()


def as_sender(
    store: Store, client: httpx.Client, *, proxy: bool = False, name: str = "sender"
) -> str:
    """Make ``client`` send as the API user ``name`` with the sender role, as a FHIR source
    (``Authorization``) or the booking proxy (``Proxy-Authorization``) asks by default; the
    token."""
    token = api_token(store, "sender", name=name)
    client.headers["Proxy-Authorization" if proxy else "Authorization"] = f"Bearer {token}"
    return token


Stoppable = TypeVar("Stoppable", bound="_Stops")


class _Stops(Protocol):
    def stop(self) -> None: ...


@contextlib.contextmanager
def serving(server: Stoppable) -> Iterator[Stoppable]:
    """``server`` (a receiver, a relay) for the ``with`` block, stopped after it."""
    try:
        yield server
    finally:
        server.stop()


class Hl7Receiver:
    """A downstream system (e.g. the laboratory) built on python-hl7's MLLP server.

    ``answer(message) -> code`` decides the MSA-1 of each ACK (default AA);
    every message received is kept, in arrival order.
    """

    def __init__(
        self,
        answer: Callable[[hl7.Message], str] | None = None,
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
    ):
        self.received: list[hl7.Message] = []
        self.answer = answer or (lambda _m: "AA")
        self._loop = LoopThread()
        self._server = self._loop.run(
            hl7.mllp.start_hl7_server(
                self._client, "127.0.0.1", port, limit=10 * 1024 * 1024, ssl=tls
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                writer.writemessage(message.create_ack(self.answer(message)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")[10]) for m in self.received]

    def stop(self) -> None:
        async def _close() -> None:
            self._server.close()
            await self._server.wait_closed()

        self._loop.run(_close())
        self._loop.close()


def announced_post(
    base_url: str, path: str, headers: dict[str, str], start: bytes, length: int
) -> httpx.Response:
    """The answer to a POST announcing a ``length``-byte body and sending only ``start``.

    For a body refused before it is read: a client that sends the whole of a large body
    may see the connection reset (the engine closes it unread) before it reads the answer.
    """
    lines = [f"POST {path} HTTP/1.1", "Host: tie", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    url = httpx.URL(base_url)
    with socket.create_connection((url.host, url.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + start)
        received = b""
        while b"\r\n\r\n" not in received:
            received += conn.recv(65536) or _closed()
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
        size = int(dict((k.lower(), v) for k, v in fields).get("content-length", 0))
        while len(body) < size:
            body += conn.recv(65536) or _closed()
    return httpx.Response(int(status_line.split()[1]), headers=fields, content=body)


def _closed() -> bytes:
    raise ConnectionError("the engine closed the connection before its whole answer")


def free_ports(count: int) -> list[int]:
    """Distinct ports nobody uses now, chosen at random below the kernel's range of ports
    for outgoing connections.

    For configurations that must name their ports before the engine starts (engine.yaml
    and channel files used by a subprocess or by ``run.py send``). A port from that range
    (what binding port 0 gives) can be taken meanwhile as the source port of any client
    socket on the machine, and an engine restarted on it after kill -9 then fails to bind:
    the kill -9 test once lost its HTTP port so.
    """
    import random
    import socket

    low = _outgoing_ports_start()
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(10_000 if low > 11_000 else 1_024, low)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def _outgoing_ports_start() -> int:
    """The first port the kernel gives outgoing connections (Linux's default when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def hl7_message(
    sample: bytes,
    control_id: str,
    *,
    patient: str | None = None,
    accept_ack: str | None = None,
    separator: bytes = b"\r",
) -> bytes:
    """A distinct test message built from ``sample``: its MSH-10 replaced, optionally PID-3
    (as ``<patient>^^^NHS^NH``) and MSH-15, with ``separator`` between segments."""
    segments = sample.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r").split(b"\r")
    out = []
    for segment in segments:
        fields = segment.split(b"|")
        if fields[0] == b"MSH":
            fields += [b""] * (15 - len(fields))
            fields[9] = control_id.encode()
            if accept_ack is not None:
                fields[14] = accept_ack.encode()
        elif fields[0] == b"PID" and patient is not None:
            fields += [b""] * (4 - len(fields))
            fields[3] = f"{patient}^^^NHS^NH".encode()
        out.append(b"|".join(fields).rstrip(b"|"))
    return separator.join(out) + separator


# --- HTTP peers (FHIR receivers, providers) ---------------------------------------------------


@dataclass
class Received:
    """One request an ``HttpReceiver`` got."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


# What an answer function returns: a status, (status, body) or (status, body, headers).
Answer = int | tuple[int, bytes] | tuple[int, bytes, dict[str, str]]


class HttpReceiver:
    """A receiving service: a real uvicorn server on loopback whose answers the test chooses.

    ``answer(request)`` (plain or ``async``) returns the status, body and headers of each
    answer (default 200, empty); an async answer can take its time, like a slow receiver.
    ``tls`` is uvicorn's ssl options (certificate, key, CA, client certificate required).
    """

    def __init__(
        self,
        answer: Callable[[Received], Any] | None = None,
        *,
        port: int = 0,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self.answer = answer or (lambda _r: 200)
        self._loop = LoopThread()
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            **(tls or {}),
        )
        self._server = _QuietServer(config)
        self._task = self._loop.run(self._start())
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    async def _start(self) -> Any:
        task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        return task

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        request = Received(
            scope["method"],
            scope["path"],
            scope["query_string"].decode(),
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body,
        )
        self.received.append(request)
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        status, content, headers = _normalise(result)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def stop(self) -> None:
        async def _stop() -> None:
            self._server.should_exit = True
            await self._task

        self._loop.run(_stop())
        self._loop.close()


def _normalise(result: Any) -> tuple[int, bytes, dict[str, str]]:
    if isinstance(result, int):
        return result, b"", {}
    if len(result) == 2:
        return result[0], result[1], {}
    return result[0], result[1], dict(result[2])


class _QuietServer(uvicorn.Server):
    """uvicorn's Server without signal handling (it runs beside the tests, not as main)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Certificates:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_tls(self, *, require_client: bool = True) -> dict[str, Any]:
        """uvicorn's ssl options for a server that trusts only this CA's clients."""
        import ssl

        return {
            "ssl_certfile": str(self.server_cert),
            "ssl_keyfile": str(self.server_key),
            "ssl_ca_certs": str(self.ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE,
        }


def make_certificates(folder: Path) -> Certificates:
    """Issue the certificates with the openssl command (the test CA lives only in ``folder``)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tie test CA",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    issued = {}
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
        ext = folder / f"{name}.ext"
        ext.write_text(extension + "\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=tie test {name}",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
        issued[name] = (cert, key)
    return Certificates(ca, *issued["server"], *issued["client"])


@dataclass(frozen=True)
class Revocations:
    """``certs`` and a second client certificate of the same CA, ``revoked``, with CRLs of
    that CA: ``none`` lists nothing, ``listed`` lists ``revoked``, ``stale`` lists nothing
    and its nextUpdate passed in January 2025."""

    certs: Certificates
    revoked: Certificates  # certs with the revoked client certificate and key
    none: Path
    listed: Path
    stale: Path


def make_revocations(folder: Path) -> Revocations:
    """Issue them with the openssl command (``openssl ca`` keeps its list in ``folder``)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    certs = make_certificates(folder)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tie test revoked",
        "-keyout", "revoked.key", "-out", "revoked.csr")  # fmt: skip
    run("x509", "-req", "-in", "revoked.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2",
        "-CAcreateserial", "-extfile", "client.ext", "-out", "revoked.pem")  # fmt: skip
    (folder / "index.txt").write_text("")
    (folder / "crl.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ndefault_md = sha256\n"
    )
    ca = ["-config", "crl.cnf", "-keyfile", "ca.key", "-cert", "ca.pem"]
    run("ca", *ca, "-gencrl", "-crldays", "1", "-out", "none.crl")
    dates = ["-crl_lastupdate", "20250101000000Z", "-crl_nextupdate", "20250102000000Z"]
    run("ca", *ca, "-gencrl", *dates, "-out", "stale.crl")
    run("ca", *ca, "-revoke", "revoked.pem")
    run("ca", *ca, "-gencrl", "-crldays", "1", "-out", "listed.crl")
    revoked = replace(certs, client_cert=folder / "revoked.pem", client_key=folder / "revoked.key")
    return Revocations(
        certs, revoked, folder / "none.crl", folder / "listed.crl", folder / "stale.crl"
    )


def api_token(
    store: Store | str, *roles: str, name: str = "operator", token: str | None = None
) -> str:
    """An API token for the user ``name`` (token-only, created when missing) holding ``roles``
    (admin when none are given). ``token`` fixes its value, so a store can be seeded with a
    test's constant before the engine starts; otherwise a fresh token is issued."""
    own = isinstance(store, str)
    target = Store(store) if isinstance(store, str) else store
    chosen = list(roles) or ["admin"]
    try:
        if own:
            upgrade(target)
        with target.begin() as conn:
            user = find_user(conn, name) or add_user(conn, name, chosen, None, actor="test")
            if token is None:
                return issue_token(conn, name, chosen, actor="test")[1]
            conn.execute(
                api_tokens.insert().values(
                    user_id=user.id,
                    token_hash=digest(token),
                    roles=" ".join(chosen),
                    created_at=utcnow(),
                    created_by="test",
                )
            )
            return token
    finally:
        if own:
            target.dispose()
