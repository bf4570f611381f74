"""The ``X-Request-Id`` every answer under ``/fhir`` and ``/proxy`` carries.

A caller refused at night must have an id to quote to support: its own, when it sent one
of reasonable length, else one tie makes. Where tie stores the request, tie's id is the
stored message's UUID and the caller's is a correlation key; either finds it
(``/api/messages?key=``, ``run.py show``).
"""

from __future__ import annotations

REQUEST_ID = "x-request-id"
REQUEST_ID_KEY = "x_request_id"  # the correlation key of a caller's own X-Request-Id
MAX_REQUEST_ID = 255  # a caller's longer X-Request-Id is not the answer's id: tie gives one


def callers_id(sent: str | None) -> str | None:
    """The caller's own ``X-Request-Id``, when it sent a usable one."""
    sent = (sent or "").strip()
    return sent if 0 < len(sent) <= MAX_REQUEST_ID else None


def request_keys(sent: str | None) -> tuple[tuple[str, str], ...]:
    """The caller's ``X-Request-Id`` as a correlation key (tie's own is the message's UUID,
    which a search by key finds already)."""
    own = callers_id(sent)
    return ((REQUEST_ID_KEY, own),) if own else ()
