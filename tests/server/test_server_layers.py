"""The local engine's layers, read from its sources with ``ast``.

``app.py`` and ``local.py`` build the engine; the REST plane (``rest/``) and
the data plane (``dataplane*.py``) answer requests; the domain
(``domain/``) holds the operations; the inventory, the storage domains,
the tickets and their helpers lie below. An import may only point down,
or stay inside its own part; so nothing outside ``rest/`` but the
assembly imports ``rest/``, and nothing under the domain imports it. A REST
handler parses, calls the domain and represents: it never touches the
store. A failure names the file and line to fix.
"""

from __future__ import annotations

import ast
import glob
import os

from imagetool import phases

SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "imagetool", "server")

# (rank, part): an import goes to a lower rank, or to the same part.
ASSEMBLY = (3, "assembly")
PARTS = {"app": ASSEMBLY, "local": ASSEMBLY, "rest": (2, "rest"),
         "dataplane": (2, "dataplane"), "dataplane_http": (2, "dataplane"),
         "dataplane_images": (2, "dataplane"), "domain": (1, "domain")}
BELOW = (0, "below")


def _part(module: str) -> tuple[int, str]:
    return PARTS.get(module.split(".")[0], BELOW)


def _server_imports(path: str) -> list[tuple[int, str]]:
    """(line, module under server/) of every import of the file, function-local ones too."""
    out = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("imagetool.server."):
                out.append((node.lineno, name[len("imagetool.server."):]))
    return out


# ``rest.vms`` -> path, for every module under server/.
MODULES = {os.path.relpath(p, SERVER)[:-3].replace(os.sep, "."): p
           for p in glob.glob(os.path.join(SERVER, "**", "*.py"), recursive=True)}


def _target(name: str) -> str | None:
    """The server module an imported name is (or is in)."""
    while name and name not in MODULES and name + ".__init__" not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_the_parts_are_known():
    # A new top-level module or package of server/ must be placed: it lands
    # below everything unless PARTS says otherwise.
    tops = {m.split(".")[0] for m in MODULES} - {"__init__"}
    below = {"checksum_ahead", "dirty", "faults", "files", "jobs", "layers", "storage",
             "storage_files", "store", "tickets", "tls", "validate"}
    assert tops == set(PARTS) | below


def test_imports_point_down():
    offenders = []
    for mod, path in sorted(MODULES.items()):
        rank, part = _part(mod)
        for line, name in _server_imports(path):
            target = _target(name)
            if target is None:
                continue
            t_rank, t_part = _part(target)
            if t_part != part and t_rank >= rank:
                offenders.append(f"server/{os.path.relpath(path, SERVER)}:{line} "
                                 f"({part}) imports {target} ({t_part})")
    assert offenders == []


def test_only_the_assembly_imports_rest():
    users = sorted({mod.split(".")[0] for mod, path in MODULES.items()
                    if not mod.startswith("rest.")
                    for _, name in _server_imports(path) if name.startswith("rest")})
    assert users == ["app"]


def test_rest_handlers_never_touch_the_store():
    offenders = []
    for mod, path in sorted(MODULES.items()):
        if not mod.startswith("rest."):
            continue
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Attribute) and node.attr == "store":
                offenders.append(f"server/{os.path.relpath(path, SERVER)}:{node.lineno}")
        offenders += [f"server/{os.path.relpath(path, SERVER)}:{line} imports {name}"
                      for line, name in _server_imports(path) if name.startswith("store")]
    assert offenders == []


def _literal_phase_writes(path: str) -> list[int]:
    """Lines giving a phase as a string literal: ``phase="x"``, ``{"phase": "x"}``
    or ``t["phase"] = "x"``."""
    lines = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.keyword) and node.arg == "phase":
            value = node.value
        elif isinstance(node, ast.Dict):
            value = next((v for k, v in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == "phase"), None)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                and t.slice.value == "phase" for t in node.targets):
            value = node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            lines.append(value.lineno)
    return sorted(lines)


def test_phases_are_written_as_constants():
    offenders = [f"server/{os.path.relpath(p, SERVER)}:{line}"
                 for p in MODULES.values() for line in _literal_phase_writes(p)]
    assert offenders == []


def test_literal_phase_writes_are_seen(tmp_path):
    # The check above finds each shape it looks for.
    path = tmp_path / "m.py"
    path.write_text('f(phase="ready")\nd = {"phase": "x"}\nt["phase"] = "y"\n'
                    'f(phase=P.READY)\n')
    assert _literal_phase_writes(str(path)) == [1, 2, 3]


def test_each_action_is_allowed_where_its_event_is():
    E, P = phases.Event, phases.Phase
    assert phases.accepting(E.USER_CANCEL) == phases.ACTIVE
    assert phases.accepting(E.RESUME) == phases.PAUSED
    assert phases.accepting(E.FINALIZE) == phases.PAUSED | {P.TRANSFERRING}
    assert phases.accepting(E.USER_PAUSE) == {P.TRANSFERRING}
    # Every live phase can be settled by a restart; a finished one takes nothing.
    for p in phases.ACTIVE:
        assert {E.SYSTEM_PAUSE, E.SYSTEM_CANCEL} <= set(phases.EVENTS[p])
    for p in phases.FINISHED:
        assert phases.EVENTS[p] == {}
    assert phases.next_phase("finished_success", E.SYSTEM_CANCEL) is None
    assert phases.next_phase("transferring", E.FINALIZE) == P.FINALIZING_SUCCESS
