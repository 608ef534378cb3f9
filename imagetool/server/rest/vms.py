"""VMs (seed 6.220, 6.243), their disk attachments and snapshots."""

from __future__ import annotations

from imagetool.server.rest.router import Router


def register(router: Router) -> None:
    """Add this module's routes."""
