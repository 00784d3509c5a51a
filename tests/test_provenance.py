"""Code hashes come from the code a step runs (memgen.provenance), not from a list.

- In a copy of the package, each memgen module is edited in turn (a statement added):
  every step's hash changes exactly when that module is in the step's closure.
- Editing a step's run function changes its hash and no other step's (but those that
  run the same function); a helper of its module changes the steps that use it.
- Comments, docstrings and formatting change no hash anywhere.
- The closures hold what the steps use: data.py for training (its input is a data
  set), not the kernels for training, never the figures, the CLI or progress lines.
  (That the closures hold everything a step runs is checked at run time by the
  end-to-end test, memgen.codetrace.)
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from memgen import provenance
from memgen.families import registry, steps
from memgen.figures import specs
from memgen.provenance import PACKAGE_DIR, code_closure, figure_hash, step_hash

MARKER = "\n_memgen_edit_marker = 1\n"


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "memgen"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    provenance.clear_caches()
    yield root
    provenance.clear_caches()


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(["memgen", *parts])] = path
    return out


def _hashes(root: Path) -> dict[str, str]:
    provenance.clear_caches()
    return {name: step_hash(s, root) for name, s in steps().items()}


def test_a_module_edit_changes_exactly_the_steps_whose_closure_holds_it(package):
    base = _hashes(package)
    closures = {name: code_closure(*s.target(), root=package)[1] for name, s in steps().items()}
    checked = 0
    for module, path in _modules(package).items():
        text = path.read_text()
        path.write_text(text + MARKER)
        try:
            edited = _hashes(package)
        finally:
            path.write_text(text)
        for name in base:
            assert (edited[name] != base[name]) == (module in closures[name]), (module, name, sorted(closures[name]))
            checked += 1
    assert checked >= 20 * len(base)


def test_editing_a_run_function_changes_only_the_steps_that_run_it(package):
    """(and the steps that import its module, whose closure covers the whole module)"""
    base = _hashes(package)
    closures = {name: code_closure(*s.target(), root=package)[1] for name, s in steps().items()}
    for name, s in steps().items():
        module, func = s.target()
        path = provenance.module_file(module, package)
        text = path.read_text()
        tree = ast.parse(text)
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
        lines = text.splitlines(keepends=True)
        body = node.body[1] if ast.get_docstring(node) and len(node.body) > 1 else node.body[0]
        indent = " " * body.col_offset
        lines.insert(body.lineno - 1, f"{indent}_edited = 1\n")
        path.write_text("".join(lines))
        try:
            edited = _hashes(package)
        finally:
            path.write_text(text)
        expected = {n for n, t in steps().items() if t.target() == (module, func) or module in closures[n]}
        changed = {n for n in base if edited[n] != base[n]}
        assert changed == expected, (name, changed)


def test_comments_docstrings_and_formatting_change_no_hash(package):
    base = _hashes(package)
    figures = {(f, n): figure_hash(fam, n, package) for f, fam in registry().items() for n in specs(fam)}
    for path in _modules(package).values():
        text = path.read_text()
        tree = ast.parse(text)
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):  # reword every docstring (kept on its own lines)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and ast.get_docstring(node):
                doc = node.body[0]
                first = doc.lineno - 1
                lines[first] = lines[first].replace('"""', '"""Reworded. ', 1)
        edited = "".join("    \n" + line.rstrip("\n") + "  # a comment\n" if line.strip().startswith("return ")
                         else line for line in lines)
        path.write_text(edited + "\n# a trailing comment\n\n")
    assert _hashes(package) == base
    provenance.clear_caches()
    assert {(f, n): figure_hash(fam, n, package) for f, fam in registry().items() for n in specs(fam)} == figures


def test_closures_hold_what_a_step_uses_and_nothing_output_neutral():
    closure = {name: code_closure(*s.target())[1] for name, s in steps().items()}
    assert "memgen.data" in closure["ts_train"] and "memgen.training" in closure["ts_train"]
    assert "memgen.kernels" not in closure["ts_train"] and "memgen.kernels" in closure["ts_ntk_init"]
    assert "memgen.training" not in closure["ts_ntk_init"]
    for name, modules in closure.items():
        assert "memgen.declare" in modules and "memgen.h5io" in modules, name  # how files are read and written
        for neutral in ("memgen.progress", "memgen.cli", "memgen.faults", "memgen.codetrace", "memgen.plan"):
            assert neutral not in modules, (name, neutral)
        assert not any(m.startswith("memgen.figures") for m in modules), name


def test_figure_hashes_are_per_figure(package):
    fam = registry()["time_scale"]
    names = list(specs(fam))
    base = {n: figure_hash(fam, n, package) for n in names}
    assert len(set(base.values())) == len(names)
    path = provenance.module_file(fam.figure_module, package)
    text = path.read_text()
    path.write_text(text.replace("def test_error(table: pd.DataFrame, options: dict):\n",
                                 "def test_error(table: pd.DataFrame, options: dict):\n    _edited = 1\n", 1))
    provenance.clear_caches()
    changed = {n for n in names if figure_hash(fam, n, package) != base[n]}
    assert changed == {"test_error"}
