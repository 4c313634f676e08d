#!/usr/bin/env bash
# One-shot end-to-end benchmark on one GPU (H100 / H200) without internet access, random
# weights, fp16: the SD2.1-base architecture at 512x512, batch 1 and 16 (about 8 minutes), and
# on request the SDXL-base 1.0 architecture at 1024x1024, batch 1 and 4 (about 6 minutes).
#
#   bash benchmarks/gpu_end_to_end.sh                            # sd21 (one command of < 10 min)
#   TIUE_E2E_SCALES=sdxl bash benchmarks/gpu_end_to_end.sh       # sdxl alone
#   TIUE_E2E_SCALES="sd21 sdxl" bash benchmarks/gpu_end_to_end.sh  # both, where time allows
#
# 1. Installs what the GPU image lacks (diffusers, pytest, pytest-benchmark) from carried wheels
#    in $TIUE_WHEELS_DIR, shared/wheels or benchmarks/wheels. The wheels (7.8 MB, Apache/MIT/BSD)
#    are not committed; make them on a machine with a package index and carry them:
#      pip download --no-deps -d benchmarks/wheels diffusers==0.42.1 pytest==9.0.3 pluggy==1.6.0 \
#        iniconfig==2.3.0 pygments==2.20.0 pytest-benchmark==5.2.3 py-cpuinfo==9.0.0 \
#        importlib_metadata==10.2.0 zipp==4.1.2
#    then copy benchmarks/wheels/ to the GPU machine with the checkout and run this script there.
# 2. Installs the repository: `pip install --no-build-isolation --no-deps -e .` without the CUDA
#    extension (the fast path runs tiue's Triton kernels; TIUE_E2E_BUILD_CUDA=1 builds it too),
#    within TIUE_E2E_INSTALL_TIMEOUT (default 60 s), and falls back to PYTHONPATH=. otherwise
#    (a plain checkout has the Triton kernels too). It stops unless tiue's ops run on the triton
#    backend on CUDA tensors (benchmarks/require_backend.py): never a silent plain-PyTorch table.
# 3. Runs benchmarks/test_end_to_end.py once per scale in TIUE_E2E_SCALES (default "sd21"),
#    each pass under its own limit (TIUE_E2E_TIMEOUT, default 390 s, for sd21;
#    TIUE_E2E_SDXL_TIMEOUT, default 360 s, for sdxl) and a per-row limit on the measurement
#    (TIUE_E2E_ROW_TIMEOUT, default 150 s); compiles and graph captures run before each row's
#    timer starts. The 50-step CFG row runs at batch 1 only, with 2 rounds (sdxl: 1). The sdxl
#    pass compiles the fast path at batch 1 only, after the eager rows, and times 5 rounds a
#    row. Results are rewritten after every row, so a run cut short still
#    reports the rows it finished. Inductor's cache goes to TORCHINDUCTOR_CACHE_DIR (default
#    .inductor-cache/ in the tree, ignored by git): carry that folder to a later run and its
#    cold compiles become warm ones.
# 4. Prints each pass's Markdown table. Files go to benchmarks/results/ and, when $OUT is set,
#    to $OUT too (with each pass's pytest log).
#
# TIUE_E2E_DRY_RUN=1 checks the script's plumbing on a CPU machine: no installs, a tiny run of
# two rows at the small and small-xl scales, results in a temporary folder.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TOTAL_TIMEOUT=${TIUE_E2E_TIMEOUT:-390}
SDXL_TIMEOUT=${TIUE_E2E_SDXL_TIMEOUT:-360}
ROW_TIMEOUT=${TIUE_E2E_ROW_TIMEOUT:-150}
INSTALL_TIMEOUT=${TIUE_E2E_INSTALL_TIMEOUT:-60}
OUT_DIR=${OUT:-}
LOG_DIR=$(mktemp -d)
STATUS=0
STARTED=$(date +%s)

step() { printf '\n=== [%3d s] %s\n' "$(( $(date +%s) - STARTED ))" "$*"; }
die() { printf 'gpu_end_to_end.sh: error: %s\n' "$*" >&2; exit 1; }
has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

step "0/4 environment"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
for module in torch transformers; do
  has_module "$module" || die "python module '$module' is missing: this script expects it preinstalled"
