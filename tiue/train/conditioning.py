"""Captions to the Conditioning every UNet of a distillation step is given, SD or SDXL.

A `tiue.conditioning.Conditioning` is the data: the text embeddings the UNet cross-attends to
and, for SDXL-class UNets, the added conditions (pooled text embedding and the six time ids).
A `PromptEncoder` makes it from captions; the rest of the trainer handles one Conditioning
whatever the teacher is, so SD and SDXL share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tiue.conditioning import Conditioning, as_conditioning

__all__ = ["Conditioning", "PromptEncoder", "as_conditioning", "xl_time_ids"]


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
