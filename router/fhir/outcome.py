"""OperationOutcome: how every FHIR endpoint of tie says what went wrong, and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import uuid4

HTTP_ERROR_CODES = "https://fhir.nhs.uk/CodeSystem/http-error-codes"
# The http-error-codes code tie gives with each status it answers itself (docs/fhir.md).
ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    407: "PROXY_AUTHENTICATION_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
MAX_ISSUES = 20


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: a FHIR issue type (``invalid``, ``structure``...), what, and where."""

    code: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.expression}: {self.diagnostics}" if self.expression else self.diagnostics


class Rejected(Exception):
    """A request tie answers itself with ``status`` and an OperationOutcome of ``issues``;
    ``headers`` go with the answer (e.g. a 401's ``WWW-Authenticate``)."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        self.status = status
        self.issues = issues
        self.headers: dict[str, str] = {}
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """The stored reason: every issue, with its location."""
        return "; ".join(str(issue) for issue in self.issues)


def reject(status: int, code: str, diagnostics: str, expression: str | None = None) -> Rejected:
    return Rejected(status, [Issue(code, diagnostics, expression)])


def operation_outcome(issues: list[Issue], status: int | None = None) -> dict[str, Any]:
    """The OperationOutcome resource; ``status`` adds its http-error-codes coding."""
    shown = issues[:MAX_ISSUES]
    items = []
    for issue in shown:
        item: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        if status in ERROR_CODES:
            item["details"] = {
                "coding": [{"system": HTTP_ERROR_CODES, "code": ERROR_CODES[status]}]
            }
        item["diagnostics"] = issue.diagnostics
        if issue.expression:
            item["expression"] = [issue.expression]
        items.append(item)
    if len(issues) > len(shown):
        items.append(
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{len(issues) - len(shown)} more issue(s) not shown",
            }
        )
    return {"resourceType": "OperationOutcome", "id": str(uuid4()), "issue": items}


def information(diagnostics: str) -> dict[str, Any]:
    return operation_outcome([Issue("informational", diagnostics, severity="information")])
