"""``imagetool download DISK DIR --chain``: a disk's layers as a qcow2 chain.

Kept apart from the plain download so that command stays one screen: this
is ``imagetool.snapshots.download_chain_result`` with a progress bar per
layer (``--json``: its ``ChainResult.to_dict``).
"""

from __future__ import annotations

import os
from typing import Any

import click

from imagetool.cli.common import emit_json
from imagetool.cli.config import EngineOptions, open_connection
from imagetool.cli.progress import Bars
from imagetool.units import format_size


def download_chain_command(disks: tuple[str, ...], dest: str, snapshot: str | None,
                           shallow: bool, fmt: str, resume: bool, force: bool,
                           workers: int, verify: bool, inactivity_timeout: int,
                           host: str | None, as_json: bool, engine: EngineOptions) -> None:
    """Run ``download --chain`` (options the chain cannot honour are usage errors)."""
    from imagetool.snapshots import download_chain_result

    if len(disks) != 1:
        raise click.UsageError("--chain needs exactly one disk")
    if shallow or resume or force or fmt != "raw":
        raise click.UsageError("--chain writes qcow2 layers into a new directory: "
                               "it takes no --shallow, --resume, --force or --format")
    bars: list[Bars] = []

    def start(layers: list[Any]) -> None:
        bars.append(Bars([((x.id or "?")[:8], x.provisioned_size or 0) for x in layers]))

    def progress(i: int, n: int) -> None:
        if bars:
            bars[0].callback(i)(n)

    with open_connection(engine) as conn:
        try:
            result = download_chain_result(
                conn, disks[0], dest, snapshot=snapshot, workers=workers, verify=verify,
                host=host, inactivity_timeout=inactivity_timeout, progress=progress,
                start=start)
        finally:
            if bars:
                bars[0].close()
    if as_json:
        emit_json(result.to_dict())
        return
    for layer in result.layers:
        size = os.path.getsize(layer.path)
        backing = f" (backing {layer.backing})" if layer.backing else ""
        click.echo(f"downloaded layer {layer.id} -> {layer.path}: {format_size(size)}{backing}")
    click.echo(f"top: {result.top}")
