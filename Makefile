# memgen: the two commands are `make figures` and `make test`. Both create (once) and
# reuse a local virtual environment in .venv, installed from a lock file of exact
# versions; nothing needs to be installed by hand.
#
# Torch build: an explicit choice, never guessed from the machine (a cluster's login
# node, where .venv is built, has no GPU even when the jobs' nodes do):
#   make venv             the CPU build, torch 2.13.0+cpu    (lock: requirements/cpu.txt)
#   make venv GPU=cu130   the CUDA 13.0 build, torch 2.13.0  (lock: requirements/cu130.txt)
# Both locks pin the same torch version (TORCH_VERSION) and everything else alike where
# the builds allow. `make lock` (or `make lock GPU=cu130`) refreshes a lock from
# pyproject.toml; see the README's "Torch build".

PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     ?= .venv
CORES    ?= 2
CONFIG   ?= config/config.yaml
TORCH_VERSION := 2.13.0
GPU      ?=
BUILD    := $(if $(GPU),$(GPU),cpu)
LOCK     := requirements/$(BUILD).txt
# torch as each lock asks for it: PyPI's Linux wheel of torch 2.13.0 is the CUDA 13.0
# build; the CPU build (and other CUDA builds) carry a local version label and come from
# the PyTorch index of that build when pip's own indexes do not have them.
TORCH_REQ   = torch==$(TORCH_VERSION)$(if $(filter cu130,$(BUILD)),,+$(BUILD))
TORCH_INDEX ?= $(if $(filter cu130,$(BUILD)),,https://download.pytorch.org/whl/$(BUILD))
TORCH_CUDA  = $(if $(filter cpu,$(BUILD)),None,$(patsubst cu%,%,$(BUILD)))
PY        = $(VENV)/bin/python
SNAKEMAKE = $(VENV)/bin/snakemake
STAMP     = $(VENV)/.memgen-installed
LOCK_VENV = .venv-lock
PIP_TOOLS = pip-tools==7.6.2
# what `make lock` may move: every package (the default), or e.g.
# UPGRADE="--upgrade-package hypothesis" to add or move one and keep every other pin
UPGRADE  ?= --upgrade

ifdef TORCH
$(error TORCH is no longer read: torch $(TORCH_VERSION) comes from the lock, the build from GPU= (make venv GPU=cu130; see the README's "Torch build"))
endif

.PHONY: venv figures test browser paper-dry-run clean-data lint venv-slurm slurm-test plan lock

venv: $(STAMP)

# From the lock only (--no-deps: nothing outside it is installed; pip check: it is
# complete). torch first, on its own, so that only it may come from TORCH_INDEX.
$(STAMP): pyproject.toml $(LOCK)
	@test ! -f $(VENV)/.memgen-build || [ "$$(cat $(VENV)/.memgen-build)" = "$(BUILD)" ] || { \
	  echo "$(VENV) holds the $$(cat $(VENV)/.memgen-build) torch build, not $(BUILD): rm -rf $(VENV) to switch" >&2; exit 1; }
	@test -f $(LOCK) || { echo "no lock file $(LOCK) for GPU=$(GPU): make lock GPU=$(GPU) (see the README's \"Torch build\")" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps "$$(grep -E '^torch==' $(LOCK))" || { \
	  test -n "$(TORCH_INDEX)" && echo "$$(grep -E '^torch==' $(LOCK)) is not on pip's indexes; trying $(TORCH_INDEX)" && \
	  $(PY) -m pip install -q --no-deps --index-url $(TORCH_INDEX) "$$(grep -E '^torch==' $(LOCK))"; }
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@$(PY) -c "import sys, torch; v, c = torch.__version__, torch.version.cuda; \
	  ok = v == '$(TORCH_REQ)'.split('==')[1] and str(c).replace('.', '') == '$(TORCH_CUDA)'; \
	  print('memgen venv ready: torch', v, '| CUDA build:', c, '| CUDA available:', torch.cuda.is_available()); \
	  ok or sys.exit('$(VENV): torch ' + v + ' (CUDA ' + str(c) + ') is not the $(BUILD) build $(TORCH_REQ) of $(LOCK)')"
	echo $(BUILD) > $(VENV)/.memgen-build
	touch $(STAMP)

## Refresh the lock of this build, requirements/BUILD.txt, from pyproject.toml (.[dev]:
## Snakemake, the SLURM plugin, pytest) and torch TORCH_VERSION of the build, with
## pip-tools in .venv-lock (latest versions allowed; CUDA locks take every package the
## CPU lock has at its version). Locks are for Linux x86_64, CPython 3.11. Both:
## `make lock && make lock GPU=cu130`.
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q "$(PIP_TOOLS)"; }
	mkdir -p requirements
	printf '%s\n' "$(TORCH_REQ)" "setuptools>=61" > requirements/.$(BUILD).in
	$(if $(filter cpu,$(BUILD)),,grep -v '^torch==' requirements/cpu.txt > requirements/.cpu-constraints.txt)
	$(call pip_compile,) || { test -n "$(TORCH_INDEX)" && \
	  echo "$(TORCH_REQ) is not on pip's indexes; trying with $(TORCH_INDEX)" && $(call pip_compile,--extra-index-url $(TORCH_INDEX)); }
	rm -f requirements/.$(BUILD).in requirements/.cpu-constraints.txt
	@grep -qxF "$(TORCH_REQ)" $(LOCK) || { echo "$(LOCK): torch is not $(TORCH_REQ)" >&2; exit 1; }
	@echo "wrote $(LOCK)"

# pip-compile for BUILD (argument: more pip-compile options). For cu130, whose torch
# pin carries no build label, pip's configuration is not read: a wheel of another build
# of the same version in a local find-links directory (the CPU one) must not be taken.
pip_compile = $(if $(filter cu130,$(BUILD)),env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null) \
	CUSTOM_COMPILE_COMMAND="make lock$(if $(GPU), GPU=$(GPU))" $(LOCK_VENV)/bin/pip-compile -q \
	--allow-unsafe --strip-extras --extra dev --no-emit-index-url --no-emit-find-links $(UPGRADE) \
	$(if $(filter cpu,$(BUILD)),,-c requirements/.cpu-constraints.txt) $(1) \
	-o $(LOCK) pyproject.toml requirements/.$(BUILD).in

## Build the default figures (figures/*) from config/config.yaml, then print the
## reproduction scorecard (one line per paper claim, from the summaries; also when some
## job failed). GPUS=N: a machine with N GPUs, one per job (profiles/gpu-local; needs a
## CUDA build and resources.gpu: 1).
figures: $(STAMP)
	@$(if $(GPUS),MEMGEN_GPUS=$(GPUS) )$(SNAKEMAKE) --profile profiles/$(if $(GPUS),gpu-local,default) --cores $(CORES) --configfile $(CONFIG); \
	  status=$$?; echo; $(PY) -m memgen claims --configfile $(CONFIG); exit $$status

## Run the test suite (unit, property, end-to-end DAG runs on config/test.yaml, the
## HTML report in headless Chromium).
test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

## Headless Chromium for the report test: Debian's package, installed when missing and
## we are root with apt-get; otherwise that one test is skipped (with the reason).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	    echo "could not install chromium: the report test will be skipped"; \
	  else echo "chromium not found (Debian: sudo apt-get install chromium): the report test will be skipped"; fi; }

## The venv for SLURM clusters (docs/cluster.md): the executor plugin is in the lock.
venv-slurm: $(STAMP)

## Jobs per rule and estimated CPU / GPU hours of CONFIG (runs nothing).
plan: $(STAMP)
	$(PY) -m memgen plan --configfile $(CONFIG)

## Opt-in: a one-node SLURM on localhost (root; installs slurm-wlm), config/test.yaml
## through profiles/slurm and locally, every HDF5 array compared (tests/slurm/).
slurm-test: venv-slurm
	PY=$(abspath $(PY)) tests/slurm/run_local_slurm.sh

lint: $(STAMP)
	$(SNAKEMAKE) --lint --configfile $(CONFIG)

clean-data:
	rm -rf data/datasets data/init data/runs data/kernels data/summary data/theory data/curvature figures/*/ logs .snakemake
