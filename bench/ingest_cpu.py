"""CPU per message of the ingest path without sockets: a steady measure on a shared machine.

Drives the code ``bench/mllp.py`` measures end to end, in one thread and in a fixed
order: each message's header read, ``Inbound`` and ACK built as the MLLP listener
builds them, and its outcome decided as ``GroupCommitWriter.submit`` decides it (the
channel is declarative, so it is settled on receipt as in the engine on SQLite);
``GroupCommitWriter`` batches of ``--batch`` messages (the writer's commit function is
called directly, so no thread hop or timing changes the batches). As in the engine, the
processor runs only after a batch that left a message undecided. ``--on-processor``
leaves the outcomes to the processor instead, run about every 10 messages with its
writes joining the next batch. Prints user and system CPU per message as JSON.

For instruction counts that the machine's load cannot move, run it twice under
callgrind with different ``--messages`` and subtract, so start-up cancels out::

    valgrind --tool=callgrind python bench/ingest_cpu.py --messages 600
    valgrind --tool=callgrind python bench/ingest_cpu.py --messages 1000
    # (instructions of the second - the first) / 400 = instructions per message
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from concurrent.futures import Future
from typing import Any

from mllp import make_messages  # bench/mllp.py, beside this script

from router.config import ChannelConfig
from router.connectors.hl7_inbound import hl7_inbound
from router.hl7v2.ack import ack_code, build_ack
from router.hl7v2.header import parse_header
from router.pipeline import compile_channel
from router.processing import Processor
from router.store.database import Store
from router.store.inbound import Inbound
from router.store.ingest import GroupCommitWriter, _Job, _Pending
from router.store.migrate import upgrade

WARM_UP = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=3000, help="measured messages")
    parser.add_argument("--batch", type=int, default=4, help="messages per group commit")
    parser.add_argument("--synchronous", default="FULL", help="SQLite synchronous (FULL, OFF)")
    parser.add_argument(
        "--on-processor", action="store_true", help="decide outcomes in processor rounds"
    )
    args = parser.parse_args(argv)
    frames = [data[1:-2] for data, _ in make_messages("cpu", 0, WARM_UP + args.messages)]
    with tempfile.TemporaryDirectory(prefix="tie-cpu-") as folder:
        store = Store(f"sqlite:///{folder}/tie.db", synchronous=args.synchronous)
        upgrade(store)
        writer = GroupCommitWriter(store)

        def transact(work: Any) -> Any:
            job = _Job(work, Future())
            writer._commit([job], stop=False)
            return job.waiter.result()

        channel = compile_channel(
            ChannelConfig.model_validate(
                {"name": "bench", "source": {"mllp": {"port": 0}}, "destinations": {}}
            )
        )
        processor = Processor(store, {"bench": channel}, transact=transact)
        if not args.on_processor:
            writer.settler = processor
        every = max(1, 10 // args.batch)
        _run(writer, processor, frames[:WARM_UP], args.batch, every)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        _run(writer, processor, frames[WARM_UP:], args.batch, every)
        after, ended = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        writer.stop()
        store.dispose()
    n = args.messages
    print(
        json.dumps(
            {
                "messages": n,
                "batch": args.batch,
                "synchronous": args.synchronous,
                "settled_on_receipt": not args.on_processor,
                "user_us_per_msg": round((after.ru_utime - before.ru_utime) / n * 1e6, 1),
                "system_us_per_msg": round((after.ru_stime - before.ru_stime) / n * 1e6, 1),
                "wall_us_per_msg": round((ended - started) / n * 1e6, 1),
            }
        )
    )
    return 0


def _run(
    writer: GroupCommitWriter, processor: Processor, frames: list[bytes], batch: int, every: int
) -> None:
    for n, start in enumerate(range(0, len(frames), batch)):
        items = [_inbound(data) for data in frames[start : start + batch]]
        for item in items:
            writer._decide(item)
        writer._commit([_Pending(item, Future(), None) for item in items], stop=False)
        unsettled = any(item.outcome is None for item in items)  # what wakes the processor
        if unsettled and (n + 1) % every == 0:
            processor.run_once()
    while processor.run_once():
        pass


def _inbound(data: bytes) -> Inbound:
    header = parse_header(data)
    source = {"protocol": "mllp", "remote": "127.0.0.1:1"}
    ack = build_ack(header, ack_code(header, "accept"))
    return hl7_inbound("bench", data, header, source=source, ack=ack)


if __name__ == "__main__":
    sys.exit(main())
