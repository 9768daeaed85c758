"""The package's imports point down only: read with `ast` (nothing is executed), every import of a
pds_lightning module (absolute or relative, at the top or inside a function) must go to a lower layer.

The layers are read from the diagram in docs/design.md ("## Layers"), the one table of them: a module may
import only from layers below its own (the same layer is a sideways import and fails too, so a cycle cannot
form); inside a package the submodules are ordered too (the package's __init__ sits above all of them).
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "pds_lightning"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
DESIGN = ROOT.parent / "docs" / "design.md"


def diagram(text: str) -> str:
    """The first fenced block after the '## Layers' heading of design.md."""
    section = text[text.index("## Layers"):]
    return section.split("```")[1]


def parse_diagram(block: str) -> tuple[list[tuple[str, ...]], dict[str, list[tuple[str, ...]]]]:
    """(layers bottom first, {package: its submodules bottom first}) of a layer diagram: lines 'N  names -- why',
    a line without a number continuing layer N, 'package(a, b < c)' ordering a package's submodules."""
    texts: dict[int, str] = {}
    current = None
    for line in block.splitlines():
        body = line.split("--")[0]
        number = re.match(r"\s*(\d+)\s", body)
        if number:
            current, body = int(number.group(1)), body[number.end():]
        if body.strip():
            if current is None:
                raise ValueError(f"diagram line before any layer number: {line!r}")
            texts[current] = texts.get(current, "") + " " + body
    if sorted(texts) != list(range(len(texts))):
        raise ValueError(f"diagram layers must be numbered 0..n without gaps, got {sorted(texts)}")
    layers, sublayers = [], {}
    for n in range(len(texts)):
        names = []
        for name, inner in re.findall(r"(\w+)\s*(?:\(([^)]*)\))?", texts[n]):
            names.append(name)
            if inner:
                sublayers[name] = [tuple(s.strip() for s in group.split(",")) for group in inner.split("<")]
        layers.append(tuple(names))
    return layers, sublayers


LAYERS, SUBLAYERS = parse_diagram(diagram(DESIGN.read_text()))


def rank_of(layers, name: str, where: str) -> int:
    for rank, names in enumerate(layers):
        if name in names:
            return rank
    raise AssertionError(f"{where}: '{name}' is in no layer; add it to the layer diagram of docs/design.md "
                         "(## Layers) at the height its imports allow")


def position(module: str, layers=LAYERS, sublayers=SUBLAYERS) -> tuple[int, int]:
    """(layer of the top-level unit, order inside its package; a package's __init__ is above its submodules)."""
    parts = module.split(".")[1:]
    if not parts:
        return (-1, 0)  # the root __init__ holds only the version
    top = rank_of(layers, parts[0], module)
    if len(parts) == 1:
        return (top, len(sublayers.get(parts[0], ())))
    return (top, rank_of(sublayers[parts[0]], parts[1], module))


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every pds_lightning module that `source` (the text of `module`) imports, anywhere in the file."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pds_lightning.x import y` names the submodule x.y when y is one.
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(PACKAGE + "."))
    return found


def violations(graph: dict[str, set[str]], layers=LAYERS, sublayers=SUBLAYERS) -> list[str]:
    """'a imports b' for every import that is not strictly downward (within a package: by its submodule order)."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = position(module, layers, sublayers)
        for target in sorted(targets):
            there = position(target, layers, sublayers)
            same_unit = module.split(".")[:2] == target.split(".")[:2]
            downward = there < here if same_unit else there[0] < here[0]
            if not downward:
                bad.append(f"{module} imports {target} (not below it)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle, named by its modules (independent of the layer table)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return (".".join(parts[:-1]), True) if parts[-1] == "__init__" else (".".join(parts), False)


def package_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    known = {name for name, _ in files}
    return {name: imported_modules(path.read_text(), name, is_pkg, known) - {name}
            for (name, is_pkg), path in files.items()}


def test_every_import_points_down_and_none_is_circular():
    graph = package_graph()
    assert "pds_lightning.sampling.generate" in graph and graph["pds_lightning.module"], "found no modules"
    problems = violations(graph) + [f"cycle {c}" for c in cycles(graph)]
    assert not problems, "imports against the layers of tests/test_layers.py:\n" + "\n".join(problems)


KNOWN = {"pds_lightning.sde", "pds_lightning.sampling", "pds_lightning.sampling.generate",
         "pds_lightning.sampling.step", "pds_lightning.sampling.pc", "pds_lightning.alpha"}


def test_checker_names_an_upward_import_hidden_in_a_function():
    source = "import torch\n\ndef f():\n    from pds_lightning.alpha import resolve_alpha\n    return resolve_alpha\n"
    graph = {"pds_lightning.sde": imported_modules(source, "pds_lightning.sde", False, KNOWN)}
    assert graph["pds_lightning.sde"] == {"pds_lightning.alpha"}
    assert violations(graph) == ["pds_lightning.sde imports pds_lightning.alpha (not below it)"]


def test_checker_resolves_relative_imports_and_submodule_order():
    source = "from .generate import generate\nfrom . import pc\n"
    found = imported_modules(source, "pds_lightning.sampling.step", False, KNOWN)
    assert found == {"pds_lightning.sampling.generate", "pds_lightning.sampling.pc"}
    assert violations({"pds_lightning.sampling.step": found}) == [
        "pds_lightning.sampling.step imports pds_lightning.sampling.generate (not below it)",
        "pds_lightning.sampling.step imports pds_lightning.sampling.pc (not below it)"]
    # the package's own __init__ is above its submodules; downward imports pass
    assert violations({"pds_lightning.sampling.generate": {"pds_lightning.sampling"}}) != []
    assert violations({"pds_lightning.sampling.generate": {"pds_lightning.sampling.step", "pds_lightning.sde"}}) == []


def test_checker_flags_sideways_imports_and_cycles():
    assert violations({"pds_lightning.metrics": {"pds_lightning.features"}}) == [
        "pds_lightning.metrics imports pds_lightning.features (not below it)"]
    graph = {"pds_lightning.a": {"pds_lightning.b"}, "pds_lightning.b": {"pds_lightning.a"}}
    assert cycles(graph) == ["pds_lightning.a -> pds_lightning.b -> pds_lightning.a"]


def test_the_diagram_names_every_module_of_the_package_and_no_other():
    listed = {f"{PACKAGE}.{n}" for layer in LAYERS for n in layer}
    listed |= {f"{PACKAGE}.{p}.{m}" for p, groups in SUBLAYERS.items() for g in groups for m in g}
    packages = {f"{PACKAGE}.{p}" for p in SUBLAYERS}
    assert listed - packages == set(package_graph()) - {PACKAGE} - packages, (
        "docs/design.md's layer diagram and the package differ")


def test_the_diagram_parser_reads_numbers_continuations_and_packages():
    block = """
 2  top                 -- what it is
 1  pkg(a, b < c        -- a package
    < d)  side
                        -- more words about layer 1
 0  base  other
"""
    assert parse_diagram(block) == ([("base", "other"), ("pkg", "side"), ("top",)],
                                    {"pkg": [("a", "b"), ("c",), ("d",)]})
    with pytest.raises(ValueError, match="without gaps"):
        parse_diagram(" 0  a\n 2  b\n")


def test_a_module_missing_from_the_table_is_named():
    with pytest.raises(AssertionError, match="'newthing' is in no layer"):
        violations({"pds_lightning.newthing": {"pds_lightning.sde"}})
