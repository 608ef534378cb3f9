"""The package's shape: imports point one way, each protocol fact has one home.

Static checks read the sources with ``ast`` (nothing is imported), so a
failure names the file and line to fix. The shared modules the checks point
to (``imagetool.phases``, ``imagetool.imageio.protocol``,
``imagetool.formats.qcow2``) are exercised below as well.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess

import pytest

from imagetool import phases
from imagetool.errors import DestinationExists, FormatError
from imagetool.formats import qcow2
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.imageio import protocol

# One xdist worker runs them all (``--dist loadgroup``), so the sources are
# parsed once (``_tree`` caches) rather than once per worker.
pytestmark = pytest.mark.xdist_group("architecture")

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "imagetool")


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


@functools.lru_cache(maxsize=None)
def _tree(path: str) -> ast.Module:
    """The parsed source (parsed once for all the checks; never changed)."""
    with open(path) as f:
        return ast.parse(f.read(), path)


def _imports(path: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import outside ``if TYPE_CHECKING:``."""
    tree = _tree(path)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    mod = next(m for m, p in MODULES.items() if p == path)
    package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.append((node.lineno, base, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        deps = set()
        for _, target, names in _imports(path):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                deps.update(subs)
            if target in MODULES and len(subs) < max(1, len(names)):
                deps.add(target)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    """Function-local imports count too: a cycle hidden in a function is
    still a cycle (only ``if TYPE_CHECKING:`` imports are left out)."""
    assert _cycles(_graph()) == []


# The floors of the client, bottom first (ARCHITECTURE.md draws them). A
# module imports its own floor or lower ones, never a higher one. A module
# belongs to the floor of the longest prefix naming it. Inside the I/O
# floor: the core (the Backend protocol, the wrappers, the one copier),
# then what implements or drives a backend (formats, the imageio client,
# the OVA's documents and members), then the block checksum over both.
FLOORS: list[tuple[str, list[str]]] = [
    ("ground", ["units", "errors", "ids", "paths", "fsutil", "threads", "xmlsafe", "phases"]),
    ("I/O core", ["iocore", "nbd"]),
    ("I/O formats", ["formats", "imageio", "ova.ovf", "ova.ovfvm", "ova.ovfvm_read",
                     "ova.layout", "ova.reader"]),
    ("I/O checksum", ["checksum"]),
    ("engine client", ["engine"]),
    ("disk transfer", ["transfer"]),
    ("workflows", ["backup", "ova", "vms", "snapshots", "disks"]),
    ("cli", ["cli", "__main__"]),
]
# The local engine is a tower of its own beside the client's floors: it
# stands on the floors up to SERVER_STANDS_ON and nothing of the client
# above them stands on it (only ``imagetool serve`` starts it).
SERVER_STANDS_ON = "I/O checksum"


def _floor(module: str) -> int | None:
    """The floor index of ``imagetool.X...`` (None: the server's tower)."""
    rest = module.split(".", 1)[1] if "." in module else ""
    if rest == "server" or rest.startswith("server."):
        return None
    best, found = -1, -1
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (rest == p or rest.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    if found < 0:
        raise AssertionError(f"{module}: on no floor; add it to FLOORS")
    return found


def _upward_imports() -> list[str]:
    names = [n for n, _ in FLOORS]
    ceiling = names.index(SERVER_STANDS_ON)
    found = []
    for mod, deps in sorted(_graph().items()):
        if mod == "imagetool":
            continue
        here = _floor(mod)
        for dep in sorted(deps):
            if dep == "imagetool":
                continue
            there = _floor(dep)
            if here is None:        # the server's tower
                if there is not None and there > ceiling:
                    found.append(f"{mod} (server) -> {dep} ({names[there]})")
            elif there is None:
                if mod != "imagetool.cli.serve_cmd":
                    found.append(f"{mod} ({names[here]}) -> {dep} (server)")
            elif there > here:
                found.append(f"{mod} ({names[here]}) -> {dep} ({names[there]})")
    return found


def test_every_module_is_on_a_floor():
    for mod in MODULES:
        if mod != "imagetool":
            _floor(mod)


def test_imports_go_down_the_floors():
    """Not only no cycles: no import from a lower floor into a higher one
    (``FLOORS``), and the server's tower on the lower floors only."""
    assert _upward_imports() == []


def test_the_floor_check_sees_an_upward_import(monkeypatch):
    """The check can fail: a copier importing the transfer floor is named."""
    graph = _graph()
    graph["imagetool.iocore.copier"] = graph["imagetool.iocore.copier"] | {"imagetool.transfer.disk"}
    graph["imagetool.server.store"] = graph["imagetool.server.store"] | {"imagetool.ova.importer"}
    monkeypatch.setitem(globals(), "_graph", lambda: graph)
    assert _upward_imports() == [
        "imagetool.iocore.copier (I/O core) -> imagetool.transfer.disk (disk transfer)",
        "imagetool.server.store (server) -> imagetool.ova.importer (workflows)"]


def test_backend_attributes_are_read_as_declared():
    """The Backend protocol declares ``features``, ``size`` and
    ``max_writers``: no module reads them with ``getattr(x, name, default)``
    as if a backend might lack them."""
    declared = {"features", "size", "max_writers"}
    offenders = []
    for path in MODULES.values():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in declared:
                offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert offenders == []


def test_only_the_serve_command_imports_the_server():
    allowed = os.path.join(ROOT, "cli", "serve_cmd.py")
    server_dir = os.path.join(ROOT, "server") + os.sep
    offenders = []
    for path in MODULES.values():
        if path.startswith(server_dir) or path == allowed:
            continue
        for line, target, names in _imports(path):
            if target == "imagetool.server" or target.startswith("imagetool.server.") or (
                    target == "imagetool" and "server" in names):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target}")
    assert offenders == []


def test_command_modules_do_not_import_the_cli_group():
    offenders = [f"{os.path.relpath(p, ROOT)}:{line}"
                 for m, p in MODULES.items() if m.startswith("imagetool.cli.")
                 for line, target, _ in _imports(p) if target == "imagetool.cli.main"]
    assert offenders == []


def test_no_import_error_guards():
    """Optional third-party modules aside, imagetool's own modules are always there."""
    offenders = []
    for path in MODULES.values():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ExceptHandler) and node.type is not None \
                    and "ImportError" in ast.dump(node.type):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert offenders == []


def _code_constants(path: str):
    """String/int constants of the code, docstrings left out."""
    tree = _tree(path)
    docs = {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docs:
            yield node


@pytest.mark.parametrize("value, home", [
    ("checksum-ahead", "imageio/protocol.py"),
    ("imagetool_features", "imageio/protocol.py"),
    (0x00FFFFFFFFFFFE00, "formats/qcow2.py"),
    (b"QFI\xfb", "formats/detect.py"),
])
def test_protocol_facts_have_one_home(value, home):
    where = sorted({os.path.relpath(p, ROOT) for p in MODULES.values()
                    for c in _code_constants(p)
                    if type(c.value) is type(value) and c.value == value})
    assert where == [home]


def test_phase_groups_are_written_only_in_phases():
    """No tuple/set/list of two or more phase names outside imagetool/phases.py."""
    names = {p.value for p in phases.Phase}
    offenders = []
    for path in MODULES.values():
        if path.endswith(os.path.join("imagetool", "phases.py")):
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Tuple, ast.Set, ast.List)) and len(node.elts) >= 2 \
                    and all(isinstance(e, ast.Constant) and e.value in names
                            for e in node.elts):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert offenders == []


