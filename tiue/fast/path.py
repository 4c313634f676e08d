"""FastPath: the compiled (and on CUDA, graph-captured) one-pass sampler of a TiUEPipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tiue.fast.fusion import fuse_projections, unfuse_projections
from tiue.fast.graphs import GraphCache, GraphKey
from tiue.fast.one_pass import OnePass

__all__ = ["FastPath", "FastPathStats"]


@dataclass
class FastPathStats:
    """Seconds spent compiling (first call of each new shape) and capturing CUDA graphs."""

    compile_seconds: float = 0.0
    capture_seconds: float = 0.0
    compiled_signatures: int = 0
    captured_graphs: int = 0


class FastPath:
    """Applies the fast-path settings to a pipeline's models and runs the one pass.

    Args:
        pipe: the TiUEPipeline whose unet and vae are changed in place (undone by `remove`).
        compile: torch.compile the one pass with fullgraph=True (no graph breaks).
        cuda_graphs: capture one CUDA graph per input signature; None means "on CUDA, yes".
        fuse_qkv: fuse attention q/k/v projections (k/v for cross-attention).
        channels_last: channels_last memory format for the UNet and the VAE.
        compile_mode: torch.compile mode (None: inductor's default; CUDA graphs are ours).
    """

    def __init__(self, pipe, compile=True, cuda_graphs=None, fuse_qkv=True, channels_last=True, compile_mode=None):
        from tiue.attention import TiUECrossAttnProcessor

        device = pipe.unet.device
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs: True needs the pipeline on a CUDA device, it is on {device}")
        self.pipe = pipe
        self.stats = FastPathStats()
        self.channels_last = channels_last
        self._fused: dict = {}
        if fuse_qkv:
            for model in (pipe.unet, pipe.vae):
                self._fused.update(fuse_projections(model, keep=(TiUECrossAttnProcessor,)))
        if channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        self.one_pass = OnePass(pipe.tiue_unet, pipe.vae)
        self._run = (
            torch.compile(self.one_pass, fullgraph=True, dynamic=False, mode=compile_mode)
            if compile
            else self.one_pass
        )
        self._compiled = compile
        self._seen: set[GraphKey] = set()
        self.graphs = GraphCache(use_cuda_graphs=cuda_graphs)
        self._timestep_embeddings: dict[tuple, torch.Tensor] = {}

    # -- per-K constants -----------------------------------------------------------------

    def timestep_embeddings(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The K decoders' timestep embeddings, computed once per (timesteps, dtype)."""
        key = (tuple(timesteps.tolist()), dtype)
        if key not in self._timestep_embeddings:
            with torch.no_grad():
                emb = self.pipe.tiue_unet.time_embedding(timesteps.to(self.pipe.unet.device), dtype)
            self._timestep_embeddings[key] = emb
        return self._timestep_embeddings[key]

    @torch.no_grad()
    def refresh_timestep_embeddings(self) -> None:
        """Recompute cached embeddings in place after new weights (graphs hold their storage)."""
        for (timesteps, dtype), emb in self._timestep_embeddings.items():
            ts = torch.tensor(timesteps, device=emb.device)
            emb.copy_(self.pipe.tiue_unet.time_embedding(ts, dtype))

    # -- running -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, latents, text, timesteps, coeffs, decode: bool) -> torch.Tensor:
        device = self.pipe.unet.device
        timesteps = timesteps.to(device)
        temb = self.timestep_embeddings(timesteps, latents.dtype)
        coeffs = tuple(float(c) for c in coeffs)
        if self.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        key = GraphKey.of((latents, text), extra=(tuple(timesteps.tolist()), coeffs, decode))

        def one_pass(latents, text):
            return self._run(latents, text, timesteps, temb, coeffs, decode)

        first_time = key not in self._seen
        start = time.perf_counter()
        if self.graphs.use_cuda_graphs:
            captured_before = self.graphs.capture_seconds
            out = self.graphs.run(key, one_pass, (latents, text))
            if first_time:
                self.stats.capture_seconds += self.graphs.capture_seconds - captured_before
                self.stats.captured_graphs += 1
                # Capture warm-up runs include the compile: book the rest as compile time.
                self.stats.compile_seconds += max(
                    0.0, time.perf_counter() - start - (self.graphs.capture_seconds - captured_before)
                )
        else:
            out = one_pass(latents, text)
            if first_time and self._compiled:
                self.stats.compile_seconds += time.perf_counter() - start
        if first_time:
            self._seen.add(key)
            self.stats.compiled_signatures += 1
        return out

    def remove(self) -> None:
        """Undo fusion and channels_last; drop compiled code and graphs."""
        unfuse_projections(self.pipe.unet, self._fused)
        unfuse_projections(self.pipe.vae, self._fused)
        if self.channels_last:
            self.pipe.unet.to(memory_format=torch.contiguous_format)
            self.pipe.vae.to(memory_format=torch.contiguous_format)
        self.graphs.clear()
        self._timestep_embeddings.clear()
