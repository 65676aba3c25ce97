"""The layering rules of DESIGN §6 rule 8, made executable by reading the source with ``ast``.

Nothing here imports the code it checks: every rule is about what the files say.

* ``node`` never imports ``federation`` or ``cli`` (they are built on it, not under it);
* ``node/protocol`` is sans-I/O: it imports no event loop, socket or WebSocket library and
  calls no file API (bytes in, events out, bytes to send; see node/protocol/connection.py);
* storage is the ground floor: ``node/storage`` imports nothing of the node outside itself
  (services hand it their schemas; it never reaches up for them), and the interfaces
  services are built with (node/interfaces.py) import only the protocol;
* no import cycles among ``node``'s modules, neither through runtime imports nor through
  imports under ``if TYPE_CHECKING:`` (KNOWN_CYCLE, the allowance, is empty).

An import counts wherever it is written (module level or inside a function: a lazy import
is a dependency too). Imports under ``if TYPE_CHECKING:`` never run, so they cannot make an
import-time cycle, but a cycle they close still ties modules together; they are measured
separately (run with ``-s`` to see both graphs' cycles) and refused too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "node"

# Libraries whose import means I/O or an event loop: none belongs in the sans-I/O protocol.
IO_MODULES = {
    "trio",
    "trio_websocket",
    "wsproto",
    "socket",
    "ssl",
    "selectors",
    "asyncio",
    "anyio",
    "httpx",
    "subprocess",
    "shutil",
    "tempfile",
    "pathlib",
    "io",
    "sqlite3",
    "platformdirs",
}
# calls that open, read or write files, whatever object they are called on
IO_METHODS = {
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "touch",
    "mkdir",
    "unlink",
    "iterdir",
    "glob",
    "rglob",
}
IO_BUILTINS = {"open", "input", "print"}
OS_IO = {
    "open",
    "fdopen",
    "read",
    "write",
    "pread",
    "pwrite",
    "fsync",
    "close",
    "remove",
    "unlink",
    "rename",
    "replace",
    "mkdir",
    "makedirs",
    "listdir",
    "scandir",
    "stat",
    "chmod",
    "umask",
    "sendfile",
}

# Import cycles allowed among node's modules: none. (Issue 11 §3 started with one: node.app
# and the services built with it reached back through it for the ``Node`` type, 14 modules
# under TYPE_CHECKING; the services now receive the small interfaces of node/interfaces.py
# and the chat handler groups a ``Shared`` of the chats service, so the allowance is empty,
# for runtime imports and type-only ones alike.) Keep it empty.
KNOWN_CYCLE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "node.gateway"
    target: str  # the imported module as written, absolute, e.g. "node.protocol.connection"
    names: tuple[str, ...]  # for ``from X import a, b``: a, b (may be submodules of X)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def node_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(NODE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(source: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(path: Path) -> Iterator[Import]:
    source = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, type_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                yield from visit(stmt, True)
            for stmt in node.orelse:
                yield from visit(stmt, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, (), node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(source, is_package, node.level, node.module)
            names = tuple(a.name for a in node.names)
            yield Import(source, target, names, node.lineno, type_only)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_only)

    yield from visit(tree, False)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


# --- rule: node is not built on federation or cli ------------------------------------------
def test_node_never_imports_federation_or_cli() -> None:
    bad = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for path in node_modules().values()
        for imp in imports_of(path)
        if _top(imp.target) in ("federation", "cli")
    ]
    assert not bad, "node must not import federation or cli:\n" + "\n".join(bad)


# --- rule: storage is the ground floor; the interfaces sit on the protocol only ------------
def _node_deps(prefix: str) -> dict[str, set[str]]:
    graph = import_graph(type_only=True)
    return {
        m: {t for t in deps if t != "node"} for m, deps in graph.items() if m.startswith(prefix)
    }


def test_storage_is_the_ground_floor() -> None:
    deps = _node_deps("node.storage")
    assert len(deps) >= 3  # the rule must look at something
    bad = {m: sorted(t for t in ts if not t.startswith("node.storage")) for m, ts in deps.items()}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"node/storage must not import the rest of the node: {bad}"


def test_interfaces_import_only_the_protocol() -> None:
    deps = _node_deps("node.interfaces")["node.interfaces"]
    assert deps, "node.interfaces is expected to use the protocol's types"
    bad = sorted(t for t in deps if not t.startswith("node.protocol"))
    assert not bad, f"node/interfaces.py must stay on the ground floor: imports {bad}"


# --- rule: node/protocol is sans-I/O ---------------------------------------------------------
def protocol_files() -> list[Path]:
    files = sorted((NODE / "protocol").rglob("*.py"))
    assert len(files) > 5  # the rule must look at something
    return files


def test_protocol_imports_no_io_library() -> None:
    bad = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for path in protocol_files()
        for imp in imports_of(path)
        if _top(imp.target) in IO_MODULES or (imp.target == "os" and set(imp.names) & OS_IO)
    ]
    assert not bad, "node/protocol must stay sans-I/O:\n" + "\n".join(bad)


def io_calls(path: Path) -> list[str]:
    """Calls in ``path`` that do file I/O (by name: the rule is simple on purpose)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        what = None
        if isinstance(f, ast.Name) and f.id in IO_BUILTINS:
            what = f"{f.id}()"
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if f.attr in IO_METHODS:
                what = f".{f.attr}()"
            elif owner == "os" and f.attr in OS_IO:
                what = f"os.{f.attr}()"
            elif owner in ("io", "codecs", "builtins") and f.attr == "open":
                what = f"{owner}.open()"
        if what:
            found.append(f"{module_name(path)}:{node.lineno} calls {what}")
    return found


