"""What the governance services return, and the errors they raise.

The API and the console show these records as they are; every rule that refuses an
action raises a ``GovernanceError`` subclass whose message says why, for the person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args

# Revision states. ``approved`` waits for the engine to apply it; the engine marks it
# ``deployed`` and the revision it replaced ``superseded``, or ``deploy-failed`` when it
# cannot compile it (so that it is not taken for what runs). A proposal that a newer one
# replaces before approval is ``superseded`` too.
PROPOSED, APPROVED, DEPLOYED, REJECTED, SUPERSEDED, DEPLOY_FAILED = (
    "proposed",
    "approved",
    "deployed",
    "rejected",
    "superseded",
    "deploy-failed",
)
RUNNING = (APPROVED, DEPLOYED)  # the newest of these is what the engine runs
RevisionState = Literal[
    "proposed", "approved", "deployed", "rejected", "superseded", "deploy-failed"
]
REVISION_STATES: tuple[str, ...] = get_args(RevisionState)

# Hold batch states: ``open`` is the held deliveries nobody has asked to release yet
# (not stored as a batch); asking makes a ``pending`` batch, then ``released`` or ``rejected``.
OPEN, PENDING, RELEASED = "open", "pending", "released"
BatchState = Literal["open", "pending", "released", "rejected"]
BATCH_STATES: tuple[str, ...] = get_args(BatchState)


class GovernanceError(Exception):
    """An action the governance rules refuse (HTTP 409 / CLI exit 1)."""


class NotFound(GovernanceError, LookupError):
    """No such revision, batch or channel (HTTP 404)."""


class FourEyesViolation(GovernanceError):
    """The same person may not both make and approve (HTTP 403)."""


class RoleRequired(GovernanceError):
    """The actor is not a user holding the role the action needs (HTTP 403)."""


class MissingReason(GovernanceError, ValueError):
    """A rejection without its reason: the request is incomplete, not in the wrong state
    (HTTP 422 / CLI exit 2)."""


class InvalidRevision(GovernanceError):
    """The proposed YAML is not a valid channel (HTTP 422); ``problems`` say where."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Revision:
    """One stored version of a channel file."""

    id: int
    channel: str
    number: int
    state: str
    author: str
    proposed_at: datetime
    sha256: str
    reason: str
    based_on: int | None
    approver: str | None
    approved_at: datetime | None
    deployed_at: datetime | None
    yaml: str
    # The mapping code the channel names, as proposed (path under the mappings folder:
    # source), and its digest; empty and None for a channel that names none.
    mappings_sha256: str | None = None
    mappings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RevisionDiff:
    """A unified diff of revision ``number`` against ``against`` (the running revision)."""

    channel: str
    number: int
    against: int | None
    text: str


@dataclass(frozen=True)
class HeldBatch:
    """Held deliveries of one destination awaiting a release decision.

    ``id`` is None for the open batch (held, release not requested yet); ``required`` is
    None until release is requested, when the destination's ``hold.approvals`` is fixed.
    ``waiting_for`` says what a pending batch still needs, for the person deciding.
    """

    id: int | None
    channel: str
    destination: str
    state: str
    deliveries: int
    required: int | None = None
    approvers: tuple[str, ...] = ()
    channel_owner: str | None = None
    requested_by: str | None = None
    requested_at: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    waiting_for: str | None = None


@dataclass(frozen=True)
class BatchSummary:
    """What a batch would release: counts by destination (and address), message type and
    each label the destination's summary mapping gives (e.g. ``{"ods": {"A12345": 3}}``)."""

    batch: HeldBatch
    by_destination: dict[str, int] = field(default_factory=dict)
    by_message_type: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
