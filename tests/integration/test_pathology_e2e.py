"""Pathology end to end, with real peers: the EPR's order to the laboratory, the laboratory's
results back to the hospital over MLLP and to the GP practice as FHIR over MESH, one timeline.

- the EPR is python-hl7's asyncio MLLP client, the laboratory and the hospital requester
  python-hl7 MLLP servers;
- the GP practice fetches from NHS England's mesh-sandbox with mesh-client;
- the engine runs the bundled lab-orders and lab-results channels, mappings and directory
  (config/endpoints.yaml), only with local ports and the sandbox's URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import httpx
import pytest
import yaml
from fhir.resources.R4B.bundle import Bundle
from mesh_testing import HUB, MeshSandbox, mesh_env
from sqlalchemy import select
from tie_testing import (
    Hl7Receiver,
    LoopThread,
    RunningEngine,
    api_token,
    engine_config,
    serving,
    wait_until,
)

from router.cli import main
from router.config import ChannelConfig
from router.hl7v2.structure import validate_strict
from router.store.schema import deliveries, messages

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "hl7v2"
GP_MAILBOX = "X26GP001"  # Riverside Surgery, Y01234, in config/endpoints.yaml
PLACER = "1601737"  # ORC-2 / OBR-2 of the NHS samples


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshSandbox]:
    server = MeshSandbox(Path(tmp_path_factory.mktemp("mesh")), mailboxes=(HUB, GP_MAILBOX))
    yield server
    server.stop()


def _bundled(name: str, mllp: dict[str, dict[str, Any]]) -> ChannelConfig:
    """A bundled channel file as it is, with local ports and fast retries."""
    data = yaml.safe_load((REPO / "channels" / f"{name}.yaml").read_text())
    data["source"]["mllp"]["port"] = 0
    for destination, target in data["destinations"].items():
        target["retry"] = {"max_attempts": 3, "backoff": ["100ms", "200ms"]}
        if destination in mllp:
            target["mllp"].update(mllp[destination])
    return ChannelConfig.model_validate(data)


def _gp_result() -> bytes:
    """The NHS sample ORU for the order, addressed to Riverside Surgery (ODS Y01234)."""
    raw = (SAMPLES / "ORU_R01_nhs_nwgmsa_v251.hl7").read_bytes()
    return (
        raw.replace(b"|EPIC|R0A|", b"|TIE|Y01234|", 1)
        .replace(b"5051095-201905141025", b"5051095-GP-0001", 1)
        .replace(
            b"MANCHESTER UNIVERSITY NHS FOUNDATION TRUST^^R0A^^^ODS",
            b"RIVERSIDE SURGERY^^Y01234^^^ODS",
        )
    )


def _send(loop: LoopThread, port: int, raw: bytes) -> hl7.Message:
    """Send over MLLP as python-hl7's asyncio client does; the engine's ACK."""

    async def exchange() -> hl7.Message:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
        try:
            writer.writemessage(raw.decode())
            await writer.drain()
            return await reader.readmessage()
        finally:
            writer.close()
            await writer.wait_closed()

    return loop.run(exchange())


def _status(running: RunningEngine, message_id: int) -> list[tuple[str, str]]:
    d = deliveries.c
    with running.store.read() as conn:
        rows = conn.execute(select(d.destination, d.status).where(d.message_id == message_id))
        return sorted((r.destination, r.status) for r in rows)


def _outcome(running: RunningEngine, message_id: int) -> tuple[str, str | None] | None:
    """The message's status and error once processed; None while it is still ``received``."""
    m = messages.c
    with running.store.read() as conn:
        row = conn.execute(
            select(m.status, m.error).where(m.id == message_id, m.status != "received")
        ).first()
    return (row.status, row.error) if row else None


def _message_id(running: RunningEngine, control_id: str) -> int:
    with running.store.read() as conn:
        return conn.scalar(select(messages.c.id).where(messages.c.control_id == control_id))


