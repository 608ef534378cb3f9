"""Services of the engine API used by imagetool (a subset of the
oVirt REST API guide's).

Each service is reached through a Connection attribute (``conn.disks``,
``conn.storage_domains``, ``conn.transfers``, ``conn.hosts``,
``conn.clusters``, ``conn.jobs``; those of VMs and templates, ``conn.vms``,
``conn.templates``, ``conn.snapshots``, ``conn.backups``,
``conn.checkpoints``, are in ``vm_services.py``) and returns typed
entities. Faults raise the exceptions of ``imagetool.errors``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Generic, Iterable, Protocol, TypeVar

from imagetool.engine import codec
from imagetool.engine.entities import (Cluster, Disk, DiskSnapshot, Entity,
                                       Host, ImageTransfer, Job, StorageDomain,
                                       Vm)
from imagetool.errors import EngineError, NotFound
from imagetool.ids import is_uuid, ref

E = TypeVar("E", bound=Entity)


def pick(items: Iterable[E], wanted: str, name_of: Callable[[E], str | None], *,
         missing: str, several: Callable[[list[E]], str]) -> E:
    """The item whose id is ``wanted`` (tried first when it looks like a
    UUID), else the one whose ``name_of`` is exactly ``wanted``. None:
    NotFound(``missing``); several: EngineError(``several(them)``), which
    should ask for the id."""
    items = list(items)
    if is_uuid(wanted):
        for item in items:
            if item.id == wanted.lower():
                return item
    exact = [item for item in items if name_of(item) == wanted]
    if not exact:
        raise NotFound(missing, status=404)
    if len(exact) > 1:
        raise EngineError(several(exact))
    return exact[0]

# Disk format names people use -> the engine's enum.
_DISK_FORMATS = {"raw": "raw", "cow": "cow", "qcow2": "cow", "qcow": "cow"}


def _search_quote(value: str) -> str:
    # The engine's search language needs quotes around names with spaces.
    if re.fullmatch(r"[\w.\-]+", value):
        return value
    return '"' + value.replace('"', '\\"') + '"'


class Api(Protocol):
    """What the services need of their connection (``connection.Connection``
    is one); typed here so this module does not import the connection."""

    @property
    def legacy(self) -> bool: ...
    @property
    def disks(self) -> "DisksService": ...
    @property
    def storage_domains(self) -> "StorageDomainsService": ...
    def request(self, method: str, path: str, *, body: bytes | None = None,
                params: dict[str, Any] | None = None) -> Any: ...
    def tree(self, method: str, path: str, body: bytes | None = None,
             params: dict[str, Any] | None = None) -> codec.Tree: ...


def _act(name: str, doc: str) -> Any:
    """A service method that POSTs the action ``name`` to the item its ids
    give (``self._path(*ids)``); its arguments are those of ``_path``."""
    def method(self: Any, *ids: str) -> None:
        self._action(self._path(*ids), name)
    method.__name__, method.__doc__ = name, doc
    return method


def _delete(doc: str) -> Any:
    """A service method that DELETEs the item its ids give (``self._path(*ids)``)."""
    def method(self: Any, *ids: str) -> None:
        self._remove(self._path(*ids))
    method.__name__, method.__doc__ = "remove", doc
    return method


def _sub(cls: type[Entity], segment: str, doc: str) -> Any:
    """A service method listing the ``cls`` items at ``self._path(*ids)/segment``."""
    def method(self: Any, *ids: str) -> list:
        return self._list(cls, f"{self._path(*ids)}/{segment}")
    method.__doc__ = doc
    return method


class _Service:
    """Shared plumbing: GET/list/add/remove/action on one collection."""

    def __init__(self, conn: Api) -> None:
        self._conn = conn

    def _get(self, cls: type[E], path: str, **params: Any) -> E:
        return codec.entity_from_tree(cls, self._conn.tree("GET", path, params=params))

    def _list(self, cls: type[E], path: str, **params: Any) -> list[E]:
        return codec.entities_from_tree(cls, self._conn.tree("GET", path, params=params))

    def _add(self, cls: type[E], path: str, body: dict[str, Any], **params: Any) -> E:
        tree = self._conn.tree("POST", path, codec.to_xml(cls.TAG, body), params)  # type: ignore[attr-defined]
        return codec.entity_from_tree(cls, tree)

    def _remove(self, path: str, **params: Any) -> None:
        self._conn.request("DELETE", path, params=params)

    def _action(self, path: str, name: str, body: dict[str, Any] | None = None,
                params: dict[str, str] | None = None) -> codec.Tree:
        """POST ``path/name`` with an ``<action>``; raise if it did not complete."""
        tree = self._conn.tree("POST", f"{path}/{name}", codec.to_xml("action", body),
                               params)
        if isinstance(tree, dict) and codec.to_str(tree.get("status")) == "failed":
            reason, detail = codec.parse_fault(tree)
            raise EngineError(f"{name} failed: {detail or reason or 'no detail'}",
                              reason=reason, detail=detail)
        return tree

    def _find(self, cls: type[E], what: str, path: str, name_or_id: str | E) -> E:
        """An entity by id (tried first when it looks like one), else by name;
        one already found (a ``cls``) as it is, so callers take either."""
        if isinstance(name_or_id, cls):
            return name_or_id
        if not isinstance(name_or_id, str):
            raise TypeError(f"a {what} is a {cls.__name__}, an id or a name, "
                            f"not {type(name_or_id).__name__}")
        if is_uuid(name_or_id):
            try:
                return self._get(cls, f"{path}/{name_or_id}")
            except NotFound:
                pass
        found = self._list(cls, path, search=f"name={_search_quote(name_or_id)}")
        # The search language matches patterns and an engine may ignore it:
        # keep exact names only.
        exact = [e for e in found if name_or_id in (getattr(e, "name", None),
                                                    getattr(e, "alias", None))]
        if not exact:
            raise NotFound(f"no {what} with id or name {name_or_id!r}", status=404)
        if len(exact) > 1:
            ids = ", ".join(e.id or "?" for e in exact)
            raise EngineError(f"{len(exact)} {what}s are named {name_or_id!r} "
                              f"({ids}): use the id")
        return exact[0]


class _Collection(_Service, Generic[E]):
    """A collection at the API root, ``/<PATH>``, of ``ENTITY`` (a ``WHAT``)."""

    ENTITY: type[E]
    PATH: str
    WHAT: str

    def _path(self, item_id: str) -> str:
        return f"{self.PATH}/{item_id}"

    def get(self, item_id: str) -> E:
        """One item by id (NotFound when missing)."""
        return self._get(self.ENTITY, self._path(item_id))

    def list(self, search: str | None = None, max: int | None = None) -> list[E]:
        """All items, or those matching an engine search expression."""
        return self._list(self.ENTITY, self.PATH, search=search, max=max)

    def find(self, name_or_id: str | E) -> E:
        """An item by id, else by exact name; error when the name is ambiguous."""
        return self._find(self.ENTITY, self.WHAT, self.PATH, name_or_id)


class DisksService(_Collection[Disk]):
    """``/disks``: floating disks and their layers."""

    ENTITY, PATH, WHAT = Disk, "disks", "disk"

    def add(self, *, name: str, provisioned_size: int, storage_domain: str,
            format: str = "raw", sparse: bool = True,
            initial_size: int | None = None, content_type: str | None = None,
            backup: str | None = None, disk_id: str | None = None,
            description: str | None = None, alias: str | None = None) -> Disk:
        """Create a disk; returns it (usually still ``locked``).

        ``storage_domain`` is a name or id; ``format`` raw|cow (qcow2 is
        accepted for cow); ``provisioned_size`` is the virtual size;
        ``initial_size`` the space a sparse cow volume needs at first.
        """
        fmt = _DISK_FORMATS.get(format.lower())
        if fmt is None:
            raise ValueError(f"unknown disk format {format!r} (raw or qcow2/cow)")
        sd = self._conn.storage_domains.find(storage_domain)
        body: dict[str, Any] = {
            "id": disk_id,
            "name": name,
            "alias": alias,
            "description": description,
            "format": fmt,
            "provisioned_size": int(provisioned_size),
            "initial_size": int(initial_size) if initial_size is not None else None,
            "sparse": bool(sparse),
            "content_type": content_type,
            "backup": backup,
            "storage_domains": {"storage_domain": [{"id": sd.id}]},
        }
        return self._add(Disk, "disks", body)

    remove = _delete("Delete a disk (Conflict while it is locked).")

    def update(self, disk_id: str, changes: dict[str, Any]) -> Disk:
        """``PUT /disks/ID`` with ``changes`` (name, provisioned_size, backup...):
        floating disks on engines with the Disk ``update`` of oVirt 4.4+;
        an attached disk is changed through its attachment
        (:meth:`VmsService.update_attachment_disk`)."""
        tree = self._conn.tree("PUT", f"disks/{disk_id}", codec.to_xml(Disk.TAG, changes))
        return codec.entity_from_tree(Disk, tree)

    def rename(self, disk_id: str, name: str) -> Disk:
        """Give a disk a new name (:meth:`update` with ``name``)."""
        return self.update(disk_id, {"name": name})

    def _disk_action(self, disk_id: str, name: str,
                     body: dict[str, Any] | None = None) -> Disk | None:
        tree = self._action(f"disks/{disk_id}", name, body)
        found = tree.get("disk") if isinstance(tree, dict) else None
        if isinstance(found, dict) and found.get("id"):
            return codec.entity_from_tree(Disk, found)
        return None

    def copy(self, disk_id: str, storage_domain: str, *,
             name: str | None = None) -> Disk | None:
        """Copy a disk to a storage domain (name or id): a new disk.

        Returns the new disk when the engine names it in its reply (the
        oVirt REST API guide's ``copy`` action), else None.
        """
        sd = self._conn.storage_domains.find(storage_domain)
        body: dict[str, Any] = {"storage_domain": {"id": sd.id}}
        if name:
            body["disk"] = {"name": name, "alias": name}
        return self._disk_action(disk_id, "copy", body)

    def move(self, disk_id: str, storage_domain: str) -> None:
        """Move a disk to another storage domain (name or id)."""
        sd = self._conn.storage_domains.find(storage_domain)
        self._disk_action(disk_id, "move", {"storage_domain": {"id": sd.id}})

    sparsify = _act("sparsify", "Free the space the guest file systems do not use "
                    "(disks without snapshots only, as the oVirt REST API guide says).")

    def snapshots(self, disk_id: str) -> list[DiskSnapshot]:
        """The disk's layers (disk snapshots), from the disk or its domains.

        ``include_active`` asks engines that leave it out by default for
        the active layer too (oVirt REST API guide, DiskSnapshots list).
        """
        try:
            return self._list(DiskSnapshot, f"disks/{disk_id}/disksnapshots",
                              include_active="true")
        except NotFound:
            pass
        # Older engines only list layers per storage domain.
        disk = self.get(disk_id)
        layers: list[DiskSnapshot] = []
        for sd_id in disk.storage_domain_ids:
            layers.extend(s for s in self._conn.storage_domains.disk_snapshots(sd_id)
                          if s.disk_id == disk_id)
        return layers


class StorageDomainsService(_Collection[StorageDomain]):
    ENTITY, PATH, WHAT = StorageDomain, "storagedomains", "storage domain"

    disks = _sub(Disk, "disks", "Disks on one storage domain.")
    disk_snapshots = _sub(DiskSnapshot, "disksnapshots", "Every disk layer on one domain.")
    vms = _sub(Vm, "vms", "The VMs stored on an export domain.")

    def import_vm(self, sd_id: str, vm_id: str, *, storage_domain: str,
                  cluster: str | None = None, clone: bool = False,
                  name: str | None = None, collapse_snapshots: bool = False) -> None:
        """Import a VM from an export domain onto a data domain.

        ``collapse_snapshots`` goes in the query string, where the engine
        reads it (the body value is not honoured by every engine).
        """
        body: dict[str, Any] = {"storage_domain": ref(storage_domain),
                                "clone": clone if clone else None}
        if cluster:
            body["cluster"] = ref(cluster)
        if name:
            body["vm"] = {"name": name}
        params = {"collapse_snapshots": "true"} if collapse_snapshots else None
        self._action(f"storagedomains/{sd_id}/vms/{vm_id}", "import", body, params)


class HostsService(_Collection[Host]):
    ENTITY, PATH, WHAT = Host, "hosts", "host"


class ClustersService(_Collection[Cluster]):
    ENTITY, PATH, WHAT = Cluster, "clusters", "cluster"


class JobsService(_Collection[Job]):
    """``/jobs``: recent jobs."""

    ENTITY, PATH, WHAT = Job, "jobs", "job"


class ImageTransfersService(_Collection[ImageTransfer]):
    """``/imagetransfers``: create and drive image transfers. ``get`` raises
    NotFound once an old engine dropped the transfer."""

    ENTITY, PATH, WHAT = ImageTransfer, "imagetransfers", "transfer"

    def add(self, *, disk_id: str | None = None, snapshot_id: str | None = None,
            image_id: str | None = None, direction: str = "upload",
            format: str | None = None, inactivity_timeout: int | None = None,
            timeout_policy: str | None = None, shallow: bool | None = None,
            host_id: str | None = None, backup_id: str | None = None) -> ImageTransfer:
        """Start a transfer of a disk, a disk snapshot or an image.

        On 4.1 engines the transfer names the image (looked up from the
        disk when not given) and ``format``/``timeout_policy``/``shallow``
        are not sent, because those engines do not know them.
        """
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        if not (disk_id or snapshot_id or image_id):
            raise ValueError("give disk_id, snapshot_id or image_id")
        body: dict[str, Any] = {"direction": direction}
        if self._conn.legacy:
            if image_id is None and disk_id is not None:
                image_id = self._conn.disks.get(disk_id).image_id
            if image_id is None:
                raise EngineError("this engine (4.1) needs the image id of the disk")
            body["image"] = {"id": image_id}
            body["inactivity_timeout"] = inactivity_timeout
            body["host"] = {"id": host_id} if host_id else None
        else:
            if snapshot_id:
                body["snapshot"] = {"id": snapshot_id}
            elif disk_id:
                body["disk"] = {"id": disk_id}
            else:
                body["image"] = {"id": image_id}
            body.update({
                "format": format,
                "inactivity_timeout": inactivity_timeout,
                "timeout_policy": timeout_policy,
                "shallow": shallow,
                "host": {"id": host_id} if host_id else None,
                "backup": {"id": backup_id} if backup_id else None,
            })
        return self._add(ImageTransfer, "imagetransfers", body)

    extend = _act("extend", "Refresh the session (keep-alive); changes no phase.")
    pause = _act("pause", "Pause an upload (paused_user).")
    resume = _act("resume", "Resume a paused transfer (resuming -> transferring).")
    finalize = _act("finalize", "Data is complete: verify and commit (finalizing_success).")
    cancel = _act("cancel", "Abort; an uploaded disk is removed by the engine.")