def test_one_module_builds_transfer_sessions():
    """Every disk workflow goes through imagetool.transfer.disk: it alone
    calls TransferSession(...)."""
    builders = sorted(
        name for name, path in MODULES.items()
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "TransferSession"
               for n in ast.walk(_tree(path))))
    assert builders == ["imagetool.transfer.disk"]


# --- imagetool.phases --------------------------------------------------------

def test_phases_compare_as_their_names():
    assert phases.Phase.TRANSFERRING == "transferring"
    assert "paused_user" in phases.PAUSED
    assert str(phases.Phase.FINISHED_SUCCESS) == "finished_success"
    assert f"{phases.Phase.CANCELLED_USER}" == "cancelled_user"


def test_transition_table():
    P, E = phases.Phase, phases.Event
    assert phases.next_phase("transferring", E.FINALIZE) == P.FINALIZING_SUCCESS
    assert phases.next_phase("finished_success", E.READY) is None
    assert phases.next_phase("finished_failure", E.SYSTEM_CANCEL) is None
    assert phases.next_phase("initializing", E.VERIFIED) is None
    assert phases.next_phase("no-such-phase", E.READY) is None
    # Finished transfers never move; every live phase can be cancelled by the system.
    for p in phases.FINISHED:
        assert phases.EVENTS[p] == {}
    for p in phases.ACTIVE:
        assert phases.next_phase(p, E.SYSTEM_CANCEL) == P.CANCELLED_SYSTEM
    # Every phase the table moves to is one it knows how to leave (or final).
    targets = {new for moves in phases.EVENTS.values() for new in moves.values()}
    assert targets <= set(phases.EVENTS)


