"""Paper claims checked from a run's own summaries: how they are declared, found,
evaluated and shown (the reproduction scorecard).

Each family's claims are the functions of the module ``claims`` of its package
(``memgen.families.NAME.claims``, next to its ``figures``) decorated with :func:`claim`::

    @claim(paper="Geiger et al. 2019", where="Fig. 3", figure="kernel_change",
           statement="The relative NTK change falls below 0.1 in the lazy regime.",
           expected="< 0.1 at the largest sqrt(h) alpha",
           tables={"table": ["sqrt_h_alpha", "ntk_rel_change", "diverged"]})
    def lazy_kernel_change(table):
        \"\"\"How this run's value is computed (one paragraph).\"\"\"
        ...
        return Result(measured=0.012, interval=(0.010, 0.015), reproduced=True)

The function's name is the claim's id; the decorator's keywords (constant expressions:
literals, f-strings and the module's constants, read from the source) say where the
claim comes from, what it states, the paper's value or threshold, the figure that shows
it (``figures/FAMILY/FIGURE``) and the summary tables it reads with the columns it needs
(``tables``, each a parameter of the function, given as a DataFrame).
``absent`` is the reason given when those tables or columns are not in a run (a table
another issue adds later); without it a missing table is reported by name. Claims are
found by reading the module's source (:func:`specs`), like figures: nothing is listed
by hand, and the report, the terminal and ``claims.csv`` take their text from here.

A claim function returns a :class:`Result` or raises :class:`NotApplicable` with the
reason (CIFAR-10 absent). An exception inside it is recorded as "not reproduced" with
the error, never raised: a claim never stops the workflow.
"""

from __future__ import annotations

import ast
import csv
import importlib
import math
from dataclasses import dataclass
from pathlib import Path

from memgen import MemgenError

CSV = "data/summary/claims.csv"  # the scorecard the workflow's `claims` rule writes
RULE = "claims"
REPRODUCED, NOT_REPRODUCED, NOT_APPLICABLE = "reproduced", "not reproduced", "not applicable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_APPLICABLE)
COLUMNS = ("family", "id", "paper", "where", "claim", "expected", "measured", "interval", "verdict", "reason",
           "figure")
KEYWORDS = ("paper", "where", "statement", "expected", "figure", "tables", "absent")


def claim(**declared):
    """Declare a claim function (module doc); the keywords are read from the source."""
    unknown = set(declared) - set(KEYWORDS)
    if unknown:
        raise MemgenError(f"claim: unknown keyword(s) {sorted(unknown)}; allowed: {', '.join(KEYWORDS)}")

    def mark(fn):
        fn.claim = declared
        return fn

    return mark


class NotApplicable(Exception):
    """Raised by a claim function: the claim cannot be checked in this run (the reason)."""


@dataclass(frozen=True)
class Result:
    """What a claim function measured: the value (a number or a short text), the interval
    it is known to (a (lo, hi) pair or a text), whether the paper's claim holds, and
    optionally why, in words."""

    measured: float | str
    reproduced: bool
    interval: tuple[float, float] | str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Spec:
    """A claim as its source declares it."""

    family: str
    name: str
    paper: str
    where: str
    statement: str
    expected: str
    figure: str
    tables: dict[str, tuple[str, ...]]
    absent: str
    how: str  # the function's docstring

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def claim_module(family) -> str:
    """The module of a family's claims: ``claims`` in its package (a family without one
    has no claims)."""
    return f"{family.package}.claims"


def _is_claim(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else None
    named = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return named == "claim"


def _value(node: ast.expr, env: dict, path: Path):
    """A constant expression (literals, f-strings, arithmetic) of the module's constants,
    evaluated without builtins: declarations are read from the source, never imported."""
    return eval(compile(ast.Expression(node), str(path), "eval"), {"__builtins__": {}}, dict(env))  # noqa: S307


def _constants(tree: ast.Module, path: Path) -> dict:
    """The module's top-level constants (``NAME = constant expression``), in order."""
    env: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in stmt.targets):
            try:
                value = _value(stmt.value, env, path)
            except Exception:  # noqa: BLE001 - not a constant (an import, a call): not usable in a claim
                continue
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = value
                elif len(target.elts) == len(value) and all(isinstance(t, ast.Name) for t in target.elts):
                    env.update({t.id: v for t, v in zip(target.elts, value)})
    return env


def specs(family) -> dict[str, Spec]:
    """The claims of a family (a :class:`memgen.declare.Family` or its name), in source
    order; a family without a claim module has none."""
    from memgen.figures import _declared
    from memgen.figures import specs as figure_specs
    from memgen.provenance import _tree, module_file

    family = _declared(family)
    path = module_file(claim_module(family))
    if path is None:
        return {}
    figures = figure_specs(family)
    tree = _tree(path)
    env = _constants(tree, path)
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if not _is_claim(dec):
                continue
            try:
                kw = {k.arg: _value(k.value, env, path) for k in dec.keywords}
            except Exception as exc:  # noqa: BLE001 - any keyword that is not a constant expression
                raise MemgenError(f"{path}: claim {node.name}: its keywords must be constant expressions "
                                  f"of literals and the module's constants ({exc})") from None
            missing = [k for k in KEYWORDS[:6] if not kw.get(k)]
            if missing:
                raise MemgenError(f"{path}: claim {node.name} lacks {', '.join(missing)}")
            if kw["figure"] not in figures:
                raise MemgenError(f"{path}: claim {node.name}: figure {kw['figure']!r} is not one of "
                                  f"{family.name}'s ({', '.join(figures)})")
            how = " ".join((ast.get_docstring(node) or "").split())
            if not how:
                raise MemgenError(f"{path}: claim {node.name} has no docstring (how it is measured)")
            tables = {t: tuple(cols) for t, cols in kw["tables"].items()}
            out[node.name] = Spec(family.name, node.name, kw["paper"], kw["where"], kw["statement"], kw["expected"],
                                  kw["figure"], tables, kw.get("absent", ""), how)
    return out


