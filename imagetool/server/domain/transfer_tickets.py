"""The data-plane ticket of an image transfer: added when the transfer is
prepared, refused while it is paused (it keeps its open backend), re-armed
on resume, and removed at the end once no request uses its volume."""

from __future__ import annotations

import logging
from typing import Any

from imagetool.server.tickets import Ticket, TicketRegistry

log = logging.getLogger(__name__)

TICKET_TIMEOUT = 300.0
# How long finalize or cancel waits for requests still using a ticket's
# volume (normally the tail of the last reply, microseconds).
CLOSE_WAIT = 10.0


def _timeout(t: dict) -> float:
    return max(TICKET_TIMEOUT, t["inactivity_timeout"] * 2)


class TransferTickets:
    """The tickets of image transfers (``t`` is a stored transfer)."""

    def __init__(self, registry: TicketRegistry) -> None:
        self.registry = registry

    def get(self, t: dict) -> Ticket | None:
        return self.registry.get(t["ticket_id"])

    def new(self, t: dict, opener: Any, size: int, ops: tuple[str, ...]) -> Ticket:
        """The ticket of a transfer being prepared (not served until ``add``)."""
        return Ticket(uuid=t["ticket_id"], size=size, ops=ops, open_backend=opener,
                      timeout=_timeout(t), inactivity_timeout=float(t["inactivity_timeout"]),
                      transfer_id=t["id"], dirty=t.get("dirty_ranges") is not None)

    def add(self, ticket: Ticket) -> None:
        """Open the ticket's backend and serve it."""
        ticket.backend()
        self.registry.add(ticket)

    def extend(self, t: dict) -> None:
        ticket = self.get(t)
        if ticket is not None:
            ticket.extend(_timeout(t))
            ticket.touch()

    def pause(self, t: dict) -> None:
        """Refuse requests, keeping the open backend for a resume."""
        ticket = self.get(t)
        if ticket is not None:
            ticket.canceled = True

    def rearm(self, t: dict) -> bool:
        """Serve a paused ticket again; False when there is none (a restart
        or a failed preparation lost it)."""
        ticket = self.get(t)
        if ticket is None:
            return False
        ticket.canceled = False
        ticket.touch()
        return True

    def close(self, t: dict) -> int:
        """Remove the ticket once no request holds its volume; the bytes
        transferred."""
        ticket = self.get(t)
        transferred = t.get("transferred", 0)
        if ticket is not None:
            transferred = max(transferred, ticket.transferred)
            self.registry.remove(t["ticket_id"])
            if not ticket.wait_closed(CLOSE_WAIT):
                log.warning("transfer %s: a request still holds the volume after %ss",
                            t["id"], CLOSE_WAIT)
        return transferred
