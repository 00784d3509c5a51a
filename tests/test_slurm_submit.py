"""What profiles/slurm makes the SLURM executor plugin put on the sbatch line.

Rule-like resources (a GPU job, a multi-threaded CPU job, a light job), merged over the
profile's ``default-resources`` the way Snakemake merges them (the rule's value wins),
go through the plugin's own submit-command builder (``get_submit_command`` and
``set_gres_string``, as its ``run_job`` calls them); the CPU, GPU, memory and time flags
must be what docs/cluster.md promises: GPU jobs ``--gpus`` and ``--cpus-per-gpu``, CPU
jobs ``--cpus-per-task`` = their threads. No SLURM daemon is involved (the local-SLURM
test, tests/slurm/run_local_slurm.sh, reads the granted resources back from a real one).
"""

from __future__ import annotations

import os
import re
import shlex
from types import SimpleNamespace

import pytest

from conftest import ROOT

pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"


class _Resources(dict):
    """Snakemake's job resources: ``.get(name)`` and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def profile_default_resources(env: dict | None = None) -> dict:
    """profiles/slurm's ``default-resources``, rendered by yte as Snakemake does, with no
    site settings but ``env`` (run from the repository root: the site file is relative)."""
    import yte

    saved = {k: v for k, v in os.environ.items() if k.startswith("MEMGEN_SLURM_")}
    cwd = os.getcwd()
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update({"MEMGEN_SLURM_SITE": os.devnull, **(env or {})})
        os.chdir(ROOT)
        with open(PROFILE) as fh:
            profile = yte.process_yaml(fh, require_use_yte=True)
    finally:
        os.chdir(cwd)
        for key in [k for k in os.environ if k.startswith("MEMGEN_SLURM_")]:
            del os.environ[key]
        os.environ.update(saved)
    return dict(profile.get("default-resources") or {})


def sbatch_flags(resources: dict, threads: int = 1) -> dict[str, str]:
    """The sbatch options (name -> value; '' for a bare flag) that the installed plugin
    builds for a job with ``threads`` and these (already merged) ``resources``."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources({**resources, "_cores": threads}), threads=threads,
                          is_group=lambda: False)
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "rule_x", "account": "",
              "partition": "", "workdir": ""}
    call = get_submit_command(job, params) + set_gres_string(job)
    words = shlex.split(call)
    assert words[0] == "sbatch", call
    flags: dict[str, str] = {}
    i = 1
    while i < len(words):
        word = words[i]
        if "=" in word and word.startswith("--"):
            name, _, value = word.partition("=")
        elif i + 1 < len(words) and not words[i + 1].startswith("-"):
            name, value = word, words[i + 1]
            i += 1
        else:
            name, value = word, ""
        flags[name] = value
        i += 1
    return flags


def job_flags(rule_resources: dict, threads: int = 1, env: dict | None = None) -> dict[str, str]:
    """sbatch options of a rule's job under profiles/slurm: the rule's resources over the
    profile's default-resources."""
    return sbatch_flags({**profile_default_resources(env), **rule_resources}, threads)


def cpu_flags(flags: dict) -> dict:
    return {k: v for k, v in flags.items() if re.match(r"--cpus-per-(task|gpu)$", k)}


def test_gpu_job_gets_gpus_and_cpus_per_gpu():
    flags = job_flags({"gpu": 1, "cpus_per_gpu": 2, "runtime": 2880, "mem_mb": 16000}, threads=2)
    assert flags.get("--gpus") == "1", flags
    assert cpu_flags(flags) == {"--cpus-per-gpu": "2"}, flags
    assert flags.get("--mem") == "16000" and flags.get("-t") == "2880", flags
    assert "--ntasks" not in flags, flags


def test_gpu_model_goes_into_gpus():
    flags = job_flags({"gpu": 2, "gpu_model": "h100", "cpus_per_gpu": 4}, threads=8)
    assert flags.get("--gpus") == "h100:2" and cpu_flags(flags) == {"--cpus-per-gpu": "4"}, flags


def test_cpu_job_gets_its_threads_as_cpus_per_task():
    flags = job_flags({"gpu": 0}, threads=2)
    assert cpu_flags(flags) == {"--cpus-per-task": "2"}, flags
    assert "--gpus" not in flags and "--gres" not in flags, flags
    assert flags.get("--ntasks") == "1", flags


def test_light_job_gets_one_cpu_and_the_profile_defaults():
    flags = job_flags({})
    assert cpu_flags(flags) == {"--cpus-per-task": "1"}, flags
    assert "--gpus" not in flags and "--gres" not in flags, flags
    assert flags.get("--mem") == "4000" and flags.get("-t") == "60", flags  # the profile's defaults


def test_site_limits_reach_sbatch():
    flags = job_flags({}, env={"MEMGEN_SLURM_RUNTIME": "17", "MEMGEN_SLURM_MEM_MB": "1234",
                               "MEMGEN_SLURM_PARTITION": "p1"})
    assert flags.get("-t") == "17" and flags.get("--mem") == "1234", flags


