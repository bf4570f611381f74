"""Channel tests with golden files: a channel's filter, transform and router run over an input
message with no network, and what comes out is compared with the expected files beside it.

``tests/channels/<channel>/<case>/`` holds ``input.hl7`` (or ``input.json``) and the
expected outputs: ``outcome.json`` (status, reason, correlation keys and one line per
delivery) and one payload file per delivery, named after its destination (``epr.hl7``,
``gp.json``). ``run.py check`` runs every case; ``run.py check --update`` rewrites the
files; pytest collects the same cases (tests/channels/test_channel_cases.py).
"""

from router.channel_tests.cases import Case, discover
from router.channel_tests.golden import Result, compare, update
from router.channel_tests.runner import CaseRunner

__all__ = ["Case", "CaseRunner", "Result", "compare", "discover", "update"]
