"""The SQLite inventory: persistence, atomic updates, bounded connections."""

from __future__ import annotations

import threading

import pytest

from imagetool.server.store import Store


def test_documents_survive_reopen_in_order(tmp_path):
    path = str(tmp_path / "inv.db")
    store = Store(path)
    for i in range(3):
        store.put("disk", {"id": f"d{i}", "n": i})
    store.update("disk", "d1", n=10)
    store.delete("disk", "d2")
    store.set_setting("host_id", "h")
    store.close()
    store = Store(path)
    assert store.list("disk") == [{"id": "d0", "n": 0}, {"id": "d1", "n": 10}]
    assert store.setting("host_id") == "h"
    assert store.get("disk", "d2") is None
    assert store.update("disk", "missing", n=1) is None
    store.close()


def test_failed_transaction_rolls_back(tmp_path):
    store = Store(str(tmp_path / "inv.db"))
    store.put("vm", {"id": "v", "name": "a"})
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.update("vm", "v", name="b")
            store.put("vm", {"id": "w"})
            raise RuntimeError("boom")
    assert store.list("vm") == [{"id": "v", "name": "a"}]
    store.close()


def test_concurrent_updates_are_atomic_and_connections_bounded(tmp_path):
    store = Store(str(tmp_path / "inv.db"))
    store.put("counter", {"id": "c", "n": 0})

    def bump():
        for _ in range(50):
            with store.transaction():
                doc = store.get("counter", "c")
                store.update("counter", "c", n=doc["n"] + 1)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("counter", "c")["n"] == 400
    # Many short-lived threads must not leave a connection each behind.
    for _ in range(50):
        t = threading.Thread(target=store.list, args=("counter",))
        t.start()
        t.join()
    assert len(store._pool) <= 8
    store.close()
