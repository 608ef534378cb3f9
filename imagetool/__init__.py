"""imagetool: move virtual-machine disk images in and out of oVirt engines.

The package is built in floors, imports only pointing down (ARCHITECTURE.md
draws them; tests/test_architecture.py checks them): the ground (units,
errors, ids, paths, phases...), the I/O core (``backend``, ``backends``,
``copier``), ``formats`` and ``imageio``, ``checksum``, the engine client
(``engine``), the disk transfer (``transfer``), the workflows (``vms``,
``snapshots``, ``disks``, ``backup``, ``ova``) and ``cli``. The local engine
(``server``) stands on the floors up to ``checksum``.
"""

import importlib

__version__ = "0.1.0"

# The main workflows, importable from the top level without loading the
# whole stack at ``import imagetool`` (the CLI starts faster).
_LAZY = {
    "upload_disk": "imagetool.transfer.upload",
    "download_disk": "imagetool.transfer.download",
    "upload_url": "imagetool.transfer.urls",
    "download_url": "imagetool.transfer.urls",
    "list_vms": "imagetool.vms",
    "get_vm": "imagetool.vms",
    "vm_ovf": "imagetool.vms",
    "export_vm": "imagetool.vms",
    "import_vm": "imagetool.vms",
    "create_snapshot": "imagetool.snapshots",
    "remove_snapshot": "imagetool.snapshots",
    "restore_snapshot": "imagetool.snapshots",
    "preview_snapshot": "imagetool.snapshots",
    "commit_snapshot": "imagetool.snapshots",
    "undo_snapshot": "imagetool.snapshots",
    "disk_layers": "imagetool.snapshots",
    "download_chain": "imagetool.snapshots",
    "copy_disk": "imagetool.disks",
    "move_disk": "imagetool.disks",
    "sparsify_disk": "imagetool.disks",
    "UploadOptions": "imagetool.transfer.options",
    "DownloadOptions": "imagetool.transfer.options",
    "export_ova": "imagetool.ova",
    "import_ova": "imagetool.ova",
    "ova_info": "imagetool.ova",
}

__all__ = ["__version__", "backup", *_LAZY]


def __getattr__(name: str):
    if name == "backup":        # the package imagetool.backup
        return importlib.import_module("imagetool.backup")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imagetool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
