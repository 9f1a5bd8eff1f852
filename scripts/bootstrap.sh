#!/usr/bin/env bash
# Set up zsq_engine in ./.venv and run the demo or the tests. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash scripts/bootstrap.sh demo|test|fast [extra args...]

Sets up the repository's virtual environment, then runs one command:
  demo   .venv/bin/zsq demo [extra args]
  test   .venv/bin/python -m pytest -q tests [extra args]             (every test)
  fast   .venv/bin/python -m pytest -q -m "not slow" tests [extra args] (the fast tier)

Set-up (skipped when .venv/.zsq-stamp matches setup.py, pyproject.toml, csrc/ and the
ZSQ_TORCH_SPEC, ZSQ_TRITON_SPEC, ZSQ_SKIP_EXT, TORCH_CUDA_ARCH_LIST settings):
  1. .venv via `python3 -m venv --system-site-packages` if absent (a preinstalled
     torch/triton, e.g. on a GPU image, is reused)
  2. torch (only if `import torch` fails), triton (only if `import triton` fails; optional),
     and whichever of setuptools, wheel, ninja, numpy, tqdm, pytest, pytest-benchmark,
     matplotlib, pillow, onnx, onnxruntime, torchao are missing
  3. the Debian package dataset-fashion-mnist, if /usr/share/datasets/fashion-mnist is
     missing and apt-get can be run as root (or with passwordless sudo)
  4. `pip install -e . --no-build-isolation` (builds the C++/CUDA extension zsq_engine._C;
     full log in .venv/zsq-build.log)

Environment:
  ZSQ_TORCH_SPEC     pip requirement(s) for torch   (default: torch==2.13.0)
  ZSQ_TRITON_SPEC    pip requirement(s) for triton  (default: triton==3.6.0)
  ZSQ_PYTHON         interpreter that creates .venv (default: python3)
  ZSQ_FORCE_SETUP=1  redo the set-up even if the stamp matches
  MAX_JOBS           parallel compile jobs (default: number of CPU cores)
EOF
}

if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
case "$1" in
    -h | --help) usage; exit 0 ;;
    demo | test | fast) MODE="$1"; shift ;;
    *) echo "bootstrap.sh: unknown command '$1' (expected demo, test or fast)" >&2; usage >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.zsq-stamp"
BUILD_LOG="$VENV/zsq-build.log"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

# Never prompt: CI=true and no stdin must work.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
if [[ "${CI:-}" == "true" ]]; then export PIP_PROGRESS_BAR=off; fi
# The venv's console scripts (ninja from pip, zsq) must be found by the build and the tests.
export PATH="$VENV/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

stamp_value() {
    {
        sha256sum setup.py pyproject.toml
        if [[ -d csrc ]]; then find csrc -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; fi
        echo "torch-spec=${ZSQ_TORCH_SPEC:-} triton-spec=${ZSQ_TRITON_SPEC:-}"
        echo "skip-ext=${ZSQ_SKIP_EXT:-} cuda-archs=${TORCH_CUDA_ARCH_LIST:-}"
    } | sha256sum | cut -d' ' -f1
}

pip_install() { "$PY" -m pip install "$@" </dev/null; }

create_venv() {
    local python="${ZSQ_PYTHON:-python3}"
    command -v "$python" >/dev/null || die "$python not found; install Python >= 3.10"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is $("$python" -V 2>&1); zsq_engine needs Python >= 3.10"
    step "creating .venv ($python -m venv --system-site-packages)"
    if ! "$python" -m venv --system-site-packages "$VENV" </dev/null; then
        # Debian/Ubuntu without python3-venv lack ensurepip; the system pip still works.
        warn "venv with its own pip failed (is python3-venv installed?); retrying --without-pip"
        rm -rf "$VENV"
        "$python" -m venv --system-site-packages --without-pip "$VENV"
    fi
    "$PY" -m pip --version >/dev/null 2>&1 \
        || die "no pip inside .venv: install python3-venv (or python3-pip) and rerun"
}

