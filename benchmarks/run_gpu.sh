#!/usr/bin/env bash
# The GPU check in one command on a lent H100/H200 (fits 9 minutes; nothing is installed):
# build the extension for this GPU only, the GPU correctness tests, then the headline
# benchmarks in priority order under --budget SECONDS (default 540), rows written to
# benchmarks/results/ as soon as measured. See benchmarks/run_gpu.py.
#   bash benchmarks/run_gpu.sh --dry-run      # the plan and its estimated time, on any machine
#   bash benchmarks/run_gpu.sh --quick        # one pinned autotune config per shape
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.run_gpu "$@"
