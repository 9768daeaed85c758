"""The package's imports point down only: read with `ast` (nothing is executed), every import of a
pds_lightning module (absolute or relative, at the top or inside a function) must go to a lower layer.

Layers, bottom first (a module may import only from layers below its own; the same layer is a sideways
import and fails too, so a cycle cannot form):

 0. fileio, images, distributed, classpath, -- plain helpers: atomic files, pixel ranges and PNG bytes,
    resources                                  rank/world, class-path loading, the shipped files (data,
                                               configs, weights); no project imports
 1. sde, preconditioner, statistics         -- the maths: SDE schedules, the PDS filters C and S,
                                               image statistics (mean, power spectrum)
 2. models                                  -- score networks and the analytic Gaussian score (use sde,
                                               preconditioner)
 3. sampling, losses                        -- predictors, correctors, samplers, solvers, settings
                                               (take alpha as a number or a chooser
                                               they do not run); training objectives
 4. metrics, features                       -- measures of samples (spectra, FID/KID features); they
                                               need no sampler, and the alpha pilot scores with them
 5. alpha                                   -- choosing alpha: surrogate (pure maths) and pilot (runs
                                               the sampler, scores with metrics); one resolve_alpha
 6. legacy                                  -- old checkpoints' flat sampler dicts -> sampler components
 7. data                                    -- sources, seeds, the Lightning data module
 8. module                                  -- the LightningModule (training, sampling, alpha resolution)
 9. writer, sampling_callback               -- the prediction writer and the validation sampling callback
10. callbacks                               -- the class paths configs use, re-exporting layer 8
11. cli, evaluate, convert, configs         -- entry points
12. __main__                                -- `python -m pds_lightning` (runs cli)

Inside a package the submodules are ordered too (the package's __init__ sits above all of them).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "pds_lightning"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS = [
    ("fileio", "images", "distributed", "classpath", "resources"),
    ("sde", "preconditioner", "statistics"),
    ("models",),
    ("sampling", "losses"),
    ("metrics", "features", "likelihood"),
    ("alpha",),
    ("legacy",),
    ("data",),
    ("module",),
    ("writer", "sampling_callback"),
    ("callbacks",),
    ("cli", "evaluate", "convert", "configs"),
    ("__main__",),
]

SUBLAYERS = {
    "sampling": [("noise", "step", "guidance", "base", "known"), ("pds",), ("predictors",), ("correctors",),
                 ("samplers",), ("reference", "solvers"), ("schedules",), ("pc", "ode", "sigma"),
                 ("edm_heun", "edm_stochastic", "dpmpp_2m", "euler"), ("generate", "conditional")],
    "models": [("layers", "checkpoint"), ("resampling",), ("resblocks",), ("ncsnpp", "gaussian", "score"),
               ("presets",)],
    "alpha": [("choosers", "surrogate"), ("pilot",)],
    "data": [("seeds", "sources", "cache", "loading"), ("tasks",), ("datamodule",)],
}


def rank_of(layers, name: str, where: str) -> int:
    for rank, names in enumerate(layers):
        if name in names:
            return rank
    raise AssertionError(f"{where}: '{name}' is in no layer; add it to LAYERS/SUBLAYERS in tests/test_layers.py "
                         "at the height its imports allow")


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
         "pds_lightning.sampling.step", "pds_lightning.sampling.samplers", "pds_lightning.alpha"}


def test_checker_names_an_upward_import_hidden_in_a_function():
    source = "import torch\n\ndef f():\n    from pds_lightning.alpha import resolve_alpha\n    return resolve_alpha\n"
    graph = {"pds_lightning.sde": imported_modules(source, "pds_lightning.sde", False, KNOWN)}
    assert graph["pds_lightning.sde"] == {"pds_lightning.alpha"}
    assert violations(graph) == ["pds_lightning.sde imports pds_lightning.alpha (not below it)"]


def test_checker_resolves_relative_imports_and_submodule_order():
    source = "from .generate import generate\nfrom . import samplers\n"
    found = imported_modules(source, "pds_lightning.sampling.step", False, KNOWN)
    assert found == {"pds_lightning.sampling.generate", "pds_lightning.sampling.samplers"}
    assert violations({"pds_lightning.sampling.step": found}) == [
        "pds_lightning.sampling.step imports pds_lightning.sampling.generate (not below it)",
        "pds_lightning.sampling.step imports pds_lightning.sampling.samplers (not below it)"]
    # the package's own __init__ is above its submodules; downward imports pass
    assert violations({"pds_lightning.sampling.generate": {"pds_lightning.sampling"}}) != []
    assert violations({"pds_lightning.sampling.generate": {"pds_lightning.sampling.step", "pds_lightning.sde"}}) == []


def test_checker_flags_sideways_imports_and_cycles():
    assert violations({"pds_lightning.metrics": {"pds_lightning.features"}}) == [
        "pds_lightning.metrics imports pds_lightning.features (not below it)"]
    graph = {"pds_lightning.a": {"pds_lightning.b"}, "pds_lightning.b": {"pds_lightning.a"}}
    assert cycles(graph) == ["pds_lightning.a -> pds_lightning.b -> pds_lightning.a"]


def test_a_module_missing_from_the_table_is_named():
    with pytest.raises(AssertionError, match="'newthing' is in no layer"):
        violations({"pds_lightning.newthing": {"pds_lightning.sde"}})
