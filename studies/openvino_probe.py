"""OpenVINO (fp32) against the paper's way and tiue's own paths, UNet part only, on CPU.

    OMP_NUM_THREADS=1 python studies/openvino_probe.py [BATCH ...]

Builds the small SD-shaped benchmark models, converts tiue's one pass (the TiUEUNet forward with
diffusers' standard attention, then the loop-free combination as an einsum: plain PyTorch ops
that OpenVINO's PyTorch frontend reads) with `openvino.convert_model`, compiles it for the CPU
with INFERENCE_PRECISION_HINT=f32 (OpenVINO's CPU default on bf16-capable processors is bf16,
which would change z_0 far beyond fp32 tolerances) and one inference thread, checks its z_0
against the paper's way, then times four callables in alternation (9 paired rounds after warm-up):
the paper's way (row d-unet), tiue eager (e-unet), tiue's inductor fast path (f-unet) and
OpenVINO. Prints medians and each row's paired ratio to the paper's way with its quartiles.
The torch.compile "openvino" backend is not used: with torch 2.13 it fails in dynamo's guard
building ("sources must not be empty for symbol"), for any model.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the suite's e2e package

STEPS = 4


class PlainOnePass(torch.nn.Module):
    """tiue's UNet part in ops any exporter reads: TiUEUNet forward, then sum_k c_k eps_k + c z_K."""

    def __init__(self, unet, timesteps: torch.Tensor, coeffs: torch.Tensor):
        from tiue import TiUEUNet

        super().__init__()
        self.tiue_unet = TiUEUNet(unet, shared_text_attention=False)
        self.register_buffer("timesteps", timesteps)
        self.register_buffer("coeffs", coeffs.float())

    def forward(self, noise: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        outputs = self.tiue_unet(noise, self.timesteps, text)  # (K, B, C, H, W)
        return self.coeffs[0] * noise + torch.einsum("k,kbchw->bchw", self.coeffs[1:], outputs)


def timed(calls: dict, rounds: int = 9) -> dict[str, list[float]]:
    times = {name: [] for name in calls}
    for _ in range(2):
        for call in calls.values():
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - began)
    return times


def main(batches: list[int]) -> None:
    import openvino as ov

    from e2e.models import build_models
    from e2e.paper_way import PaperWaySampler
    from tiue.pipeline import TiUEPipeline
    from tiue.schedule import loopfree_coefficients

    torch.set_num_threads(1)
    models = build_models("small", torch.device("cpu"), torch.float32)
    paper = PaperWaySampler(models, image_size=128, num_steps=STEPS)
    eager = TiUEPipeline(**models.components())
    fast = TiUEPipeline(**models.copy().components())
    for pipe in (eager, fast):
        pipe.set_progress_bar_config(disable=True)
    fast.enable_fast_path()
    timesteps, coeffs = loopfree_coefficients(models.ddim_scheduler(), STEPS)
    plain = PlainOnePass(models.copy().unet, timesteps, coeffs).eval()
    core = ov.Core()
    for batch in batches:
        noise = torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        cond = paper.encode_text(["a red circle"] * batch)
        text = cond.text
        with torch.no_grad():
            reference = paper.sample_latents(noise, cond)
            began = time.perf_counter()
            model = ov.convert_model(plain, example_input=(noise, text))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
            print(f"b{batch}: OpenVINO convert + compile {time.perf_counter() - began:.1f} s")
            request = compiled.create_infer_request()
            inputs = (noise.numpy(), text.numpy())

            def openvino_call():
                return request.infer(inputs)[0]

            def tiue_call(pipe):
                return lambda: pipe(prompt_embeds=text, latents=noise, num_inference_steps=STEPS, height=128,
                                    width=128, output_type="latent").images

            for name, z0 in (("openvino", torch.from_numpy(openvino_call())), ("fast", tiue_call(fast)()),
                             ("eager", tiue_call(eager)())):
                error = float((z0 - reference).abs().max() / reference.abs().max())
                print(f"b{batch}: {name} z_0 relative error against the paper's way {error:.1e}")
            times = timed({
                "d-unet (paper's way)": lambda: paper.sample_latents(noise, cond),
                "e-unet (tiue eager)": tiue_call(eager),
                "f-unet (tiue fast path)": tiue_call(fast),
                "openvino": openvino_call,
            })
        base = times["d-unet (paper's way)"]
        for name, values in times.items():
            ratios = sorted(a / b for a, b in zip(values, base))
            print(f"b{batch}: {name:26s} {statistics.median(values) * 1e3:8.1f} ms  paired ratio to d "
                  f"{statistics.median(ratios):.3f} (quartiles {ratios[2]:.3f}-{ratios[6]:.3f})")


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [1, 4])
