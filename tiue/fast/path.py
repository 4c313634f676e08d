"""FastPath: the compiled (and on CUDA, graph-captured) one-pass sampler of a TiUEPipeline."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch

from tiue.fast.fusion import fuse_projections, unfuse_projections
from tiue.fast.graphs import GraphCache, GraphKey
from tiue.fast.weight_watch import WeightWatch
from tiue.loopfree import OnePass

__all__ = [
    "BACKENDS", "MAX_SIGNATURES", "FastPath", "FastPathStats", "check_backend", "check_compile_mode", "default_backend",
]

_log = logging.getLogger("tiue.fast")

# torch.compile modes that make inductor capture CUDA graphs of its own: inside our capture they
# would nest, which CUDA does not allow.
INDUCTOR_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(compile_mode: str | None, cuda_graphs: bool) -> None:
    if cuda_graphs and compile_mode in INDUCTOR_GRAPH_MODES:
        raise ValueError(
            f"compile_mode: {compile_mode!r} makes inductor capture its own CUDA graphs, which cannot "
            "nest inside the fast path's capture; use compile_mode=None or 'max-autotune-no-cudagraphs', "
            f"or cuda_graphs=False to let inductor capture"
        )


BACKENDS = ("inductor", "openvino")

# How many input signatures one fast path compiles (and captures) before it refuses a new one. A
# signature is what the compiled pass is specialised to: the shapes and dtypes of the latents and
# text (batch, height, width), K with its timesteps and coefficients, decode or not, guided or not,
# SDXL's added conditions, and (without CUDA graphs) whether the call runs in inference mode.
# Values that change per call (the guidance scale, the text, the noise) are tensors, not part of it.
MAX_SIGNATURES = 32
# Dynamo's own recompile limits, per function and in all, while the fast path compiles: high enough
# that its bound (max_signatures) is the one that applies, not dynamo's default of 8 per function,
# which fullgraph=True turns into a hard failure.
_DYNAMO_LIMITS = {"recompile_limit": 1024, "accumulated_recompile_limit": 4096}


def check_max_signatures(max_signatures) -> None:
    if isinstance(max_signatures, bool) or not isinstance(max_signatures, int) or max_signatures < 1:
        raise ValueError(f"max_signatures: expected a positive integer, got {max_signatures!r}")


@contextlib.contextmanager
def dynamo_room():
    """Lift dynamo's recompile limits to _DYNAMO_LIMITS (never lower them) for the block."""
    from torch._dynamo import config

    limits = {name: max(value, getattr(config, name)) for name, value in _DYNAMO_LIMITS.items()}
    with config.patch(**limits):
        yield


def default_backend(device, dtype, compile, compile_mode, freeze_weights, cuda_graphs) -> str:
    """"openvino" where it applies and is installed (a compiled fp32 CPU pass with no inductor
    settings), else "inductor"."""
    from tiue.fast.openvino import openvino_unavailable_reason

    plain_cpu = device.type == "cpu" and dtype == torch.float32 and compile
    inductor_settings = compile_mode is not None or freeze_weights or cuda_graphs
    if plain_cpu and not inductor_settings and openvino_unavailable_reason() is None:
        return "openvino"
    return "inductor"


def check_backend(backend, device, dtype, compile_mode, freeze_weights, cuda_graphs) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend != "openvino":
        return
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(
            f"backend='openvino': runs fp32 pipelines on the CPU only; the UNet is {dtype} on {device} "
            "(use backend='inductor')"
        )
    if compile_mode is not None or freeze_weights or cuda_graphs:
        raise ValueError(
            "backend='openvino': compile_mode, freeze_weights and cuda_graphs are inductor settings; "
            f"got compile_mode={compile_mode!r}, freeze_weights={freeze_weights}, cuda_graphs={cuda_graphs}"
        )


