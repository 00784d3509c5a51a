#!/usr/bin/env bash
# Separate benchmark environment for benchmarks/ntk.py's nngeometry comparison.
# nngeometry is NOT a memgen dependency: it goes into its own venv (default
# /tmp/memgen-bench-venv, outside the repository), which sees the main .venv's packages
# (torch, memgen) through a .pth file, so nothing in .venv changes.
#   bash benchmarks/setup_bench_env.sh [VENV_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_VENV="${1:-${BENCH_VENV:-/tmp/memgen-bench-venv}}"
MAIN_SITE="$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$ROOT/.venv/bin/python" -m venv --without-pip "$BENCH_VENV" 2>/dev/null || "$ROOT/.venv/bin/python" -m venv "$BENCH_VENV"
BENCH_SITE="$("$BENCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$MAIN_SITE')" > "$BENCH_SITE/memgen_main_venv.pth"
# nngeometry 0.4 declares torchvision but the Gram-matrix code does not import it: --no-deps.
"$ROOT/.venv/bin/python" -m pip install -q --no-deps --target "$BENCH_SITE" nngeometry
"$BENCH_VENV/bin/python" -c "import nngeometry, torch, memgen; print('bench env ready:', '$BENCH_VENV')"
