"""The SLURM profile and the cluster-facing pieces of the workflow.

- GPU tags: in a dry run of config/paper.yaml (resources.gpu = 1) every heavy rule
  (training, Gram matrices, frozen-kernel runs) carries gpu=1 and no light rule carries
  a gpu resource. Uses profiles/slurm when the executor plugin is installed (a dry run
  contacts no SLURM daemon), else profiles/default: the tags come from the workflow.
- every job of that dry run (resources as Snakemake merged them) through the plugin's
  own sbatch builder: GPU jobs --gpus + --cpus-per-gpu, others --cpus-per-task = threads.
- `python -m memgen plan` counts the same jobs per rule as the dry run, every family,
  for config/test.yaml and config/paper.yaml; each family's HEAVY_RULES (plan's GPU
  hint) are exactly its rules that carry gpu=1 in the paper dry run.
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
from slurm.check_jobs import logged_jobs  # (also run by tests/slurm/run_local_slurm.sh)

HAS_PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
HEAVY = {"ts_train", "ts_ntk_init", "ts_ntk_final", "ts_frozen"}
LIGHT = {"ts_dataset", "ts_init", "ts_summary", "ts_figure"}
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


def _job_stats(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory) -> str:
    work = _copy_workflow(tmp_path_factory.mktemp("paper"))
    # --cores 64: a dry run caps threads at --cores (a cluster run does not)
    return _dry_run(work, "--configfile", "config/paper.yaml", "--cores", "64")


@pytest.fixture(scope="module")
def test_dry_run(tmp_path_factory) -> str:
    work = _copy_workflow(tmp_path_factory.mktemp("test"))
    return _dry_run(work, "--configfile", "config/test.yaml")


def test_gpu_tags_on_heavy_rules_only(paper_dry_run):
    res = _resources_by_rule(paper_dry_run)
    assert HEAVY | LIGHT <= set(res), sorted(res)
    for rule in HEAVY:
        for line in res[rule]:
            assert re.search(r"\bgpu=1\b", line) and re.search(r"\bcpus_per_gpu=\d+", line), (rule, line)
    for rule in LIGHT:
        for line in res[rule]:
            assert "gpu" not in line, (rule, line)


@pytest.mark.skipif(not HAS_PLUGIN, reason="snakemake-executor-plugin-slurm not installed")
def test_paper_jobs_reach_sbatch_as_declared(paper_dry_run):
    """Every job of the paper dry run (resources merged by Snakemake itself) through the
    plugin's submit-command builder: GPU jobs --gpus + --cpus-per-gpu, others
    --cpus-per-task = threads; memory and time limit as declared."""
    from test_slurm_submit import sbatch_flags

    jobs = [(j.rule, j.threads, j.resources) for j in logged_jobs(paper_dry_run) if not j.local]
    gpu_rules = {rule for rule, _, res in jobs if res.get("gpu")}
    assert HEAVY <= gpu_rules and not LIGHT & gpu_rules, sorted(gpu_rules)
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


@pytest.mark.parametrize("name", ["paper", "test"])
def test_plan_counts_the_dry_runs_jobs(name, request, tmp_path, monkeypatch):
    from memgen import config, plan

    dry_run = request.getfixturevalue(f"{name}_dry_run")
    cfg = config.load(ROOT / "config" / f"{name}.yaml")
    # kernels' cifar.enabled: auto looks for the batches relative to the working
    # directory; the dry run's copy of the workflow has no data/, nor has tmp_path
    monkeypatch.chdir(tmp_path)
    assert len(cfg["families"]) == 4 and not plan.unmodelled(cfg)
    counted = {j.rule: j.count for j in plan.jobs_of(cfg)}
    stats = {r: n for r, n in _job_stats(dry_run).items() if r != "all"}
    assert stats == counted


def test_plan_heavy_rules_are_the_gpu_tagged_ones(paper_dry_run, tmp_path, monkeypatch):
    import importlib

    from memgen import config

    cfg = config.load(ROOT / "config" / "paper.yaml")
    monkeypatch.chdir(tmp_path)
    res = _resources_by_rule(paper_dry_run)
    for family in ("kernels", "double_descent", "curvature"):
        module = importlib.import_module(f"memgen.experiments.{family}")
        rules = module.plan_jobs(cfg[family])
        tagged = {r for r in rules if all(re.search(r"\bgpu=1\b", line) for line in res[r])}
        assert tagged == set(module.HEAVY_RULES), family


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
