"""Per-GPU peak memory of one `tiue train` optimizer step distilling SDXL-base 1.0, estimated on a CPU.

No GPU and no weights: every model is built on the meta device, then given empty fake tensors
(torch's FakeTensorMode: shapes and dtypes, no data, so no arithmetic runs), and one step is
traced under torch.distributed._tools.mem_tracker.MemTracker, which counts every live storage
and records the peak by category. The fake tensors sit on a fake "cpu" device (see DEVICE).

The step mirrors tiue.train.trainer.Trainer._micro_step + apply_updates + EMA.update:
student forward (encoder once, K decoders batched) -> KL + VSD loss (the teacher / fake-score
no-grad pass over 4B rows with per-sample adapters) -> backward; the LoRA loss on x0 detached
-> backward; clip_grad_norm_ of both; both Adam steps; EMA update; zero_grad(set_to_none).
Resident but outside autograd: the two SDXL text encoders (bf16) and the VAE (fp32).

    OMP_NUM_THREADS=1 python studies/sdxl_train_memory.py [--out studies/results/sdxl-train-memory.md]

Not included: the CUDA context (~0.5-1 GiB per process), cuBLAS/cuDNN workspaces, allocator
fragmentation and caching slack, NCCL buffers; DDP's gradient buckets are added as a computed line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

GIB = 2**30
# The device the fake tensors claim. "cuda" would be truer (autocast's CUDA op lists, 512-byte
# allocator rounding in MemTracker), but on a CPU-only build indexing or copying a fake cuda
# tensor fails in torch's Python bindings (CUDA device guards / lazy init) and autocast("cuda")
# disables itself, so the trace runs on a fake "cpu" device with CPU bf16 autocast.
DEVICE = "cpu"

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the suite's e2e package

# The SDXL-base 1.0 shapes the end-to-end suite's "sdxl" scale builds, and SD's DDPM schedule
# (SDXL's is the same: scaled_linear, 0.00085 to 0.012).
from e2e.models import (  # noqa: E402
    SDXL_TEXT_ENCODER_2_CONFIG as CLIP_BIGG,
    SDXL_TEXT_ENCODER_CONFIG as CLIP_L,
    SDXL_UNET_CONFIG as SDXL_UNET,
    SDXL_VAE_CONFIG as SDXL_VAE,
)

from tiue.schedule import SD21_SCHEDULER_CONFIG as SDXL_SCHEDULER  # noqa: E402


def materialize(module: torch.nn.Module) -> torch.nn.Module:
    """A module built on the meta device, its parameters and buffers replaced by empty tensors of
    the same shapes and dtypes on DEVICE, created under the active FakeTensorMode. (Module.to
    would swap_tensors, which fake tensors refuse; building on meta also skips weight init.)"""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=DEVICE), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=DEVICE)
    return module


def autocast_forward(module, dtype):
    """What accelerate.prepare does to a model under mixed precision: forward under autocast,
    outputs converted to fp32."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with torch.autocast(DEVICE, dtype=dtype):
            out = forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, tuple):
            return tuple(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out

    module.forward = wrapped
    return module


def make_tracker():
    """MemTracker, tracking only the per-device peak, and installing gradient hooks only on parameters that require grad
    (torch 2.13's MemTracker registers one on every parameter of a called module, which raises for
    frozen ones such as the teacher's base weights)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):
        def _update_peak_stats(self, peak_state) -> None:
            # Only the per-device peak: the stock method also walks every module's stats on every
            # op (O(ops x modules), hours for SDXL); module-wise peaks are not reported here.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            frozen = [p for p in module.parameters() if not p.requires_grad]
            total = [0, 0]
            if frozen:  # frozen parameters: tracked, no hooks
                for p in frozen:
                    total[0] += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(p, _param_type()))
                for b in module.buffers():
                    total[1] += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(b, _buffer_type()))
                trainable = [p for p in module.parameters() if p.requires_grad]
                holder = torch.nn.Module()
                holder._parameters.update({str(i): p for i, p in enumerate(trainable)})
                params, _ = super()._track_module_params_and_buffers(holder, install_grad_hooks)
                return total[0] + params, total[1]
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return Tracker()


def _param_type():
    from torch.distributed._tools.mem_tracker import _MemRefType

    return _MemRefType.PARAM


def _buffer_type():
    from torch.distributed._tools.mem_tracker import _MemRefType

    return _MemRefType.BUFFER


def build_frozen_parts(resident: bool, text_dtype):
    """SDXL's two text encoders (text_dtype) and VAE (fp32), frozen, on meta."""
    if not resident:
        return []
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype=text_dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)).to(dtype=text_dtype)
    for m in (te1, te2, vae):
        m.requires_grad_(False).eval()
    return [te1, te2, vae]


