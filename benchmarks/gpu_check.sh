#!/usr/bin/env bash
# One command that settles the GPU questions on a bare H100/H200 in at most 8 minutes, installs
# included (docs/benchmarks.md, "The GPU check"):
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --dry-run    # or TIUE_E2E_DRY_RUN=1: the same steps on a CPU, tiny sizes
#
# Steps, in this order (each under its own time limit, cut to what is left of TIUE_GPU_CHECK_BUDGET,
# default 470 s; every step runs even when an earlier one failed):
#   install            wheels carried in .whl/ (or $TIUE_WHEELS_DIR): diffusers, which the image lacks
#   env                versions, the device, tiue's backends (env.json)
#   e2e-sd21           SD2.1 shapes, fp16, 512 px, batch 1 and 8: rows b, c, c-compiled, d, e, f and
#                      their UNet rows (compiled rows at batch 1; TIUE_GPU_CHECK_FULL=1: 8 too); first,
#                      since the targets hang on it and its compiles take the most time
#   build              tiue._C with its CUDA kernels, in place, for this GPU only (in the background
#                      from the start; the steps that need it wait for it)
#   correctness-triton / correctness-cuda
#                      tests/ops on CUDA tensors: forward and backward, fp16/bf16/fp32, each backend
#   kernels            forced Triton / CUDA kernels against float64 with device time, attention
#                      register spills (kernels.json)
#   kernel-table       benchmarks/test_kernels.py --quick: host and device time, GB/s vs peak
#   host-overhead      one call of each op on tiny CPU tensors against the expression it replaces
#   train-step         one fp16 training step against the paper-style step, with peak memory
#   fast-path          trace (fullgraph, SD and SDXL, guided and not), compile/capture/replay times,
#                      weights reloaded or moved, inference_mode first, a guidance sweep
#   e2e-sdxl           the SDXL pass f at 1024 px, batch 1
#   attention-backward the op's CUDA backward: time, peak memory against its computed bound; then
#                      benchmarks/test_attention_backward.py (each implementation, time and memory)
#   targets            every target: met / not met / not measured (targets.md)
# Everything goes to one folder: $OUT/gpu-check when $OUT is set (plus $OUT/gpu-check.tar.gz and
# $OUT/summary.md), else benchmarks/results/gpu-check-<device>-<time>/ (a dry run: a temporary
# folder, or $TIUE_GPU_CHECK_RESULTS). summary.md lists each step's status and the targets. The
# exit status is 1 when any step failed, timed out or found no time left; unmet targets are
# reported, not failures.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || PYTHON=python
DRY=${TIUE_E2E_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run)" >&2; exit 2 ;;
  esac
done
export TIUE_E2E_DRY_RUN=$DRY
BUDGET=${TIUE_GPU_CHECK_BUDGET:-470}
# A dry run's limits are stretched: a shared CPU takes far longer than the GPU for tiny sizes
# (imports alone take tens of seconds under load).
STRETCH=1
[[ "$DRY" == 1 ]] && STRETCH=${TIUE_GPU_CHECK_DRY_STRETCH:-6} && BUDGET=${TIUE_GPU_CHECK_BUDGET:-3000}
STARTED=$SECONDS
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

if [[ -n "${TIUE_GPU_CHECK_RESULTS:-}" ]]; then
  RESULTS=$TIUE_GPU_CHECK_RESULTS
elif [[ -n "${OUT:-}" ]]; then
  RESULTS=$OUT/gpu-check
elif [[ "$DRY" == 1 ]]; then
  RESULTS=$(mktemp -d)/gpu-check
else
  RESULTS=$ROOT/benchmarks/results/gpu-check-$STAMP
fi
mkdir -p "$RESULTS"
STEPS_FILE=$RESULTS/steps.tsv
printf 'step\tstatus\tseconds\tlimit\n' >"$STEPS_FILE"
FAILED=0

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/.inductor-cache}
if [[ "$DRY" == 1 ]]; then
  export TRITON_INTERPRET=1 TIUE_E2E_COMPILE_BACKEND=${TIUE_E2E_COMPILE_BACKEND:-eager} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  export TRITON_INTERPRET=0 TIUE_NO_JIT_BUILD=1  # tiue._C comes from the build step, never a first-use build
fi

left() { echo $(( BUDGET - (SECONDS - STARTED) )); }

