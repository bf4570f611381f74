"""Four-eyes governance: channel revisions approved by someone other than their author, and
held deliveries released by several approvers (DESIGN.md §7, docs/governance.md).

These service functions are what the CLI, the API and the console call; they enforce
the rules themselves (roles, four eyes) and write an audit event for every action.
"""

from router.governance.holds import (
    approve_batch,
    batch_summary,
    get_batch,
    list_batches,
    open_batch_summary,
    reject_batch,
    release_shortfall,
    request_release,
)
from router.governance.models import (
    BatchSummary,
    FourEyesViolation,
    GovernanceError,
    HeldBatch,
    InvalidRevision,
    MissingReason,
    NotFound,
    Revision,
    RevisionDiff,
    RoleRequired,
)
from router.governance.revisions import (
    approve,
    diff,
    get_revision,
    list_revisions,
    propose,
    reject,
    rollback,
)

__all__ = [
    "BatchSummary",
    "FourEyesViolation",
    "GovernanceError",
    "HeldBatch",
    "InvalidRevision",
    "MissingReason",
    "NotFound",
    "Revision",
    "RevisionDiff",
    "RoleRequired",
    "approve",
    "approve_batch",
    "batch_summary",
    "diff",
    "get_batch",
    "get_revision",
    "list_batches",
    "list_revisions",
    "open_batch_summary",
    "propose",
    "reject",
    "reject_batch",
    "release_shortfall",
    "request_release",
    "rollback",
]