done
DRY_RUN=${TIUE_E2E_DRY_RUN:-0}
if [[ "$DRY_RUN" == 1 ]]; then
  DEVICE=cpu
  SCALES="small small-xl"
  echo "dry run: CPU, small and small-xl scales, no installs"
else
  DEVICE=cuda
  SCALES=${TIUE_E2E_SCALES:-sd21}
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch sees no CUDA device"
  "$PYTHON" -c "import torch; print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')"
fi

step "1/4 carried wheels"
WHEEL_DIRS=()
for dir in "${TIUE_WHEELS_DIR:-}" shared/wheels benchmarks/wheels; do
  if [[ -n "$dir" && -d "$dir" ]] && compgen -G "$dir/*.whl" >/dev/null; then WHEEL_DIRS+=("$dir"); fi
done
FIND_LINKS=()
for dir in ${WHEEL_DIRS[@]+"${WHEEL_DIRS[@]}"}; do FIND_LINKS+=(--find-links "$dir"); done
echo "wheel folders: ${WHEEL_DIRS[*]:-none}"

install_wheel() {  # install_wheel MODULE PACKAGE [optional]: from the carried wheels
  local module=$1 package=$2 optional=${3:-}
  if has_module "$module"; then echo "$package: already installed"; return 0; fi
  if (( ${#WHEEL_DIRS[@]} > 0 )); then
    "$PYTHON" -m pip install -q --no-index "${FIND_LINKS[@]}" "$package" && return 0
    # A dependency the image lacks and we did not carry: try without dependencies, then import.
    echo "$package: install with dependencies failed; trying --no-deps"
    "$PYTHON" -m pip install -q --no-index --no-deps "${FIND_LINKS[@]}" "$package" && has_module "$module" && return 0
  fi
  [[ -n "$optional" ]] && { echo "$package: not installed; going on without it"; return 0; }
  die "$package is missing and could not be installed from carried wheels (see the header of this script)"
}
if [[ "$DRY_RUN" != 1 ]]; then
  install_wheel diffusers diffusers
  install_wheel pytest pytest
  install_wheel pytest_benchmark pytest-benchmark optional
fi

step "2/4 install the repository"
export TIUE_SKIP_CUDA_BUILD=1
[[ "${TIUE_E2E_BUILD_CUDA:-0}" == 1 ]] && unset TIUE_SKIP_CUDA_BUILD
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ "$DRY_RUN" != 1 ]] && timeout "$INSTALL_TIMEOUT" "$PYTHON" -m pip install --no-build-isolation \
    --no-deps -e . >"$LOG_DIR/install.log" 2>&1 && "$PYTHON" -c "import tiue" 2>/dev/null; then
  echo "installed (log: $LOG_DIR/install.log)"
else
  [[ -f "$LOG_DIR/install.log" ]] && tail -n 15 "$LOG_DIR/install.log" >&2
  echo "pip install -e . skipped, failed or timed out: using PYTHONPATH=. instead"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import tiue, diffusers; print('tiue from', tiue.__file__, '| diffusers', diffusers.__version__)" \
  || die "import tiue failed"
if [[ "$DRY_RUN" != 1 ]]; then
  TRITON_INTERPRET=0 "$PYTHON" benchmarks/require_backend.py triton \
    || die "tiue's ops would not run on the triton backend (above): the table would measure plain PyTorch"
fi
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.inductor-cache}

RESULTS_ARGS=()
[[ -n "$OUT_DIR" ]] && mkdir -p "$OUT_DIR" && RESULTS_ARGS=(--tiue-extra-results-dir "$OUT_DIR")
BENCH_ARGS=()
has_module pytest_benchmark && BENCH_ARGS=(--benchmark-columns=median,iqr,rounds)
export TRITON_INTERPRET=0 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
RESULTS_DIR=benchmarks/results
[[ "$DRY_RUN" == 1 ]] && RESULTS_DIR="$LOG_DIR/results"

