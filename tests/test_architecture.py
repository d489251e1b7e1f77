"""The layout holds: imports point down the layers of docs/architecture.md, never up, and
no two modules import each other (directly or round a longer cycle). Read from the source
with `ast`, function-level imports included, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import labkit

PACKAGE = Path(labkit.__file__).parent

#: Lowest first. A module may import from its own layer or any layer below.
LAYERS = [
    [
        "labkit",
        "labkit.errors",
        "labkit.capabilities",
        "labkit.addresses",
        "labkit.progress",
        "labkit.references",
        "labkit.packets",
    ],
    ["labkit.testbed.runs", "labkit.testbed.signals"],
    [
        "labkit.testbed.hosts",
        "labkit.bpf",
        "labkit.bpf_testrun",
        "labkit.bpf_enums",
        "labkit.verifier",
        "labkit.testbed.remote",
        "labkit.testbed.remote_agent",
    ],
    ["labkit.testbed", "labkit.testbed.inventory", "labkit.testbed.vm", "labkit.testbed.vm_bed"],
    ["labkit.dpdk", "labkit.dataplanes", "labkit.ovs", "labkit.probes"],
    ["labkit.traffic"],
    ["labkit.measure", "labkit.measure.capture", "labkit.measure.mlr", "labkit.measure.hdr"],
    ["labkit.results", "labkit.reporting.plots"],
    ["labkit.experiments"],
    ["labkit.widgets", "labkit.cleanup", "labkit.teaching"],
    [
        "labkit.reporting",
        "labkit.reporting.trend",
        "labkit.reporting.trend_page",
        "labkit.reporting.crate",
        "labkit.reporting.crate_check",
        "labkit.reporting.environment_lock",
        "labkit.reporting.rerun",
        "labkit.bench",
        "labkit.doctor",
        "labkit.watchdog",
        "labkit.provision",
    ],
    ["labkit.cli", "labkit.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(mod: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and n.count(".") > depth:
                best, depth = i, n.count(".")
    assert best is not None, f"{mod} is in no layer of LAYERS: add it (and to docs/architecture.md)"
    return best


def imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """labkit modules that MOD imports (a name imported from a package counts as the
    submodule when there is one)."""
    out = set()
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "labkit" or target.startswith("labkit.")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("labkit")}
    out.discard(mod)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_imports_point_down():
    upward = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, targets in graph().items()
        for t in targets
        if layer(t) > layer(m)
    ]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    # a package's __init__ that re-exports its submodules is its facade, not a cycle
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in edges.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_bpf_program_has_one_control_plane():
    """Whoever opens bpf/X.c finds its control plane in labkit/dataplanes/ (or the eBPF
    loader itself for the bare program), named in the C file's header comment."""
    homes = {p.stem: p for p in (PACKAGE / "dataplanes").glob("*.py") if p.stem != "__init__"}
    missing = []
    for c in sorted(labkit.BPF_DIR.glob("*.c")):
        text = c.read_text()
        named = [h for h in homes if f"labkit/dataplanes/{h}.py" in text]
        if not named:
            missing.append(c.name)
    assert not missing, f"bpf programs whose header names no labkit/dataplanes/ module: {missing}"


def test_no_module_grows_past_its_concern():
    """No module over 450 lines: a bigger one holds more than one concern."""
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 450}
    assert not big, f"modules over 450 lines (split them by concern): {big}"


def test_no_module_assigns_to_another_modules_names():
    """Configuration travels as arguments (or the process environment), never by one module
    reassigning another's globals: no `other_module.NAME = ...` (nor `+=`, nor a subscript of
    it) anywhere in labkit/, for any module imported from labkit."""
    found = []
    for mod, path in sorted(modules().items()):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {
                    (a.asname or a.name).split(".")[0] if not a.asname else a.asname
                    for a in node.names
                    if a.name.startswith("labkit")
                }
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit"):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            for target in targets:
                for e in ast.walk(target):
                    base = e.value if isinstance(e, (ast.Attribute, ast.Subscript)) else None
                    while isinstance(base, (ast.Attribute, ast.Subscript)):
                        base = base.value
                    if isinstance(e, ast.Attribute) and isinstance(base, ast.Name) and base.id in imported:
                        found.append(f"{mod}:{node.lineno}: {ast.unparse(target)}")
    assert not found, "modules assigning to another module's names:\n" + "\n".join(sorted(set(found)))
