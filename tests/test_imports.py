"""How the package's modules depend on each other: declared once (`LAYERS`), and checked.

Every import counts: at module level, inside functions (lazy imports keep `mmbench-train --help` fast, but the
dependency is as real) and under `if TYPE_CHECKING:` (a type named in a signature is a dependency on the
module that defines it, and mypy follows it). Two rules (issue 37):

- no import cycle: a cycle makes import order matter and hides which concept depends on which;
- no upward import: a module imports only modules of its own layer or of a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmbench

ROOT = Path(mmbench.__file__).parent

# The layers, lowest first: (name, what it holds, its modules). `mmbench.x.*` is the package `mmbench.x` and
# everything under it; a module belongs to its longest pattern (so `mmbench.data.datamodule` sits above the
# rest of `mmbench.data.*`).
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "foundation",
        "pure helpers that know nothing of runs, data or models",
        ("mmbench", "mmbench.checks", "mmbench.distributed", "mmbench.hub", "mmbench.noise", "mmbench.overrides"),
    ),
    (
        "run files",
        "what a run writes and reads back; low because lower layers raise their errors (Diverged from the "
        "LightningModule, CheckpointError from the train loader)",
        ("mmbench.record", "mmbench.checkpoints", "mmbench.rundir"),
    ),
    (
        "configuration",
        "the composed config, its resolvers and the sweeps it names; ConfigError is raised by the data sources",
        ("mmbench.config", "mmbench.sweep"),
    ),
    ("data schema", "the batch's columns and fields", ("mmbench.data", "mmbench.data.columns", "mmbench.data.batch")),
    ("models", "encoders, fusions, language models and their import from the hub", ("mmbench.models.*",)),
    ("objectives", "the losses, through the model's three calls", ("mmbench.objectives.*",)),
    ("data sources", "reading, generating, caching and collating data", ("mmbench.data.*",)),
    ("metrics", "the evaluation protocols, and text-to-image scoring", ("mmbench.metrics.*", "mmbench.t2i.*")),
    (
        "data module",
        "Lightning's data module and its resumable loaders",
        ("mmbench.data.datamodule", "mmbench.data.loaders"),
    ),
    (
        "training",
        "one model built from a config, trained, checked and evaluated",
        (
            "mmbench.builder",
            "mmbench.module",
            "mmbench.callbacks",
            "mmbench.memory",
            "mmbench.validation",
            "mmbench.finish",
            "mmbench.hub_parity",
        ),
    ),
    ("run", "one training run from config to metrics.json", ("mmbench.pipeline",)),
    (
        "entry points",
        "the commands and the sweep launcher",
        ("mmbench.train", "mmbench.evaluate", "mmbench.launch", "mmbench.report.*"),
    ),
)


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = ["mmbench", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _matches(pattern: str, module: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def _layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer whose longest pattern matches `module`; None when no pattern does."""
    best: tuple[int, int] | None = None  # (pattern length, layer)
    for index, (_, _, patterns) in enumerate(layers):
        for pattern in patterns:
            if _matches(pattern, module) and (best is None or len(pattern) > best[0]):
                best = (len(pattern), index)
    return None if best is None else best[1]


def _upward(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """'importer (layer) -> imported (layer)' for every import into a higher layer."""
    found = []
    for module in sorted(graph):
        here = _layer_of(module, layers)
        for target in sorted(graph[module]):
            there = _layer_of(target, layers)
            if here is not None and there is not None and there > here:
                found.append(f"{module} ({layers[here][0]}) -> {target} ({layers[there][0]})")
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_holds_imports_inside_functions_and_type_checking_blocks(tmp_path):
    package = tmp_path / "mmbench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("X = 1\n")
    (package / "lazy.py").write_text("def f():\n    from mmbench.low import X\n    return X\n")
    (package / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import low\n")
    graph = _import_graph(package)
    assert graph["mmbench.lazy"] == {"mmbench.low"}
    assert graph["mmbench.typed"] == {"mmbench", "mmbench.low"}  # `from . import low`: the package and the module


def test_the_layer_check_finds_an_upward_import():
    layers = (("low", "", ("p.a", "p.sub.*")), ("high", "", ("p.b", "p.sub.top")))
    assert _layer_of("p.sub.x", layers) == 0 and _layer_of("p.sub.top", layers) == 1  # the longest pattern
    assert _upward({"p.a": {"p.b"}, "p.b": {"p.a"}, "p.sub.x": {"p.sub.top"}, "p.sub.top": set()}, layers) == [
        "p.a (low) -> p.b (high)",
        "p.sub.x (low) -> p.sub.top (high)",
    ]


def test_no_import_cycle_in_mmbench():
    graph = _import_graph()
    assert "mmbench.data.datamodule" in graph and graph["mmbench.data.datamodule"]  # the graph is real
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer_and_every_pattern_a_module():
    graph = _import_graph()
    assert not [m for m in sorted(graph) if _layer_of(m) is None], "modules with no layer in LAYERS"
    unused = [p for _, _, patterns in LAYERS for p in patterns if not any(_matches(p, m) for m in graph)]
    assert not unused, f"patterns in LAYERS that match no module: {unused}"


def test_no_import_into_a_higher_layer():
    upward = _upward(_import_graph())
    assert not upward, "imports into a higher layer (tests/test_imports.py LAYERS):\n  " + "\n  ".join(upward)