pass_args() {  # pass_args SCALE: sets RUN_ARGS and PASS_TIMEOUT for one pass
  case $1 in
    small|small-xl)  # dry run: the plumbing only
      PASS_TIMEOUT=$TOTAL_TIMEOUT
      RUN_ARGS=(--tiue-scale "$1" --tiue-device cpu --tiue-dtype fp32 --tiue-image-size 64 --tiue-rows c,e
                --tiue-batch-sizes 1 --tiue-rounds 1 --tiue-results-dir "$LOG_DIR/results") ;;
    sd21)
      PASS_TIMEOUT=$TOTAL_TIMEOUT
      # Within each batch size, the rows the targets need come first, in case time runs out.
      RUN_ARGS=(--tiue-scale sd21 --tiue-device cuda --tiue-dtype fp16 --tiue-image-size 512
                --tiue-rows f,c,b,e,f-unet,c-unet-compiled,d,c-unet,b-unet,e-unet,d-unet,a
                --tiue-batch-sizes 1,16 --tiue-compiled-batch-sizes 1,16
                --tiue-teacher-batch-sizes 1 --tiue-teacher-rounds 2 --tiue-rounds 10 --tiue-warmup 2) ;;
    sdxl)
      PASS_TIMEOUT=$SDXL_TIMEOUT
      # Short: batch 1 and 4, 5 rounds, one compile (f and f-unet at batch 1) after the eager
      # rows the targets need, so a slow cold compile cannot cost them.
      RUN_ARGS=(--tiue-scale sdxl --tiue-device cuda --tiue-dtype fp16 --tiue-image-size 1024
                --tiue-rows c,b,e,d,f,f-unet,c-unet,b-unet,e-unet,d-unet,a
                --tiue-batch-sizes 1,4 --tiue-compiled-batch-sizes 1
                --tiue-teacher-batch-sizes 1 --tiue-teacher-rounds 1 --tiue-rounds 5 --tiue-warmup 1) ;;
    *) die "unknown scale '$1' in TIUE_E2E_SCALES (expected sd21 and/or sdxl)" ;;
  esac
}

run_pass() {  # run_pass SCALE: one pytest session under its own time limit; its log in LOG_DIR
  local scale=$1 status
  pass_args "$scale"
  step "3/4 benchmark, $scale (limit ${PASS_TIMEOUT} s, ${ROW_TIMEOUT} s a row)"
  set +e
  timeout --signal=TERM --kill-after=20 "$PASS_TIMEOUT" \
    "$PYTHON" -m pytest benchmarks/test_end_to_end.py -q -s -p no:cacheprovider \
      "${RUN_ARGS[@]}" --tiue-row-timeout "$ROW_TIMEOUT" \
      ${RESULTS_ARGS[@]+"${RESULTS_ARGS[@]}"} ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} >"$LOG_DIR/pytest-$scale.log" 2>&1
  status=$?
  set -e
  tail -n 25 "$LOG_DIR/pytest-$scale.log" | grep -v '^|' || true
  case $status in
    0) ;;
    124|137) echo "WARNING: the $scale benchmark hit its ${PASS_TIMEOUT} s limit; the table has the rows it finished" >&2; STATUS=1 ;;
    *) echo "WARNING: pytest exited with $status at $scale (a row failed; see the log)" >&2; STATUS=1 ;;
  esac
}

for scale in $SCALES; do run_pass "$scale"; done

step "4/4 results"
STEM=$("$PYTHON" - "$DEVICE" <<'PY'
import sys, torch
sys.path.insert(0, "benchmarks")
from e2e.environment import device_slug
if sys.argv[1] == "cpu":
    torch.set_num_threads(1)  # the suite's CPU default, which the CPU device name includes
print(device_slug(torch.device(sys.argv[1])))
PY
) || STEM=""
for scale in $SCALES; do
  REPORT="$RESULTS_DIR/$STEM-$scale.md"
  if [[ -n "$STEM" && -f "$REPORT" ]]; then
    cat "$REPORT"
  else
    echo "no $scale report was written (log: $LOG_DIR/pytest-$scale.log)" >&2
    STATUS=1
  fi
  [[ -n "$OUT_DIR" ]] && cp "$LOG_DIR/pytest-$scale.log" "$OUT_DIR/end_to_end_pytest-$scale.log" 2>/dev/null || true
done
step "done (status $STATUS)"
exit "$STATUS"
