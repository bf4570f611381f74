"""Which answer format a FHIR client asks for: tie answers FHIR JSON only.

FHIR (http.html, "Content Types and encodings") lets a client ask for a format with
``Accept`` or with the ``_format`` parameter, which overrides ``Accept``; a server that
cannot give the format asked for answers 406 Not Acceptable. A client that asks for
FHIR XML and gets JSON may fail reading it, or worse, store what it cannot parse, so
tie says at once that it does not speak XML. Anything that admits JSON (``*/*``,
``application/*``, ``application/json``, ``application/fhir+json`` with any parameters,
``fhirVersion`` included) or no ``Accept`` at all is JSON.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from router.fhir.outcome import Rejected, reject

# Media ranges of an Accept header that admit application/fhir+json.
JSON_RANGES = frozenset({"*/*", "application/*", "application/json", "application/fhir+json"})
# The _format values FHIR reads as JSON (http.html: json, application/json, application/fhir+json).
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})


def unacceptable(accept: str, query: str) -> Rejected | None:
    """406 when the request asks only for formats other than FHIR JSON; else None.

    ``_format`` (in the query string ``query``) decides when present; otherwise ``Accept``.
    """
    formats = [value for name, value in parse_qsl(query) if name == "_format"]
    if formats:
        wanted = formats[-1]
        # An unescaped ``+`` in a query string reads as a space.
        if _media_type(wanted.replace(" ", "+")) in JSON_FORMATS:
            return None
        return _refused(f"_format {wanted!r} is not served: tie answers FHIR JSON only", "_format")
    if not accept.strip() or any(_admits_json(item) for item in accept.split(",")):
        return None
    return _refused(
        f"Accept {accept.strip()!r} admits no format tie answers: it answers "
        "application/fhir+json only",
        None,
    )


def _admits_json(item: str) -> bool:
    """Whether one media range of an Accept header admits FHIR JSON (its ``q`` not 0)."""
    media, *params = item.split(";")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q" and _zero(value.strip()):
            return False
    return media.strip().lower() in JSON_RANGES


def _zero(q: str) -> bool:
    try:
        return float(q) == 0
    except ValueError:
        return False


def _media_type(value: str) -> str:
    return value.split(";")[0].strip().lower()


def _refused(text: str, expression: str | None) -> Rejected:
    return reject(406, "not-supported", text, expression)