def test_backup_transition_table():
    B = phases.BackupPhase
    assert phases.can_move_backup("initializing", "ready")
    assert phases.can_move_backup("ready", "finalizing")
    assert phases.can_move_backup("ready", "ready")                  # fields only
    assert not phases.can_move_backup("ready", "succeeded")          # only by finalizing
    assert not phases.can_move_backup("failed", "ready")
    assert not phases.can_move_backup("no-such-phase", "ready")
    # Ended backups never move; every running one can be ended (timeout, restart).
    for p in phases.BACKUP_ENDED:
        assert phases.BACKUP_TRANSITIONS[p] == frozenset()
    for p in phases.BACKUP_RUNNING - {B.FINALIZING}:
        assert B.FINALIZING in phases.BACKUP_TRANSITIONS[p]
    assert phases.BACKUP_TRANSITIONS[B.FINALIZING] == phases.BACKUP_ENDED
    assert set(B) == phases.BACKUP_RUNNING | phases.BACKUP_ENDED == set(phases.BACKUP_TRANSITIONS)


# --- imagetool.imageio.protocol ------------------------------------------------

@pytest.mark.parametrize("text, value", [("0", 0), ("4194304", 4194304)])
def test_parse_uint(text, value):
    assert protocol.parse_uint(text) == value


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1_000", "\u0661", "\u00b2", "1.0"])
def test_parse_uint_refuses(text):
    with pytest.raises(ValueError):
        protocol.parse_uint(text)


def test_ranges():
    assert protocol.parse_range("bytes=0-0", 10) == (0, 1)
    assert protocol.parse_range("bytes=4-", 10) == (4, 6)
    for bad in ("bytes=5-4", "bytes=0-10", "bytes=0-1,3-4", "bytes=\u0661-2", "items=0-1"):
        with pytest.raises(ValueError, match="Cannot satisfy range"):
            protocol.parse_range(bad, 10)
    assert protocol.format_range(8, 4) == "bytes=8-11"
    assert protocol.format_content_range(8, 4) == "bytes 8-11/*"
    assert protocol.format_content_range(8, 4, 100) == "bytes 8-11/100"
    assert protocol.format_content_range(None, size=100) == "bytes */100"
    assert protocol.parse_content_range("bytes 8-11/100") == (8, 11, 100)
    assert protocol.parse_content_range("bytes 8-11/*") == (8, 11, None)
    assert protocol.parse_content_range("bytes */0") == (None, None, 0)
    for bad in ("bytes 8-/100", "bytes 8-11", "8-11/100", "bytes \u0661-2/3"):
        with pytest.raises(ValueError, match="Invalid Content-Range"):
            protocol.parse_content_range(bad)


# --- imagetool.formats.qcow2 ----------------------------------------------------

def _qemu_img(*args: str) -> str:
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_written_header_reads_back_and_grows(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    (tmp_path / "base.raw").write_bytes(bytes(3 << 20))
    Qcow2Writer.create(path, 3 << 20, backing_file="base.raw", backing_format="raw").close()
    h = qcow2.read_header(path)
    assert (h.version, h.size, h.backing_file, h.backing_format) == (3, 3 << 20, "base.raw",
                                                                     "raw")
    assert h.header_length == qcow2.V3_HEADER_LEN
    qcow2.grow(path, 5 << 20)
    assert qcow2.read_header(path).size == 5 << 20
    _qemu_img("check", "-U", path)
    # Past what the L1 table maps: its cluster's free entries are used.
    per_entry = 1 << (h.cluster_bits + h.l2_bits)
    qcow2.grow(path, (h.l1_size + 1) * per_entry)
    assert qcow2.read_header(path).l1_size == h.l1_size + 1
    _qemu_img("check", "-U", path)
    info = json.loads(_qemu_img("info", "-U", "--output=json", path))
    assert info["virtual-size"] == (h.l1_size + 1) * per_entry
    capacity = ((1 << h.cluster_bits) // 8) * per_entry
    with pytest.raises(ValueError, match=f"beyond {capacity} bytes"):
        qcow2.grow(path, capacity + 1)
    raw = tmp_path / "plain.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="not a qcow2 image"):
        qcow2.grow(str(raw), 8192)
    assert raw.read_bytes() == bytes(4096)


def test_destination_exists_is_one_error():
    e = DestinationExists("/tmp/x.raw")
    assert isinstance(e, FormatError)
    assert str(e) == "/tmp/x.raw: file exists (use --force to overwrite)"
    from imagetool.formats.convert import DestinationExists as from_convert
    assert from_convert is DestinationExists
