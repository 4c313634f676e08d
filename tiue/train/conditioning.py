"""What the distillation conditions every UNet on, for SD and SDXL teachers alike.

A `Conditioning` is the data: the text embeddings the UNet cross-attends to and, for SDXL-class
UNets (addition_embed_type="text_time"), the added conditions (pooled text embedding and the six
time ids). A `PromptEncoder` turns captions into it. The rest of the trainer handles one
Conditioning whatever the teacher is, so SD and SDXL share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Conditioning", "PromptEncoder", "as_conditioning", "xl_time_ids"]


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

    def unet_kwargs(self) -> dict:
        """Keyword arguments of a UNet2DConditionModel forward."""
        kwargs = {"encoder_hidden_states": self.text}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


def as_conditioning(value: Conditioning | torch.Tensor) -> Conditioning:
    """A bare (B, L, D) text tensor is the whole conditioning of an SD 1.x/2.x UNet."""
    return value if isinstance(value, Conditioning) else Conditioning(value)


def xl_time_ids(resolution: int) -> tuple[int, ...]:
    """SDXL's micro-conditioning for square training images: original size, crop corner (0, 0),
    target size, as diffusers' SDXL pipeline sets them by default for a resolution x resolution image."""
    return (resolution, resolution, 0, 0, resolution, resolution)


class PromptEncoder:
    """Captions to a Conditioning: one call of each frozen text encoder.

    SD: `text_encoders=(text_encoder,)`. SDXL: both encoders (the second one a
    CLIPTextModelWithProjection) and `time_ids`, the six micro-conditioning ids every row gets.
    force_zeros_for_empty_prompt (SDXL pipelines' setting): the null prompt is zeros rather than
    the embedding of "", as the teacher's own pipeline guides with it.
    """

    def __init__(
        self,
        tokenizers: Sequence,
        text_encoders: Sequence[torch.nn.Module],
        device: torch.device,
        time_ids: Sequence[int] | None = None,
        force_zeros_for_empty_prompt: bool = False,
    ):
        if len(tokenizers) != len(text_encoders) or len(text_encoders) not in (1, 2):
            raise ValueError(f"PromptEncoder: one or two (tokenizer, text encoder) pairs, got {len(tokenizers)} and {len(text_encoders)}")
        if (len(text_encoders) == 2) != (time_ids is not None):
            raise ValueError("PromptEncoder: time_ids go with two text encoders (SDXL), and only then")
        self.tokenizers, self.text_encoders = tuple(tokenizers), tuple(text_encoders)
        self.device = device
        self.time_ids = None if time_ids is None else tuple(int(v) for v in time_ids)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    @property
    def is_xl(self) -> bool:
        return self.time_ids is not None

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Conditioning:
        if not self.is_xl:
            from tiue.text import encode_prompt_embeddings

            return Conditioning(encode_prompt_embeddings(self.tokenizers[0], self.text_encoders[0], prompts, self.device))
        from tiue.pipeline_xl import encode_xl_prompt

        text, pooled = encode_xl_prompt(self.tokenizers, self.text_encoders, (prompts, prompts), self.device)
        time_ids = torch.tensor([self.time_ids], dtype=text.dtype, device=self.device).repeat(len(prompts), 1)
        return Conditioning(text, {"text_embeds": pooled, "time_ids": time_ids})

    def null(self) -> Conditioning:
        """The empty prompt's conditioning, one row: the unconditional half of guidance and the
        dropped captions of the fake-score loss."""
        empty = self([""])
        if not (self.is_xl and self.force_zeros_for_empty_prompt):
            return empty
        return Conditioning(torch.zeros_like(empty.text), dict(empty.added, text_embeds=torch.zeros_like(empty.added["text_embeds"])))
