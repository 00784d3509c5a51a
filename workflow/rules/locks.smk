# Stale locks. A run killed by SIGKILL (an OOM kill, a lost login session, a power cut)
# leaves .snakemake/locks behind, and Snakemake then refuses every later run with
# "Directory cannot be locked" until someone runs `snakemake --unlock`. Here each main
# Snakemake process of this workflow records itself (host, pid, start time) under
# .snakemake/memgen-runs while it runs. At start, records of processes that no longer
# exist on this host are dropped; when no record is left, no run of this workflow is
# alive anywhere, so leftover locks are stale and are removed, with a message. A record
# from another host (a cluster login node) is never presumed dead: the locks then stay.
import atexit
import json
import os
import shutil
import socket
import sys

import psutil

MEMGEN_RUNS = os.path.join(".snakemake", "memgen-runs")
SNAKEMAKE_LOCKS = os.path.join(".snakemake", "locks")


def _run_alive(rec):
    if rec.get("host") != socket.gethostname():
        return True  # cannot tell: presume alive
    try:
        return abs(psutil.Process(rec["pid"]).create_time() - rec["started"]) < 1.0
    except (psutil.Error, KeyError, TypeError):
        return False


def _release_stale_locks():
    os.makedirs(MEMGEN_RUNS, exist_ok=True)
    dead = []
    for name in os.listdir(MEMGEN_RUNS):
        path = os.path.join(MEMGEN_RUNS, name)
        try:
            with open(path) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            rec = {}
        if _run_alive(rec):
            return  # a run of this workflow may hold the locks
        dead.append((path, rec))
    for path, _ in dead:
        os.remove(path)
    if dead and os.path.isdir(SNAKEMAKE_LOCKS) and os.listdir(SNAKEMAKE_LOCKS):
        shutil.rmtree(SNAKEMAKE_LOCKS)
        who = ", ".join(f"pid {rec.get('pid')} on {rec.get('host')}" for _, rec in dead)
        print(f"memgen: removed the stale Snakemake locks of a run that was killed ({who})", file=sys.stderr)


def _record_run():
    me = psutil.Process()
    path = os.path.join(MEMGEN_RUNS, f"{socket.gethostname()}-{me.pid}.json")
    with open(path, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}, fh)
    atexit.register(lambda: os.path.exists(path) and os.remove(path))


if workflow.is_main_process:
    _release_stale_locks()
    _record_run()