def test_profile_sets_no_cpu_count_of_its_own():
    """A default cpus_per_task (or cpus_per_gpu) would win over every rule's threads /
    cpus_per_gpu in the plugin (it reads cpus_per_task first)."""
    defaults = profile_default_resources()
    assert not {"cpus_per_task", "cpus_per_gpu", "threads", "gpu", "gres"} & set(defaults), defaults


# ---------------------------------------------------------------- reading grants back
# tests/slurm/check_jobs.py, which run_local_slurm.sh runs after each SLURM run, on the
# log and `scontrol show job -d -o` output of a real run of tests/slurm/resources on the
# one-node test cluster with its fake GPU (tests/slurm/sample/, WorkDir made /WORKDIR).

SAMPLE = ROOT / "tests" / "slurm" / "sample"


def _sample():
    import json
    from pathlib import Path

    from slurm import check_jobs

    log = (SAMPLE / "resources.log").read_text()
    out = (SAMPLE / "scontrol.txt").read_text()
    probes = {int(d["SLURM_JOB_ID"]): d for d in (json.loads(p.read_text()) for p in (SAMPLE / "probe").glob("*.json"))}
    return check_jobs, log, out, probes, Path("/WORKDIR")


def test_check_jobs_accepts_the_real_grants():
    check_jobs, log, out, probes, workdir = _sample()
    granted = check_jobs.parse_scontrol(out, workdir)
    gpu = next(g for g in granted if g["comment"] == "rule_gpu")
    assert (gpu["cpus"], gpu["gpus"], gpu["cpus_per_gpu"], gpu["mem_mb"], gpu["runtime"]) == (2, 1, 2, 700, 7)
    rows, problems = check_jobs.compare(log, granted, probes)
    assert problems == [] and sorted(r[1] for r in rows) == ["cpu", "gpu", "light"]
    assert check_jobs.parse_scontrol(out, workdir / "elsewhere") == []


@pytest.mark.parametrize("field, old, new, what", [
    ("gpu", "NumCPUs=2", "NumCPUs=1", "cpus"),                         # one CPU for a 2-CPU GPU job
    ("gpu", "CpusPerTres=gres:gpu:2", "", "cpus_per_gpu"),             # CPUs asked per task, not per GPU
    ("gpu", "JOB_GRES=gpu:1", "JOB_GRES=(null)", "gpus"),              # no GPU granted
    ("cpu", "TimeLimit=00:11:00", "TimeLimit=01:00:00", "runtime"),
    ("cpu", "mem=600M", "mem=4000M", "mem_mb"),
    ("light", "JobState=COMPLETED", "JobState=FAILED", "state FAILED"),
])
def test_check_jobs_reports_a_difference(field, old, new, what):
    check_jobs, log, out, probes, workdir = _sample()
    lines = [line.replace(old, new) if f"Comment=rule_{field} " in line else line for line in out.splitlines()]
    assert lines != out.splitlines(), old
    rows, problems = check_jobs.compare(log, check_jobs.parse_scontrol("\n".join(lines), workdir), probes)
    assert len(problems) == 1 and f"({field}): " in problems[0] and what in problems[0], problems


def test_check_jobs_reports_a_gpu_job_that_sees_no_gpu():
    check_jobs, log, out, probes, workdir = _sample()
    for p in probes.values():
        p["CUDA_VISIBLE_DEVICES"] = None
    _, problems = check_jobs.compare(log, check_jobs.parse_scontrol(out, workdir), probes)
    assert len(problems) == 1 and "(gpu): CUDA_VISIBLE_DEVICES" in problems[0], problems


def test_check_jobs_group_request_is_max_with_runtimes_added():
    """A group job (profiles/slurm groups ts_train + ts_ntk_final) asks once for both:
    the larger CPUs / memory, the sum of the time limits (Snakemake's group resources)."""
    from slurm import check_jobs

    block = ("[Wed Dec  2 17:54:09 2026] Group job ts_point (jobs in lexicogr. order):\n\n"
             "    [Wed Dec  2 17:54:09 2026]\n    rule ts_ntk_final:\n        jobid: 19\n        threads: 2\n"
             "        resources: mem_mb=1000, runtime=30, gpu=0\n\n"
             "    [Wed Dec  2 17:54:09 2026]\n    rule ts_train:\n        jobid: 11\n"
             "        resources: mem_mb=3000, runtime=45, gpu=0\n"
             "Job d314566f has been submitted with SLURM jobid 32 (log: x).\n")
    jobs = check_jobs.logged_jobs(block)
    assert {j.group for j in jobs} == {"ts_point_ts_ntk_final_ts_train"}
    want = check_jobs.group_requests(jobs)["ts_point_ts_ntk_final_ts_train"]
    assert (want["cpus"], want["mem_mb"], want["runtime"], want["cpus_per_task"]) == (2, 3000, 75, 2)
    line = ("JobId=32 JobState=COMPLETED TimeLimit=01:15:00 NumCPUs=2 CPUs/Task=2 TRES=cpu=2,mem=3000M,node=1 "
            "JOB_GRES=(null) WorkDir=/w Comment=rule_ts_point_ts_ntk_final_ts_train")
    from pathlib import Path

    rows, problems = check_jobs.compare(block, check_jobs.parse_scontrol(line, Path("/w")), {})
    assert problems == [] and rows[0][1] == "ts_point_ts_ntk_final_ts_train"
