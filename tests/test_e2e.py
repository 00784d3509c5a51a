"""End-to-end runs of the whole DAG on config/test.yaml, in scratch copies of the
workflow: every figure is built, a second run has nothing to do, an edit of a library
module marks exactly the outputs that depend on it as stale, a second run from scratch
with another number of parallel jobs gives byte-identical HDF5 arrays, a run killed
mid-job completes on the next invocation without manual cleanup, and the HTML report
shows every figure with its caption in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from browser import Browser, chromium
from conftest import ROOT, copy_workflow
from slurm.compare_outputs import compare, datasets, equal_arrays

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.e2e


def _snakemake(workdir: Path, *args: str, env: dict | None = None, cores: int = 2) -> str:
    # (targets before --configfile, which takes every value after it)
    proc = subprocess.run([*SNAKEMAKE, *args, "--cores", str(cores), "--configfile", "config/test.yaml"],
                          cwd=workdir, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _scratch(tmp_path_factory, name: str) -> Path:
    return copy_workflow(tmp_path_factory.mktemp(name))


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", dry_run_output, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The whole DAG, 2 cores: up to 2 jobs at once (1 thread each, resources.threads),
    every job recording the memgen functions it runs (MEMGEN_TRACE_CODE, for the code-hash
    audit; the rerun from scratch without it checks that recording changes nothing)."""
    work = _scratch(tmp_path_factory, "workflow")
    _snakemake(work, env={"MEMGEN_TRACE_CODE": str(work / "trace")})
    return work


def test_every_figure_is_built(built):
    from memgen import config
    from memgen.families import family as declared
    from memgen.figures import specs

    cfg = config.load(built / "config" / "test.yaml")
    assert "time_scale" in cfg["families"]
    for family in cfg["families"]:
        for name in specs(declared(family)):
            for ext in cfg[family]["figures"]["formats"]:
                path = built / "figures" / family / f"{name}.{ext}"
                assert path.stat().st_size > 1000, path


def test_outputs_carry_provenance(built):
    from memgen.families import step

    files = sorted((built / "data").rglob("*.h5"))
    time_scale = [f for f in files if "time_scale" in str(f.relative_to(built))]
    assert len(time_scale) == 1 + 2 + 2 + 3 * 6  # dataset, inits, ntk at init, per point: run, ntk, frozen
    for path in files:
        with h5py.File(path) as f:
            for key in ("memgen_version", "step", "params", "params_sha256", "code_sha256", "seed", "device"):
                assert key in f.attrs, (path, key)
            declared = step(f.attrs["step"])  # every file is a declared step's, with its datasets
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            assert sorted(names) == sorted(declared.datasets), path
            assert f.attrs["device"] == "cpu" and f.attrs["code_sha256"] == declared.code_hash(), path
    assert not list((built / "data").rglob("*.tmp")) and not list((built / "data").rglob("*.resume"))


def test_second_run_does_nothing(built):
    out = _snakemake(built, "-n")
    assert "Nothing to be done" in out, out[-3000:]


