"""Prometheus metrics: what this engine process counted, and at scrape time the store's
queues, the channels this node runs and the expiry of the certificates the engine presents.

Counters and the ACK-latency and group-commit histograms live in this process
(they restart from zero with it, which Prometheus' ``rate`` expects). Queue depth,
the age of the oldest queued delivery and the deliveries failed for good are read from
the store when ``/metrics`` is scraped, from the partial indexes of pending and of failed
deliveries and one row per destination (router/store/queues.py), so they are the same on
every node and cheap to scrape. The certificates' expiry is this node's own (its files).
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router.ca_expiry import trust_ends
from router.certificate_expiry import CertificateFiles, Expiries, Presented
from router.channel_health import ChannelHealth
from router.dps.overdue import OVERDUE_AFTER, count_overdue
from router.store.database import Store
from router.store.queues import failed_deliveries, pending_queues, unprocessed

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "tie_messages",
    "Messages by channel and outcome: received, processed, filtered, error.",
    ["channel", "status"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "tie_deliveries",
    "Delivery attempts by channel, destination and outcome: sent, retrying, failed.",
    ["channel", "destination", "status"],
    registry=REGISTRY,
)
PRUNED = Counter(
    "tie_messages_pruned",
    "Messages removed by retention, by channel.",
    ["channel"],
    registry=REGISTRY,
)
TLS_HANDSHAKE_FAILURES = Counter(
    "tie_mllp_tls_handshake_failures",
    "TLS handshakes an MLLP listener failed (no TLS, an untrusted or missing client "
    "certificate, a peer that hung up), by channel.",
    ["channel"],
    registry=REGISTRY,
)
MESH_POLL_FAILURES = Counter(
    "tie_mesh_poll_failures",
    "Polls of a MESH mailbox that failed (authentication, certificate, the MESH service).",
    ["mailbox"],
    registry=REGISTRY,
)
ACK_LATENCY = Histogram(
    "tie_ack_latency_seconds",
    "From a message fully read to its acknowledgement sent (after the store commit).",
    ["channel", "transport"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
# The group commit's two numbers that explain a slow ACK: how long the store takes to make
# a commit durable (on SQLite the WAL write and its fsync: the disk's share of every ACK)
# and how many messages share each commit.
GROUP_COMMIT = Histogram(
    "tie_group_commit_seconds",
    "The ingest writer's COMMIT of a group of messages: on SQLite the WAL write and fsync.",
    buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
GROUP_COMMIT_MESSAGES = Histogram(
    "tie_group_commit_messages",
    "Messages stored by each group commit that stored any (how many senders share a flush).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1000),
    registry=REGISTRY,
)


def count_messages(pairs: Iterable[tuple[str, str]]) -> None:
    """Add (channel, status) pairs, one per message, tallied first: one increment a pair."""
    for labels, n in Tally(pairs).items():
        _message_counter(*labels).inc(n)


def count_deliveries(channel: str, destination: str, statuses: Iterable[str]) -> None:
    for status, n in Tally(statuses).items():
        _delivery_counter(channel, destination, status).inc(n)


# A labelled child, once looked up, is the same object for the life of the process (no
# child is ever removed): ``labels`` takes a lock and validates its arguments each time,
# about 2 us, in every group commit. Bounded: channels and statuses are few.
@functools.lru_cache(maxsize=4096)
def _message_counter(channel: str, status: str) -> Any:
    return MESSAGES.labels(channel, status)


@functools.lru_cache(maxsize=4096)
def _delivery_counter(channel: str, destination: str, status: str) -> Any:
    return DELIVERIES.labels(channel, destination, status)


class QueueCollector(Collector):
    """``tie_queue_depth``, ``tie_queue_oldest_age_seconds``, ``tie_failed_deliveries``,
    ``tie_unprocessed_messages`` and ``tie_dps_jobs_overdue``: the DPS jobs waiting for an
    answer longer than ``overdue_after`` seconds (router/dps/overdue.py)."""

    def __init__(self, store: Store, overdue_after: float = OVERDUE_AFTER) -> None:
        self.store = store
        self.overdue_after = overdue_after

    def collect(self) -> Iterator[Any]:
        now = datetime.now(UTC)
        with self.store.read() as conn:
            queues = pending_queues(conn)
            failed = failed_deliveries(conn)
            backlog = unprocessed(conn)
            late = count_overdue(conn, now, self.overdue_after)
        depth = GaugeMetricFamily(
            "tie_queue_depth",
            "Deliveries queued, sending or retrying.",
            labels=["channel", "destination"],
        )
        age = GaugeMetricFamily(
            "tie_queue_oldest_age_seconds",
            "Age of the oldest queued delivery.",
            labels=["channel", "destination"],
        )
        for channel, destination, count, oldest in queues:
            depth.add_metric([channel, destination], count)
            age.add_metric([channel, destination], (now - oldest).total_seconds())
        stuck = GaugeMetricFamily(
            "tie_failed_deliveries",
            "Deliveries failed for good (retries used up or refused) and not resent.",
            labels=["channel", "destination"],
        )
        for (channel, destination), count in failed.items():
            stuck.add_metric([channel, destination], count)
        waiting = GaugeMetricFamily(
            "tie_unprocessed_messages",
            "Messages stored but not yet processed (a paused channel's backlog).",
            labels=["channel"],
        )
        for channel, count in backlog.items():
            waiting.add_metric([channel], count)
        overdue = GaugeMetricFamily(
            "tie_dps_jobs_overdue",
            "DPS handoff jobs sent to DPS and not answered within dps.overdue_after.",
            value=late,
        )
        yield from (depth, age, stuck, waiting, overdue)


class ChannelCollector(Collector):
    """``tie_channel_up``: 1 for each channel this node runs (paused too), 0 for one left
    out at start or whose listener failed to start; ``tie_channel_revision_fallback``: 1 for
    one it runs from an older revision than its newest deployed one (router/channel_health.py).
    Each node's own, like /health: the store cannot say what a node runs."""

    def __init__(self, health: Callable[[], dict[str, ChannelHealth]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "tie_channel_up",
            "1 when this node runs the channel (paused or not), 0 when it was left out at "
            "start or failed to start (/health says why).",
            labels=["channel"],
        )
        fallback = GaugeMetricFamily(
            "tie_channel_revision_fallback",
            "1 when this node runs the channel from an older revision than its newest "
            "deployed one, which may not or cannot run here (the dashboard says why).",
            labels=["channel"],
        )
        for name, health in self._health().items():
            up.add_metric([name], 1 if health.up else 0)
            fallback.add_metric([name], 1 if health.fallback else 0)
        yield from (up, fallback)


class CertificateCollector(Collector):
    """``tie_tls_certificate_expiry_timestamp_seconds``: when each certificate file the
    engine presents expires (router/certificate_expiry.py). ``presented`` is asked at each
    scrape, so a reload's channels are followed; each file is read at the first scrape and
    again only when it changed (a renewal in place). A listening MLLP source reports the
    certificate it serves, which a renewed file that does not load leaves unchanged.

    ``tie_tls_ca_certificate_expiry_timestamp_seconds``: each certificate of each CA bundle
    ``trusted`` names, one sample each; ``tie_tls_ca_bundle_trust_end_timestamp_seconds``:
    when each bundle stops verifying some peer, what the alert watches (an expired old
    root beside a valid one does not count: router/ca_expiry.py).

    ``tie_tls_crl_next_update_timestamp_seconds``: the ``nextUpdate`` of the CRL each
    listening MLLP source (``crls``) checks clients against."""

    def __init__(
        self,
        presented: Callable[[], list[Presented]],
        trusted: Callable[[], list[Presented]] = list,
        crls: Callable[[], list[Presented]] = list,
    ) -> None:
        self._presented = presented
        self._trusted = trusted
        self._crls = crls
        self._expiries = Expiries()
        self._bundles = CertificateFiles()

    def collect(self) -> Iterator[Any]:
        presented = self._presented()
        self._expiries.forget_all_but(item.file for item in presented)
        expiry = GaugeMetricFamily(
            "tie_tls_certificate_expiry_timestamp_seconds",
            "When a certificate the engine presents expires (the earliest of its file's "
            "chain), in seconds since the epoch; a file that cannot be read has none.",
            labels=["channel", "destination", "mailbox", "role", "file"],
        )
        for item in presented:
            moment = item.served() if item.served else self._expiries.expiry(item.file)
            if moment is not None:
                labels = [item.channel, item.destination, item.mailbox, item.role, str(item.file)]
                expiry.add_metric(labels, moment.timestamp())
        yield expiry
        yield from self._ca_expiry()
        next_update = GaugeMetricFamily(
            "tie_tls_crl_next_update_timestamp_seconds",
            "When the CRL an MLLP source checks client certificates against is due to be "
            "replaced (its nextUpdate), in seconds since the epoch; past it, every client "
            "certificate is refused.",
            labels=["channel", "file"],
        )
        for crl in self._crls():
            moment = crl.served() if crl.served else None
            if moment is not None:
                next_update.add_metric([crl.channel, str(crl.file)], moment.timestamp())
        yield next_update

    def _ca_expiry(self) -> list[GaugeMetricFamily]:
        bundles = self._trusted()
        self._bundles.forget_all_but(item.file for item in bundles)
        expiry = GaugeMetricFamily(
            "tie_tls_ca_certificate_expiry_timestamp_seconds",
            "When a CA certificate the engine verifies peers with expires, one sample for "
            "each certificate in a CA bundle, in seconds since the epoch.",
            labels=["channel", "destination", "mailbox", "role", "file", "subject", "sha256"],
        )
        ends = GaugeMetricFamily(
            "tie_tls_ca_bundle_trust_end_timestamp_seconds",
            "When a CA bundle stops verifying some peer: the earliest last expiry among its "
            "CAs still valid, or its last expiry when none is (router/ca_expiry.py).",
            labels=["channel", "destination", "mailbox", "role", "file"],
        )
        now = datetime.now(UTC)
        for item in bundles:
            where = [item.channel, item.destination, item.mailbox, item.role, str(item.file)]
            certificates = self._bundles.of(item.file)
            for cert in certificates:
                expiry.add_metric([*where, cert.subject, cert.sha256], cert.not_after.timestamp())
            end = trust_ends(certificates, now)
            if end is not None:
                ends.add_metric(where, end.moment.timestamp())
        return [expiry, ends]
