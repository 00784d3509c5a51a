"""Canonical parameters, their hashes, and the hash of the code behind each step.

Snakemake re-runs a job when its rule text, params or inputs change, but it does not
see edits inside ``src/memgen``. Every generated rule therefore carries
``code=step_hash(step)`` among its params, a hash of exactly the code the step runs,
read from the source (nothing is imported, no hand-kept list):

- the step's run function and, transitively, every top-level definition of its own
  module that it refers to by name (helpers, constants, decorators);
- every memgen module those refer to (a name bound by an import, or an import inside a
  function), and transitively every memgen module imported anywhere in those modules;
- the step framework that reads and writes its files (:mod:`memgen.declare` and what it
  imports: :mod:`memgen.h5io`, this module).

Modules that cannot change an output say so with a top-level ``OUTPUT_NEUTRAL = True``
(progress lines, the CLI's argument parsing) and are left out. The hash covers code,
not bytes: each piece is hashed as its syntax tree (``ast.dump``) with docstrings
removed, so comments, docstrings and formatting never make an output stale, while any
change of what the code does (or of a name it uses) does. A figure's hash is built the
same way from its draw function (:func:`figure_hash`).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "memgen"
# in every closure: how a step's inputs are read and its output written; how a figure is drawn and saved
STEP_FRAMEWORK, FIGURE_FRAMEWORK = "memgen.declare", "memgen.figures"


def canonical_json(params: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no whitespace: equal params give equal strings."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)


def params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


# ---------------------------------------------------------------- source, read as syntax


def module_file(module: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The source file of memgen module ``module`` under ``root`` (the package folder)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")[1:]
    base = Path(root, *parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def normalized(node: ast.AST) -> str:
    """The syntax tree of ``node`` without docstrings, as text (no line numbers)."""
    return ast.dump(_StripDocstrings().visit(copy.deepcopy(node)), include_attributes=False)


def _is_neutral(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "OUTPUT_NEUTRAL"
                                                for t in stmt.targets):
            return isinstance(stmt.value, ast.Constant) and stmt.value.value is True
    return False


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imported(node: ast.Import | ast.ImportFrom, module: str, path: Path, root: Path) -> dict[str, str]:
    """Names bound by an import statement -> the memgen module each stands for."""
    out = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            if module_file(alias.name, root):
                # `import memgen.x.y` binds `memgen` but makes memgen.x.y reachable: keep the full name
                out[alias.asname or alias.name] = alias.name
        return out
    base = node.module or ""
    if node.level:
        pkg = _package_of(module, path).split(".")
        pkg = pkg[: len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if module_file(sub, root):
            out[alias.asname or alias.name] = sub
        elif module_file(base, root):
            out[alias.asname or alias.name] = base
    return out


@lru_cache(maxsize=None)
def _module_imports(module: str, root: Path) -> frozenset[str]:
    """memgen modules imported anywhere in ``module`` (top level or inside functions)."""
    path = module_file(module, root)
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(_imported(node, module, path, root).values())
    return frozenset(out)


@lru_cache(maxsize=None)
def module_closure(modules: frozenset[str], root: Path = PACKAGE_DIR) -> frozenset[str]:
    """``modules`` and every memgen module they import, transitively, minus the
    output-neutral ones."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_module_imports(m, root))
    return frozenset(m for m in seen if not _is_neutral(_tree(module_file(m, root))))


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level name -> the statement defining it (def, class, assignment)."""
    defs: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        defs[node.id] = stmt
    return defs


def _names(node: ast.AST) -> set[str]:
    """Names a definition refers to that it does not bind itself (arguments, assignments
    and imports inside a function are its own: ``from memgen import linear`` inside a
    function shadows a top-level ``linear``)."""
    used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return used
    bound = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            bound.add(sub.id)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in sub.names)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
            bound.add(sub.name)
    globals_ = {n for sub in ast.walk(node) if isinstance(sub, ast.Global) for n in sub.names}
    return used - (bound - globals_)


@lru_cache(maxsize=None)
def function_closure(module: str, name: str, root: Path = PACKAGE_DIR) -> tuple[tuple[str, ...], frozenset[str]]:
    """(top-level names of ``module`` that ``name`` needs, transitively, incl. itself;
    memgen modules they refer to). Module-level statements that run for their effect
    (not definitions, not imports) are always needed."""
    path = module_file(module, root)
    if path is None:
        raise KeyError(f"no memgen module {module} under {root}")
    tree = _tree(path)
    defs = _top_level(tree)
    if name not in defs:
        raise KeyError(f"{module} has no top-level {name!r}")
    bound: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bound.update(_imported(stmt, module, path, root))
    effects = [s for s in tree.body[1:] if isinstance(s, ast.Expr)]  # (body[0] may be the docstring)
    used, modules, todo = set(), set(), [name] + sorted(set().union(*map(_names, effects)) if effects else [])
    for stmt in effects:
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules.update(_imported(node, module, path, root).values())
    while todo:
        n = todo.pop()
        if n in used:
            continue
        if n in bound:
            modules.add(bound[n])
        elif n in defs:
            used.add(n)
            node = defs[n]
            todo.extend(_names(node))
            for sub in ast.walk(node):  # imports inside the function
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    modules.update(_imported(sub, module, path, root).values())
    return tuple(sorted(used)), frozenset(modules - {module})


@lru_cache(maxsize=None)
def _module_dump(module: str, root: Path) -> str:
    return normalized(_tree(module_file(module, root)))


def _digest(module: str, names: tuple[str, ...], modules: frozenset[str], root: Path) -> str:
    digest = hashlib.sha256()
    tree = _tree(module_file(module, root))
    defs = _top_level(tree)
    pieces = {normalized(defs[n]) for n in names} | {normalized(s) for s in tree.body[1:] if isinstance(s, ast.Expr)}
    for piece in sorted(pieces):
        digest.update(piece.encode())
    for m in sorted(modules):
        digest.update(m.encode())
        digest.update(_module_dump(m, root).encode())
    return digest.hexdigest()[:16]


def code_closure(module: str, name: str, framework: str = STEP_FRAMEWORK,
                 root: Path = PACKAGE_DIR) -> tuple[tuple[str, ...], frozenset[str]]:
    """(own names, memgen modules) whose code :func:`code_hash` covers for the function
    ``module:name`` run through ``framework`` (the step or the figure machinery)."""
    names, modules = function_closure(module, name, root)
    return names, module_closure(frozenset(modules | {framework}), root) - {module}


@lru_cache(maxsize=None)
def code_hash(module: str, name: str, framework: str = STEP_FRAMEWORK, root: Path = PACKAGE_DIR) -> str:
    """16 hex digits over the code :func:`code_closure` names."""
    names, modules = code_closure(module, name, framework, root)
    return _digest(module, names, modules, root)


def step_hash(step, root: Path = PACKAGE_DIR) -> str:
    """The code hash of a :class:`memgen.declare.Step` (its run function)."""
    return code_hash(*step.target(), STEP_FRAMEWORK, root)


def figure_hash(family, name: str, root: Path = PACKAGE_DIR) -> str:
    """The code hash of figure ``name`` of a :class:`memgen.declare.Family`."""
    return code_hash(family.figure_module, name, FIGURE_FRAMEWORK, root)


def clear_caches() -> None:
    """Forget parsed sources (after editing files in place, e.g. in tests)."""
    for f in (_tree, _module_imports, module_closure, function_closure, _module_dump, code_hash):
        f.cache_clear()
