"""Which answer format a FHIR client asks for: tie answers FHIR JSON only.

FHIR (http.html, "Content Types and encodings") lets a client ask for a format with
``Accept`` or with the ``_format`` parameter, which overrides ``Accept``; a server that
cannot give the format asked for answers 406 Not Acceptable. A client that asks for
FHIR XML and gets JSON may fail reading it, or worse, store what it cannot parse, so
tie says at once that it does not speak XML. Anything that admits JSON (``*/*``,
``application/*``, ``application/json``, ``application/fhir+json`` with any parameters)
or no ``Accept`` at all is JSON.

A media type may name the FHIR version wanted, ``fhirVersion=4.0`` (http.html, "FHIR
Version parameter"); a server that does not support the version asked for answers 406.
A channel speaks one version (its ``fhir``, R4 or STU3): a range naming another one does
not admit its JSON, as an R3 client reading R4 resources would misread them.

The body's ``Content-Type`` is read the same way: a body that is not FHIR JSON, or is
FHIR JSON of another version (``application/fhir+json; fhirVersion=3.0`` to an R4
channel), is 415 Unsupported Media Type, as the models of this version would misread it;
so is a body labelled with another character set than UTF-8 (``charset=iso-8859-1``),
which FHIR JSON never is, and a compressed body (``Content-Encoding: gzip``), which would
otherwise be refused as JSON that is not UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

from router.fhir import MEDIA_TYPES
from router.fhir.outcome import Rejected, reject

# Media ranges of an Accept header that admit application/fhir+json.
JSON_RANGES = frozenset({"*/*", "application/*", "application/json", "application/fhir+json"})
# The _format values FHIR reads as JSON (http.html: json, application/json, application/fhir+json).
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
# The fhirVersion (major.minor) of each version a channel speaks.
FHIR_VERSIONS = {"R4": "4.0", "STU3": "3.0"}
# FHIR JSON is UTF-8 (http.html, "Content Types and encodings"); ``utf8`` is a common alias.
UTF_8 = frozenset({"utf-8", "utf8"})


def unacceptable(accept: str, query: str, fhir: str = "R4") -> Rejected | None:
    """406 when the request asks only for formats other than FHIR JSON of version ``fhir``
    (R4 or STU3); else None.

    ``_format`` (in the query string ``query``) decides when present; otherwise ``Accept``.
    """
    version = FHIR_VERSIONS[fhir]
    served = f"application/fhir+json (fhirVersion={version}) only"
    formats = [value for name, value in parse_qsl(query) if name == "_format"]
    if formats:
        wanted = formats[-1]
        # An unescaped ``+`` in a query string reads as a space.
        media, *params = wanted.replace(" ", "+").split(";")
        if media.strip().lower() in JSON_FORMATS and _of_version(params, version):
            return None
        return _refused(f"_format {wanted!r} is not served: tie answers {served}", "_format")
    if not accept.strip() or any(_admits_json(item, version) for item in accept.split(",")):
        return None
    return _refused(
        f"Accept {accept.strip()!r} admits no format tie answers: it answers {served}",
        None,
    )


def unsupported(headers: Mapping[str, str], fhir: str = "R4") -> Rejected | None:
    """415 when a request's body, by its ``Content-Type``, is not FHIR JSON of version
    ``fhir`` (R4 or STU3), or comes in a ``Content-Encoding`` tie does not decode; else
    None (``headers`` by lower-case name)."""
    coding = headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        # RFC 9110 (15.5.16): 415, and Accept-Encoding names the codings that are taken.
        exc = reject(
            415,
            "not-supported",
            f"content encoding {coding!r} is not taken: send the body as it is",
        )
        exc.headers["Accept-Encoding"] = "identity"
        return exc
    content_type = headers.get("content-type", "")
    media, *params = content_type.split(";")
    media = media.strip().lower()
    version = FHIR_VERSIONS[fhir]
    if media not in MEDIA_TYPES:
        text = f"content type {media or 'none'} is not taken: send {' or '.join(MEDIA_TYPES)}"
    elif not _of_version(params, version):
        text = (
            f"content type {content_type.strip()!r} names another FHIR version: "
            f"this channel takes fhirVersion={version}"
        )
    elif not _utf8(params):
        text = (
            f"content type {content_type.strip()!r} names another character set: "
            "FHIR JSON is UTF-8 (charset=utf-8, or no charset)"
        )
    else:
        return None
    return reject(415, "not-supported", text)


def _admits_json(item: str, version: str) -> bool:
    """Whether one media range of an Accept header admits FHIR JSON of ``version`` (its
    ``q`` not 0)."""
    media, *params = item.split(";")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q" and _zero(value.strip()):
            return False
    return media.strip().lower() in JSON_RANGES and _of_version(params, version)


def _of_version(params: list[str], version: str) -> bool:
    """Whether media type parameters ask for FHIR ``version`` (major.minor), or for none: a
    full version (``4.0.1``) names its major.minor too."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "fhirversion":
            asked = value.strip().strip('"').split(".")
            return asked[:2] == version.split(".")
    return True


def _utf8(params: list[str]) -> bool:
    """Whether media type parameters name UTF-8 as the body's charset, or none: a body
    labelled Latin-1 but read as UTF-8 would be stored and routed as another text."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() in UTF_8
    return True


def _zero(q: str) -> bool:
    try:
        return float(q) == 0
    except ValueError:
        return False


def _refused(text: str, expression: str | None) -> Rejected:
    return reject(406, "not-supported", text, expression)
