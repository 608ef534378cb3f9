"""The local engine's domain: what disks, VMs, snapshots, backups, transfers,
exports and imports do, apart from how a request asks for it.

Every operation takes the engine and ids (or values the REST plane has
already parsed and checked at the door), reads and writes the inventory
(``server/store.py``), the storage domains (``server/storage.py``) and the
data plane's tickets (``server/tickets.py``), and returns stored entities
or plain values; a refusal is a fault of ``server/faults.py``. The REST
plane (``server/rest/``) parses a request, calls one operation and
represents the result; nothing here imports it.
"""
