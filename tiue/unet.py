"""The Time-independent Unified Encoder: a diffusers UNet split into encoder and decoder.

The encoder (conv_in, down blocks, mid block) runs once, at the first timestep, on the
initial noise. The decoder (up blocks, conv_norm_out, conv_act, conv_out) runs for all K
timesteps as one batch in timestep-major layout: row k*B + b is timestep k, prompt b.
Both halves are composed from the wrapped UNet's own blocks; parameters are shared.

SDXL-class UNets (addition_embed_type="text_time") condition every block on emb(t) + aug, where
aug comes from the pooled text embedding and the six time ids and does not depend on t. The
encoder computes aug once per sample (with the UNet's own get_aug_embed) and hands it to the
decoder, which adds it to each of the K timestep embeddings.
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
    added_embedding: torch.Tensor | None = None  # aug, (B, D), for UNets with added conditions


    @property
    def batch_size(self) -> int:
        return self.mid.shape[0]


# Config keys whose features cannot be split exactly, with the value that means "off".
_UNSUPPORTED_CONFIG = {
    "addition_embed_type": (None, "text_time"),
    "class_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim_type": None,
    "encoder_hid_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
}
# The added conditions a "text_time" (SDXL) UNet takes, as in its forward's added_cond_kwargs.
ADDED_CONDITION_KEYS = ("text_embeds", "time_ids")


def check_splittable(unet: nn.Module) -> None:
    """Raise if `unet` is not a UNet2DConditionModel whose forward the split reproduces exactly."""
    if not isinstance(unet, UNet2DConditionModel):
        raise TypeError(
            f"unet: expected a diffusers UNet2DConditionModel (a Stable Diffusion 1.x/2.x UNet), "
            f"got {type(unet).__name__}"
        )
    config = unet.config
    for key, supported in _UNSUPPORTED_CONFIG.items():
        supported = supported if isinstance(supported, tuple) else (supported,)
        value = config.get(key, supported[0])
        if value not in supported:
            accepted = " or ".join(f"{key}={v!r}" for v in supported)
            raise NotImplementedError(
                f"TiUEUNet cannot split a UNet with config {key}={value!r} exactly "
                f"(supported: {accepted}, as in Stable Diffusion 1.x/2.x and SDXL)"
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
        self._has_decoder_cross_attention = len(self._decoder_cross_attention) > 0
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

    @property
    def has_added_conditions(self) -> bool:
        """True for SDXL-class UNets, which take added_cond_kwargs (text_embeds, time_ids)."""
        return self.unet.config.get("addition_embed_type") == "text_time"

    def time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Timestep embedding after the UNet's embedding MLP and optional activation: (T, D).

        With added conditions the UNet applies its activation to emb(t) + aug, so here it is
        left out and `_conditioning` applies it after the sum."""
        unet = self.unet
        t_emb = unet.time_proj(timesteps.reshape(-1)).to(dtype=dtype)
        emb = unet.time_embedding(t_emb, None)
        if unet.time_embed_act is not None and not self.has_added_conditions:
            emb = unet.time_embed_act(emb)
        return emb

    def added_embedding(
        self, added_cond_kwargs: dict | None, batch: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """aug (B, D) from the pooled text embedding and the time ids, by the UNet's own
        get_aug_embed; None for UNets without added conditions."""
        if not self.has_added_conditions:
            if added_cond_kwargs:
                raise ValueError(
                    f"added_cond_kwargs: this UNet (addition_embed_type=None) takes none, "
                    f"got keys {sorted(added_cond_kwargs)}"
                )
            return None
        missing = [k for k in ADDED_CONDITION_KEYS if k not in (added_cond_kwargs or {})]
        if missing:
            raise ValueError(
                f"added_cond_kwargs: a UNet with addition_embed_type='text_time' needs "
                f"{', '.join(ADDED_CONDITION_KEYS)}; missing {', '.join(missing)}"
            )
        for key in ADDED_CONDITION_KEYS:
            if added_cond_kwargs[key].shape[0] != batch:
                raise ValueError(
                    f"added_cond_kwargs: {key} must have one row per sample ({batch}), "
                    f"got shape {tuple(added_cond_kwargs[key].shape)}"
                )
        # get_aug_embed reads only emb's dtype and, for "text_time", ignores the hidden states.
        dtype_probe = torch.empty(0, dtype=dtype, device=added_cond_kwargs["text_embeds"].device)
        return self.unet.get_aug_embed(
            emb=dtype_probe, encoder_hidden_states=None, added_cond_kwargs=added_cond_kwargs
        )

    def _conditioning(self, emb: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
        """emb(t) + aug, then the UNet's time-embedding activation, as its forward does."""
        emb = emb + aug
        if self.unet.time_embed_act is not None:
            emb = self.unet.time_embed_act(emb)
        return emb

    # -- the two halves ------------------------------------------------------------------

    def encode(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None,
    ) -> EncoderFeatures:
        """Run conv_in, the down blocks and the mid block once at a single timestep.

        added_cond_kwargs: {"text_embeds": (B, P), "time_ids": (B, 6)} for SDXL-class UNets;
        their embedding aug is returned in the features for the decoder to reuse."""
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
        aug = self.added_embedding(added_cond_kwargs, batch, sample.dtype)
        if aug is not None:
            emb = self._conditioning(emb, aug)

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
        return EncoderFeatures(skips=skips, mid=hidden, added_embedding=aug)

    def decode(
        self,
        features: EncoderFeatures,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep_embeddings: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Run the decoder for every timestep in one batched pass.

        Args:
            features: the encoder's output for B samples.
            timesteps: (K,) timesteps, in scheduler order.
            encoder_hidden_states: (B, L, D) text embeddings, shared by all K decoders.
            timestep_embeddings: optional precomputed `time_embedding(timesteps)`, (K, D).
            added_cond_kwargs: SDXL-class UNets only; default: reuse the encoder's aug
                (`features.added_embedding`), which is what the one pass does.

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
        aug = features.added_embedding
        if added_cond_kwargs is not None or (aug is None and self.has_added_conditions):
            aug = self.added_embedding(added_cond_kwargs, batch, dtype)
        if aug is not None:
            # Row k*B + b is timestep k, sample b: aug[b] for every k.
            emb = self._conditioning(emb, aug.repeat(num_steps, 1))
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
        # Checked per call: a later set_attn_processor (e.g. fused QKV) may replace ours. A plain
        # loop over the layers: older dynamo (torch 2.11) cannot trace bool() of a list.
        from tiue.attention import TiUECrossAttnProcessor

        for layer in self._decoder_cross_attention:
            if not isinstance(layer.processor, TiUECrossAttnProcessor):
                return False
        return self._has_decoder_cross_attention

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Encode at timesteps[0], decode at every timestep: (K, B, C, H, W)."""
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1)
        features = self.encode(sample, timesteps[0], encoder_hidden_states, added_cond_kwargs)
        return self.decode(features, timesteps, encoder_hidden_states)
