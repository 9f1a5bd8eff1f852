#!/usr/bin/env bash
# One command for a lent GPU machine: build, GPU tests, GPU benchmarks (rows in benchmarks/results/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-python3}
MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} \
    "$PY" -m pip install -e . --no-build-isolation --no-deps -q
"$PY" -m zsq_engine.cli info
# a failing GPU test must not cost the benchmark rows (each benchmark checks its own outputs
# before timing); the script still exits non-zero at the end if a test failed
tests_rc=0
"$PY" -m pytest -q tests -k "not slow" -p no:cacheprovider || tests_rc=$?
"$PY" -m benchmarks.fake_quant --device cuda
"$PY" -m benchmarks.bn_stats --device cuda
"$PY" -m benchmarks.synth --device cuda
"$PY" -m benchmarks.recon --device cuda
"$PY" -m benchmarks.conv_forms --device cuda
"$PY" -m benchmarks.qat --device cuda
"$PY" -m benchmarks.int_gemm --device cuda
"$PY" -m benchmarks.compat --device cuda
"$PY" -m benchmarks.runtime --device cuda
exit "$tests_rc"
