"""Job records of the local engine's inventory (the jobs service shows them).

A long action (an image transfer, an OVA export) stores its job as
``started`` and ends it here when it is over; short actions store theirs
already finished. The statuses are the oVirt
REST API guide's JobStatus values.

A description is built from names the REST door checked, but also from
names read from files (an OVF on an export domain): whatever is not
printable is escaped, so no job makes the jobs listing unreadable.
"""

from __future__ import annotations

import contextvars
import time
from typing import Iterable

from imagetool.server.faults import escaped
from imagetool.server.storage import new_id
from imagetool.server.store import Store

# The correlation id of the request being answered (its ``correlation_id``
# query parameter or ``Correlation-Id`` header): every job the request
# records carries it, so a client finds them with
# ``GET /jobs?search=correlation_id=X`` as it does on the engine.
CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None)


def record_job(store: Store, description: str, steps: Iterable[str],
               status: str = "finished", start: float | None = None) -> dict:
    """Store a job with one step per name; a ``started`` one has no end time yet."""
    now = time.time()
    start = start or now
    end = now if status != "started" else None
    job = {"id": new_id(), "description": escaped(description), "status": status,
           "correlation_id": CORRELATION_ID.get(),
           "start_time": start, "end_time": end, "auto_cleared": True, "external": False,
           "steps": [{"id": new_id(), "description": s, "type": "executing", "number": i,
                      "status": status, "start_time": start, "end_time": end}
                     for i, s in enumerate(map(escaped, steps))]}
    store.put("job", job)
    return job


def end_job(store: Store, job_id: str, status: str) -> None:
    """Mark a started job and each of its steps ``status`` (finished, failed,
    aborted) as of now; a job already removed is left alone."""
    job = store.get("job", job_id)
    if job is None:
        return
    now = time.time()
    job.update(status=status, end_time=now)
    for step in job["steps"]:
        step.update(status=status, end_time=now)
    store.put("job", job)
