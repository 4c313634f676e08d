#!/usr/bin/env bash
# One-shot kernel benchmark on a GPU machine without internet access.
#
#   bash benchmarks/gpu_kernels.sh [COPY_RESULTS_TO]
#
# 1. Installs what the machine lacks from wheels carried in the repository tree: diffusers and
#    its missing dependencies, and pytest-benchmark. Put the .whl files in shared/wheels/ or
#    benchmarks/wheels/ (or point TIUE_WHEELS_DIR at a folder). torch, triton and transformers
#    must already be installed.
# 2. Builds tiue._C (C++ + CUDA kernels, for this GPU's architecture only) with
#    `pip install --no-build-isolation --no-deps -e .`.
# 3. Checks the Triton and CUDA kernels against float64 on the GPU (skip: TIUE_SKIP_CHECKS=1).
# 4. Runs benchmarks/test_kernels.py (pytest-benchmark, or the plain runner without it) under
#    a time limit (TIUE_BENCH_TIMEOUT seconds, default 360) and prints the Markdown table.
# Reports land in benchmarks/results/ and, if given, are copied to COPY_RESULTS_TO.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
COPY_TO=${1:-}
BENCH_TIMEOUT=${TIUE_BENCH_TIMEOUT:-360}
CHECK_TIMEOUT=${TIUE_CHECK_TIMEOUT:-240}
LOG_DIR=$(mktemp -d)
STATUS=0

step() { printf '\n=== %s\n' "$*"; }
die() { printf 'gpu_kernels.sh: error: %s\n' "$*" >&2; exit 1; }
has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
for module in torch triton transformers; do
  has_module "$module" || die "python module '$module' is missing: this script expects it preinstalled"
done
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "torch sees no CUDA device"
"$PYTHON" - <<'PY'
import torch
print(f"device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}")
PY

# -- 1. carried wheels ------------------------------------------------------------------------
step "1/4 wheels"
WHEEL_DIRS=()
for dir in "${TIUE_WHEELS_DIR:-}" shared/wheels benchmarks/wheels; do
  if [[ -n "$dir" && -d "$dir" ]] && compgen -G "$dir/*.whl" >/dev/null; then
    WHEEL_DIRS+=("$dir")
  fi
done
FIND_LINKS=()
for dir in ${WHEEL_DIRS[@]+"${WHEEL_DIRS[@]}"}; do FIND_LINKS+=(--find-links "$dir"); done

install_from_wheels() {  # install_from_wheels MODULE PACKAGE [required]
  local module=$1 package=$2 required=${3:-}
  if has_module "$module"; then
    echo "$package: already installed"
    return 0
  fi
  if (( ${#WHEEL_DIRS[@]} == 0 )); then
    [[ -n "$required" ]] && die "$package is missing and no wheels were found in shared/wheels, benchmarks/wheels or \$TIUE_WHEELS_DIR"
    echo "$package: missing, no carried wheels"
    return 0
  fi
  echo "$package: installing from ${WHEEL_DIRS[*]}"
  if ! "$PYTHON" -m pip install -q --no-index "${FIND_LINKS[@]}" "$package"; then
    [[ -n "$required" ]] && die "could not install $package from the carried wheels (a dependency wheel missing?)"
    echo "$package: install failed; continuing without it"
  fi
}
install_from_wheels diffusers diffusers required
install_from_wheels pytest pytest
install_from_wheels pytest_benchmark pytest-benchmark

# -- 2. build ---------------------------------------------------------------------------------
step "2/4 build tiue._C"
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
start=$(date +%s)
if ! "$PYTHON" -m pip install -v --no-build-isolation --no-deps -e . >"$LOG_DIR/build.log" 2>&1; then
  tail -n 40 "$LOG_DIR/build.log" >&2
  die "pip install -e . failed (full log: $LOG_DIR/build.log)"
fi
grep -E "^ *tiue: |UserWarning: tiue" "$LOG_DIR/build.log" || true
echo "build took $(( $(date +%s) - start )) s"
# Both GPU backends must be live: otherwise the checks and the tables would measure plain PyTorch.
"$PYTHON" benchmarks/require_backend.py triton cuda || die "the triton and cuda backends must both be live (above)"

# -- 3. correctness on the GPU ----------------------------------------------------------------
step "3/4 kernel checks on the GPU"
if [[ "${TIUE_SKIP_CHECKS:-0}" == 1 ]]; then
  echo "skipped (TIUE_SKIP_CHECKS=1)"
elif ! has_module pytest; then
  echo "skipped: pytest is not installed"
else
  # The tests run the triton and cuda backends on CUDA tensors when a GPU is present. No -x:
  # one failure must not hide the rest.
  if ! TRITON_INTERPRET=0 timeout "$CHECK_TIMEOUT" "$PYTHON" -m pytest -q -p no:cacheprovider \
      tests/ops/test_ddim_combine.py tests/ops/test_gaussian_kl.py tests/ops/test_shared_kv_attention.py \
      tests/ops/test_gpu_readiness.py -k "triton or cuda or readiness" 2>&1 | tail -n 25; then
    echo "WARNING: kernel checks failed or timed out; benchmarking anyway" >&2
    STATUS=1
  fi
fi

# -- 4. benchmarks ----------------------------------------------------------------------------
step "4/4 benchmarks (limit ${BENCH_TIMEOUT}s)"
export TRITON_INTERPRET=0
start=$(date +%s)
if has_module pytest_benchmark; then
  timeout "$BENCH_TIMEOUT" "$PYTHON" -m pytest benchmarks/test_kernels.py -q -p no:cacheprovider \
    --tiue-device cuda --benchmark-columns=median,iqr,rounds 2>&1 | tee "$LOG_DIR/bench.log" | tail -n 5 \
    || { echo "WARNING: the benchmark run failed or hit the time limit" >&2; STATUS=1; }
else
  echo "pytest-benchmark is not installed: using the plain timing runner"
  timeout "$BENCH_TIMEOUT" "$PYTHON" benchmarks/test_kernels.py --device cuda 2>&1 \
    | tee "$LOG_DIR/bench.log" | tail -n 3 \
    || { echo "WARNING: the benchmark run failed or hit the time limit" >&2; STATUS=1; }
fi
echo "benchmarks took $(( $(date +%s) - start )) s"

REPORT=$("$PYTHON" - <<'PY'
import sys, torch
sys.path.insert(0, "benchmarks")
from _report import report_stem
print(f"benchmarks/results/{report_stem('kernels', torch.device('cuda'))}.md")
PY
)
if [[ -f "$REPORT" ]]; then
  step "results ($REPORT)"
  cat "$REPORT"
else
  echo "no report was written (see $LOG_DIR/bench.log)" >&2
  STATUS=1
fi
if [[ -n "$COPY_TO" ]]; then
  mkdir -p "$COPY_TO"
  cp benchmarks/results/kernels-* "$COPY_TO"/ 2>/dev/null || true
  cp "$LOG_DIR"/*.log "$COPY_TO"/ 2>/dev/null || true
fi
exit "$STATUS"