def test_order_ack_results_and_gp_delivery_share_one_timeline(
    tmp_path, store_url, sandbox, monkeypatch
):
    mesh_env(monkeypatch)
    sandbox.reset(HUB, GP_MAILBOX)
    loop = LoopThread()
    with serving(Hl7Receiver()) as lab, serving(Hl7Receiver()) as hospital:
        config = engine_config(
            tmp_path,
            store_url,
            mappings=str(REPO / "mappings"),
            endpoints=str(REPO / "config" / "endpoints.yaml"),
            mesh={
                "mailboxes": {
                    "trust": {
                        "url": sandbox.url,
                        "mailbox": HUB,
                        "password": {"env": "TIE_TEST_MESH_PASSWORD"},
                        "shared_key": {"env": "TIE_TEST_MESH_KEY"},
                        "retries": 0,
                    }
                }
            },
        )
        channels = {
            "lab-orders": _bundled("lab-orders", {"lab": {"port": lab.port}}),
            "lab-results": _bundled("lab-results", {"epr": {"port": hospital.port}}),
        }
        running = RunningEngine(config, channels, http=True)
        try:
            # 1. The EPR orders; the engine passes the order on and the laboratory ACKs it.
            order = (SAMPLES / "OML_O21_nhs_nwgmsa_v251.hl7").read_bytes()
            ack = _send(loop, running.port("lab-orders"), order)
            assert str(ack.segment("MSA")[1]) == "CA", "MSH-15 AL: an enhanced-mode commit ACK"
            order_id = _message_id(running, "9612365d-52a4-4fab-87e7-8a09d753f095")
            wait_until(lambda: _status(running, order_id) == [("lab", "sent")])
            assert lab.control_ids() == ["9612365d-52a4-4fab-87e7-8a09d753f095"]

            # 2. The laboratory's results: one for the hospital's requester, one for a GP.
            hospital_result = (SAMPLES / "ORU_R01_nhs_nwgmsa_v251.hl7").read_bytes()
            for raw in (hospital_result, _gp_result()):
                ack = _send(loop, running.port("lab-results"), raw)
                assert str(ack.segment("MSA")[1]) == "CA"
                validate_strict(str(ack).encode())
            hospital_id = _message_id(running, "5051095-201905141025")
            gp_id = _message_id(running, "5051095-GP-0001")
            wait_until(lambda: _status(running, hospital_id) == [("epr", "sent")])
            wait_until(lambda: _status(running, gp_id) == [("gp", "sent")])
            assert hospital.control_ids() == ["5051095-201905141025"]

            # 3. The practice fetches the FHIR Bundle from its MESH mailbox.
            with sandbox.client(GP_MAILBOX) as gp:
                (mesh_id,) = gp.list_messages()
                received = gp.retrieve_message(mesh_id)
                assert (received.sender, received.workflow_id) == (HUB, "PATHOLOGY_FHIR_R4")
                assert received.content_type == "application/fhir+json", "the Output's type"
                bundle = json.loads(received.read())
                gp.acknowledge_message(mesh_id)
            Bundle.model_validate(bundle)
            header = bundle["entry"][0]["resource"]
            assert header["destination"][0]["endpoint"].endswith("|Y01234")
            patient = next(
                e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
            )
            assert {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"} in (
                patient["identifier"]
            )

            # 4. One timeline: order received, lab ACK, results received, GP delivery sent.
            token = api_token(running.store)
            with httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}") as api:
                detail = api.get(
                    f"/api/messages/{gp_id}", headers={"Authorization": f"Bearer {token}"}
                ).json()
            timeline = detail["timeline"]
            assert [(t["id"], t["channel"]) for t in timeline] == [
                (order_id, "lab-orders"),
                (hospital_id, "lab-results"),
                (gp_id, "lab-results"),
            ]
            (lab_step,) = timeline[0]["deliveries"]
            assert (lab_step["destination"], lab_step["status"], lab_step["answer"]) == (
                "lab",
                "sent",
                "AA",
            )
            (gp_step,) = timeline[2]["deliveries"]
            assert (gp_step["status"], gp_step["address"]) == ("sent", GP_MAILBOX)
            assert gp_step["answer"] == f"MESH {mesh_id} to {GP_MAILBOX}"
            assert all("unmatched-order" not in t["flags"] for t in timeline), (
                "every result had its order"
            )

            # A result whose order nobody saw is flagged, and found by its flag.
            stray = (
                _gp_result()
                .replace(b"1601737^R0A", b"9999999^R0A")
                .replace(b"5051095-GP-0001", b"5051095-GP-0002")
            )
            _send(loop, running.port("lab-results"), stray)
            stray_id = wait_until(lambda: _message_id(running, "5051095-GP-0002"))
            wait_until(lambda: _status(running, stray_id) == [("gp", "sent")])
            with httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}") as api:
                found = api.get(
                    "/api/messages",
                    params={"flag": "unmatched-order"},
                    headers={"Authorization": f"Bearer {token}"},
                ).json()["messages"]
            assert [m["id"] for m in found] == [stray_id]

            # A Z segment (local data) does not stop the result: it reaches the practice,
            # and the Bundle and the message say the practice did not receive the ZDS; nor
            # the notes on the patient (NTE after PID), which an R4 Patient cannot carry.
            local = (
                _gp_result()
                .replace(b"5051095-GP-0001", b"5051095-GP-0003")
                .replace(b"\rPV1|", b"\rNTE|1|L|Patient is on warfarin\rPV1|", 1)
            ) + b"ZDS|1.2.826.0.1.3680043.2.1125^iGene^Application^DICOM\r"
            _send(loop, running.port("lab-results"), local)
            local_id = wait_until(lambda: _message_id(running, "5051095-GP-0003"))
            wait_until(lambda: _status(running, local_id) == [("gp", "sent")])
            with sandbox.client(GP_MAILBOX) as gp:
                bundles = [json.loads(gp.retrieve_message(m).read()) for m in gp.list_messages()]
            (sent,) = [b for b in bundles if "not-mapped-zds" in json.dumps(b.get("meta"))]
            assert [t["code"] for t in sent["meta"]["tag"]] == ["not-mapped-pv1", "not-mapped-zds"]
            (patient,) = [
                e["resource"] for e in sent["entry"] if e["resource"]["resourceType"] == "Patient"
            ]
            assert [t["code"] for t in patient["meta"]["tag"]] == ["not-mapped-patient-nte"]

            # A result neither for the trust (MSH-6) nor naming a practice (ORC-21) would
            # reach nobody: an error with the reason, not filtered.
            nobody = (
                _gp_result()
                .replace(b"5051095-GP-0001", b"5051095-GP-0004")
                .replace(b"RIVERSIDE SURGERY^^Y01234^^^ODS", b"")
            )
            assert str(_send(loop, running.port("lab-results"), nobody).segment("MSA")[1]) == "CA"
            nobody_id = wait_until(lambda: _message_id(running, "5051095-GP-0004"))
            status, error = wait_until(lambda: _outcome(running, nobody_id))
            assert status == "error"
            assert "ValueError: no one would receive this result: MSH-6 (Y01234)" in error
        finally:
            running.stop()
            loop.close()

    # run.py show prints the same timeline (the CLI reads the store the engine wrote).
    (tmp_path / "engine.yaml").write_text(
        yaml.safe_dump({"store": store_url, "channels": str(tmp_path / "channels")})
    )
    (tmp_path / "channels").mkdir(exist_ok=True)
    # The API user the test made is the store's only one: `show` (a content view) names it.
    config = str(tmp_path / "engine.yaml")
    shown = _cli(["--config", config, "show", str(gp_id), "--actor", "operator"])
    assert "received, processed" in shown
    assert "-> lab sent" in shown and "answer AA" in shown
    assert f"-> gp sent to {GP_MAILBOX}" in shown
    shown = _cli(["--config", config, "show", str(local_id), "--actor", "operator"])
    flags = shown.split("--- flags ---\n")[1].split("\n\n")[0].split()
    assert {"not-mapped-zds", "not-mapped-patient-nte"} <= set(flags), "the operator sees them"


def _cli(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()
