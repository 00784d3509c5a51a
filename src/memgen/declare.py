"""Step declarations: every fact about a step in one place, read by everything else.

A family (``memgen.families.NAME``) declares its steps as :class:`Step` objects and
bundles them in a :class:`Family`. A step says, once:

- ``name``: the Snakemake rule and the CLI command (``python -m memgen NAME``);
- ``run``: the function that runs it, ``"module:function"`` (relative to the family's
  package, or absolute ``"memgen.x:f"``); it is imported only when the step runs, so
  declaring a family imports neither torch nor matplotlib;
- ``output``: the path template (wildcards in braces) of its one HDF5 file, or a
  mapping name -> path of its CSV tables;
- ``params``: ``(block, wildcards) -> dict``, the step's own parameters from the
  family's config block; the params of every single-file input are added under the
  input's name (:func:`job_params`), so a step's params hold everything that produced
  its inputs and every input is checked against them when read;
- ``inputs``: name -> :class:`Step` (the producer's file at the same wildcards),
  :class:`At` (at some wildcards fixed) or :class:`Each` (the producer's files at every
  point of a sweep, a list);
- ``writes`` / ``attrs``: the HDF5 datasets (name -> shape with named dimensions) and
  root attributes it writes, checked when written and used by every reader;
- ``device``: whether it computes on the device (``--device``; the only steps that
  request a GPU); ``heavy``: whether it is a compute job (threads, cluster limits)
  rather than a light local one; ``resumable``: whether it saves resume points.

From these the workflow generates the rules (``workflow/rules/common.smk``), the CLI
its commands (:mod:`memgen.cli`), :mod:`memgen.provenance` the code hash of each step
(from the run function and the modules it imports), and :mod:`memgen.plan` its cost.
:class:`Job` is what a run function receives: its inputs, output, params and device,
with :meth:`Job.read` / :meth:`Job.write` doing the checks the declaration implies.
"""

from __future__ import annotations

import importlib
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from memgen import MemgenError

Params = Callable[[dict, Mapping[str, str]], dict]


def _no_params(block: dict, wildcards: Mapping[str, str]) -> dict:
    return {}


@dataclass(frozen=True)
class Cost:
    """How :mod:`memgen.plan` estimates a job: ``kind`` names a unit cost
    (``memgen.plan.UNIT``) and ``work(params, steps)`` the job's units of it; or a fixed
    ``seconds`` per job measured on reference runs. Neither: start-up overhead only."""

    kind: str = ""
    work: Callable[[dict, int], float] | None = None
    seconds: float | None = None


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a family, declared once (module doc)."""

    name: str
    run: str
    output: str | Mapping[str, str]
    params: Params = _no_params
    inputs: Mapping[str, "Step | Each"] = field(default_factory=dict)
    writes: Mapping[str, tuple | None] | Callable[[], Mapping[str, tuple | None]] = field(default_factory=dict)
    attrs: tuple[str, ...] = ()
    device: bool = False
    heavy: bool = False
    resumable: bool = False
    cost: Cost = Cost()
    family: str = ""  # set by Family
    package: str = ""  # the family's package, for relative ``run`` references

    @property
    def datasets(self) -> dict[str, tuple | None]:
        """The HDF5 datasets it writes (``writes``, called if it is a function: a
        declaration may take them from a library module that imports torch)."""
        return dict(self.writes() if callable(self.writes) else self.writes)

    @property
    def outputs(self) -> dict[str, str]:
        """Output name -> path template (``{"": path}`` for a single HDF5 file)."""
        return dict(self.output) if isinstance(self.output, Mapping) else {"": self.output}

    @property
    def wildcards(self) -> tuple[str, ...]:
        """The wildcard names of the output path(s), in order of appearance."""
        names: list[str] = []
        for template in self.outputs.values():
            for _, field_name, _, _ in string.Formatter().parse(template):
                if field_name and field_name not in names:
                    names.append(field_name)
        return tuple(names)

    def path(self, wildcards: Mapping[str, str], name: str = "") -> str:
        """The output path at ``wildcards`` (extra wildcards are ignored)."""
        try:
            return self.outputs[name].format(**wildcards)
        except KeyError as exc:
            raise MemgenError(f"step {self.name}: no value for wildcard {exc} of {self.outputs[name]}") from None

    def target(self) -> tuple[str, str]:
        """(module, function) of ``run``, the module absolute."""
        module, sep, func = self.run.partition(":")
        if not sep or not module or not func:
            raise MemgenError(f"step {self.name}: run={self.run!r}, expected 'module:function'")
        if not module.startswith("memgen."):
            module = f"{self.package}.{module}"
        return module, func

    def help(self) -> str:
        """The first sentence of the run function's docstring (read from the source)."""
        import ast

        from memgen.provenance import _top_level, _tree, module_file

        module, func = self.target()
        node = _top_level(_tree(module_file(module)))[func]
        doc = " ".join((ast.get_docstring(node) or "").split())
        return doc.split(". ")[0].rstrip(".") + "." if doc else ""

    def function(self) -> Callable[["Job"], Any]:
        module, func = self.target()
        return getattr(importlib.import_module(module), func)

    def code_hash(self) -> str:
        from memgen.provenance import step_hash

        return step_hash(self)


