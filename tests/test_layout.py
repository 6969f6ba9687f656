"""The package layout holds: no import circles, the layer rules of docs/architecture.md, dvc.yaml deps
that are exactly each stage's import closure, small modules, and no references to documents outside
the repo. Imports are read with ``ast``, function-level ones included, so a lazy import counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from seqlm_testing import REPO

SRC = REPO / "src"
PACKAGE = SRC / "seqlm"
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The seqlm modules that ``name`` imports anywhere in its body (``from pkg import mod`` → pkg.mod)."""
    path = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "seqlm" or t.startswith("seqlm."))
    unknown = found - set(MODULES)
    assert not unknown, f"{path}: imports {sorted(unknown)}, which are not modules of seqlm"
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(module: str) -> str:
    """``seqlm.training.callbacks`` → ``training``; ``seqlm.config`` → ``config``; ``seqlm`` → ``seqlm``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "seqlm"


def layer_rules() -> dict[str, set[str]]:
    """The 'may import' table of docs/architecture.md's Layers section: package → packages it may import."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for row in re.findall(r"^\| `(\w+)` \|(.*)\|(.*)\|\s*$", section, flags=re.M):
        name, may_import = row[0], row[1]
        rules[name] = set(re.findall(r"`(\w+)`", may_import))
    return rules


def test_no_module_is_over_400_lines():
    long = {
        name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_package_says_what_it_owns_and_may_import():
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc) > 80, f"{path}: the package needs a docstring saying what it owns"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_has_a_layer_rule():
    rules = layer_rules()
    packages = {layer(m) for m in MODULES} - {"seqlm"}
    assert packages <= set(rules), (
        f"docs/architecture.md has no layer rule for {sorted(packages - set(rules))}"
    )
    assert set(rules) <= packages, (
        f"docs/architecture.md has rules for missing packages {sorted(set(rules) - packages)}"
    )


def layer_violations(graph: dict[str, set[str]], rules: dict[str, set[str]]) -> list[str]:
    broken = []
    for module, targets in graph.items():
        own = layer(module)
        for target in targets:
            other = layer(target)
            if other in (own, "seqlm") or own == "seqlm":
                continue
            if other not in rules.get(own, set()):
                broken.append(f"{module} imports {target} ({own} may not import {other})")
    return sorted(broken)


def test_imports_follow_the_layer_rules():
    broken = layer_violations(GRAPH, layer_rules())
    assert not broken, "layer rules of docs/architecture.md broken:\n" + "\n".join(broken)


def test_a_model_that_imports_the_trainer_breaks_the_rules():
    graph = {"seqlm.models.recurrent": {"seqlm.training.trainer", "seqlm.core.errors"}}
    assert layer_violations(graph, layer_rules()) == [
        "seqlm.models.recurrent imports seqlm.training.trainer (models may not import training)"
    ]


def test_training_uses_evaluation_only_for_its_metrics_and_protocols():
    # docs/architecture.md: training may import evaluation for the one bits-per-byte definition and the
    # protocol it trains under (its batches, loss and validation sums), nothing else: no diagnostics or plots
    used = {
        t
        for m, targets in GRAPH.items()
        if layer(m) == "training"
        for t in targets
        if layer(t) == "evaluation"
    }
    protocols = {f"seqlm.evaluation.{m}" for m in ("protocol", "protocols", "streamed", "episodic", "cloze")}
    assert used <= {"seqlm.evaluation", "seqlm.evaluation.metrics", *protocols}, used


def test_stages_never_import_each_other():
    stages = {m for m in MODULES if m.startswith("seqlm.stages.")}
    crossing = [f"{m} imports {t}" for m in stages for t in GRAPH[m] if t in stages]
    assert not crossing, crossing


# ------------------------------------------------------------------------------------------ dvc.yaml


