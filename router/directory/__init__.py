"""The endpoint directory: who (an ODS code, a DoS service id or an ASID) takes which interaction
at which endpoint (a FHIR base URL, an MLLP ``host:port`` or a MESH mailbox).

The table is seeded from ``config/endpoints.yaml`` on every start and managed with
``run.py endpoints`` and ``/api/endpoints`` (DESIGN.md §1). One job per module:

- ``keys``: identifier keys and transport addresses, parsed and checked;
- ``entries``: a checked :class:`Endpoint`, and loading ``endpoints.yaml``;
- ``records``: the table (list, get, put, remove, seed), every change audited;
- ``lookup``: the in-memory :class:`Directory` snapshot and a message's recipients.
"""

from router.directory.entries import SCOPES, Endpoint, Scope, load_endpoints_file, make_endpoint
from router.directory.keys import (
    KINDS,
    SYSTEM_OF,
    TRANSPORTS,
    Key,
    Kind,
    Transport,
    check_address,
    make_key,
    parse_key,
    split_host_port,
    system_kind,
)
from router.directory.lookup import DESTINATION_TRANSPORT, Directory, recipients
from router.directory.records import (
    SeedResult,
    all_endpoints,
    get_endpoint,
    list_endpoints,
    put_endpoint,
    remove_endpoint_id,
    remove_endpoints,
    seed,
)

__all__ = [
    "DESTINATION_TRANSPORT",
    "KINDS",
    "SCOPES",
    "SYSTEM_OF",
    "TRANSPORTS",
    "Directory",
    "Endpoint",
    "Key",
    "Kind",
    "Scope",
    "SeedResult",
    "Transport",
    "all_endpoints",
    "check_address",
    "get_endpoint",
    "list_endpoints",
    "load_endpoints_file",
    "make_endpoint",
    "make_key",
    "parse_key",
    "put_endpoint",
    "recipients",
    "remove_endpoint_id",
    "remove_endpoints",
    "seed",
    "split_host_port",
    "system_kind",
]
