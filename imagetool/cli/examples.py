"""The ``Examples:`` of every command's ``--help``, in one table.

The README promises examples in every ``--help``. Commands whose
docstring has none get theirs from :data:`EXAMPLES` when the command
table loads them (``main._CommandTable``), so the examples of all the
families sit side by side here, where they are easy to keep consistent
(same VM, disk and directory names as the README), and the command
modules stay as they are. ``tests/cli/test_command_table.py`` checks
that every command has some.
"""

from __future__ import annotations

import inspect

import click

#: "group command" (or "command") -> example lines.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "upload": ("imagetool upload samples/data-holes.qcow2 --sd data",
               "imagetool upload a.qcow2 b.raw cd.iso --sd data --jobs 2 --json",
               "imagetool upload big.raw --sd data --resume"),
    "download": ("imagetool download web1-disk1 ./web1.qcow2 --format qcow2",
                 "imagetool download big.raw ./big-copy.raw --resume",
                 "imagetool download web-disk backup/web-disk --chain --snapshot nightly"),
    "serve": ("imagetool serve --data-dir ./engine",
              "imagetool serve --host 192.0.2.10 --password-file /root/engine-password"),
    "backup create": ("imagetool backup create ./backups web1",
                      "imagetool backup create /srv/backups web1 db1 --jobs 2 --json",
                      "imagetool backup create ./backups web1 --full --method snapshot"),
    "backup list": ("imagetool backup list ./backups",
                    "imagetool backup list /srv/backups --vm web1 --json"),
    "backup prune": ("imagetool backup prune ./backups --keep 7",
                     "imagetool backup prune /srv/backups --keep-last 3 --keep-daily 7 "
                     "--keep-weekly 4 --dry-run"),
    "backup restore": ("imagetool backup restore ./backups web1 --sd data --name web1-restored",
                       "imagetool backup restore ./backups web1 --point 20261207T071016Z "
                       "--sd data --name web1-old"),
    "backup init": ("imagetool backup init /srv/backups",
                    "imagetool backup init /srv/backups --encrypt --key-file ~/.imagetool-key",
                    "imagetool backup init s3://backups/site1 --endpoint http://127.0.0.1:7480 "
                    "--profile backup"),
    "backup gc": ("imagetool backup gc /srv/backups --dry-run",
                  "imagetool backup gc s3://backups/site1 --endpoint http://127.0.0.1:7480 "
                  "--json"),
    "backup export": ("imagetool backup export /srv/backups web1 ./web1-restored",
                      "imagetool backup export /srv/backups web1 ./web1-old --format raw "
                      "--point 20261207T071016Z"),
    "backup serve": ("imagetool backup serve /srv/backups web1 --nbd /tmp/web1.sock",
                     "qemu-img convert nbd+unix:///?socket=/tmp/web1.sock web1-disk1.qcow2 "
                     "-O qcow2"),
    "backup migrate": ("imagetool backup migrate ./backups /srv/backups-v2",
                       "imagetool backup migrate ./backups s3://backups/site1 "
                       "--endpoint http://127.0.0.1:7480 --key-file ~/.imagetool-key --json"),
    "backup verify": ("imagetool backup verify ./backups",
                      "imagetool backup verify /srv/backups --vm web1 --sample 10 --json"),
    "disks list": ("imagetool disks list", "imagetool disks list --search 'name=web*' --json"),
    "disks show": ("imagetool disks show web1-disk1", "imagetool disks show web1-disk1 --json"),
    "disks remove": ("imagetool disks remove old-disk --yes",
                     "imagetool disks remove 5d3f0a5e-1c1e-4b8e-9f1d-3c2a8e7b6a10 old2 -y --json"),
    "disks layers": ("imagetool disks layers web1-disk1", "imagetool disks layers web1-disk1 --json"),
    "disks copy": ("imagetool disks copy web1-disk1 --sd data --name web1-disk1-copy",),
    "disks move": ("imagetool disks move web1-disk1 --sd data2",),
    "disks sparsify": ("imagetool disks sparsify web1-disk1",),
    "sds list": ("imagetool sds list", "imagetool sds list --json"),
    "transfers list": ("imagetool transfers list", "imagetool transfers list --json"),
    "transfers show": ("imagetool transfers show 0b8e2f4c-7d1a-4e39-9c55-2f6b3a1d8e70",),
    "transfers cancel": ("imagetool transfers cancel 0b8e2f4c-7d1a-4e39-9c55-2f6b3a1d8e70",),
    "vms list": ("imagetool vms list", "imagetool vms list --search 'name=web*' --json"),
    "vms show": ("imagetool vms show web1", "imagetool vms show web1 --json"),
    "vms ovf": ("imagetool vms ovf web1", "imagetool vms ovf web1 -o backup/web1.ovf"),
    "vms export": ("imagetool vms export web1 --export-domain export --discard-snapshots",),
    "vms import": ("imagetool vms import web1 --export-domain export --sd data",
                   "imagetool vms import web1 --export-domain export --sd data --clone "
                   "--name web2"),
    "snapshots list": ("imagetool snapshots list web1", "imagetool snapshots list web1 --json"),
    "snapshots create": ("imagetool snapshots create web1 --description nightly",
                         "imagetool snapshots create web1 --disk web1-disk1 --json"),
    "snapshots remove": ("imagetool snapshots remove web1 nightly",),
    "snapshots restore": ("imagetool snapshots restore web1 nightly",),
    "snapshots preview": ("imagetool snapshots preview web1 nightly",),
    "snapshots commit": ("imagetool snapshots commit web1",),
    "snapshots undo": ("imagetool snapshots undo web1",),
    "ova info": ("imagetool ova info samples/appliance.ova",
                 "imagetool ova info vmware-appliance.ova --verify --json"),
    "ova export": ("imagetool ova export web1 web1.ova",
                   "imagetool ova export web1 web1.ova --snapshot nightly --manifest"),
    "ova import": ("imagetool ova import samples/appliance.ova --sd data --name appliance",
                   "imagetool ova import appliance.ova --sd data --template"),
    "templates list": ("imagetool templates list", "imagetool templates list --json"),
    "templates show": ("imagetool templates show appliance",),
    "templates remove": ("imagetool templates remove appliance",),
    "url info": ("imagetool url info https://host:54322/images/TICKET --cafile ca.pem",),
    "url checksum": ("imagetool url checksum https://host:54322/images/TICKET --cafile ca.pem",),
    "url download": ("imagetool url download https://host:54322/images/TICKET out.raw "
                     "--cafile ca.pem",),
    "url upload": ("imagetool url upload disk.qcow2 https://host:54322/images/TICKET "
                   "--cafile ca.pem",),
}


def _add(cmd: click.Command, lines: tuple[str, ...] | None) -> None:
    if lines and "Examples:" not in (cmd.help or ""):
        body = "\n".join(f"  {line}" for line in lines)
        # Dedented first: click dedents the help as a whole, and the
        # examples' lines would otherwise keep the docstring's indentation.
        cmd.help = f"{inspect.cleandoc(cmd.help or '').rstrip()}\n\n\b\nExamples:\n{body}"


def attach(name: str, cmd: click.Command) -> click.Command:
    """Give ``cmd`` (the command ``name`` of the table) and its subcommands
    their examples, once."""
    if not isinstance(cmd, click.Group):
        _add(cmd, EXAMPLES.get(name))
        return cmd
    # A group's example: the first of its first subcommand in the table.
    _add(cmd, next(v for k, v in EXAMPLES.items() if k.startswith(name + " "))[:1])
    for sub_name, sub in cmd.commands.items():
        _add(sub, EXAMPLES.get(f"{name} {sub_name}"))
    return cmd