def table_paths(family) -> dict[str, str]:
    """Table -> path of every summary table the family's claims read that its summary
    step declares (a table declared by no step is absent in every run)."""
    from memgen.figures import _declared

    family = _declared(family)
    outputs = family.summary.outputs
    return {t: outputs[t] for spec in specs(family).values() for t in spec.tables if t in outputs}


def rule_inputs(families) -> dict[str, str]:
    """The inputs of the ``claims`` rule: ``FAMILY__TABLE`` -> path."""
    return {f"{f}__{t}": p for f in families for t, p in table_paths(f).items()}


def code_hash(families) -> str:
    """One hash over the code of every claim of ``families`` (memgen.provenance)."""
    import hashlib

    from memgen.families import family as declared
    from memgen.provenance import code_hash as function_hash

    parts = [f"{f}:{n}:{function_hash(claim_module(declared(f)), n, __name__)}"
             for f in families for n in specs(f)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- evaluating


def _read(path: Path):
    import pandas as pd

    from memgen.figures import coerce_bools

    return coerce_bools(pd.read_csv(path))


def _tables(spec: Spec, paths: dict[str, str], root: Path, cache: dict) -> dict:
    out = {}
    for table, columns in spec.tables.items():
        if table not in paths:
            raise NotApplicable(spec.absent or f"the {spec.family} summary has no table {table!r}")
        path = root / paths[table]
        if not path.is_file():
            raise NotApplicable(spec.absent or f"no summary table {paths[table]} in this run")
        if path not in cache:
            cache[path] = _read(path)
        missing = [c for c in columns if c not in cache[path].columns]
        if missing:
            raise NotApplicable(spec.absent or f"{paths[table]} lacks column(s) {', '.join(missing)}")
        out[table] = cache[path]
    return out


def evaluate(family, root: Path | str = ".") -> list[dict[str, str]]:
    """Every claim of ``family`` checked from the summary tables under ``root``: one row
    (:data:`COLUMNS`) per claim, in source order."""
    from memgen.figures import _declared

    family = _declared(family)
    root, cache, rows = Path(root), {}, []
    paths = table_paths(family)
    for spec in specs(family).values():
        row = {"family": spec.family, "id": spec.name, "paper": spec.paper, "where": spec.where,
               "claim": spec.statement, "expected": spec.expected, "measured": "", "interval": "",
               "figure": spec.figure}
        try:
            tables = _tables(spec, paths, root, cache)
            result = getattr(importlib.import_module(claim_module(family)), spec.name)(**tables)
            if not isinstance(result, Result):
                raise TypeError(f"returned {type(result).__name__}, not a memgen.claims.Result")
            row.update(measured=_number(result.measured), interval=_interval(result.interval),
                       verdict=REPRODUCED if result.reproduced else NOT_REPRODUCED, reason=result.reason)
        except NotApplicable as exc:
            row.update(verdict=NOT_APPLICABLE, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken claim is a verdict, not a crash
            row.update(verdict=NOT_REPRODUCED, reason=f"could not be computed: {type(exc).__name__}: {exc}")
        rows.append(row)
    return rows


def _number(v) -> str:
    if isinstance(v, str):
        return v
    v = float(v)
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def _interval(iv) -> str:
    if iv is None or isinstance(iv, str):
        return iv or ""
    lo, hi = iv
    return f"[{_number(lo)}, {_number(hi)}]"


def write_csv(rows: list[dict[str, str]], path: Path | str) -> None:
    """The scorecard as CSV (:data:`COLUMNS`), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- showing


def counts(rows) -> str:
    n = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return f"{len(rows)} claims: " + ", ".join(f"{n[v]} {v}" for v in VERDICTS)


def line(row: dict[str, str]) -> str:
    """One terminal line: verdict, claim, the paper's value and this run's."""
    head = f"{row['verdict'].upper():<15} {row['family']}/{row['id']} ({row['paper']}, {row['where']})"
    if row["verdict"] == NOT_APPLICABLE:
        return f"{head}: {row['reason']}"
    iv = row["interval"]
    interval = "" if not iv else f" {iv}" if iv.startswith("[") else f" ({iv})"
    reason = f" -- {row['reason']}" if row["reason"] else ""
    return f"{head}: expected {row['expected']}; measured {row['measured']}{interval}{reason}"


def scorecard(rows) -> str:
    """The terminal scorecard: a heading, then one line per claim."""
    return "\n".join([f"Reproduction scorecard ({counts(rows)})", *(line(r) for r in rows)])


# ---------------------------------------------------------------- statistics shared by claims


def slope_interval(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """Least-squares slope of y on x and its two-sided ``level`` confidence interval
    (Student t with n - 2 degrees of freedom): (slope, lo, hi)."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise NotApplicable(f"a slope with an interval needs 3 or more points at 2 or more x, got {len(x)}")
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 2) * fit.stderr
    return float(fit.slope), float(fit.slope - half), float(fit.slope + half)


def correlation_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z confidence interval of a Pearson correlation r from n pairs."""
    from scipy import stats

    if n < 4 or not abs(r) < 1:
        return (r, r)
    z, half = math.atanh(r), stats.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)
