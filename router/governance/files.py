"""Governed mode: channel files that differ from what runs become proposals."""

from __future__ import annotations

from router.config import EngineConfig
from router.governance.deploy import changed_files
from router.governance.models import Revision
from router.governance.revisions import propose
from router.store.database import Store


def propose_files(store: Store, config: EngineConfig, *, actor: str) -> list[Revision]:
    """Propose every changed channel file as a revision by ``actor``; the proposals."""
    return [
        propose(store, config, name, text, actor=actor, reason="proposed from the channel file")
        for name, text in changed_files(store, config).items()
    ]
