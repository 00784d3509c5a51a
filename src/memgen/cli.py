"""``python -m memgen STEP ...``: argument parsing only; every step is library code.

One command per declared step (memgen.families: ``ts_train``, ``kn_accuracy``, ...),
all with the same calling convention::

    python -m memgen ts_train --input dataset data/datasets/x.h5 --input init data/init/y.h5 \\
        --output data/runs/z.h5 --params '{"alpha": 1.0, ...}' [--device auto] [--threads 1]

(``--input NAME PATH [PATH ...]`` once per input, several paths for a list input;
``--output NAME=PATH`` per table for a step with several outputs.) ``--params`` is the
JSON the workflow builds from the config (memgen.declare.job_params); it is stored
verbatim in the output's provenance. Other commands: ``figure``, ``validate`` (check a
config), ``code-hash``, ``plan`` (jobs and hours of a config), ``claims`` (the
reproduction scorecard from the summaries; ``--strict``: exit 1 when a claim fails).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from memgen import MemgenError

OUTPUT_NEUTRAL = True  # memgen.provenance: parsing arguments cannot change what a step computes
TRACE_ENV = "MEMGEN_TRACE_CODE"  # a folder: record the memgen functions each step runs (tests)


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MemgenError(f"{flag} {item!r}: expected NAME=PATH")
        out[name] = Path(path)
    return out


def _groups(values: list[list[str]] | None, flag: str) -> dict[str, list[Path]]:
    """``--input NAME PATH [PATH ...]`` (repeatable) -> {NAME: [paths]}."""
    out: dict[str, list[Path]] = {}
    for group in values or []:
        out.setdefault(group[0], []).extend(Path(p) for p in group[1:])
    return out


def _job(step, args):
    from memgen.declare import Each, Job, producer_of, resolve_device

    given = _groups(args.input, "--input")
    unknown = sorted(set(given) - set(step.inputs))
    if unknown:
        raise MemgenError(f"{step.name}: unknown --input {', '.join(unknown)}; its inputs: "
                          f"{', '.join(step.inputs) or 'none'}")
    inputs = {}
    for name, source in step.inputs.items():
        paths = given.get(name)
        if paths is None or (not isinstance(source, Each) and len(paths) != 1):
            what = "PATH [PATH ...]" if isinstance(source, Each) else "PATH"
            raise MemgenError(f"{step.name}: needs --input {name} {what} (one file of step {producer_of(source).name})")
        inputs[name] = paths if isinstance(source, Each) else paths[0]
    given_out = [o for group in args.output for o in group]
    if isinstance(step.output, str):
        if len(given_out) != 1 or "=" in given_out[0]:
            raise MemgenError(f"{step.name}: expected one --output PATH, got {given_out}")
        output = Path(given_out[0])
    else:
        output = _pairs(given_out, "--output")
        if set(output) != set(step.output):
            raise MemgenError(f"{step.name}: expected --output NAME=PATH for each of {', '.join(step.output)}")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise MemgenError(f"--params: not valid JSON ({exc})") from None
    if step.device and args.device != "cpu":
        from memgen import gpu_slots

        slots = gpu_slots.from_env()  # a local machine with several GPUs: one of its own
        if slots is not None:
            gpu_slots.acquire_gpu(*slots)  # (before torch sees CUDA_VISIBLE_DEVICES)
    device = resolve_device(args.device) if step.device else "cpu"
    stem = output.stem if isinstance(output, Path) else step.name
    return Job(step, inputs, output, params, device=device, progress=f"{step.name} {stem}",
               resume_every_s=args.resume_every_s)


def _run_step(args) -> None:
    from memgen.families import step

    declared = step(args.command)
    job = _job(declared, args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from memgen.resume import install_sigterm_handler

    install_sigterm_handler()  # SIGTERM (SLURM preemption / time limit): save a resume point, exit 143
    fn = declared.function()
    trace = os.environ.get(TRACE_ENV)
    if trace:
        from memgen.codetrace import traced

        with traced(Path(trace) / f"{declared.name}.{os.getpid()}.json"):
            fn(job)
    else:
        fn(job)


def _figure(args) -> None:
    from memgen.figures import draw

    draw(args.family, args.name, _pairs(args.input, "--input"), args.output, json.loads(args.options or "{}"))


def _validate(args) -> None:
    from memgen import config

    config.load(args.configfile, args.schema) if args.schema else config.load(args.configfile)
    print(f"{args.configfile}: valid")


def _code_hash(args) -> None:
    from memgen.families import step
    from memgen.provenance import code_closure, step_hash

    s = step(args.step)
    print(step_hash(s))
    if args.closure:
        names, modules = code_closure(*s.target())
        print(f"{s.target()[0]}: {', '.join(names)}")
        for m in sorted(modules):
            print(m)


def _claims(args) -> None:
    from memgen import claims
    from memgen.families import registry

    if args.families:
        families = args.families
    elif args.configfile:
        from memgen import config

        families = config.load(args.configfile)["families"]
    else:
        families = list(registry())
    rows = [row for f in families for row in claims.evaluate(f, args.root)]
    if args.output:
        claims.write_csv(rows, args.output)
    print(claims.scorecard(rows), flush=True)
    failed = sum(r["verdict"] == claims.NOT_REPRODUCED for r in rows)
    if args.strict and failed:
        print(f"memgen claims: {failed} claim(s) not reproduced (--strict)", file=sys.stderr)
        raise SystemExit(1)


def _plan(args) -> None:
    from memgen import plan

    print(plan.main(args))


def build_parser() -> argparse.ArgumentParser:
    from memgen.families import steps

    parser = argparse.ArgumentParser(prog="python -m memgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, st in steps().items():
        text = f"{st.family}: {st.help()}"
        p = sub.add_parser(name, help=text, description=f"{text} Inputs: {', '.join(st.inputs) or 'none'}.")
        p.add_argument("--input", nargs="+", action="append", metavar=("NAME", "PATH"),
                       help="an input file (several for a list input); repeat per input")
        p.add_argument("--output", nargs="+", action="append", required=True, metavar="PATH",
                       help="the output file, or NAME=PATH per table of a step with several")
        p.add_argument("--params", required=True, metavar="JSON")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--resume-every-s", type=float, default=300.0,
                       help="seconds between resume points of resumable steps")
        p.set_defaults(func=_run_step)

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
                       description="Jobs per rule (from Snakemake's dry run) and estimated CPU / GPU hours; "
                                   "the cost model is in memgen.plan.")
    p.add_argument("--configfile", required=True)
    p.add_argument("--steps", type=int, default=None,
                   help="accepted gradient-flow steps assumed per run, for every flow.method (default: "
                        "memgen.plan.DEFAULT_STEPS per kind and method, or the --calibrate run's medians)")
    p.add_argument("--gpu-speedup", type=float, default=1.0,
                   help="speed of a device job on its GPU relative to one CPU thread (measure it)")
    p.add_argument("--calibrate", metavar="DIR", default=None,
                   help="fit the per-unit costs to DIR/logs/benchmark + DIR/data of an earlier run")
    p.set_defaults(func=_plan)

    p = sub.add_parser("claims", help="the reproduction scorecard: every paper claim checked from the summaries",
                       description="Check every claim the families declare (memgen.claims) from the summary "
                                   "tables under --root and print one line per claim.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--families", nargs="+", metavar="FAMILY", help="these families (default: all)")
    g.add_argument("--configfile", help="the families of this config")
    p.add_argument("--root", default=".", help="the directory holding data/summary/ (default: .)")
    p.add_argument("--output", metavar="CSV", help="also write the scorecard as CSV (the workflow's claims.csv)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a claim is not reproduced")
    p.set_defaults(func=_claims)

    p = sub.add_parser("code-hash", help="hash of the code behind a step")
    p.add_argument("step")
    p.add_argument("--closure", action="store_true", help="also list the code it covers")
    p.set_defaults(func=_code_hash)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except MemgenError as exc:  # a broken declaration: say so, not a traceback
        print(f"memgen: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except MemgenError as exc:
        print(f"memgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if getattr(exc, "message", None):  # memgen.resume.Terminated
            print(f"memgen {args.command}: {exc.message}", file=sys.stderr, flush=True)
        raise
    return 0
