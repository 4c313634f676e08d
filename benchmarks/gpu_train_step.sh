#!/usr/bin/env bash
# One-shot GPU measurement of one distillation training step: the tiue trainer vs the
# paper-style step, SD2.1-base architecture (random weights), fp16 (the official precision),
# batch 8, 512 px, K = 4; then the attention backward before/after (test_attention_backward.py).
#
#   bash benchmarks/gpu_train_step.sh            # from the repository root
#
# For a box with torch, transformers, peft and accelerate but no internet: diffusers is
# installed from a wheel carried under benchmarks/wheels/ or shared/wheels/ when it is not
# importable. Results: benchmarks/results/train-step-<gpu>-sd21.{json,md}, copied to $OUT
# when set; the Markdown table is printed at the end. Override any TIUE_TRAIN_BENCH_* setting
# from the environment (see benchmarks/test_train_step.py), e.g. TIUE_TRAIN_BENCH_ROUNDS=5.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import diffusers" 2>/dev/null; then
    wheel=$(ls benchmarks/wheels/diffusers-*.whl shared/wheels/diffusers-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -z "${wheel}" ]]; then
        echo "diffusers is not installed and no wheel was found under benchmarks/wheels/ or shared/wheels/" >&2
        exit 1
    fi
    python -m pip install --no-deps --no-index --quiet "${wheel}"
fi
python -m pip show pytest-benchmark >/dev/null 2>&1 || echo "(pytest-benchmark not installed: plain timing)"

# The checkout itself, Triton kernels included, is the package under test (no install needed).
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRITON_INTERPRET=0
python benchmarks/require_backend.py triton || {
    echo "gpu_train_step.sh: tiue's ops would not run on the triton backend (above); refusing to measure" >&2
    exit 1
}
export TIUE_TRAIN_BENCH_SCALE="${TIUE_TRAIN_BENCH_SCALE:-sd21}"
export TIUE_TRAIN_BENCH_PRECISION="${TIUE_TRAIN_BENCH_PRECISION:-fp16}"
export TIUE_TRAIN_BENCH_BATCH="${TIUE_TRAIN_BENCH_BATCH:-8}"
export TIUE_TRAIN_BENCH_RESOLUTION="${TIUE_TRAIN_BENCH_RESOLUTION:-512}"
export TIUE_TRAIN_BENCH_ROUNDS="${TIUE_TRAIN_BENCH_ROUNDS:-10}"
export TIUE_TRAIN_BENCH_WARMUP="${TIUE_TRAIN_BENCH_WARMUP:-3}"
if [[ -n "${OUT:-}" ]]; then
    export TIUE_TRAIN_BENCH_EXTRA_RESULTS_DIR="${TIUE_TRAIN_BENCH_EXTRA_RESULTS_DIR:-${OUT}}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
python -m pytest benchmarks/test_train_step.py -q -s -p no:cacheprovider || status=$?
if [[ "${status}" -ne 0 && "${TIUE_TRAIN_BENCH_GRADIENT_CHECKPOINTING:-0}" != "1" ]]; then
    # An out-of-memory tiue step fails the run (a paper-style OOM is only recorded): retry
    # once with gradient checkpointing on both UNets.
    echo "first run failed (status ${status}); retrying with gradient checkpointing" >&2
    export TIUE_TRAIN_BENCH_GRADIENT_CHECKPOINTING=1
    status=0
    python -m pytest benchmarks/test_train_step.py -q -s -p no:cacheprovider || status=$?
fi
python -m pytest benchmarks/test_attention_backward.py -q -s -p no:cacheprovider || status=$?
if [[ -n "${OUT:-}" ]]; then cp benchmarks/results/attention-backward-*.md "${OUT}/" 2>/dev/null || true; fi
cat benchmarks/results/train-step-*-"${TIUE_TRAIN_BENCH_SCALE}".md 2>/dev/null || true
exit "${status}"