install_python_packages() {
    local spec
    if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
        read -r -a spec <<<"${ZSQ_TORCH_SPEC:-torch==2.13.0}"
        step "installing ${spec[*]}"
        pip_install "${spec[@]}"
    else
        step "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    fi
    if ! "$PY" -c 'import triton' >/dev/null 2>&1; then
        read -r -a spec <<<"${ZSQ_TRITON_SPEC:-triton==3.6.0}"
        step "installing ${spec[*]} (optional)"
        pip_install "${spec[@]}" \
            || warn "could not install triton; Triton kernels are disabled and tests that need them skip"
    fi

    # Only what is missing, so that an offline machine with everything preinstalled works.
    local missing
    missing="$("$PY" - <<'EOF'
import importlib.util, shutil
want = {"numpy": "numpy", "tqdm": "tqdm", "pytest": "pytest",
        "pytest_benchmark": "pytest-benchmark", "matplotlib": "matplotlib", "PIL": "pillow",
        # zsq export and its tests (ONNX Runtime checks the exported graphs)
        "onnx": "onnx==1.23.2", "onnxruntime": "onnxruntime==1.31.1",
        # the PT2E + Inductor peer of zsq bench and its test (a 3.4 MB wheel, no dependencies)
        "torchao": "torchao==0.18.0"}
missing = [pkg for mod, pkg in want.items() if importlib.util.find_spec(mod) is None]
if shutil.which("ninja") is None:
    missing.append("ninja")
try:
    import setuptools
    major_minor = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
except Exception:
    major_minor = (0, 0)
if major_minor < (64, 0):
    missing.append("setuptools>=64")
# setuptools < 70.1 needs the wheel package for bdist_wheel (the editable install uses it).
if major_minor < (70, 1) and importlib.util.find_spec("wheel") is None:
    missing.append("wheel")
print(" ".join(missing))
EOF
)"
    if [[ -n "$missing" ]]; then
        step "installing $missing"
        # shellcheck disable=SC2086 # word splitting intended: one argument per package
        pip_install $missing
    fi
}

install_fashion_mnist() {
    if [[ -d "$FMNIST_DIR" ]]; then return 0; fi
    if [[ -n "${ZSQ_FMNIST_DIR:-}" && -d "${ZSQ_FMNIST_DIR}" ]]; then return 0; fi
    local hint="the demo needs Fashion-MNIST: install the Debian package dataset-fashion-mnist, or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in one folder and set ZSQ_FMNIST_DIR=that folder (or pass --data-dir)"
    if ! command -v apt-get >/dev/null; then
        warn "no apt-get on this machine; $hint"
        return 0
    fi
    local -a sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            warn "not root and no passwordless sudo, so apt-get cannot run; $hint"
            return 0
        fi
    fi
    step "installing dataset-fashion-mnist with apt-get"
    if ! { ${sudo[@]+"${sudo[@]}"} apt-get update -q \
        && ${sudo[@]+"${sudo[@]}"} apt-get install -y -q dataset-fashion-mnist; } </dev/null; then
        warn "apt-get could not install dataset-fashion-mnist; $hint"
    fi
}

build_package() {
    export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"
    step "pip install -e . --no-build-isolation (MAX_JOBS=$MAX_JOBS; compiling the extension takes a minute or more; log: .venv/zsq-build.log)"
    local start=$SECONDS
    if ! pip_install -v --no-deps -e . --no-build-isolation >"$BUILD_LOG" 2>&1; then
        tail -n 40 "$BUILD_LOG" >&2
        die "pip install -e . failed; full log in $BUILD_LOG"
    fi
    echo "installed in $((SECONDS - start)) s"
    # setup.py degrades instead of failing; surface its warnings, which pip -v buries.
    if grep -q "zsq_engine WARNING" "$BUILD_LOG"; then
        grep -h "zsq_engine WARNING" "$BUILD_LOG" | sed 's/^ *//' | sort -u >&2
    fi
}

report_status() {
    "$PY" - <<'EOF'
from zsq_engine._ext import extension_status, get_extension
status = extension_status()
if status["built"]:
    ext = get_extension()
    parts = "CPU + CUDA kernels" if status["cuda"] else "CPU kernels (no CUDA part)"
    print(f"native extension zsq_engine._C: {parts}; build {ext.build_info()}")
else:
    print(f"native extension zsq_engine._C: not available ({status['error']}); using reference ops")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not available ({type(exc).__name__})")
EOF
}

if [[ "${ZSQ_FORCE_SETUP:-0}" != "1" && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]]; then
    step "set-up unchanged (.venv/.zsq-stamp matches); skipping installs"
else
    [[ -x "$PY" ]] || create_venv
    install_python_packages
    install_fashion_mnist
    build_package
    stamp_value >"$STAMP"
fi
report_status || warn "could not import zsq_engine to report its status"

case "$MODE" in
    demo)
        step "zsq demo $*"
        exec "$VENV/bin/zsq" demo "$@"
        ;;
    test)
        step "pytest -q tests $*"
        exec "$PY" -m pytest -q tests "$@"
        ;;
    fast)
        step "pytest -q -m 'not slow' tests $*"
        exec "$PY" -m pytest -q -m "not slow" tests "$@"
        ;;
esac
