#!/usr/bin/env bash
# End-to-end test of profiles/slurm on a real (one-node, localhost) SLURM.
#
#   sudo tests/slurm/run_local_slurm.sh [CONFIG]        # CONFIG defaults to config/test.yaml
#
# 1. installs SLURM 22.05 + munge from the system's packages when absent (Debian /
#    Ubuntu: slurmctld slurmd slurm-client munge) and the Snakemake SLURM executor
#    plugin into the venv;
# 2. writes a one-node slurm.conf for this machine (controller and node on 127.0.0.1,
#    ports 16817/16818 so a site SLURM is not disturbed, its own state directory) and
#    starts munged (unless one already answers), slurmctld and slurmd by hand (no
#    systemd);
#    The node has one fake GPU: GRES gpu backed by the device file /dev/fakegpu0
#    (made by this script, removed at the end), so a GPU request is real to SLURM;
# 3. runs the tiny workflow tests/slurm/resources (a GPU job, a two-thread CPU job, a
#    light job) through `snakemake --profile profiles/slurm`, then reads back from
#    `scontrol show job` what each job was granted and compares CPUs, GPUs, memory and
#    time limit with what its rule declares (tests/slurm/check_jobs.py, which also reads
#    what each job saw: CUDA_VISIBLE_DEVICES, SLURM_CPUS_ON_NODE);
# 4. runs CONFIG through `snakemake --profile profiles/slurm` in a scratch copy of the
#    workflow (no slurmdbd here, so job status comes from squeue), compares its jobs'
#    grants with the rules the same way, then runs CONFIG through the local profile in
#    another scratch copy, and compares every HDF5 dataset and the summary CSVs of the
#    two (tests/slurm/compare_outputs.py);
# 5. stops the daemons it started (also on failure or Ctrl-C). Safe to re-run: daemons
#    left over from an interrupted run (pid files in the state directory) are stopped
#    first, and each run uses a fresh scratch directory.
#
# The job tables (declared vs granted) are printed and kept in $STATE/jobs-*.md, what
# scontrol said in $STATE/scontrol-*.txt.
# Must run as root (package install, daemons), on a machine that is not itself a SLURM
# node: /etc/slurm/slurm.conf and gres.conf are replaced for the duration (and
# restored). Environment:
#   MEMGEN_SLURM_STATE    state directory (default /tmp/memgen-slurm-state)
#   MEMGEN_SLURM_SCRATCH  scratch directory for the two workflow copies (default: mktemp)
#   MEMGEN_SLURM_TIMEOUT  seconds each snakemake run may take (default 2400)
#   KEEP_SCRATCH=1        keep the scratch copies (their path is printed)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONFIG="${1:-config/test.yaml}"
PY="${PY:-$ROOT/.venv/bin/python}"
STATE="${MEMGEN_SLURM_STATE:-/tmp/memgen-slurm-state}"
TIMEOUT="${MEMGEN_SLURM_TIMEOUT:-2400}"
PLUGIN_SPEC="snakemake-executor-plugin-slurm>=2,<3"
T0=$(date +%s)

