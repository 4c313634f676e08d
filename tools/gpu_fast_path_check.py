"""The fast path on a CUDA device, tiny models in fp16: what issue 25 fixed and a CPU cannot show.

Each step prints ok or FAIL and the run goes on; the exit status is 1 if any failed, 2 without CUDA.
- compile (inductor, fullgraph) and CUDA-graph capture with the first call in inference mode,
  then ordinary calls into the same graph;
- a sweep of ten guidance scales with recompiles treated as errors: one compile, one graph;
- load_unet_weights in place: the same graph, the new weights; weights moved to new storage
  (a memory-format change): the pass is compiled and captured again and the images stay right;
- image output guided and unguided, and the SDXL pass guided and unguided;
- the host time of a tiny fast-path call and of the weight watch on it.
Needs torch with CUDA, diffusers and transformers (the GPU image lacks diffusers: install its
wheel as benchmarks/gpu_end_to_end.sh says). About two minutes on an H200, mostly compiling.

    TIUE_NO_JIT_BUILD=1 python tools/gpu_fast_path_check.py
"""
from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiue import TiUEPipeline  # noqa: E402
from tiue.pipeline_xl import TiUEXLPipeline  # noqa: E402
from tiue.testing.tiny import build_components  # noqa: E402
from tiue.testing.tiny_xl import build_xl_components  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]
SCALES = [3.0 + 0.5 * i for i in range(10)]
TOLERANCE = 2e-2  # relative, fp16: fused projections and compiled kernels round differently
failures = 0
started = time.time()


def step(name, check) -> None:
    global failures
    begun = time.time()
    try:
        check()
    except Exception as error:  # noqa: BLE001 - every step runs; each failure is reported
        failures += 1
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(f"FAIL {name}: {type(error).__name__}: {first_line}", flush=True)
        traceback.print_exc(limit=6)
    else:
        print(f"ok   {name} ({time.time() - begun:.1f} s, at {time.time() - started:.0f} s)", flush=True)


def relative_error(got, expected) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def close(got, expected, what: str) -> None:
    error = relative_error(got, expected)
    print(f"   {what}: relative error {error:.2e}")
    assert error < TOLERANCE, f"{what}: {error:.2e} >= {TOLERANCE}"


def pipeline(cls, components):
    pipe = cls(**components).to("cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: this check runs on a GPU machine")
        return 2
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda, flush=True)
    scratch = tempfile.mkdtemp()
    components = build_components(f"{scratch}/sd")
    eager = pipeline(TiUEPipeline, components)
    fast = pipeline(TiUEPipeline, build_components(f"{scratch}/sd-fast"))  # the same seed: the same weights
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to("cuda", torch.float16)
    latent = dict(latents=noise, output_type="latent")
    expected = {}

    def eager_references():
        for scale in (SCALES[0], SCALES[1], SCALES[-1]):
            expected[scale] = eager(PROMPTS, guidance_scale=scale, **latent).images

    step("eager fp16 references", eager_references)
    stats = fast.enable_fast_path()
    print(f"   backend {fast.fast_path_backend}, CUDA graphs {fast._fast_path.graphs.use_cuda_graphs}")

    def first_call_in_inference_mode():
        with torch.inference_mode():
            got = fast(PROMPTS, guidance_scale=SCALES[0], **latent).images
        print(f"   compile {stats.compile_seconds:.1f} s, capture {stats.capture_seconds:.2f} s")
        close(got, expected[SCALES[0]], f"scale {SCALES[0]}")

    step("compile and capture, the first call in inference mode (guided)", first_call_in_inference_mode)

    def sweep():
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = {scale: fast(PROMPTS, guidance_scale=scale, **latent).images for scale in SCALES}
        for scale in (SCALES[1], SCALES[-1]):
            close(got[scale], expected[scale], f"scale {scale}")
        assert stats.compiled_signatures == 1 and stats.captured_graphs == 1, stats

    step("ordinary calls after it: ten scales, recompiles as errors, one graph", sweep)

    def host_time():
        for _ in range(3):
            fast(PROMPTS, guidance_scale=4.0, **latent)
        torch.cuda.synchronize()
        begun, calls = time.perf_counter(), 50
        for _ in range(calls):
            fast(PROMPTS, guidance_scale=4.0, **latent)
        torch.cuda.synchronize()
        print(f"   tiny guided call: {(time.perf_counter() - begun) / calls * 1e3:.2f} ms (host-bound at this size)")
        watch, begun = fast._fast_path._weights, time.perf_counter()
        for _ in range(1000):
            watch.moved()
        print(f"   weight watch on the tiny models: {(time.perf_counter() - begun) * 1e3:.1f} us a call")

    step("host time per call", host_time)

    def new_weights_in_place():
        generator = torch.Generator().manual_seed(5)
        state = {
            key: (value.float().cpu() + 0.01 * torch.randn(value.shape, generator=generator)).half()
            for key, value in components["unet"].state_dict().items()
        }
        eager.unet.load_state_dict(state)
        with torch._dynamo.config.patch(error_on_recompile=True):
            fast.load_unet_weights(state)
            got = fast(PROMPTS, guidance_scale=SCALES[0], **latent).images
        close(got, eager(PROMPTS, guidance_scale=SCALES[0], **latent).images, "new weights")

    step("load_unet_weights in place: the same graph, the new weights", new_weights_in_place)

    def moved_weights():
        fast.unet.to(memory_format=torch.contiguous_format)
        got = fast(PROMPTS, guidance_scale=SCALES[0], **latent).images
        relayouts = fast._fast_path._weights.relayouts
        print(f"   stale drops {stats.stale_drops}, relayouts {relayouts}, graphs captured {stats.captured_graphs}")
        close(got, eager(PROMPTS, guidance_scale=SCALES[0], **latent).images, "after the move")
        # New strides: the graphs are captured again from code compiled again for them.
        assert stats.stale_drops == 1 and relayouts == 1

    step("weights moved (memory format): compiled and captured again, images right", moved_weights)

    def images():
        for scale in (1.0, 6.0):
            kwargs = dict(guidance_scale=scale, latents=noise, output_type="pt")
            close(fast(PROMPTS, **kwargs).images, eager(PROMPTS, **kwargs).images, f"image, scale {scale}")

    step("image output, unguided and guided", images)

    def sdxl():
        eager_xl = pipeline(TiUEXLPipeline, build_xl_components(f"{scratch}/xl"))
        fast_xl = pipeline(TiUEXLPipeline, build_xl_components(f"{scratch}/xl-fast"))
        fast_xl.enable_fast_path()
        for scale in (1.0, 5.0):
            got = fast_xl(PROMPTS, guidance_scale=scale, **latent).images
            close(got, eager_xl(PROMPTS, guidance_scale=scale, **latent).images, f"SDXL, scale {scale}")
        with torch._dynamo.config.patch(error_on_recompile=True):
            fast_xl(PROMPTS, guidance_scale=7.0, **latent)

    step("SDXL fast path, unguided and guided, a new scale without recompiling", sdxl)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
