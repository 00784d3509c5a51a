# memgen: the two commands are `make figures` and `make test`. Both create (once) and
# reuse a local virtual environment in .venv; nothing needs to be installed by hand.
#
# Torch: with no NVIDIA GPU visible (no working `nvidia-smi`) the CPU build is installed
# (TORCH=torch==2.13.0, which this machine kind serves from local disk). With a GPU the
# default is PyPI's `torch`, a CUDA build. Choose your own with e.g.
#   make venv TORCH="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124
# (TORCH_INDEX=https://download.pytorch.org/whl/cpu gives a CPU build anywhere).

PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     ?= .venv
CORES    ?= 2
CONFIG   ?= config/config.yaml
HAS_GPU  := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH    ?= torch
else
TORCH    ?= torch==2.13.0
endif
TORCH_INDEX ?=
PY        = $(VENV)/bin/python
SNAKEMAKE = $(VENV)/bin/snakemake
STAMP     = $(VENV)/.memgen-installed

.PHONY: venv figures test browser paper-dry-run clean-data lint venv-slurm slurm-test plan

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import torch; print('memgen venv ready: torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
	touch $(STAMP)

## Build the default figures (figures/*) from config/config.yaml.
figures: $(STAMP)
	$(SNAKEMAKE) --profile profiles/default --cores $(CORES) --configfile $(CONFIG)

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

## The venv plus the Snakemake SLURM executor plugin (docs/cluster.md).
venv-slurm: $(STAMP)
	$(PY) -m pip install -q -e ".[slurm]"

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