log() { printf '[slurm-test %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts slurmctld/slurmd/munged)"
[ -x "$PY" ] || die "no venv python at $PY (run 'make venv' first)"

# ------------------------------------------------------------------ install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
if ! "$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
  log "installing $PLUGIN_SPEC into the venv"
  "$PY" -m pip install -q "$PLUGIN_SPEC"
fi
log "slurm $(dpkg-query -W -f '${Version}' slurmctld 2>/dev/null || slurmctld -V), plugin $("$PY" -c 'import importlib.metadata as m; print(m.version("snakemake-executor-plugin-slurm"))')"

# ------------------------------------------------------------------ daemons
stop_pidfile() {  # stop the process named in a pid file of our state directory
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

SCRATCH=""
FAKE_GPU=/dev/fakegpu0
cleanup() {
  local rc=$?
  set +e
  if [ -f "$STATE/slurmctld.pid" ]; then
    scancel --quiet -u root >/dev/null 2>&1  # jobs of a failed run (our test cluster only: SLURM_CONF)
  fi
  stop_pidfile "$STATE/slurmd.pid"
  stop_pidfile "$STATE/slurmctld.pid"
  stop_pidfile "$STATE/munged.pid"  # only exists when we started munged
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -f "$f.memgen-backup" ]; then mv "$f.memgen-backup" "$f"
    elif grep -qsF "written by tests/slurm/run_local_slurm.sh" "$f"; then rm -f "$f"; fi
  done
  [ -f "$STATE/fakegpu.created" ] && rm -f "$FAKE_GPU" "$STATE/fakegpu.created"
  if [ -n "$SCRATCH" ] && [ "${KEEP_SCRATCH:-0}" != 1 ] && [ $rc = 0 ]; then rm -rf "$SCRATCH"; fi
  [ $rc = 0 ] || { log "exit $rc; daemon logs in $STATE/*.log, scratch in ${SCRATCH:-none}"; }
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# leftovers of an interrupted earlier run (ours: their pid files are in $STATE)
stop_pidfile "$STATE/slurmd.pid"
stop_pidfile "$STATE/slurmctld.pid"
stop_pidfile "$STATE/munged.pid"
[ -f "$STATE/fakegpu.created" ] && rm -f "$FAKE_GPU"
rm -rf "$STATE"
mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/munge"

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "using the running munged"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  id munge >/dev/null 2>&1 && chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  if id munge >/dev/null 2>&1; then
    chown munge:munge /run/munge /var/lib/munge /var/log/munge "$STATE/munge"
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid"
  else
    munged --force --pid-file="$STATE/munge/munged.pid"
  fi
  for _ in $(seq 50); do [ -s "$STATE/munge/munged.pid" ] && break; sleep 0.1; done
  cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
  munge -n | unmunge >/dev/null || die "munged does not answer"
  log "started munged"
fi

NODE="$(hostname -s)"
# the fake GPU: SLURM's gpu GRES needs a device file; /dev/null's numbers (c 1 3), or a
# plain file where mknod is not allowed (no cgroup device constraint here: never opened)
if [ ! -e "$FAKE_GPU" ]; then
  mknod "$FAKE_GPU" c 1 3 2>/dev/null || touch "$FAKE_GPU"
  touch "$STATE/fakegpu.created"
fi
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
# The config must be at the default path: the plugin's job step drops SLURM_* variables
# (SLURM_CONF included) before it calls srun. A foreign one is moved aside and restored.
export SLURM_CONF=/etc/slurm/slurm.conf
MARK="# one-node test cluster written by tests/slurm/run_local_slurm.sh"
mkdir -p /etc/slurm
for f in "$SLURM_CONF" /etc/slurm/gres.conf; do
  if [ -f "$f" ] && ! grep -qF "$MARK" "$f"; then
    [ -e "$f.memgen-backup" ] || mv "$f" "$f.memgen-backup"
  fi
done
cat > /etc/slurm/gres.conf <<EOF
$MARK
AutoDetect=off
NodeName=$NODE Name=gpu File=$FAKE_GPU
EOF
cat > "$SLURM_CONF" <<EOF
$MARK
ClusterName=memgentest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
GresTypes=gpu
# squeue must still know finished jobs when the plugin asks (no slurmdbd / sacct here)
MinJobAge=3600
KillWait=10
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=memgentest Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for i in $(seq 120); do
  for d in slurmctld slurmd; do  # a daemon that died at start (a bad slurm.conf): say why now
    kill -0 "$(cat "$STATE/$d.pid" 2>/dev/null || echo 0)" 2>/dev/null || { sleep 1; kill -0 "$(cat "$STATE/$d.pid" 2>/dev/null || echo 0)" 2>/dev/null; } \
      || { tail -5 "$STATE/$d.log"; die "$d is not running (log: $STATE/$d.log)"; }
  done
  state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)"
  case "$state" in idle*|mix*|alloc*) break ;; down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;; esac
  [ "$i" = 120 ] && { cat "$STATE"/slurm*.log | tail -30; die "node $NODE not idle (state '$state')"; }
  sleep 0.5
done
log "slurmctld + slurmd up: node $NODE, $CPUS CPUs, ${MEM_MB} MB, 1 fake GPU ($FAKE_GPU), partition memgentest"