def test_protocol_does_no_file_io() -> None:
    bad = [line for path in protocol_files() for line in io_calls(path)]
    assert not bad, "node/protocol must not touch files:\n" + "\n".join(bad)


def test_the_io_checks_catch_what_they_look_for() -> None:
    """The checks above find real violations (so their silence means something)."""
    sample = ROOT / "node" / "keyfile.py"  # reads and writes key files: must be caught
    assert any("read_bytes" in line for line in io_calls(sample))
    assert any("os.open" in line for line in io_calls(sample))
    assert any(i.target == "trio" for i in imports_of(ROOT / "node" / "adminframe.py"))


# --- rule: no import cycles -------------------------------------------------------------------
def import_graph(*, type_only: bool) -> dict[str, set[str]]:
    """Edges between node's modules. ``from pkg import name`` depends on ``pkg.name`` when
    that is a module, else on ``pkg``. With ``type_only``, the graph also holds the edges
    of imports under TYPE_CHECKING."""
    mods = node_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for imp in imports_of(path):
            if imp.type_only and not type_only:
                continue
            targets = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in mods]
            if len(targets) < len(imp.names) or not imp.names:
                targets.append(imp.target)
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def _report(title: str, found: list[list[str]], graph: dict[str, set[str]]) -> str:
    lines = [f"{title}: {len(found)} cycle(s)"]
    for comp in found:
        lines.append(f"  {len(comp)} modules: {', '.join(comp)}")
        members = set(comp)
        for m in comp:
            inside = sorted(graph[m] & members)
            lines.append(f"    {m} -> {', '.join(inside)}")
    return "\n".join(lines)


def test_cycles_algorithm() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert cycles(g) == [["a", "b", "c"], ["d", "e"]]


def test_no_new_import_cycles() -> None:
    runtime = import_graph(type_only=False)
    found = cycles(runtime)
    with_types = import_graph(type_only=True)
    report = (
        _report("runtime imports", found, runtime)
        + "\n"
        + _report("with imports under TYPE_CHECKING", cycles(with_types), with_types)
    )
    print(report)  # shown with -s, and in the failure message below
    new = [comp for comp in found if not set(comp) <= KNOWN_CYCLE]
    assert not new, f"an import cycle (runtime imports):\n{report}"
    typed = [comp for comp in cycles(with_types) if not set(comp) <= KNOWN_CYCLE]
    assert not typed, f"an import cycle through imports under TYPE_CHECKING:\n{report}"


def test_known_cycle_allowance_is_not_stale() -> None:
    """Every module of the allowance exists (a renamed module must not hide in it)."""
    missing = KNOWN_CYCLE - set(node_modules())
    assert not missing, f"KNOWN_CYCLE names modules that do not exist: {sorted(missing)}"