def _edited_package(tmp_path, module: str, text: str, append: bool = True) -> dict:
    """PYTHONPATH of a copy of the package with ``module`` (a path under memgen/) edited."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "src" / "memgen", pkg / "memgen", ignore=shutil.ignore_patterns("__pycache__"))
    path = pkg / "memgen" / module
    path.write_text(path.read_text() + text if append else text)
    return {"PYTHONPATH": str(pkg)}


def test_library_edit_marks_dependent_outputs_stale(built, tmp_path):
    # data.py is read by every step that loads a data set: training, Gram matrices, the
    # frozen-kernel runs and what follows them, across the families that use it
    out = _snakemake(built, "-n", env=_edited_package(tmp_path, "data.py", "\n_EDITED = 1\n"))
    jobs = _jobs(out)
    assert jobs.get("ts_train") == 6 and jobs.get("ts_frozen") == 6 and jobs.get("ts_dataset") == 1, jobs
    # dynamics.py feeds training and the frozen-kernel runs; the NTK at the end of
    # training and everything downstream follow; data sets, inits and NTKs at init do not.
    out = _snakemake(built, "-n", env=_edited_package(tmp_path / "b", "dynamics.py", "\n_EDITED = 1\n"))
    jobs = _jobs(out)
    assert jobs.get("ts_train") == 6 and jobs.get("ts_frozen") == 6, jobs
    assert "ts_dataset" not in jobs and "ts_init" not in jobs and "ts_ntk_init" not in jobs, jobs


def test_comment_or_docstring_edit_makes_nothing_stale(built, tmp_path):
    text = (ROOT / "src" / "memgen" / "training.py").read_text()
    edited = text.replace('"""', '"""Reworded: ', 1) + "\n# a comment\n"
    out = _snakemake(built, "-n", env=_edited_package(tmp_path, "training.py", edited, append=False))
    assert "Nothing to be done" in out, out[-3000:]


def test_every_function_a_step_runs_is_in_its_code_hash(built):
    """The run-time audit of the static closures: the DAG's jobs, run with
    MEMGEN_TRACE_CODE (memgen.codetrace), record every memgen function they enter; each
    lies in the step's closure (a module it hashes, or a hashed top-level name of its own
    module), or in an output-neutral module."""
    from memgen.families import steps
    from memgen.provenance import _is_neutral, _tree, code_closure, module_file

    trace = built / "trace"
    seen = {}
    for path in trace.glob("*.json"):
        step = path.name.split(".")[0]
        for module, funcs in json.loads(path.read_text()).items():
            seen.setdefault(step, {}).setdefault(module, set()).update(funcs)
    assert set(seen) == set(steps()), sorted(set(steps()) - set(seen))
    for name, modules in seen.items():
        own = steps()[name].target()[0]
        names, closure = code_closure(*steps()[name].target())
        for module, funcs in modules.items():
            run = {f for f in funcs if f != "<module>"}  # (import-time code: definitions)
            if module == own:  # its top-level definitions that ran are hashed
                assert {f.split(".")[0] for f in run} <= set(names), (name, sorted(run))
            elif run:
                assert module in closure or _is_neutral(_tree(module_file(module))), (name, module, sorted(run))


def test_rerun_from_scratch_one_job_at_a_time_is_byte_identical(built, tmp_path_factory):
    """The same config from scratch in another directory, with 1 core (one job at a time
    instead of two): the same files, every dataset of every file byte-identical, the same
    provenance, byte-identical summary CSVs."""
    again = _scratch(tmp_path_factory, "again")
    _snakemake(again, cores=1)
    problems, n_files, n_datasets = compare(built, again, exact=True)
    assert not problems, problems[:20]
    assert n_files >= 40 and n_datasets >= 200, (n_files, n_datasets)  # (the test config's size)
    print(f"compared {n_datasets} datasets in {n_files} HDF5 files: byte-identical")


def test_killed_run_completes_on_the_next_invocation(built, tmp_path_factory):
    """SIGKILL to Snakemake and every process under it while the training job runs (it
    pauses at step 100, memgen.faults, and holds Snakemake's lock and incomplete marker):
    no output under its final name; the same command again finishes it (rerun-incomplete
    from the workflow profile) with the arrays of the clean run, no manual cleanup."""
    import psutil  # (a Snakemake dependency)

    work = _scratch(tmp_path_factory, "killed")
    train = sorted((built / "data" / "runs" / "time_scale").glob("*.h5"))[-1]
    target = str(train.relative_to(built))
    pause = work / "paused"
    cmd = [*SNAKEMAKE, target, "--cores", "1", "--configfile", "config/test.yaml"]
    env = {**os.environ, "MEMGEN_PAUSE_AT": "ts_train:100", "MEMGEN_PAUSE_FILE": str(pause)}
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)

    def kill_tree():
        procs = [psutil.Process(proc.pid)]
        try:
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        return len(procs)

    try:
        deadline = time.monotonic() + 300
        while not pause.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the training job never reached step 100"
            time.sleep(0.02)  # ok-clock: polls for the pause file, the trigger is the step count
        assert not (work / target).exists()
        assert kill_tree() >= 2  # Snakemake and its job
    finally:
        if proc.poll() is None:
            kill_tree()
    assert not (work / target).exists(), "a killed job left a file under the final name"
    out = _snakemake(work, target, cores=1)
    assert (work / target).exists(), out[-3000:]
    mine, clean = datasets(work / target), datasets(built / target)
    assert sorted(mine) == sorted(clean)
    assert all(equal_arrays(mine[k], clean[k], exact=True) for k in mine)


def test_report_shows_every_figure_with_its_caption(built):
    """`snakemake --report`: opened in headless Chromium, every family is a category, and
    every figure of the config shows as an image (decoded, nonzero size) with a caption
    saying what it shows and which config produced it."""
    from memgen import config
    from memgen.report import captions, titles

    TITLES = titles()
    CAPTIONS = {f: captions(f) for f in TITLES}
    _snakemake(built, "--report", "report.html")
    if chromium() is None:
        if os.environ.get("MEMGEN_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (MEMGEN_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); `make test` installs it as root")
    cfg = config.load(built / "config" / "test.yaml")
    walk = (Path(__file__).parent / "report_walk.js").read_text()
    with Browser() as browser:
        browser.open(built / "report.html")
        seen = browser.evaluate(f"({walk})({json.dumps([TITLES[f] for f in cfg['families']])})")
    n = 0
    for family in cfg["families"]:
        figures = seen[TITLES[family]]
        assert sorted(figures) == sorted(CAPTIONS[family]), (family, sorted(figures))
        for name, entry in figures.items():
            assert entry["path"] == f"figures/{family}/{name}.png"
            assert entry["img"] and min(entry["img"]) > 100, (name, entry["img"])
            text = " ".join(entry["text"].split())
            assert " ".join(CAPTIONS[family][name].split())[:60] in text, (name, text[:500])
            assert "Produced from config config/test.yaml" in text and f"block {family}" in text, text[:500]
            n += 1
    print(f"report: {n} figures shown with captions in {len(cfg['families'])} categories")


SCORECARD_JS = """async (caption) => {
  // The report's first page: the scorecard table, then a click on the first row's figure link.
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const until = async (fn, ms = 10000) => {
    for (let t = 0; t < ms; t += 25) { const v = fn(); if (v) return v; await sleep(25); }
    return null;
  };
  const table = await until(() => document.querySelector("#memgen-scorecard"));
  if (!table) return null;
  const box = table.closest(".prose").getBoundingClientRect();
  const rows = [...table.querySelectorAll("tbody tr")].map((tr) => ({
    claim: tr.dataset.claim, verdict: tr.dataset.verdict, cell: tr.cells[0].textContent.trim(),
    background: getComputedStyle(tr.cells[0]).backgroundColor,
    figure: tr.querySelector("a[data-figure]").dataset.figure}));
  const fits = table.getBoundingClientRect().right <= box.right + 1;
  const heading = [...document.querySelectorAll("h1, h2, h3")].map((h) => h.textContent.trim());
  table.querySelector("tbody tr a[data-figure]").click();
  const shown = await until(() => document.body.innerText.includes(caption));
  return {rows, fits, heading, counts: document.querySelector("#memgen-scorecard-counts").textContent, shown: !!shown};
}"""


def test_report_opens_with_the_scorecard(built):
    """`snakemake --report` in headless Chromium: the first page shows the scorecard, one
    row per claim the config's families declare (from claims.csv, which the DAG built),
    in the table's width, each verdict coloured by what it says; a row's link opens the
    entry of its figure (its caption shows)."""
    from memgen import claims, config
    from memgen.report import captions

    cfg = config.load(built / "config" / "test.yaml")
    want = [f"{f}/{n}" for f in cfg["families"] for n in claims.specs(f)]
    rows = claims.read_csv(built / claims.CSV)
    assert [f"{r['family']}/{r['id']}" for r in rows] == want and len(want) >= 16
    assert {r["verdict"] for r in rows} <= set(claims.VERDICTS)
    if not (built / "report.html").exists():
        _snakemake(built, "--report", "report.html")
    if chromium() is None:
        if os.environ.get("MEMGEN_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (MEMGEN_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("chromium not installed (Debian: apt-get install chromium); `make test` installs it as root")
    first = rows[0]
    caption = " ".join(captions(first["family"])[first["figure"]].split())[:50]
    with Browser() as browser:
        browser.open(built / "report.html")
        seen = browser.evaluate(f"({SCORECARD_JS})({json.dumps(caption)})")
    assert seen, "no scorecard in the report"
    assert "Reproduction scorecard" in seen["heading"] and seen["fits"], seen
    assert [r["claim"] for r in seen["rows"]] == want
    colours = {}
    for r, csv_row in zip(seen["rows"], rows):
        assert r["verdict"] == r["cell"] == csv_row["verdict"]
        assert r["figure"] == f"figures/{csv_row['family']}/{csv_row['figure']}.png"
        colours.setdefault(r["verdict"], set()).add(r["background"])
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == len(colours)
    assert seen["counts"] == claims.counts(rows) and seen["shown"], seen
    print(f"report: scorecard of {len(rows)} claims ({seen['counts']})")
