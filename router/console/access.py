"""Who may open each console page: the role dependencies as annotated types.

``principal: Support`` in a route's signature means a live session whose user holds
``support`` (or ``admin``); anyone else is sent to /login or shown a 403 page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from router.api.security import Principal, require_console

Viewer = Annotated[Principal, Depends(require_console("viewer"))]
Support = Annotated[Principal, Depends(require_console("support"))]
Engineer = Annotated[Principal, Depends(require_console("engineer"))]
Approver = Annotated[Principal, Depends(require_console("approver"))]
Admin = Annotated[Principal, Depends(require_console("admin"))]
# Reading the audit log: those accountable for actions (it names who did what to which message).
AuditReader = Annotated[Principal, Depends(require_console("support", "approver"))]
# Rejecting a revision: an approver, or its author withdrawing it (the service checks which).
Reviewer = Annotated[Principal, Depends(require_console("engineer", "approver"))]
# Asking for a held batch's release.
Requester = Annotated[Principal, Depends(require_console("support", "approver"))]
