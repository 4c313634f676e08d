"""What a UNet is conditioned on besides the timestep, as one piece of data.

SD 1.x / 2.x UNets take the text embeddings alone; SDXL-class UNets (addition_embed_type
"text_time") also take added conditions, the pooled text embedding and six time ids, which make
the added embedding summed with the timestep embedding. Code that passes a Conditioning on needs
no SDXL branch: the trainer, and the benchmarks' rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Conditioning", "as_conditioning"]


@dataclass(frozen=True)
class Conditioning:
    """text: (B, L, D); added: None (SD 1.x/2.x) or {"text_embeds": (B, P), "time_ids": (B, 6)}."""

    text: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def _map(self, fn) -> Conditioning:
        added = None if self.added is None else {k: fn(v) for k, v in self.added.items()}
        return Conditioning(fn(self.text), added)

    def expand(self, batch: int) -> Conditioning:
        """A one-row conditioning repeated to `batch` rows (a view)."""
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    def to(self, *args, **kwargs) -> Conditioning:
        return self._map(lambda x: x.to(*args, **kwargs))

    def where(self, keep: torch.Tensor, other: Conditioning) -> Conditioning:
        """Row b from self where keep[b], else from other (same batch size)."""
        def pick(mine, theirs):
            mask = keep.reshape(-1, *([1] * (mine.ndim - 1)))
            return torch.where(mask, mine, theirs.to(mine.dtype))

        added = None if self.added is None else {k: pick(v, other.added[k]) for k, v in self.added.items()}
        return Conditioning(pick(self.text, other.text), added)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        added = None
        if items[0].added is not None:
            added = {k: torch.cat([c.added[k] for c in items]) for k in items[0].added}
        return Conditioning(torch.cat([c.text for c in items]), added)

    def repeat(self, times: int) -> Conditioning:
        """Every row copied `times` times along the batch: row k*B + b is copy k of row b."""
        return self._map(lambda x: x.repeat(times, *([1] * (x.ndim - 1))))

    def unet_kwargs(self) -> dict:
        """Keyword arguments of a UNet2DConditionModel (or TiUEUNet) forward."""
        kwargs = {"encoder_hidden_states": self.text}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs

    def pipeline_kwargs(self) -> dict:
        """Precomputed-embedding arguments of a TiUEPipeline / TiUEXLPipeline (or diffusers SD /
        SDXL pipeline) call; SDXL pipelines make the time ids from height and width."""
        if self.added is None:
            return {"prompt_embeds": self.text}
        return {"prompt_embeds": self.text, "pooled_prompt_embeds": self.added["text_embeds"]}


def as_conditioning(value: Conditioning | torch.Tensor) -> Conditioning:
    """A bare (B, L, D) text tensor is the whole conditioning of an SD 1.x/2.x UNet."""
    return value if isinstance(value, Conditioning) else Conditioning(value)
