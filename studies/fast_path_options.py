"""The fast path's compile options against the paper's way on CPU (the small benchmark scale).

    OMP_NUM_THREADS=1 python studies/fast_path_options.py eager
    OMP_NUM_THREADS=1 python studies/fast_path_options.py fast [freeze] [cppwrap] [nocl]

One variant per process (inductor's options are process-wide): builds the small SD-shaped models,
checks the sampler's z_0 against the paper's way, then times the two in alternation (9 paired
rounds after two warm-up calls each) and prints the medians and the paired ratio's quartiles.
The figures in docs/benchmarks.md ("Inductor's CPU options") come from this script.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the suite's e2e package


def main(flags: list[str]) -> None:
    import torch._inductor.config as inductor

    from e2e.models import build_models
    from e2e.paper_way import PaperWaySampler
    from tiue.pipeline import TiUEPipeline

    torch.set_num_threads(1)
    inductor.cpp_wrapper = "cppwrap" in flags
    models = build_models("small", torch.device("cpu"), torch.float32)
    pipe = TiUEPipeline(**models.components())
    pipe.set_progress_bar_config(disable=True)
    paper = PaperWaySampler(models, image_size=128)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = paper.encode_text(["a red circle"])
    text = cond.text
    with torch.no_grad():
        reference = paper.sample_latents(noise, cond)
        if "fast" in flags:
            pipe.enable_fast_path(channels_last="nocl" not in flags, freeze_weights="freeze" in flags)

        def tiue_call():
            return pipe(prompt_embeds=text, latents=noise, num_inference_steps=4, height=128, width=128,
                        output_type="latent").images

        def paper_call():
            return paper.sample_latents(noise, cond)

        start = time.time()
        z0 = tiue_call()
        error = float((z0 - reference).abs().max() / reference.abs().max())
        print(f"{' '.join(flags)}: first call {time.time() - start:.1f} s, z_0 relative error {error:.1e}")
        for call in (tiue_call, paper_call, tiue_call, paper_call):
            call()
        ours, theirs = [], []
        for _ in range(9):
            for times, call in ((ours, tiue_call), (theirs, paper_call)):
                began = time.perf_counter()
                call()
                times.append(time.perf_counter() - began)
        ratios = sorted(a / b for a, b in zip(ours, theirs))
        print(f"{' '.join(flags)}: tiue {statistics.median(ours) * 1e3:.1f} ms, paper's way "
              f"{statistics.median(theirs) * 1e3:.1f} ms, paired ratio {statistics.median(ratios):.3f} "
              f"(quartiles {ratios[2]:.3f}-{ratios[6]:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:] or ["eager"])