def closure(roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # importing seqlm.a.b runs seqlm/__init__ and seqlm/a/__init__ first
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        todo.extend((GRAPH[module] | parents) - seen)
    return seen


def stage_roots() -> dict[str, set[str]]:
    """What ``pipeline/<stage>.py`` runs: seqlm.cli's module level, run_stage's imports, the stage."""
    from seqlm import cli

    cli_module = ast.parse(MODULES["seqlm.cli"].read_text())
    top = {
        f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in MODULES else n.module
        for n in cli_module.body
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("seqlm")
        for a in n.names
    }
    run_stage = next(n for n in cli_module.body if isinstance(n, ast.FunctionDef) and n.name == "run_stage")
    inner = {
        f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in MODULES else n.module
        for n in ast.walk(run_stage)
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    return {stage: top | inner | {target.split(":")[0]} for stage, (target, _) in cli.STAGES.items()}


# Read as files rather than imported: register logs the pyfunc's source into every version it registers.
LOGGED_AS_CODE = {"seqlm.registry.register": {"seqlm.registry.pyfunc"}}


def stage_files(stage_roots_: set[str]) -> set[str]:
    """Every seqlm file a stage runs or logs, with seqlm/cli.py (pipeline/<stage>.py imports it) and all
    of ``core``, the ground floor every stage stands on (listed whole in dvc.yaml for readability)."""
    modules = closure(stage_roots_) | {"seqlm.cli"}
    modules |= {logged for m in list(modules) for logged in LOGGED_AS_CODE.get(m, ())}
    modules |= {m for m in MODULES if m == "seqlm.core" or m.startswith("seqlm.core.")}
    return {MODULES[m].relative_to(REPO).as_posix() for m in modules}


def covered(deps: list) -> set[str]:
    """The .py files under src/ that dvc.yaml deps name: a folder covers every module inside it."""
    files = set()
    for dep in deps:
        if isinstance(dep, str) and dep.startswith("src/"):
            path = REPO / dep
            found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            files.update(p.relative_to(REPO).as_posix() for p in found)
    return files


def smallest_deps(files: set[str]) -> list[str]:
    """A package folder where the stage runs all of it, else its files: what dvc.yaml should list."""
    deps = set()
    for f in files:
        folder = (REPO / f).parent
        package_files = {p.relative_to(REPO).as_posix() for p in folder.rglob("*.py")}
        whole = folder != PACKAGE and package_files <= files
        deps.add(folder.relative_to(REPO).as_posix() if whole else f)
    return sorted(deps)


def test_stage_deps_are_exactly_the_modules_each_stage_runs():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    roots = stage_roots()
    assert set(roots) == set(pipeline), "every seqlm stage is a dvc.yaml stage and back"
    problems = []
    for stage, spec in pipeline.items():
        needed, listed = stage_files(roots[stage]), covered(spec["deps"])
        if needed != listed:
            problems.append(
                f"{stage}: dvc.yaml misses {sorted(needed - listed)} and lists {sorted(listed - needed)}, "
                f"which the stage never imports; its src deps should be {smallest_deps(needed)}"
            )
        if f"pipeline/{stage}.py" not in spec["deps"]:
            problems.append(f"{stage}: dvc.yaml misses its script pipeline/{stage}.py")
    assert not problems, "\n".join(problems)


def test_a_missing_module_is_caught():
    roots = stage_roots()["evaluate"]
    needed = stage_files(roots)
    assert "src/seqlm/evaluation/metrics.py" in needed
    assert "src/seqlm/evaluation/metrics.py" not in covered(["src/seqlm/core", "src/seqlm/config.py"])
    assert "src/seqlm/training/lightning_module.py" not in needed  # evaluate never trains


def test_closure_follows_lazy_imports():
    # the train stage imports lightning code only inside run_train; the closure must still see it
    assert "seqlm.training.lightning_module" in closure(stage_roots()["train"])


# -------------------------------------------------------------------------------- docs stay in-repo


@pytest.mark.parametrize("folder", ["src", "tests", "bench", "pipeline"])
def test_no_reference_to_a_design_document_outside_the_repo(folder):
    pattern = "DESIGN"  # the founding sketch lived outside the repo; docs/architecture.md replaced it
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in (REPO / folder).rglob("*.py")
        if p.name != "test_layout.py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern in line
    ]
    assert not hits, hits
