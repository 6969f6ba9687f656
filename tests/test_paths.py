"""``seqlm.core.paths`` is the one place a pipeline path is spelled (docs/architecture.md, Data flow): no
other module of src/seqlm writes, as a string in its code, a file name or a folder path that ``Paths``
names, so renaming an output is one edit. Docstrings, help texts and messages (strings with spaces) are
prose and may mention paths; a literal such as ``"metrics.json"`` or ``f"{split}.txt"`` is code."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from seqlm_testing import REPO

from seqlm.core.paths import SPLITS, Paths

PACKAGE = REPO / "src" / "seqlm"
OWNER = PACKAGE / "core" / "paths.py"

# Modules that spell a name Paths owns for another thing of the same name.
SAME_NAME_OTHER_THING = {
    # a files: source's split folder, the user's input; data/raw is laid out the same way on purpose
    "seqlm/data/sources.py": {"train.txt", "valid.txt", "test.txt"},
    # the exported model format (decision 13), read from any folder, a registry download included
    "seqlm/models/export.py": {"spm.model"},
    # the study's own figures in docs/study/, named after the diagnostics they summarise
    "seqlm/study/figures.py": {"context_ablation.png", "gradient_flow.png"},
}


def owned_paths(root: Path) -> set[Path]:
    """Every path ``Paths(root)`` names: its properties and its methods of no argument or of a split."""
    paths, owned = Paths(root), set()
    for name, member in inspect.getmembers(Paths):
        if isinstance(member, property):
            owned.add(getattr(paths, name))
        elif inspect.isfunction(member) and not name.startswith("_"):
            arguments = list(inspect.signature(member).parameters)
            if arguments == ["self"]:
                value = member(paths)
                owned.update(value if isinstance(value, tuple) else [value])
            elif arguments == ["self", "split"]:
                owned.update(member(paths, split) for split in SPLITS)
    return owned


def owned_names() -> set[str]:
    """What no other module may spell: each owned file's name (``metrics.json``) and each path of two
    parts or more (``data/raw``, ``reports/train/metrics.json``); a lone folder name such as ``models``
    or ``train`` is an ordinary word."""
    root = Path("/project")
    owned = owned_paths(root)
    relative = {p.relative_to(root) for p in owned if p != root}
    return {p.name for p in relative if p.suffix} | {p.as_posix() for p in relative if len(p.parts) > 1}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _is_owned_name(text: str, names: set[str]) -> bool:
    text = text.strip("/")
    return (
        bool(text) and not re.search(r"\s", text) and any(text == n or text.endswith("/" + n) for n in names)
    )


def _builds_owned_name(node: ast.JoinedStr, names: set[str]) -> bool:
    """An f-string ending in an extension, such as ``f"{split}.txt"``, that can build an owned name."""
    last = node.values[-1]
    if not (isinstance(last, ast.Constant) and re.fullmatch(r"\S*\.\w+", last.value)):
        return False
    parts = [re.escape(p.value) if isinstance(p, ast.Constant) else r"[^\s/]+" for p in node.values]
    pattern = "(.*/)?" + "".join(parts)
    return any(re.fullmatch(pattern, n) for n in names)


def spelled(source: str, names: set[str]) -> set[str]:
    """The owned names that ``source`` spells in code: each string literal that is a name or ends with
    ``/<name>``, and each f-string that builds one (as its source text, e.g. ``f"{split}.txt"``)."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if _is_owned_name(node.value, names):
                found.add(node.value)
        elif isinstance(node, ast.JoinedStr) and _builds_owned_name(node, names):
            found.add(ast.get_source_segment(source, node))
    return found


def test_owned_names_come_from_paths_properties_and_methods():
    names = owned_names()
    # a property, a per-split method, a folder path, a nested file, a diagnostic of reports/eval
    assert {"metrics.json", "valid.txt", "test.bin", "data/raw", "models/last.ckpt"} <= names
    assert {"context_ablation.json", "gradient_flow.png"} <= names
    assert not {"models", "train", "data"} & names  # lone folder names are words, not owned


def test_the_scan_finds_names_in_code_and_not_in_prose():
    source = '''
"""Writes reports/eval/metrics.json and data/raw/{split}.txt."""
def write(out, split, name):
    """A docstring naming metrics.json."""
    (out / f"{split}.txt").write_text("the file data/raw/train.txt is prose")
    log(f"{name}.log", f"{split}: see metrics.json")
    return "reports/train/metrics.json", out / "context_ablation.png", f"eval/{name}"
'''
    found = spelled(source, owned_names())
    assert found == {'f"{split}.txt"', "reports/train/metrics.json", "context_ablation.png"}


def test_no_module_but_core_paths_spells_a_path_that_paths_owns():
    names = owned_names()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER:
            continue
        module = path.relative_to(PACKAGE.parent).as_posix()
        found = spelled(path.read_text(encoding="utf-8"), names)
        allowed = SAME_NAME_OTHER_THING.get(module, set())
        if found - allowed:
            problems.append(f"{module} spells {sorted(found - allowed)}: take it from seqlm.core.paths")
        if allowed - found:
            problems.append(f"{module} no longer spells {sorted(allowed - found)}: drop it from this test")
    assert not problems, "\n".join(problems)
