"""The Time-independent Unified Encoder: a diffusers UNet split into encoder and decoder.

The encoder (conv_in, down blocks, mid block) runs once, at the first timestep, on the
initial noise. The decoder (up blocks, conv_norm_out, conv_act, conv_out) runs for all K
timesteps as one batch in timestep-major layout: row k*B + b is timestep k, prompt b.
Both halves are composed from the wrapped UNet's own blocks; parameters are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch import nn

__all__ = ["EncoderFeatures", "TiUEUNet", "check_splittable"]


@dataclass
class EncoderFeatures:
    """What the decoder needs from the encoder, for a batch of B samples.

    skips: the down path's residual outputs in the order the down blocks produced them
        (conv_in output first), each (B, C_i, H_i, W_i).
    mid: the mid block's output (or the last down output when the UNet has no mid block).
    """

    skips: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.mid.shape[0]


# Config keys whose features cannot be split exactly, with the value that means "off".
_UNSUPPORTED_CONFIG = {
    "addition_embed_type": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim_type": None,
    "encoder_hid_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
}


def check_splittable(unet: nn.Module) -> None:
    """Raise if `unet` is not a UNet2DConditionModel whose forward the split reproduces exactly."""
    if not isinstance(unet, UNet2DConditionModel):
        raise TypeError(
            f"unet: expected a diffusers UNet2DConditionModel (a Stable Diffusion 1.x/2.x UNet), "
            f"got {type(unet).__name__}"
        )
    config = unet.config
    for key, off_value in _UNSUPPORTED_CONFIG.items():
        value = config.get(key, off_value)
        if value != off_value:
            raise NotImplementedError(
                f"TiUEUNet cannot split a UNet with config {key}={value!r} exactly "
                f"(supported: {key}={off_value!r}, as in Stable Diffusion 1.x/2.x)"
            )


def _repeat_batch(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) -> (k*B, ...) in timestep-major order, row j*B + b = x[b].

    Expanding first keeps this a free view when B == 1; otherwise reshape has to copy, which
    is why the decoder calls this per up block, just before the block needs it.
    """
    return x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])


class TiUEUNet(nn.Module):
    """Loop-free view of a `UNet2DConditionModel`: encode once, decode K timesteps as one batch.

    Args:
        unet: a Stable Diffusion 1.x / 2.x UNet. It is held by reference; no parameter is copied.
        shared_text_attention: install `TiUECrossAttnProcessor` on the decoder's cross-attention
            layers, so each projects the text keys/values once per prompt batch instead of once
            per timestep. It computes the same function as diffusers' own processor.
    """

    def __init__(self, unet: UNet2DConditionModel, shared_text_attention: bool = True):
        super().__init__()
        check_splittable(unet)
        self.unet = unet
        # A plain list, not a ModuleList: these modules are already registered under unet.
        self._decoder_cross_attention = [
            m for m in unet.up_blocks.modules() if getattr(m, "is_cross_attention", False)
        ]
        if shared_text_attention:
            from tiue.attention import install_shared_text_attention

            install_shared_text_attention(unet.up_blocks)

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # -- time embedding ------------------------------------------------------------------

    def time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Timestep embedding after the UNet's embedding MLP and optional activation: (T, D)."""
        unet = self.unet
        t_emb = unet.time_proj(timesteps.reshape(-1)).to(dtype=dtype)
        emb = unet.time_embedding(t_emb, None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        return emb

    # -- the two halves ------------------------------------------------------------------

    def encode(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor,
    ) -> EncoderFeatures:
        """Run conv_in, the down blocks and the mid block once at a single timestep."""
        unet = self.unet
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.numel() != 1:
            raise ValueError(
                f"timestep: the encoder runs at one timestep, got {timestep.numel()} values"
            )
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.time_embedding(timestep, sample.dtype).expand(batch, -1)

        hidden = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(
                    hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states
                )
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden = unet.mid_block(hidden, emb)
        return EncoderFeatures(skips=skips, mid=hidden)

    def decode(
        self,
        features: EncoderFeatures,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder for every timestep in one batched pass.

        Args:
            features: the encoder's output for B samples.
            timesteps: (K,) timesteps, in scheduler order.
            encoder_hidden_states: (B, L, D) text embeddings, shared by all K decoders.
            timestep_embeddings: optional precomputed `time_embedding(timesteps)`, (K, D).

        Returns:
            (K, B, C, H, W): the model output (epsilon, v or sample) of each decoder step.
        """
        unet = self.unet
        timesteps = torch.as_tensor(timesteps, device=features.mid.device).reshape(-1)
        num_steps, batch = timesteps.numel(), features.batch_size
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states: expected batch {batch} (the encoder's), "
                f"got {encoder_hidden_states.shape[0]}"
            )
        dtype = features.mid.dtype
        if timestep_embeddings is None:
            timestep_embeddings = self.time_embedding(timesteps, dtype)
        # (K, D) -> (K*B, D), timestep-major: small, so a real copy is fine.
        emb = timestep_embeddings.repeat_interleave(batch, dim=0)
        text = self._decoder_text(encoder_hidden_states, num_steps)

        height, width = features.skips[0].shape[-2:]
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = height % up_factor != 0 or width % up_factor != 0

        hidden = _repeat_batch(features.mid, num_steps)
        skips = features.skips
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            res = tuple(_repeat_batch(s, num_steps) for s in block_skips)
            is_final = i == len(unet.up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and not is_final) else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(
                    hidden_states=hidden,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=text,
                    upsample_size=upsample_size,
                )
            else:
                hidden = block(
                    hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size
                )
            del res
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        hidden = unet.conv_out(hidden)
        return hidden.reshape(num_steps, batch, *hidden.shape[1:])

    def _decoder_text(self, encoder_hidden_states: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Text for the decoder's cross-attention: B rows when every decoder cross-attention
        layer projects shared text once per prompt batch, else repeated to K*B rows."""
        if self._shares_text_across_steps():
            return encoder_hidden_states
        return _repeat_batch(encoder_hidden_states, num_steps)

    def _shares_text_across_steps(self) -> bool:
        # Checked per call: a later set_attn_processor (e.g. fused QKV) may replace ours.
        from tiue.attention import TiUECrossAttnProcessor

        layers = self._decoder_cross_attention
        return bool(layers) and all(isinstance(m.processor, TiUECrossAttnProcessor) for m in layers)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """Encode at timesteps[0], decode at every timestep: (K, B, C, H, W)."""
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1)
        features = self.encode(sample, timesteps[0], encoder_hidden_states)
        return self.decode(features, timesteps, encoder_hidden_states)
