"""The SLURM profile and the cluster-facing pieces of the workflow.

- GPU requests: in a dry run of config/paper.yaml (resources.gpu = 1), in every family,
  exactly the jobs of the steps that compute on the device (their declaration's
  ``device``) carry gpu=1 (and cpus_per_gpu); every other job carries no gpu resource,
  and none does with config/test.yaml. Uses profiles/slurm when the executor plugin is
  installed (a dry run contacts no SLURM daemon), else profiles/default: the requests
  come from the workflow.
- `python -m memgen plan` prints jobs and hours (its jobs are the dry run's).
- every job of that dry run (resources as Snakemake merged them) through the plugin's
  own sbatch builder: GPU jobs --gpus + --cpus-per-gpu, others --cpus-per-task = threads.
- profiles/slurm takes partition / account from the environment or the site file.
- The real thing, on a one-node SLURM started on this machine
  (tests/slurm/run_local_slurm.sh: needs root, installs SLURM packages): only with
  MEMGEN_SLURM_TEST=1.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, copy_workflow
from memgen.claims import RULE as CLAIMS_RULE
from slurm.check_jobs import logged_jobs  # (also run by tests/slurm/run_local_slurm.sh)

HAS_PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("MEMGEN_SLURM_", "SNAKEMAKE_PROFILE"))}

pytestmark = pytest.mark.e2e


def _copy_workflow(dest: Path) -> Path:
    copy_workflow(dest)
    (dest / "profiles" / "slurm" / "site.env").unlink(missing_ok=True)
    return dest


def _dry_run(workdir: Path, *args: str, env: dict | None = None) -> str:
    # --workflow-profile none: else profiles/default is loaded too (Snakemake's implicit
    # workflow profile) and overrides profiles/slurm per key
    profile = ["profiles/slurm", "--workflow-profile", "none"] if HAS_PLUGIN else ["profiles/default"]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", *profile, *args], cwd=workdir,
                          capture_output=True, text=True, env={**CLEAN_ENV, **(env or {})}, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _resources_by_rule(out: str) -> dict[str, list[str]]:
    """rule -> the 'resources:' lines of its jobs in a dry run."""
    res: dict[str, list[str]] = {}
    for block in re.split(r"^(?=[ \t]*(?:local)?rule \w+:)", out, flags=re.M):  # indented in group jobs
        m = re.match(r"\s*(?:local)?rule (\w+):", block)
        if m:
            r = re.search(r"^\s+resources: (.*)$", block, re.M)
            res.setdefault(m.group(1), []).append(r.group(1) if r else "")
    return res


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory) -> str:
    work = _copy_workflow(tmp_path_factory.mktemp("paper"))
    # --cores 64: a dry run caps threads at --cores (a cluster run does not)
    return _dry_run(work, "--configfile", "config/paper.yaml", "--cores", "64")


@pytest.fixture(scope="module")
def test_dry_run(tmp_path_factory) -> str:
    work = _copy_workflow(tmp_path_factory.mktemp("test"))
    return _dry_run(work, "--configfile", "config/test.yaml")


def _gpu_jobs(dry_run: str) -> dict[str, dict[str, set]]:
    """family -> {"gpu": rules whose jobs request a GPU, "cpu": the others}."""
    from memgen.families import registry, steps
    from memgen.plan import parse_dry_run

    family_of = {s.name: s.family for s in steps().values()}
    family_of.update({f"{fam.prefix}_figure": name for name, fam in registry().items()})
    out: dict[str, dict[str, set]] = {}
    for job in parse_dry_run(dry_run):
        if job.rule in ("all", CLAIMS_RULE):  # (the scorecard: one light job over every family)
            assert job.rule == "all" or "gpu" not in job.resources, job.resources
            continue
        kind = "gpu" if "gpu" in job.resources else "cpu"
        if kind == "gpu":
            assert job.resources["gpu"] == "1" and int(job.resources["cpus_per_gpu"]) >= 1, (job.rule, job.resources)
        out.setdefault(family_of[job.rule], {"gpu": set(), "cpu": set()})[kind].add(job.rule)
    return out


@pytest.mark.skipif(not HAS_PLUGIN, reason="snakemake-executor-plugin-slurm not installed")
def test_paper_jobs_reach_sbatch_as_declared(paper_dry_run):
    """Every job of the paper dry run (resources merged by Snakemake itself) through the
    plugin's submit-command builder: GPU jobs --gpus + --cpus-per-gpu, others
    --cpus-per-task = threads; memory and time limit as declared."""
    from test_slurm_submit import sbatch_flags

    jobs = [(j.rule, j.threads, j.resources) for j in logged_jobs(paper_dry_run) if not j.local]
    assert {rule for rule, _, res in jobs if res.get("gpu")}  # (which ones: the test above)
    for rule, threads, res in jobs:
        flags = sbatch_flags(res, threads)
        cpus = {k: v for k, v in flags.items() if k.startswith("--cpus-per-")}
        if res.get("gpu"):
            assert flags.get("--gpus") == str(res["gpu"]), (rule, flags)
            assert cpus == {"--cpus-per-gpu": str(res["cpus_per_gpu"])}, (rule, flags)
            assert res["gpu"] * res["cpus_per_gpu"] >= threads, (rule, threads, res)
        else:
            assert cpus == {"--cpus-per-task": str(threads)}, (rule, flags)
            assert "--gpus" not in flags and "--gres" not in flags, (rule, flags)
        assert flags.get("--mem") == str(res["mem_mb"]) and flags.get("-t") == str(res["runtime"]), (rule, flags)


def test_gpus_requested_exactly_by_the_steps_that_compute_on_the_device(paper_dry_run):
    from memgen.families import registry

    jobs = _gpu_jobs(paper_dry_run)
    assert set(jobs) == set(registry())
    for name, fam in registry().items():
        device = {s.name for s in fam.steps if s.device}
        assert jobs[name]["gpu"] == device, name
        assert not jobs[name]["gpu"] & jobs[name]["cpu"], name  # a rule asks for a GPU on every job or on none
    assert {"dd_linear", "dd_two_layer", "dd_modelwise", "cv_train", "cv_loo"} <= set().union(
        *(j["cpu"] for j in jobs.values()))  # CPU-only steps never hold a GPU
    assert {"ts_train", "ts_ntk_final", "kn_accuracy"} <= set().union(*(j["gpu"] for j in jobs.values()))


def test_no_gpu_requests_without_resources_gpu(test_dry_run):
    assert not set().union(*(j["gpu"] for j in _gpu_jobs(test_dry_run).values()))


def test_plan_command_prints_jobs_and_hours(capsys):
    from memgen import cli

    assert cli.main(["plan", "--configfile", str(ROOT / "config" / "paper.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ts_train\s+255\s+1 GPU", out, re.M), out
    assert "GPU hours" in out and "CPU core-hours" in out


@pytest.mark.skipif(not HAS_PLUGIN, reason="snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
def test_profile_takes_site_settings_from_env_and_site_file(tmp_path):
    (tmp_path / "w").mkdir()
    work = _copy_workflow(tmp_path / "w")
    site = tmp_path / "site.env"
    site.write_text("# comment\nexport MEMGEN_SLURM_ACCOUNT='acct_from_file'\nMEMGEN_SLURM_PARTITION=from_file\n")
    out = _dry_run(work, "--configfile", "config/test.yaml",
                   env={"MEMGEN_SLURM_SITE": str(site), "MEMGEN_SLURM_PARTITION": "from_env",
                        "MEMGEN_SLURM_RUNTIME": "17"})
    lines = [line for lines in _resources_by_rule(out).values() for line in lines]
    assert lines and all("slurm_partition=from_env" in s and "slurm_account=acct_from_file" in s
                         and "runtime=17" in s for s in lines), lines[:3]


@pytest.mark.skipif(not HAS_PLUGIN, reason="snakemake-executor-plugin-slurm not installed")
def test_profile_without_site_settings_names_no_partition(paper_dry_run):
    assert "slurm_partition" not in paper_dry_run and "slurm_account" not in paper_dry_run


@pytest.mark.skipif(os.environ.get("MEMGEN_SLURM_TEST") != "1",
                    reason="real SLURM test: set MEMGEN_SLURM_TEST=1 (root; installs slurm-wlm; 10+ min on 2 busy cores)")
def test_local_slurm_end_to_end():
    proc = subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "run_local_slurm.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "PASSED" in out, out[-5000:]