class At:
    """Input: ``step``'s output with some wildcards fixed (``At(DATASET, ds="digits")``),
    the others the job's own."""

    def __init__(self, step: Step, **fixed: str):
        self.step, self.fixed = step, fixed

    def wildcards(self, wildcards: Mapping[str, str]) -> dict[str, str]:
        return {**wildcards, **self.fixed}

    def path(self, wildcards: Mapping[str, str]) -> str:
        return self.step.path(self.wildcards(wildcards))


def single(source) -> tuple[Step, Callable[[Mapping[str, str]], dict]] | None:
    """(producer, wildcards of the input given the job's) of a single-file input; None
    for a list (:class:`Each`)."""
    if isinstance(source, Step):
        return source, dict
    if isinstance(source, At):
        return source.step, source.wildcards
    return None


@dataclass(frozen=True, eq=False)
class Each:
    """Input: ``step``'s output at every point of ``points(block)`` (wildcard dicts of
    strings, formatted as the file names are), in that order."""

    step: Step
    points: Callable[[dict], list[dict[str, str]]]

    def paths(self, block: dict) -> list[str]:
        return [self.step.path(p) for p in self.points(block)]


@dataclass(frozen=True, eq=False)
class Family:
    """An experiment family: config block ``name``, rule-name ``prefix``, report ``title``, its steps, the
    step whose CSV tables the figures read (``summary``), the module holding the
    figure functions (``figures``, relative to ``package``; see memgen.figures) and the
    regular expressions its wildcards match (``constraints``)."""

    name: str
    prefix: str  # of its rule names (ts_train), and of its figure rule (ts_figure)
    title: str
    package: str
    steps: tuple[Step, ...]
    summary: Step
    check: Callable[[dict], list[str]]
    figures: str = "figures"
    constraints: Mapping[str, str] = field(default_factory=dict)  # wildcard -> regex, in its rules

    def __post_init__(self):
        seen = set()
        for step in self.steps:
            if step.name in seen:
                raise MemgenError(f"family {self.name}: two steps are named {step.name}")
            seen.add(step.name)
            object.__setattr__(step, "family", self.name)
            object.__setattr__(step, "package", self.package)
            for name, source in step.inputs.items():  # a single input's path needs only the job's wildcards
                one = single(source)
                fixed = set(source.fixed) if isinstance(source, At) else set()
                if one is not None and not set(one[0].wildcards) <= set(step.wildcards) | fixed:
                    raise MemgenError(f"step {step.name}: input {name} ({one[0].name}) needs wildcards "
                                      f"{one[0].wildcards}, the step has {step.wildcards}")
        if self.summary not in self.steps:
            raise MemgenError(f"family {self.name}: its summary step is not one of its steps")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise MemgenError(f"family {self.name}: no step {name!r}")

    @property
    def figure_module(self) -> str:
        return f"{self.package}.{self.figures}"


def job_params(step: Step, block: dict, wildcards: Mapping[str, str]) -> dict:
    """The params of ``step``'s job at ``wildcards``: its own, plus under each
    single-file input's name the params of the job that produced that input."""
    own = dict(step.params(block, wildcards))
    for name, source in step.inputs.items():
        one = single(source)
        if one is not None:
            if name in own:
                raise MemgenError(f"step {step.name}: its params already hold a key named like input {name!r}")
            producer, at = one
            own[name] = job_params(producer, block, at(wildcards))
    return own


def input_paths(step: Step, block: dict, wildcards: Mapping[str, str]) -> dict[str, str | list[str]]:
    """Input name -> path (single) or list of paths (:class:`Each`) at ``wildcards``."""
    return {name: source.paths(block) if isinstance(source, Each) else source.path(wildcards)
            for name, source in step.inputs.items()}


# ---------------------------------------------------------------- running a step

CUDA_HINT = ("install a CUDA build of torch (`make venv GPU=cu124`, see the README's \"Torch build\"), "
             "or set device: cpu and resources.gpu: 0")