# ------------------------------------------------------------------ runs
SCRATCH="${MEMGEN_SLURM_SCRATCH:-$(mktemp -d /tmp/memgen-slurm.XXXXXX)}"
rm -rf "$SCRATCH/slurm" "$SCRATCH/local" "$SCRATCH/resources"
# One snapshot of the library for both runs: the working tree may change meanwhile
# (jobs run with --export=ALL, so PYTHONPATH reaches them on the node).
# (memgen finds its config schema at ../../workflow/schemas from the package.)
rm -rf "$SCRATCH/lib" && mkdir -p "$SCRATCH/lib/src"
cp -r "$ROOT/src/memgen" "$SCRATCH/lib/src/memgen"
cp -r "$ROOT/workflow" "$SCRATCH/lib/workflow"
find "$SCRATCH/lib" -name __pycache__ -prune -exec rm -rf {} +
export PYTHONPATH="$SCRATCH/lib/src${PYTHONPATH:+:$PYTHONPATH}"
for copy in slurm local; do
  mkdir -p "$SCRATCH/$copy"
  cp -r "$ROOT/Snakefile" "$ROOT/workflow" "$ROOT/config" "$ROOT/profiles" "$SCRATCH/$copy/"
  rm -f "$SCRATCH/$copy/profiles/slurm/site.env"  # the test sets its site through the environment
done
mkdir -p "$SCRATCH/resources"
cp -r "$ROOT/tests/slurm/resources/." "$ROOT/profiles" "$SCRATCH/resources/"
rm -f "$SCRATCH/resources/profiles/slurm/site.env"

# snakemake through profiles/slurm in DIR, the test cluster's site settings in the
# environment (--workflow-profile none: else profiles/default is loaded too and
# overrides per key)
slurm_snakemake() {
  local dir="$1"; shift
  ( cd "$dir"
    export MEMGEN_SLURM_PARTITION=memgentest MEMGEN_SLURM_ACCOUNT=memgentest MEMGEN_SLURM_MEM_MB=1000 \
           MEMGEN_SLURM_RUNTIME=30 MEMGEN_SLURM_JOBS=8
    timeout -k 30 "$TIMEOUT" "$PY" -m snakemake --profile profiles/slurm --workflow-profile none "$@" )
}
SLURM_OPTS=(--slurm-status-command squeue --slurm-init-seconds-before-status-checks 2
            --seconds-between-status-checks 2 --latency-wait 5 --retries 0 --nolock)
# The run, then what SLURM granted each job (scontrol) against what the run's log says
# it declared (threads, resources, groups, SLURM job ids).
run_and_check() {  # NAME DIR SNAKEMAKE-ARGS...
  local name="$1" dir="$2"; shift 2
  slurm_snakemake "$dir" "$@" "${SLURM_OPTS[@]}" > "$SCRATCH/$name.log" 2>&1 \
    || { tail -60 "$SCRATCH/$name.log"; die "snakemake on SLURM failed ($name)"; }
  log "$name: declared vs granted (scontrol show job), also in $STATE/jobs-$name.md"
  "$PY" "$ROOT/tests/slurm/check_jobs.py" --log "$SCRATCH/$name.log" --workdir "$dir" \
    --table "$STATE/jobs-$name.md" --raw "$STATE/scontrol-$name.txt" ${PROBES:+--probes "$PROBES"} \
    || die "$name: granted resources differ from the rules"
}

log "tests/slurm/resources (a GPU, a CPU and a light job) through profiles/slurm (in $SCRATCH/resources)"
PROBES="$SCRATCH/resources/probe" run_and_check resources "$SCRATCH/resources"
T_RES=$(( $(date +%s) - T0 ))

log "snakemake --profile profiles/slurm --configfile $CONFIG (in $SCRATCH/slurm)"
PROBES="" run_and_check workflow "$SCRATCH/slurm" --configfile "$CONFIG"
T_SLURM=$(( $(date +%s) - T0 ))
# every job went through sbatch (MinJobAge keeps finished jobs listed; the plugin
# deletes the logs of successful jobs)
NJOBS="$( (squeue -h -t all -o '%i %T' 2>/dev/null || true) | grep -c COMPLETED || true)"
[ "${NJOBS:-0}" -gt 0 ] || die "no job completed through SLURM"
log "SLURM runs done: $NJOBS SLURM jobs COMPLETED"

log "snakemake --profile profiles/default --configfile $CONFIG (in $SCRATCH/local)"
(
  cd "$SCRATCH/local"
  timeout -k 30 "$TIMEOUT" "$PY" -m snakemake --profile profiles/default --cores "$CPUS" --configfile "$CONFIG" \
    > "$SCRATCH/local.log" 2>&1
) || { tail -60 "$SCRATCH/local.log"; die "local snakemake failed"; }

log "comparing outputs (library snapshot $SCRATCH/lib/src/memgen)"
"$PY" "$ROOT/tests/slurm/compare_outputs.py" "$SCRATCH/slurm" "$SCRATCH/local"
log "PASSED in $(( $(date +%s) - T0 )) s (resource jobs checked at ${T_RES} s, SLURM workflow run done at ${T_SLURM} s)"
