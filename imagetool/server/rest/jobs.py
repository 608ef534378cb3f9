"""Jobs (oVirt REST API guide: Jobs, Job) and their steps: a record of long operations."""

from __future__ import annotations

from imagetool.server.domain import inventory
from imagetool.server.rest.common import iso_date, members, stored, sub_links
from imagetool.server.rest.router import Request
from imagetool.server.validate import check_text

# The engine refuses a correlation id longer than this.
MAX_CORRELATION_ID = 50


def correlation_id(req: Request) -> str | None:
    """The request's correlation id (``correlation_id`` query parameter, or
    the ``Correlation-Id`` header), printable and at most 50 characters."""
    value = req.query.get("correlation_id") or req.headers.get("correlation-id") or None
    return check_text(value, "correlation_id", MAX_CORRELATION_ID)


def job_repr(req: Request, job: dict) -> dict:
    base = req.href("jobs", job["id"])
    return {
        "href": base, "id": job["id"], "description": job["description"],
        "link": sub_links(base, ["steps"]),
        "auto_cleared": job.get("auto_cleared", True), "external": job.get("external", False),
        "status": job["status"], "start_time": iso_date(job.get("start_time")),
        "end_time": iso_date(job.get("end_time")),
        "last_updated": iso_date(job.get("end_time") or job.get("start_time")),
        "owner": {"href": req.href("users", req.engine.user_id), "id": req.engine.user_id},
        "correlation_id": job.get("correlation_id"),
    }


def step_repr(req: Request, job: dict, step: dict) -> dict:
    return {
        "href": req.href("jobs", job["id"], "steps", step["id"]), "id": step["id"],
        "description": step["description"], "external": False, "number": step["number"],
        "status": step["status"], "type": step["type"],
        "start_time": iso_date(step.get("start_time")), "end_time": iso_date(step.get("end_time")),
        "job": {"href": req.href("jobs", job["id"]), "id": job["id"]},
    }


list_jobs, get_job = stored("job", "job", "job", job_repr)
list_steps, get_step = members(lambda req, id: inventory.get(req.engine, "job", id, "job"),
                               "steps", "id", "step", "step", step_repr)