def resolve_device(device: str = "auto") -> str:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` -> the device a step computes
    on. ``cuda`` without a CUDA device stops with what to do: a job that asked for a
    GPU never runs on the CPU silently."""
    if device not in ("auto", "cpu", "cuda"):
        raise MemgenError(f"--device: unknown '{device}'; allowed: auto, cpu, cuda")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    raise MemgenError(f"--device cuda: no CUDA device is available to this job (torch {torch.__version__}, "
                      f"{build}); {CUDA_HINT}")



@dataclass
class Job:
    """One run of a step: what its run function receives (module doc)."""

    step: Step
    inputs: dict[str, Path | list[Path]]
    output: Path | dict[str, Path]
    params: dict
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    progress: str | None = None
    resume_every_s: float = 300.0

    @property
    def resume_path(self) -> Path:
        """Where a resumable step keeps its resume point (next to its output)."""
        return Path(f"{self.output}.resume")

    def resume_point(self):
        """A :class:`memgen.resume.ResumePoint` for this job's long loop (a context
        manager; inactive unless the step is declared ``resumable``)."""
        from memgen.resume import ResumePoint

        return ResumePoint(self.resume_path if self.step.resumable else None, self.params, self.resume_every_s,
                           self.progress)

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def path(self, name: str) -> Path:
        return self.inputs[name]  # type: ignore[return-value]

    def read(self, name: str, keys=None, optional: tuple[str, ...] = ()):
        """Input ``name`` (a single file) with the datasets ``keys`` (default: all its
        producer declares), checked: writer step, shapes, and that the file was made
        by exactly ``params[name]``."""
        from memgen import h5io

        one = single(self.step.inputs[name])
        if one is None:
            raise MemgenError(f"step {self.step.name}: input {name!r} is a list; use read_each")
        return h5io.read(self.inputs[name], _shapes(one[0], keys), step=one[0].name,
                         expect_params=self.params[name], optional=optional)

    def read_each(self, name: str, keys=None, optional: tuple[str, ...] = ()):
        """The files of a list input, one at a time (a generator), read and checked like
        :meth:`read`: writer step and shapes (their params are their own)."""
        paths = self.inputs[name] if isinstance(self.inputs[name], list) else [self.inputs[name]]
        return (self.read_path(name, p, keys, optional) for p in paths)

    def read_path(self, name: str, path, keys=None, optional: tuple[str, ...] = ()):
        """One file ``path`` of the list input ``name``, checked as in :meth:`read_each`."""
        from memgen import h5io

        producer = producer_of(self.step.inputs[name])
        return h5io.read(path, _shapes(producer, keys), step=producer.name, optional=optional)

    def write(self, arrays: Mapping[str, Any], *, seed: int | None = None, attrs: Mapping[str, Any] | None = None):
        """Write the step's HDF5 output: exactly the declared datasets (shapes checked)
        and attributes, the provenance (step, params, code hash, seed) and the device."""
        from memgen import h5io

        step = self.step
        declared = step.datasets
        missing, extra = set(declared) - set(arrays), set(arrays) - set(declared)
        if missing or extra:
            raise MemgenError(f"step {step.name}: writes {sorted(arrays)}; its declaration says {sorted(declared)}"
                              f" (missing {sorted(missing)}, undeclared {sorted(extra)})")
        attrs = dict(attrs or {})
        absent = set(step.attrs) - set(attrs)
        if absent or set(attrs) - set(step.attrs):
            raise MemgenError(f"step {step.name}: attributes {sorted(attrs)}; declared {sorted(step.attrs)}")
        h5io.check_shapes(self.output, {k: h5io.shape_of(v) for k, v in arrays.items()}, declared)
        return h5io.write(self.output, arrays, step=step.name, params=self.params, seed=seed,
                          code_sha256=step.code_hash(), attrs=attrs, device=self.device)

    def write_csv(self, name: str, df) -> None:
        """Write table ``name`` of a CSV step (atomically, full precision)."""
        from memgen.h5io import write_csv

        write_csv(df, self.output[name])  # type: ignore[index]


def producer_of(source) -> Step:
    """The step that writes an input (:class:`Step`, :class:`At` or :class:`Each`)."""
    return source if isinstance(source, Step) else source.step


def _shapes(step: Step, keys) -> dict:
    declared = step.datasets
    if keys is None:
        return declared
    unknown = [k for k in keys if k not in declared]
    if unknown:
        raise MemgenError(f"step {step.name} writes no dataset {', '.join(unknown)}; it writes {sorted(declared)}")
    return {k: declared[k] for k in keys}
