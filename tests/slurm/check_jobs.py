"""Compare what SLURM granted each job of a workflow run with what its rule declares.

    check_jobs.py --log RUN.log --workdir DIR [--probes DIR] [--table FILE] [--raw FILE]

RUN.log: the output of `snakemake --profile profiles/slurm ...` in DIR. Its job blocks
give each job's threads and resources as Snakemake computed them (the rule's over the
profile's default-resources), "localrule" marks jobs run outside SLURM, "Group job"
blocks the jobs submitted together, and "Job N has been submitted with SLURM jobid M"
ties Snakemake's jobs to SLURM's.

The granted side comes from `scontrol show job -d -o` (no slurmdbd on the test
cluster, so no sacct; MinJobAge keeps finished jobs listed), for the jobs whose WorkDir
is DIR (--raw: keep that output). Expected per submission, as docs/cluster.md promises:

- CPUs: gpu * cpus_per_gpu for a GPU job, asked as --cpus-per-gpu (and at least its
  threads), else its threads, asked as --cpus-per-task;
- GPUs (the job's allocation, `JOB_GRES=gpu:N`): the rule's gpu, 0 when it has none;
- memory: mem_mb; time limit: runtime (minutes);
- a group job (jobs run one after another in one allocation): the largest CPUs, GPUs
  and memory of its members, the sum of their runtimes (Snakemake's group resources).

--probes DIR: JSON files written by the jobs themselves (tests/slurm/resources/probe.py):
a GPU job must see CUDA_VISIBLE_DEVICES set by SLURM (its fake GPU's index), other jobs none, and
each its granted CPU count in SLURM_CPUS_ON_NODE.

Prints a table (also to --table) and exits 1 on any difference, on a job that did not
complete, on a non-local job that was not submitted, or when no job of DIR is found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoggedJob:
    jobid: str
    rule: str
    threads: int
    resources: dict
    group: str | None  # the plugin's name of the group job it ran in (GROUPID_RULE1_RULE2), or None
    local: bool  # "localrule": run where Snakemake runs, never submitted


def logged_jobs(text: str) -> list[LoggedJob]:
    """Every job block of a Snakemake log or dry run: rule, threads, resources, group."""
    jobs: list[LoggedJob] = []
    group_id, group_jobs = None, []

    def close_group():
        if group_id:  # the plugin names a group job GROUPID_RULE1_RULE2 (rules sorted)
            name = f"{group_id}_{'_'.join(sorted({j.rule for j in group_jobs}))}"
            for job in group_jobs:
                job.group = name

    blocks = re.split(r"^(?=\[[^\]]*\] Group job |[ \t]*(?:local)?rule \w+:)", text, flags=re.M)
    for block in blocks:
        g = re.match(r"\[[^\]]*\] Group job (\S+)", block)
        if g:
            close_group()
            group_id, group_jobs = g.group(1), []
            continue
        m = re.match(r"([ \t]*)(local)?rule (\w+):", block)
        if not m:
            continue
        if not m.group(1) and group_id:  # an unindented job: the group has ended
            close_group()
            group_id, group_jobs = None, []
        jobid = re.search(r"^\s+jobid: (\S+)$", block, re.M)
        t = re.search(r"^\s+threads: (\d+)$", block, re.M)
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        res = {}
        for item in (r.group(1).split(", ") if r else []):
            key, _, value = item.partition("=")
            if value != "<TBD>":
                res[key] = int(value) if value.isdigit() else value
        job = LoggedJob(jobid.group(1) if jobid else "", m.group(3), int(t.group(1)) if t else 1, res, None,
                        bool(m.group(2)))
        jobs.append(job)
        if group_id:
            group_jobs.append(job)
    close_group()
    return jobs


def submitted(text: str) -> dict[int, str]:
    """SLURM job id -> Snakemake job id (a group job's is its uuid), from the run's log."""
    return {int(m.group(2)): m.group(1)
            for m in re.finditer(r"^Job (\S+) has been submitted with SLURM jobid (\d+)", text, re.M)}


def job_request(job: LoggedJob) -> dict:
    gpus = int(job.resources.get("gpu") or 0)
    per_gpu = int(job.resources.get("cpus_per_gpu") or 1) if gpus else None
    return {"cpus": gpus * per_gpu if gpus else job.threads, "gpus": gpus, "mem_mb": job.resources.get("mem_mb"),
            "runtime": job.resources.get("runtime"), "threads": job.threads, "cpus_per_gpu": per_gpu,
            "cpus_per_task": None if gpus else job.threads}


def group_request(members: list[LoggedJob]) -> dict:
    """One allocation for jobs run one after another: max of each, runtimes added."""
    reqs = [job_request(j) for j in members]
    out = {k: max(r[k] for r in reqs) for k in ("cpus", "gpus", "mem_mb", "threads")}
    for k in ("cpus_per_gpu", "cpus_per_task"):
        values = [r[k] for r in reqs if r[k] is not None]
        out[k] = max(values) if values else None
    out["runtime"] = sum(r["runtime"] for r in reqs)
    return out


def group_requests(jobs: list[LoggedJob]) -> dict[str, dict]:
    """Group job name -> its request. Every instance of a group (one per sweep point)
    has one job per member rule; the plugin names them all alike, so all jobs of a
    member rule must declare the same resources."""
    by_group: dict[str, dict[str, list[LoggedJob]]] = {}
    for job in jobs:
        if job.group:
            by_group.setdefault(job.group, {}).setdefault(job.rule, []).append(job)
    out = {}
    for name, by_rule in by_group.items():
        for rule, rule_jobs in by_rule.items():
            if len({json.dumps(job_request(j), sort_keys=True) for j in rule_jobs}) != 1:
                raise SystemExit(f"group {name}: jobs of rule {rule} declare different resources")
        out[name] = group_request([js[0] for js in by_rule.values()])
    return out


def _minutes(limit: str) -> int | None:
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", limit)
    if not m:
        return None
    days, hours, minutes, seconds = (int(x or 0) for x in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def _mb(value: str) -> int | None:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", value or "")
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]
    return round(float(m.group(1)) * scale)


def parse_scontrol(out: str, workdir: Path) -> list[dict]:
    """Jobs of ``scontrol show job -d -o`` output (one line each) whose WorkDir is ``workdir``."""
    jobs = []
    for line in out.splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        if not fields.get("JobId") or Path(fields.get("WorkDir", "")).resolve() != workdir.resolve():
            continue
        tres = dict(item.partition("=")[::2] for item in fields.get("TRES", "").split(",") if "=" in item)
        # the GPUs allocated to the job (JOB_GRES=gpu:1, gpu:a100:2; (null): none) and,
        # while it runs, which ones (-d: GRES=gpu:1(IDX:0); empty once it has ended)
        alloc = re.fullmatch(r"gpu(?::[^:(,]+)?:(\d+)(?:\(.*\))?", fields.get("JOB_GRES", ""))
        idx = re.search(r"\(IDX:([^)]*)\)", fields.get("GRES", ""))
        jobs.append({
            "id": int(fields["JobId"]), "state": fields.get("JobState"), "comment": fields.get("Comment", ""),
            "cpus": int(fields.get("NumCPUs", 0)), "gpus": int(alloc.group(1)) if alloc else 0,
            "gpu_idx": idx.group(1) if idx else None, "mem_mb": _mb(tres.get("mem", "")),
            "runtime": _minutes(fields.get("TimeLimit", "")),
            # how the CPUs were asked for: --cpus-per-gpu (CpusPerTres=gres:gpu:N) or --cpus-per-task
            "cpus_per_gpu": int(m.group(1)) if (m := re.fullmatch(r"gres:gpu:(\d+)", fields.get("CpusPerTres", ""))) else None,
            "cpus_per_task": int(fields["CPUs/Task"]) if fields.get("CPUs/Task", "").isdigit() else None,
        })
    return sorted(jobs, key=lambda j: j["id"])


def _comment_name(comment: str) -> str:
    """The plugin's job comment is rule_NAME or rule_NAME_wildcards_VALUES."""
    name = comment[len("rule_"):] if comment.startswith("rule_") else comment
    return name.split("_wildcards_")[0]


def compare(log: str, granted: list[dict], probes: dict[int, dict]) -> tuple[list[list[str]], list[str]]:
    jobs = logged_jobs(log)
    by_id = {j.jobid: j for j in jobs if not j.group}
    groups = group_requests(jobs)
    slurm_to_job = submitted(log)
    rows, problems = [], []
    for g in granted:
        job = by_id.get(slurm_to_job.get(g["id"], ""))
        if job is not None:
            name, want = job.rule, job_request(job)
        elif _comment_name(g["comment"]) in groups:
            name = _comment_name(g["comment"])
            want = groups[name]
        else:
            problems.append(f"SLURM job {g['id']} ({g['comment']}): no job of the run's log")
            continue
        bad = [k for k in ("cpus", "gpus", "mem_mb", "runtime") if want[k] != g[k]]
        if want["gpus"] and want["cpus_per_gpu"] != g["cpus_per_gpu"]:
            bad.append("cpus_per_gpu")
        if not want["gpus"] and (g["cpus_per_gpu"] is not None or want["cpus_per_task"] != g["cpus_per_task"]):
            bad.append("cpus_per_task")
        if g["cpus"] < want["threads"]:
            bad.append("threads")
        if g["state"] != "COMPLETED":
            bad.append(f"state {g['state']}")
        probe = probes.get(g["id"])
        seen = "-"
        if probe is not None:
            cuda = probe.get("CUDA_VISIBLE_DEVICES")
            seen = f"CUDA_VISIBLE_DEVICES={cuda}, SLURM_CPUS_ON_NODE={probe.get('SLURM_CPUS_ON_NODE')}"
            # a GPU job sees its device(s) (the IDX SLURM gave, when scontrol still shows
            # it), any other job none
            if bool(cuda) != bool(want["gpus"]) or (g["gpu_idx"] and cuda != g["gpu_idx"]):
                bad.append("CUDA_VISIBLE_DEVICES")
            if str(probe.get("SLURM_CPUS_ON_NODE")) != str(g["cpus"]):
                bad.append("SLURM_CPUS_ON_NODE")
        gpus = f"{want['gpus']} / {g['gpus']}" + (f" (IDX {g['gpu_idx']})" if g["gpu_idx"] else "")
        how = f"--cpus-per-gpu={g['cpus_per_gpu']}" if g["cpus_per_gpu"] else f"--cpus-per-task={g['cpus_per_task']}"
        rows.append([str(g["id"]), name, str(want["threads"]), f"{want['cpus']} / {g['cpus']} ({how})", gpus,
                     f"{want['mem_mb']} / {g['mem_mb']}", f"{want['runtime']} / {g['runtime']}", seen,
                     "ok" if not bad else "DIFFERS: " + ", ".join(bad)])
        if bad:
            problems.append(f"SLURM job {g['id']} ({name}): {', '.join(bad)} differ (declared {want}, granted {g})")
    sent = set(slurm_to_job.values())
    for job in jobs:
        if not job.local and not job.group and job.jobid not in sent:
            problems.append(f"job {job.jobid} (rule {job.rule}) is not a localrule but was not submitted to SLURM")
    n_groups = len(re.findall(r"^\[[^\]]*\] Group job ", log, re.M))
    if n_groups != sum(1 for r in rows if r[1] in groups):
        problems.append(f"{n_groups} group jobs in the log, {sum(1 for r in rows if r[1] in groups)} found in SLURM")
    return rows, problems


def table(rows: list[list[str]]) -> str:
    head = ["SLURM job", "rule / group", "threads", "CPUs decl / granted", "GPUs decl / granted",
            "mem MB decl / granted", "time min decl / granted", "seen by the job", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", required=True, type=Path, help="the output of the snakemake run")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--probes", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--raw", type=Path, help="write scontrol's output here")
    args = ap.parse_args(argv)
    out = subprocess.run(["scontrol", "show", "job", "-d", "-o"], capture_output=True, text=True, check=True).stdout
    if args.raw:
        args.raw.write_text(out)
    granted = parse_scontrol(out, args.workdir)
    probes = {}
    for path in sorted(args.probes.glob("*.json")) if args.probes else []:
        data = json.loads(path.read_text())
        probes[int(data["SLURM_JOB_ID"])] = data
    rows, problems = compare(args.log.read_text(), granted, probes)
    if not granted:
        problems.append(f"no SLURM job with WorkDir {args.workdir} (scontrol show job)")
    text = table(rows)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    for p in problems:
        print(f"check_jobs: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("SLURM_CONF", "/etc/slurm/slurm.conf")
    sys.exit(main())
