"""imagetool: move virtual-machine disk images in and out of oVirt engines.

The package is layered (imports only point down):

- ``imagetool.cli``       click commands (thin)
- ``imagetool.transfer``  upload/download workflows, the parallel copier
- ``imagetool.engine``    REST client of an oVirt engine
- ``imagetool.imageio``   data-plane client of one transfer URL
- ``imagetool.formats``   local image files: detect, read, write, measure
- ``imagetool.checksum``  imageio's block checksum over any backend
- ``imagetool.server``    the local engine (``imagetool serve``)

Facts both the client and the local engine use have one home below them:
``imagetool.phases`` (ImageTransfer phases and moves), ``imagetool.paths``
(the data directory), ``imagetool.imageio.protocol`` (the data-plane
protocol), ``imagetool.formats.qcow2`` (the qcow2 layout).
"""

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
        import importlib

        return importlib.import_module("imagetool.backup")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imagetool' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
