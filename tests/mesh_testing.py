"""Test peers for file transfer: NHS England's mesh-sandbox (MESH) and an aiosmtpd relay.

The sandbox pins its own FastAPI, so ``make install`` gives it ``.venv-mesh-sandbox``; the
tests start it as a separate process with mailboxes of their own (one folder each under
``MAILBOXES_DATA_DIR``, password ``password``) and full HMAC authentication.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from mesh_client import MeshClient
from tie_testing import free_ports, wait_until

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_VENV = Path(os.environ.get("TIE_MESH_SANDBOX_VENV", ROOT / ".venv-mesh-sandbox"))
SHARED_KEY = "TieTestSharedKey"
PASSWORD = "password"  # the sandbox's password for mailboxes it finds as folders
HUB, DPS, PCSE, LAB = "X26HUB01", "X26DPS01", "X26PCSE1", "X26LAB01"


class MeshSandbox:
    """A running mesh-sandbox; ``stop`` ends it. ``STORE_MODE=file`` keeps payloads on disk."""

    def __init__(
        self,
        workdir: Path,
        mailboxes: tuple[str, ...] = (HUB, DPS, PCSE, LAB),
        store_mode: str = "file",
        tls: Certificates | None = None,
    ) -> None:
        python = SANDBOX_VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"no mesh-sandbox virtualenv at {SANDBOX_VENV}: run `make install`")
        data = workdir / "mailboxes"
        for mailbox in mailboxes:
            (data / mailbox / "in").mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "STORE_MODE": store_mode,
            "AUTH_MODE": "full",
            "SHARED_KEY": SHARED_KEY,
            "MAILBOXES_DATA_DIR": str(data),
            "ENV": "tie-tests",
        }
        env.pop("PYTHONPATH", None)
        self._log = (workdir / "mesh-sandbox.log").open("wb")
        self._process = subprocess.Popen(
            [
                str(python),
                "-m",
                "uvicorn",
                "mesh_sandbox.api:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *(tls.uvicorn_options() if tls else []),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.log_path = workdir / "mesh-sandbox.log"
        try:
            wait_until(self._ready, timeout=60, interval=0.1)
        except AssertionError as exc:
            self.stop()
            log = self.log_path.read_text()[-2000:]
            raise RuntimeError(f"mesh-sandbox did not start: {log}") from exc

    def _ready(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError(f"mesh-sandbox exited: {self.log_path.read_text()[-2000:]}")
        try:
            options = self.tls.httpx_options() if self.tls else {}
            return httpx.get(f"{self.url}/health", timeout=1, **options).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, mailbox: str, **options: Any) -> MeshClient:
        """A mesh-client session for ``mailbox``: how the tests play the other parties."""
        return MeshClient(
            self.url, mailbox, PASSWORD, shared_key=SHARED_KEY.encode(), max_retries=0, **options
        )

    def reset(self, *mailboxes: str) -> None:
        for mailbox in mailboxes:
            httpx.delete(f"{self.url}/messageexchange/admin/reset/{mailbox}").raise_for_status()

    def report(
        self,
        mailbox: str,
        linked_message_id: str,
        code: str,
        description: str,
        local_id: str | None = None,
    ) -> str:
        """Put a REPORT (non-delivery report) for ``linked_message_id`` in ``mailbox``'s inbox;
        ``local_id`` is the original's, which MESH copies into its report."""
        response = httpx.post(
            f"{self.url}/messageexchange/admin/report",
            json={
                "mailbox_id": mailbox,
                "code": code,
                "description": description,
                "workflow_id": "TIE_TEST",
                "status": "error",
                "linked_message_id": linked_message_id,
                "local_id": local_id,
            },
        )
        response.raise_for_status()
        return response.json()["message_id"]

    def inbox(self, mailbox: str) -> list[str]:
        with self.client(mailbox) as client:
            return list(client.iterate_message_ids())

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def mailbox_config(sandbox: MeshSandbox, mailbox: str = HUB, **extra: Any) -> dict[str, Any]:
    """A mailbox configuration for the sandbox whose secrets come from ``mesh_env``."""
    return {
        "url": sandbox.url,
        "mailbox": mailbox,
        "password": {"env": "TIE_TEST_MESH_PASSWORD"},
        "shared_key": {"env": "TIE_TEST_MESH_KEY"},
        "retries": 0,
        **extra,
    }


def mesh_env(monkeypatch: Any) -> None:
    """Secrets for a mailbox configuration that names environment variables."""
    monkeypatch.setenv("TIE_TEST_MESH_PASSWORD", PASSWORD)
    monkeypatch.setenv("TIE_TEST_MESH_KEY", SHARED_KEY)


class SmtpRelay:
    """A local SMTP server (aiosmtpd) that keeps what it is given and refuses ``nobody@``
    (while ``refusing``)."""

    def __init__(self, **options: Any) -> None:
        self.received: list[tuple[list[str], bytes]] = []
        self.refusing = True
        self.port = free_ports(1)[0]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)
        self.controller.start()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if self.refusing and address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.received.append((list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued"

    def emails(self) -> list[Any]:
        from email import message_from_bytes, policy

        return [message_from_bytes(content, policy=policy.default) for _, content in self.received]

    def stop(self) -> None:
        self.controller.stop()


class Certificates:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl.

    The sandbox then serves HTTPS and requires the client certificate (mutual TLS,
    as live MESH does).
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca, ca_key = folder / "ca.pem", folder / "ca.key"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=tie-test-ca",
            "-keyout",
            ca_key,
            "-out",
            self.ca,
        )
        self.server, self.server_key = self._issue(folder, "server", "127.0.0.1", ca_key)
        self.client, self.client_key = self._issue(folder, "client", HUB, ca_key)

    def _issue(self, folder: Path, name: str, common_name: str, ca_key: Path) -> tuple[Path, Path]:
        key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
        extensions = folder / f"{name}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={common_name}",
            "-keyout",
            key,
            "-out",
            csr,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            cert,
            "-extfile",
            extensions,
        )
        return cert, key

    def uvicorn_options(self) -> list[str]:
        return [
            "--ssl-certfile",
            str(self.server),
            "--ssl-keyfile",
            str(self.server_key),
            "--ssl-ca-certs",
            str(self.ca),
            "--ssl-cert-reqs",
            "2",
        ]

    def httpx_options(self) -> dict[str, Any]:
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.client, self.client_key)
        return {"verify": context}


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
