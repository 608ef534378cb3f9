"""``imagetool templates list|show|remove``."""

from __future__ import annotations

import click

from imagetool.cli.common import emit, emit_json
from imagetool.cli.config import (EngineOptions, engine_options, engine_view,
                                  json_engine_options, open_connection)


@click.group()
def templates() -> None:
    """List, show and remove templates."""


@templates.command("list")
@json_engine_options
def templates_list(as_json: bool, engine: EngineOptions) -> None:
    """List templates."""
    with open_connection(engine) as conn:
        found = [t.to_dict() for t in conn.templates.list()]
    if as_json:
        emit_json(found)
        return
    for t in found:
        click.echo(f"{t['id']}  {t['name']}")


@engine_view(templates, "show", "template")
def templates_show(template: str, as_json: bool, engine: EngineOptions) -> None:
    """Show one template (by id or name) and its disks."""
    with open_connection(engine) as conn:
        t = conn.templates.find(template).to_dict()
        t["disks"] = [a.disk_id for a in conn.templates.disk_attachments(t["id"])]
    emit(as_json, t, "\n".join(f"{k:12} {', '.join(v) if isinstance(v, list) else v}"
                               for k, v in t.items()))


@templates.command("remove")
@click.argument("template")
@engine_options
def templates_remove(template: str, engine: EngineOptions) -> None:
    """Remove a template and its disks."""
    with open_connection(engine) as conn:
        conn.templates.remove(conn.templates.find(template).id or "")
    click.echo(f"removed template {template}")