def param_bytes(module_or_params) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module) else module_or_params
    return sum(p.numel() * p.element_size() for p in params)


def estimate(unet_config: dict, *, batch: int = 1, num_steps: int = 4, resolution_latent: int | None = None,
             half_teacher: bool = False, checkpointing: bool = False, resident_frozen: bool = True,
             text_len: int = 77, mixed=torch.bfloat16, lora_rank: int | None = None,
             steady_state: bool = True) -> dict:
    """Trace one optimizer step under fake tensors; return byte counts (peak by category etc.).

    steady_state: Adam's state exists before the step (any step but a run's first), as it does
    while training; False: the first step, which creates it in optimizer.step()."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tiue.train.conditioning import Conditioning
    from tiue.train.config import TrainConfig
    from tiue.train.ema import EMA
    from tiue.train.models import add_fake_score_lora
    from tiue.train.randomness import StepDraws
    from tiue.train.step import DistillationStep
    from tiue.unet import TiUEUNet

    cfg = TrainConfig.__dataclass_fields__
    defaults = {name: cfg[name].default for name in ("lora_rank", "lora_alpha", "lora_targets", "learning_rate",
                                                      "learning_rate_lora", "guidance_scale", "lambda_kl",
                                                      "max_grad_norm", "ema_decay")}
    rank = lora_rank or defaults["lora_rank"]
    latent = resolution_latent or unet_config["sample_size"]
    # -- models, as tiue.train.setup.build_models / Trainer._prepare set them up, on meta -----
    with torch.device("meta"):
        teacher = UNet2DConditionModel(**unet_config)
        teacher.requires_grad_(False).eval()
        if half_teacher:
            teacher.to(dtype=mixed)
        lora_params = add_fake_score_lora(teacher, rank, defaults["lora_alpha"], defaults["lora_targets"])
        student_unet = UNet2DConditionModel(**unet_config)
        student_unet.requires_grad_(True).train()
        if checkpointing:
            student_unet.enable_gradient_checkpointing()
            teacher.enable_gradient_checkpointing()
        frozen = build_frozen_parts(resident_frozen, mixed)
    # The step's schedule is computed on real CPU tensors (it reads values); its device tensors
    # are replaced by fake ones below.
    scheduler = DDIMScheduler.from_config(SDXL_SCHEDULER)
    step = DistillationStep(
        student=None, fake_score=None, fake_score_unwrapped=teacher, scheduler=scheduler,
        null_text=torch.zeros(1, 1, 1), num_steps=num_steps, guidance_scale=defaults["guidance_scale"],
        lambda_kl=defaults["lambda_kl"], device=torch.device("cpu"),
    )
    step.coeffs = [float(c) for c in step.coeffs.reshape(-1).tolist()]  # read under fake mode otherwise
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        materialize(teacher)
        materialize(student_unet)
        for m in frozen:
            materialize(m)
        lora_params = [p for n, p in teacher.named_parameters() if ".fake_score." in n]
        assert lora_params and all(p.requires_grad and p.dtype == torch.float32 for p in lora_params)
        student = TiUEUNet(student_unet)
        student_model = autocast_forward(student, mixed)
        fake_score_model = autocast_forward(teacher, mixed)
        student_opt = torch.optim.Adam(student.parameters(), lr=defaults["learning_rate"])
        lora_opt = torch.optim.Adam(lora_params, lr=defaults["learning_rate_lora"])

        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(DEVICE)  # add_noise moves it there
        D = unet_config["cross_attention_dim"]
        P = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]

        def conditioning(rows):
            return Conditioning(
                torch.zeros(rows, text_len, D, dtype=mixed, device=DEVICE),
                {"text_embeds": torch.zeros(rows, P, dtype=mixed, device=DEVICE),
                 "time_ids": torch.zeros(rows, 6, dtype=mixed, device=DEVICE)},
            )

        null_text = conditioning(1)
        step.student, step.fake_score, step.null_text = student_model, fake_score_model, null_text
        step.timesteps = step.timesteps.to(DEVICE)
        step.alphas_cumprod = step.alphas_cumprod.to(DEVICE)
        ema = EMA(student_unet, defaults["ema_decay"])
        if steady_state:
            # A step after the first: Adam's state (exp_avg, exp_avg_sq, step) already exists and is
            # resident through the forward and backward passes. Adam's _init_group keeps it.
            for opt in (student_opt, lora_opt):
                for group in opt.param_groups:
                    for p in group["params"]:
                        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                                        "exp_avg_sq": torch.zeros_like(p)}

        tracker = make_tracker()
        frozen_tensors = [null_text.text, *null_text.added.values(), scheduler.alphas_cumprod, step.alphas_cumprod,
                          step.timesteps, *ema.shadow.values()]
        tracker.track_external(student, teacher, *frozen, student_opt, lora_opt, *frozen_tensors)
        before = tracker.get_tracker_snapshot("current")
        with tracker:
            # -- one micro-step (Trainer._micro_step) --------------------------------------
            shape = (batch, unet_config["in_channels"], latent, latent)
            draws = StepDraws(
                initial_noise=torch.randn(shape, device=DEVICE),
                vsd_timesteps=torch.full((batch,), 500, dtype=torch.long, device=DEVICE),
                vsd_noise=torch.randn(shape, device=DEVICE),
                lora_timesteps=torch.full((batch,), 500, dtype=torch.long, device=DEVICE),
                lora_noise=torch.randn(shape, device=DEVICE),
                lora_null_prompt=torch.zeros(batch, dtype=torch.bool, device=DEVICE),
            )
            text = conditioning(batch)
            result = step.student_losses(text, draws)
            result.loss.backward()
            after_student = tracker.get_tracker_snapshot("current")
            tracker.reset_mod_stats()  # module-wise stats only (the teacher runs twice); peaks are kept
            loss_lora = step.lora_loss(result.x0, text, draws)
            loss_lora.backward()
            del result, loss_lora
            # -- apply_updates: clip both, step both, clear grads; then EMA ----------------
            for params, opt in ((list(student.parameters()), student_opt), (lora_params, lora_opt)):
                torch.nn.utils.clip_grad_norm_(params, defaults["max_grad_norm"])
            student_opt.step()
            lora_opt.step()
            for opt in (student_opt, lora_opt):
                opt.zero_grad(set_to_none=True)
            ema.update(student_unet)
            del draws, text
        peak = tracker.get_tracker_snapshot("peak")
        end = tracker.get_tracker_snapshot("current")

    dev = torch.device(DEVICE)
    return dict(
        peak=peak.get(dev, {}), before=before.get(dev, {}), after_student=after_student.get(dev, {}), end=end.get(dev, {}),
        student_param_bytes=param_bytes(student), student_params=sum(p.numel() for p in student.parameters()),
        teacher_param_bytes=param_bytes(teacher), lora_param_bytes=param_bytes(lora_params),
        lora_params=sum(p.numel() for p in lora_params),
        frozen_param_bytes=sum(param_bytes(m) for m in frozen), ema_bytes=sum(t.numel() * 4 for t in ema.shadow.values()),
    )


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def category(snap: dict, name: str) -> int:
    return next((v for k, v in snap.items() if str(getattr(k, "value", k)) == name), 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="studies/results/sdxl-train-memory.md")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=4)
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python studies/sdxl_train_memory.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    rows = []
    started = time.perf_counter()
    for checkpointing in (False, True):
        for half_teacher in (False, True):
            t0 = time.perf_counter()
            r = estimate(SDXL_UNET, batch=args.batch, num_steps=args.num_steps, half_teacher=half_teacher,
                         checkpointing=checkpointing)
            r.update(checkpointing=checkpointing, half_teacher=half_teacher, seconds=time.perf_counter() - t0)
            print(f"checkpointing={checkpointing} half_teacher={half_teacher}: peak {gib(r['peak'].get('Total', 0))} GiB "
                  f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
            rows.append(r)
    total_s = time.perf_counter() - started

    cats = ["Parameter", "Buffer", "Gradient", "Activation", "Temp", "Optstate", "Other"]
    lines = [
        "# SDXL-base 1.0 distillation: estimated per-GPU peak memory of one `tiue train` step",
        "",
        f"Command: `{command}`",
        "",
        "A steady-state step (every step but the first: Adam's state is resident from the start). "
        f"Batch {args.batch} per GPU, K = {args.num_steps}, 1024 px (latent 128x128), bf16 autocast, Adam for the "
        "student and the fake-score LoRA (rank/targets: TrainConfig defaults), EMA (fp32) on the GPU, text encoders "
        "(bf16) and VAE (fp32) resident. GiB = 2^30 bytes.",
        "",
        "| gradient checkpointing | teacher weights | peak, traced (GiB) | " + " | ".join(f"{c} at peak" for c in cats)
        + " | + DDP grad buckets (computed) | peak + DDP (GiB) |",
        "|---|---|---|" + "---|" * len(cats) + "---|---|",
    ]
    for r in rows:
        peak = r["peak"]
        ddp = r["student_param_bytes"] + r["lora_param_bytes"]
        lines.append(
            f"| {'on' if r['checkpointing'] else 'off'} | {'bf16' if r['half_teacher'] else 'fp32'} | "
            f"**{gib(peak.get('Total', 0))}** | " + " | ".join(gib(category(peak, c)) for c in cats)
            + f" | {gib(ddp)} | **{gib(peak.get('Total', 0) + ddp)}** |"
        )
    r0 = rows[0]
    lines += [
        "",
        f"Resident before the step (fp32 teacher): {gib(r0['before'].get('Total', 0))} GiB = student "
        f"{r0['student_params'] / 1e9:.3f} B params fp32 ({gib(r0['student_param_bytes'])}) + teacher "
        f"({gib(r0['teacher_param_bytes'])} incl. LoRA {r0['lora_params'] / 1e6:.1f} M fp32) + text encoders and VAE "
        f"({gib(r0['frozen_param_bytes'])}) + EMA ({gib(r0['ema_bytes'])}). Adam state (2 fp32 copies of the student "
        "and the LoRA, resident since the first step) appears under Optstate.",
        "",
        "Method: models built on the meta device and given empty `torch._subclasses.fake_tensor.FakeTensorMode` "
        "tensors (no weights, no arithmetic); one step (tiue.train.step.DistillationStep: student_losses -> backward, lora_loss "
        "-> backward, clip_grad_norm_, both Adam steps, EMA update, zero_grad) traced under "
        "`torch.distributed._tools.mem_tracker.MemTracker` (with its per-module peak bookkeeping switched off for "
        "speed, and no gradient hooks on frozen weights), which counts live tensor storages. bf16 autocast is "
        "applied around each model's forward, as accelerate.prepare does. The fake tensors sit on a fake *CPU* "
        "device: on this CPU-only torch build fake `cuda` tensors cannot be indexed or copied (the Python "
        "bindings try to initialise CUDA) and `autocast(\"cuda\")` disables itself. So the trace uses CPU "
        "autocast's op lists (the same bf16 matmuls/convolutions, fp32 norms) and CPU SDPA (the fused flash "
        "kernel, which saves only the logsumexp, as CUDA flash/mem-efficient attention does), and sizes are not "
        "rounded to the CUDA allocator's 512-byte blocks (negligible here).",
        "",
        "DDP gradient buckets are computed, not traced: one more fp32 copy of the student's and the LoRA's "
        "gradients (accelerate's default DDP, gradient_as_bucket_view=False). DDP's Reducer allocates its buckets when it "
        "wraps the model and keeps them, so they add to every phase of the step, the traced peak included.",
        "",
        "Not included: the CUDA context (~0.5-1 GiB per process), cuBLAS/cuDNN/flash-attention workspaces, "
        "allocator fragmentation and cached-but-free blocks (real `max_memory_reserved` is typically 5-15% above "
        "allocated), NCCL buffers. Attention memory is what the ops' fake (meta) kernels allocate: SDPA outputs and "
        "the saved logsumexp of the fused kernels, not an N x N score matrix.",
        "",
        f"Runtime of this script: {total_s:.0f} s on a CPU.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
