"""Job records of the local engine's inventory (the jobs service shows them).

A long action (an image transfer, an OVA export) stores its job as
``started`` and ends it here when it is over; short actions store theirs
already finished (``rest.common.record_job``). The statuses are the oVirt
REST API guide's JobStatus values.
"""

from __future__ import annotations

import time

from imagetool.server.store import Store


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