@dataclass
class FastPathStats:
    """Seconds spent compiling (first call of each new shape) and capturing CUDA graphs."""

    compile_seconds: float = 0.0
    capture_seconds: float = 0.0
    compiled_signatures: int = 0
    captured_graphs: int = 0
    stale_drops: int = 0  # times the weights moved after capture and the graphs were recaptured


class FastPath:
    """Applies the fast-path settings to a TiUE UNet and a VAE and runs the one pass on them.

    Args:
        tiue_unet: the loop-free view of the UNet; its UNet and `vae` are changed in place
            (fused projections, memory format; undone by `remove`).
        vae: the VAE that decodes.
        compile: torch.compile the one pass with fullgraph=True (no graph breaks).
        cuda_graphs: capture one CUDA graph per input signature; None means "on CUDA, yes".
        fuse_qkv: fuse attention q/k/v projections (k/v for cross-attention).
        channels_last: channels_last memory format for the UNet and the VAE.
        compile_mode: torch.compile mode (None: inductor's default). With CUDA graphs on, the modes
            that capture graphs of their own ("reduce-overhead", "max-autotune") are refused.
        freeze_weights: inductor's freezing: the weights become constants of the compiled code,
            which folds them and (on CPU) prepacks them for oneDNN. New weights then need a
            recompile (TiUEPipeline.load_unet_weights does it). Needs `compile`, no `compile_mode`.
        backend: "inductor" (torch.compile) or "openvino" (tiue.fast.openvino: the pass converted
            to an OpenVINO model per input signature, fp32, CPU only; the weights become
            constants as with freeze_weights; channels_last, compile_mode and freeze_weights do
            not apply to it). None picks "openvino" for a compiled fp32 CPU pass with inductor's
            defaults when the openvino package is installed (it is faster there), else "inductor".
        max_signatures: how many input signatures (see MAX_SIGNATURES) it compiles and captures;
            a call with one more raises instead of growing compiled code and graphs without end.
    """

    def __init__(
        self, tiue_unet, vae, compile=True, cuda_graphs=None, fuse_qkv=True, channels_last=True, compile_mode=None,
        freeze_weights=False, backend=None, max_signatures=MAX_SIGNATURES,
    ):
        from tiue.attention import TiUECrossAttnProcessor

        unet = tiue_unet.unet
        device = unet.device
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if backend is None:
            backend = default_backend(device, unet.dtype, compile, compile_mode, freeze_weights, cuda_graphs)
        check_backend(backend, device, unet.dtype, compile_mode, freeze_weights, cuda_graphs)
        if backend == "openvino":
            channels_last = False  # OpenVINO picks its own layouts
        check_compile_mode(compile_mode, cuda_graphs)
        if freeze_weights and (not compile or compile_mode is not None):
            raise ValueError(
                f"freeze_weights: needs compile=True and compile_mode=None (torch.compile takes either a mode "
                f"or inductor options), got compile={compile}, compile_mode={compile_mode!r}"
            )
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs: True needs the pipeline on a CUDA device, it is on {device}")
        check_max_signatures(max_signatures)
        self.max_signatures = max_signatures
        self.tiue_unet, self.unet, self.vae = tiue_unet, unet, vae
        self.stats = FastPathStats()
        self.channels_last = channels_last
        self._fused: dict = {}
        if fuse_qkv:
            for model in (unet, vae):
                self._fused.update(fuse_projections(model, keep=(TiUECrossAttnProcessor,)))
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        self.one_pass = OnePass(tiue_unet, vae)
        self.freeze_weights = freeze_weights
        self.backend = backend
        if backend == "openvino":
            from tiue.fast.openvino import OpenVINOPass

            self._run = OpenVINOPass(self.one_pass)
        elif not compile:
            self._run = self.one_pass
        elif freeze_weights:
            # The weights become constants of the code, not inputs with strides to assert.
            self._run = torch.compile(self.one_pass, fullgraph=True, dynamic=False, options={"freezing": True})
        else:
            compiled = torch.compile(_LayoutKeyed(self.one_pass), fullgraph=True, dynamic=False, mode=compile_mode)
            self._run = lambda *args: compiled(self._weights.relayouts, *args)
        self._compiled = compile or backend == "openvino"
        self._seen: set[GraphKey] = set()
        self.graphs = GraphCache(use_cuda_graphs=cuda_graphs)
        # Captured graphs bake weight addresses in; inductor's code bakes their strides in (its
        # asserts fail on others), and dynamo does not always check them (see _LayoutKeyed).
        keyed = compile and backend == "inductor" and not freeze_weights
        self._weights = WeightWatch((unet, vae)) if cuda_graphs or keyed else None
        # (timesteps, dtype, device) -> (the timesteps on the device, the K decoders' embeddings)
        self._step_constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def bakes_weights(self) -> bool:
        """Whether the compiled pass holds the weights as constants (new weights need a rebuild)."""
        return self.freeze_weights or self.backend == "openvino"

    # -- per-K constants -----------------------------------------------------------------

    def step_constants(
        self, timesteps: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps as a device tensor and the K decoders' timestep embeddings, made once per
        (timesteps, dtype, device): later calls copy nothing to the device and read nothing back."""
        key = (timesteps, dtype, str(device))
        if key not in self._step_constants:
            # Never inference tensors (a first call in inference mode would make them so): they
            # are refreshed in place after new weights, and graphs are captured reading them.
            with torch.inference_mode(False), torch.no_grad():
                steps = torch.tensor(timesteps, device=device)
                emb = self.tiue_unet.time_embedding(steps, dtype)
            self._step_constants[key] = (steps, emb)
        return self._step_constants[key]

    @torch.no_grad()
    def refresh_timestep_embeddings(self) -> None:
        """Recompute cached embeddings in place after new weights (graphs hold their storage)."""
        for (_, dtype, _), (steps, emb) in self._step_constants.items():
            emb.copy_(self.tiue_unet.time_embedding(steps, dtype))

    # -- running -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self, latents, text, timesteps, coeffs, decode: bool, guidance_scale: float | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # moved() first: it also takes the new storage as the norm for the next call.
        if self._weights is not None and self._weights.moved() and len(self.graphs) > 0:
            self.graphs.clear()
            self.graphs.stale_drops += 1
            self.stats.stale_drops += 1
            self._step_constants.clear()
            self._seen.clear()
            _log.warning(
                "fast path: the UNet or VAE weights moved since the CUDA graphs were captured "
                "(.to(), offload, a LoRA fuse or a memory-format change); recapturing (and recompiling where "
                "their strides, dtypes or devices changed)"
            )
        step_key = _as_key(timesteps)
        timesteps, temb = self.step_constants(step_key, latents.dtype, self.unet.device)
        coeffs = tuple(float(c) for c in coeffs)
        if self.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        # SDXL's added conditions are per-call inputs like the text (graph inputs, not constants).
        added_keys = tuple(sorted(added_cond_kwargs or {}))
        inputs = (latents, text, *(added_cond_kwargs[k] for k in added_keys))
        guided = guidance_scale is not None
        if guided:
            # A tensor input, so that a new scale runs the same compiled code and graph.
            inputs += (torch.full((), float(guidance_scale), dtype=torch.float32, device=latents.device),)
        # Graphs are captured outside inference mode and serve calls in it too; compiled code
        # without graphs is specialised to it (its inputs are inference tensors there).
        inference = None if self.graphs.use_cuda_graphs else torch.is_inference_mode_enabled()
        key = GraphKey.of(inputs, extra=(step_key, coeffs, decode, guided, added_keys, inference))

        def one_pass(latents, text, *rest):
            added_kwargs = dict(zip(added_keys, rest)) if added_keys else None
            scale = rest[len(added_keys)] if guided else None
            return self._run(latents, text, timesteps, temb, coeffs, decode, scale, added_kwargs)

        first_time = key not in self._seen
        if first_time and (self._compiled or self.graphs.use_cuda_graphs) and len(self._seen) >= self.max_signatures:
            raise RuntimeError(
                f"fast path: already compiled for max_signatures={self.max_signatures} input signatures "
                f"(batch, size, K, dtype, decode, guided or not); this call needs another ({_describe(key)}). "
                "Pass a larger max_signatures to enable_fast_path, or call enable_fast_path() again to start afresh"
            )
        start = time.perf_counter()
        if self.graphs.use_cuda_graphs:
            captured_before = self.graphs.capture_seconds
            with dynamo_room() if first_time else contextlib.nullcontext():
                out = self.graphs.run(key, one_pass, inputs)
            if first_time:
                self.stats.capture_seconds += self.graphs.capture_seconds - captured_before
                self.stats.captured_graphs += 1
                # Capture warm-up runs include the compile: book the rest as compile time.
                self.stats.compile_seconds += max(
                    0.0, time.perf_counter() - start - (self.graphs.capture_seconds - captured_before)
                )
        elif first_time:
            with dynamo_room():
                out = one_pass(*inputs)
            if self._compiled:
                self.stats.compile_seconds += time.perf_counter() - start
        else:
            out = self._call_seen(one_pass, inputs)
        if first_time:
            self._seen.add(key)
            self.stats.compiled_signatures += 1
        return out

    @staticmethod
    def _call_seen(one_pass, inputs) -> torch.Tensor:
        """A signature compiled before. Dynamo still recompiles it when its guards fail (weights
        moved to another device or dtype, autocast turned on): past dynamo's default limit that
        is a hard failure under fullgraph=True, so it is retried with the fast path's limits. The
        failure comes before anything runs, so the retry repeats nothing."""
        from torch._dynamo.exc import FailOnRecompileLimitHit

        try:
            return one_pass(*inputs)
        except FailOnRecompileLimitHit:
            with dynamo_room():
                return one_pass(*inputs)

    def remove(self) -> None:
        """Undo fusion and channels_last; drop compiled code and graphs."""
        unfuse_projections(self.unet, self._fused)
        unfuse_projections(self.vae, self._fused)
        if self.channels_last:
            self.unet.to(memory_format=torch.contiguous_format)
            self.vae.to(memory_format=torch.contiguous_format)
        self.graphs.clear()
        self._step_constants.clear()
        if self.backend == "openvino":
            self._run.clear()


class _LayoutKeyed(torch.nn.Module):
    """The pass, compiled per layout of the weights: forward's first argument counts the weight
    watch's relayouts, and comparing it makes dynamo guard its value, so new strides (a
    memory-format change), shapes, dtypes or devices of the weights recompile. Dynamo's own guards
    on parameter strides did not: with torch 2.11 on an H200 the code compiled for channels_last
    weights ran on contiguous ones and failed its stride asserts (likely its default
    use_recursive_dict_tags_for_guards, which skips guards under modules whose dicts did not
    change; a memory-format change gives the same Parameter objects new storage, no dict moves)."""

    def __init__(self, one_pass: OnePass):
        super().__init__()
        self.one_pass = one_pass

    def forward(self, relayouts: int, *args):
        if relayouts < 0:
            raise ValueError(f"relayouts: expected a count, got {relayouts}")
        return self.one_pass(*args)


def _as_key(timesteps) -> tuple[int, ...]:
    """Timesteps as Python ints: the pipeline passes a CPU tensor, so this reads no device."""
    if isinstance(timesteps, torch.Tensor):
        return tuple(int(t) for t in timesteps.tolist())
    return tuple(int(t) for t in timesteps)


def _describe(key: GraphKey) -> str:
    (latents, *_), (steps, *_) = key.shapes, key.extra
    return f"latents {tuple(latents)}, K={len(steps)}"
