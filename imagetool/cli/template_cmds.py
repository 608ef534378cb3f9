"""``imagetool templates list|show|remove``."""

from __future__ import annotations

import click

from imagetool.cli.common import emit_json
from imagetool.cli.config import EngineOptions, engine_options, open_connection
from imagetool.errors import ImagetoolError, NotFound
from imagetool.ids import is_uuid


def _templates(conn) -> list[dict]:
    from imagetool.engine import codec
    tree = conn.get_tree("templates")
    items = codec.as_list(tree.get("template")) if isinstance(tree, dict) else []
    out = []
    for t in items:
        out.append({"id": codec.to_str(t.get("id")), "name": codec.to_str(t.get("name")),
                    "description": codec.to_str(t.get("description")),
                    "memory": codec.to_int(t.get("memory"))})
    return out


def _find(conn, name_or_id: str) -> dict:
    found = [t for t in _templates(conn) if name_or_id in (t["id"], t["name"])]
    if not found:
        raise NotFound(f"no template with id or name {name_or_id!r}", status=404)
    if len(found) > 1:
        raise ImagetoolError(f"{len(found)} templates are named {name_or_id!r}: use the id")
    return found[0]


@click.group()
def templates() -> None:
    """List, show and remove templates."""


@templates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@engine_options
def templates_list(as_json: bool, engine: EngineOptions) -> None:
    """List templates."""
    with open_connection(engine) as conn:
        found = _templates(conn)
    if as_json:
        emit_json(found)
        return
    for t in found:
        click.echo(f"{t['id']}  {t['name']}")


@templates.command("show")
@click.argument("template")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@engine_options
def templates_show(template: str, as_json: bool, engine: EngineOptions) -> None:
    """Show one template (by id or name) and its disks."""
    from imagetool.engine import codec
    with open_connection(engine) as conn:
        t = _find(conn, template)
        tree = conn.get_tree(f"templates/{t['id']}/diskattachments")
        atts = codec.as_list(tree.get("disk_attachment")) if isinstance(tree, dict) else []
        t["disks"] = [codec.to_str((a.get("disk") or {}).get("id")) for a in atts]
    if as_json:
        emit_json(t)
        return
    for k, v in t.items():
        click.echo(f"{k:12} {', '.join(v) if isinstance(v, list) else v}")


@templates.command("remove")
@click.argument("template")
@engine_options
def templates_remove(template: str, engine: EngineOptions) -> None:
    """Remove a template and its disks."""
    with open_connection(engine) as conn:
        t = _find(conn, template) if not is_uuid(template) else {"id": template}
        conn.request("DELETE", f"templates/{t['id']}")
    click.echo(f"removed template {template}")