# step NAME LIMIT COMMAND...: run under min(LIMIT, time left - 10 s), log to NAME.log, record it.
step() {
  local name=$1 limit=$(( $2 * STRETCH )); shift 2
  local remaining; remaining=$(( $(left) - 10 ))
  (( limit > remaining )) && limit=$remaining
  if (( limit < 5 )); then
    printf '%s\tno time left\t0\t0\n' "$name" >>"$STEPS_FILE"
    echo "=== [$(( SECONDS - STARTED )) s] $name: no time left" ; FAILED=1; return
  fi
  echo "=== [$(( SECONDS - STARTED )) s] $name (limit ${limit} s)"
  local begin=$SECONDS status
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  status=$?
  local took=$(( SECONDS - begin )) verdict=ok
  case $status in
    0) ;;
    124|137) verdict="timed out"; FAILED=1 ;;
    *) verdict="failed ($status)"; FAILED=1 ;;
  esac
  grep -E "^RESULT|passed|failed|error" "$RESULTS/$name.log" | grep -v '"ok": true' | tail -n 8 | cut -c1-400
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$took" "$limit" >>"$STEPS_FILE"
  echo "--- $name: $verdict in ${took} s"
}

# -- install ----------------------------------------------------------------------------------
export RESULTS PYTHON ROOT TIUE_WHEELS_DIR=${TIUE_WHEELS_DIR:-$ROOT/.whl}
INSTALL='if "$PYTHON" -c "import diffusers" 2>/dev/null; then echo "diffusers: already installed"; exit 0; fi
compgen -G "$TIUE_WHEELS_DIR/*.whl" >/dev/null || { echo "diffusers is missing and $TIUE_WHEELS_DIR holds no wheels"; exit 1; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tiue-site "$TIUE_WHEELS_DIR"/*.whl'
if [[ "$DRY" == 1 ]]; then
  step install 60 "$PYTHON" -c "import diffusers, tiue; print('dry run: nothing to install; diffusers', diffusers.__version__)"
else
  step install 60 bash -c "$INSTALL"
  export PYTHONPATH="$PYTHONPATH:/tmp/tiue-site"
fi
step env 30 "$PYTHON" benchmarks/gpu_check.py env "$RESULTS"

# -- build (in the background: nvcc runs while the Triton checks use the GPU) -------------------
if [[ "$DRY" != 1 ]]; then
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
  export TORCH_CUDA_ARCH_LIST
  (MAX_JOBS=${MAX_JOBS:-8} TIUE_FORCE_CUDA=1 timeout 240 "$PYTHON" setup.py build_ext --inplace >"$RESULTS/build.log" 2>&1;
   echo $? >"$RESULTS/build.status") &
  WAIT_FOR_BUILD='while [ ! -f "$RESULTS/build.status" ]; do sleep 2; done; tail -n 5 "$RESULTS/build.log"; exit "$(cat "$RESULTS/build.status")"'
else
  WAIT_FOR_BUILD='echo "dry run: the C++ extension built on first use is used; nothing to build"'
fi

# -- end to end -------------------------------------------------------------------------------
E2E_COMMON=(-q -s -p no:cacheprovider --tiue-results-dir "$RESULTS" --tiue-fast-backend inductor)
if [[ "$DRY" == 1 ]]; then
  SD21=(--tiue-scale small --tiue-device cpu --tiue-dtype fp32 --tiue-image-size 32 --tiue-batch-sizes 1
        --tiue-compiled-batch-sizes 1 --tiue-rounds 1 --tiue-warmup 0)
  SDXL=(--tiue-scale small-xl --tiue-device cpu --tiue-dtype fp32 --tiue-image-size 32 --tiue-batch-sizes 1
        --tiue-compiled-batch-sizes 1 --tiue-rounds 1 --tiue-warmup 0)
else
  COMPILED_BATCHES=1; [[ "${TIUE_GPU_CHECK_FULL:-0}" == 1 ]] && COMPILED_BATCHES=1,8
  SD21=(--tiue-scale sd21 --tiue-device cuda --tiue-dtype fp16 --tiue-image-size 512 --tiue-batch-sizes 1,8
        --tiue-compiled-batch-sizes "$COMPILED_BATCHES" --tiue-rounds 5 --tiue-warmup 1 --tiue-row-timeout 45)
  SDXL=(--tiue-scale sdxl --tiue-device cuda --tiue-dtype fp16 --tiue-image-size 1024 --tiue-batch-sizes 1
        --tiue-compiled-batch-sizes 1 --tiue-rounds 3 --tiue-warmup 1 --tiue-row-timeout 45)
fi
# First of all the steps, while the budget is whole: the targets hang on these rows, and a cold
# inductor compile of an SD2.1 UNet took 71 s on an H200 (c-unet-compiled, 2026-11-30). Within the
# step, the rows the targets need come first, so that a step cut short still has them.
step e2e-sd21 260 "$PYTHON" -m pytest benchmarks/test_end_to_end.py "${E2E_COMMON[@]}" "${SD21[@]}" \
  --tiue-rows f,c,d,f-unet,c-unet-compiled,c-compiled,e,b,c-unet,b-unet,d-unet,e-unet

# -- kernels ----------------------------------------------------------------------------------
OPS_TESTS=(tests/ops/test_ddim_combine.py tests/ops/test_gaussian_kl.py tests/ops/test_shared_kv_attention.py)
if [[ "$DRY" == 1 ]]; then
  # The interpreter at one dtype: the same tests, a fraction of the time.
  step correctness-triton 120 "$PYTHON" -m pytest -q -p no:cacheprovider "${OPS_TESTS[@]}" -k "triton and float32"
else
  step correctness-triton 90 "$PYTHON" -m pytest -q -p no:cacheprovider "${OPS_TESTS[@]}" tests/ops/test_gpu_readiness.py -k "triton or readiness"
fi
step build 150 bash -c "$WAIT_FOR_BUILD"
if [[ "$DRY" == 1 ]]; then
  step correctness-cuda 60 "$PYTHON" -m pytest -q -p no:cacheprovider "${OPS_TESTS[@]}" -k "cpp and float32"
else
  step correctness-cuda 60 "$PYTHON" -m pytest -q -p no:cacheprovider "${OPS_TESTS[@]}" -k "cuda"
fi
step kernels 60 "$PYTHON" benchmarks/gpu_check.py kernels "$RESULTS"
TABLE_ARGS=(--quick --results-dir "$RESULTS")
OVERHEAD_ARGS=(--host-overhead --results-dir "$RESULTS")
if [[ "$DRY" == 1 ]]; then
  TABLE_ARGS=(--dry-run --device cpu --results-dir "$RESULTS")
  OVERHEAD_ARGS+=(--dry-run)
fi
step kernel-table 75 "$PYTHON" benchmarks/test_kernels.py "${TABLE_ARGS[@]}"
step host-overhead 30 "$PYTHON" benchmarks/test_kernels.py "${OVERHEAD_ARGS[@]}"

# -- training ---------------------------------------------------------------------------------
if [[ "$DRY" == 1 ]]; then
  TRAIN_ENV=(TIUE_TRAIN_BENCH_SCALE=small TIUE_TRAIN_BENCH_PRECISION=no TIUE_TRAIN_BENCH_BATCH=1
             TIUE_TRAIN_BENCH_RESOLUTION=32 TIUE_TRAIN_BENCH_ROUNDS=1 TIUE_TRAIN_BENCH_WARMUP=0)
else
  TRAIN_ENV=(TIUE_TRAIN_BENCH_SCALE=sd21 TIUE_TRAIN_BENCH_PRECISION=fp16 TIUE_TRAIN_BENCH_BATCH=8
             TIUE_TRAIN_BENCH_RESOLUTION=512 TIUE_TRAIN_BENCH_ROUNDS=3 TIUE_TRAIN_BENCH_WARMUP=1)
fi
step train-step 80 env "${TRAIN_ENV[@]}" TIUE_TRAIN_BENCH_RESULTS_DIR="$RESULTS" \
  "$PYTHON" -m pytest -q -s -p no:cacheprovider benchmarks/test_train_step.py
step fast-path 75 "$PYTHON" benchmarks/gpu_check.py fast-path "$RESULTS"
step e2e-sdxl 90 "$PYTHON" -m pytest benchmarks/test_end_to_end.py "${E2E_COMMON[@]}" "${SDXL[@]}" --tiue-rows f
step attention-backward 30 "$PYTHON" benchmarks/gpu_check.py attention-backward "$RESULTS"
step attention-backward-table 30 env TIUE_RESULTS_DIR="$RESULTS" \
  "$PYTHON" -m pytest -q -s -p no:cacheprovider benchmarks/test_attention_backward.py
BUDGET=$(( BUDGET + 15 ))  # the report always gets its few seconds
step targets 15 "$PYTHON" benchmarks/gpu_check.py targets "$RESULTS"

# -- summary ----------------------------------------------------------------------------------
{
  echo "# GPU check $STAMP ($([[ "$DRY" == 1 ]] && echo 'dry run on a CPU, tiny sizes' || nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
  echo
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(( SECONDS - STARTED )) s; results in $RESULTS"
  echo
  echo "| step | status | seconds | limit |"
  echo "|---|---|---:|---:|"
  tail -n +2 "$STEPS_FILE" | awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
  echo
  echo "## Targets"
  echo
  cat "$RESULTS/targets.md" 2>/dev/null || echo "(no targets report)"
} >"$RESULTS/summary.md"
cat "$RESULTS/summary.md"
if [[ -n "${OUT:-}" && "$RESULTS" == "$OUT/gpu-check" ]]; then
  cp "$RESULTS/summary.md" "$OUT/summary.md"
  tar -czf "$OUT/gpu-check.tar.gz" -C "$OUT" gpu-check
fi
exit "$FAILED"
