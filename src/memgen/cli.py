"""``python -m memgen STEP ...``: argument parsing only; every step is library code.

Steps that turn HDF5 inputs into one HDF5 output share one calling convention::

    python -m memgen train --input dataset=data/datasets/x.h5 --input init=data/init/y.h5 \\
        --output data/runs/z.h5 --params '{"alpha": 1.0, ...}' [--device auto] [--threads 1]

``--params`` is the JSON the workflow builds from the config (see memgen.experiments);
it is stored verbatim in the output's provenance. Other commands: ``validate`` (check a
config), ``summary``, ``figure``, ``code-hash``, ``plan`` (jobs and hours of a config).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memgen import MemgenError


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MemgenError(f"{flag} {item!r}: expected NAME=PATH")
        out[name] = Path(path)
    return out


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _run_step(args) -> None:
    from memgen.steps import STEPS

    fn, needed, _ = STEPS[args.command]
    inputs = _pairs(args.input, "--input")
    missing = [n for n in needed if n not in inputs]
    if missing:
        raise MemgenError(f"{args.command}: missing --input {', '.join(m + '=PATH' for m in missing)}")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise MemgenError(f"--params: not valid JSON ({exc})") from None
    _threads(args.threads)
    from memgen.training import install_sigterm_handler

    install_sigterm_handler()  # SIGTERM (SLURM preemption / time limit): save a resume point, exit 143
    output = Path(args.output)
    # progress lines of the step's long loops (memgen.progress) go to its log, labelled by step and output
    fn(inputs, output, params, device=args.device, resume_every_s=args.resume_every_s,
       progress=f"{args.command} {output.stem}")


def _family(name: str):
    import importlib

    try:
        return importlib.import_module(f"memgen.experiments.{name}")
    except ModuleNotFoundError:
        raise MemgenError(f"unknown experiment family '{name}'") from None


def _groups(values: list[list[str]] | None, flag: str) -> dict[str, list[Path]]:
    """``--input NAME PATH [PATH ...]`` (repeatable) -> {NAME: [paths]}."""
    out: dict[str, list[Path]] = {}
    for group in values or []:
        if not group:
            raise MemgenError(f"{flag}: expected NAME PATH [PATH ...]")
        out.setdefault(group[0], []).extend(Path(p) for p in group[1:])
    return out


def _summary(args) -> None:
    outputs = {k: v for k, v in _pairs(args.output, "--output").items()}
    _family(args.family).summarize(_groups(args.input, "--input"), outputs)


def _figure(args) -> None:
    from memgen.figures import draw

    draw(args.family, args.name, _pairs(args.input, "--input"), args.output, json.loads(args.options or "{}"))


def _validate(args) -> None:
    from memgen import config

    config.load(args.configfile, args.schema) if args.schema else config.load(args.configfile)
    print(f"{args.configfile}: valid")


def _code_hash(args) -> None:
    from memgen.provenance import code_hash

    print(code_hash(args.step))


def _plan(args) -> None:
    from memgen import config, plan

    cfg = config.load(args.configfile)
    unit, overhead = plan.UNIT, plan.OVERHEAD
    if args.calibrate:
        unit, overhead, used = plan.calibrate(Path(args.calibrate))
        print(f"calibrated from {args.calibrate}: overhead {overhead:.3g} s, samples {used or 'none'}")
    print(plan.report(cfg, name=args.configfile, steps=args.steps, gpu_speedup=args.gpu_speedup,
                      unit=unit, overhead=overhead))


# Commands that need neither torch nor the step registry: a figure or summary job does
# not pay the ~3 s of importing torch.
LIGHT_COMMANDS = ("summary", "figure", "validate", "plan", "code-hash")


def build_parser(with_steps: bool = True) -> argparse.ArgumentParser:
    STEPS = {}
    if with_steps:
        from memgen.steps import STEPS

    parser = argparse.ArgumentParser(prog="python -m memgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, needed, help_) in STEPS.items():
        p = sub.add_parser(name, help=help_, description=f"{help_}. Inputs: {', '.join(needed) or 'none'}.")
        p.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
        p.add_argument("--output", required=True, metavar="PATH")
        p.add_argument("--params", required=True, metavar="JSON")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--resume-every-s", type=float, default=300.0,
                       help="seconds between resumable checkpoints of long runs")
        p.set_defaults(func=_run_step)

    p = sub.add_parser("summary", help="tidy CSV tables of a family's runs")
    p.add_argument("family")
    p.add_argument("--input", nargs="+", action="append", metavar=("NAME", "PATH"),
                   help="a named group of input files (repeatable)")
    p.add_argument("--output", action="append", default=[], metavar="NAME=PATH")
    p.set_defaults(func=_summary)

    p = sub.add_parser("figure", help="draw one figure from summary CSVs")
    p.add_argument("family")
    p.add_argument("name")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--output", nargs="+", required=True, help="one path per format (.pdf, .png, .svg)")
    p.add_argument("--options", default="{}", metavar="JSON")
    p.set_defaults(func=_figure)

    p = sub.add_parser("validate", help="validate a config file against the schema")
    p.add_argument("--configfile", required=True)
    p.add_argument("--schema", default=None)
    p.set_defaults(func=_validate)

    p = sub.add_parser("plan", help="jobs per rule and estimated CPU / GPU hours of a config (runs nothing)",
                       description="Jobs per rule and estimated CPU / GPU hours; the cost model is in memgen.plan.")
    p.add_argument("--configfile", required=True)
    p.add_argument("--steps", type=int, default=100_000, help="gradient-flow steps assumed per run")
    p.add_argument("--gpu-speedup", type=float, default=1.0,
                   help="speed of a heavy job on its GPU relative to one CPU thread (measure it)")
    p.add_argument("--calibrate", metavar="DIR", default=None,
                   help="fit the per-unit costs to DIR/logs/benchmark + DIR/data of an earlier run")
    p.set_defaults(func=_plan)

    p = sub.add_parser("code-hash", help="hash of the library code behind a step")
    p.add_argument("step")
    p.set_defaults(func=_code_hash)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(with_steps=not (argv and argv[0] in LIGHT_COMMANDS)).parse_args(argv)
    try:
        args.func(args)
    except MemgenError as exc:
        print(f"memgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if getattr(exc, "message", None):  # memgen.training.Terminated
            print(f"memgen {args.command}: {exc.message}", file=sys.stderr, flush=True)
        raise
    return 0
