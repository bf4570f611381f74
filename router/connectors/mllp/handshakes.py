"""What an MLLP source over TLS tells of the handshakes it failed.

Each is counted (``tie_mllp_tls_handshake_failures_total``) and logged with its peer
and reason, without a traceback, once per host and reason every few minutes: a scanner
or a misconfigured sender retrying in a loop must not fill the log, nor stop the
listener. A peer that hangs up first is a port probe or a load balancer's health check:
noted, not counted.
"""

from __future__ import annotations

import ssl

from router import metrics
from router.repeat_log import RepeatLog


class HandshakeFailures:
    """``report(peer, exc)``: the listener's callback for a handshake that failed."""

    def __init__(self, channel: str, log: RepeatLog) -> None:
        self._channel = channel
        self._log = log
        self._counted = metrics.TLS_HANDSHAKE_FAILURES.labels(channel)

    def report(self, peer: str, exc: BaseException) -> None:
        host = peer.rsplit(":", 1)[0]
        if isinstance(exc, ConnectionError):
            self._log.info(
                (host, "closed before TLS"),
                "channel %s: %s closed the connection before the TLS handshake",
                self._channel,
                peer,
            )
            return
        self._counted.inc()
        reason = handshake_reason(exc)
        self._log.warning(
            (host, f"TLS: {reason}"),
            "channel %s: TLS handshake with %s failed: %s",
            self._channel,
            peer,
            reason,
        )


def handshake_reason(exc: BaseException) -> str:
    """What went wrong, in OpenSSL's words where it has them."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return str(exc) or type(exc).__name__
