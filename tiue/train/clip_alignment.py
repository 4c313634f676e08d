"""The optional CLIP text-image alignment loss: relu(tau - cos(text_feat, image_feat)).

The student's z_0 is decoded by the (frozen) VAE, resized and normalised for CLIP inside the
graph, so the loss backpropagates through the VAE decoder into the student. Text features come
from CLIP's own text tower, once per batch, without gradients. All CLIP weights are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ClipAlignment", "alignment_loss"]

# OpenAI CLIP's pixel statistics, used when the model folder has no preprocessor config.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def alignment_loss(image_features: torch.Tensor, text_features: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over the batch of relu(margin - cos(text, image))."""
    cos = F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)
    return F.relu(margin - cos).mean()


def _features(output) -> torch.Tensor:
    # transformers 4 returns the projected features; 5 returns an output whose pooler_output is.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipAlignment:
    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(model)
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise ValueError(f"--clip-model: cannot load a CLIP model from {model!r}: {str(error).splitlines()[0]}") from None
        self.model.requires_grad_(False).eval().to(device=device, dtype=dtype)
        self.device = device
        self.image_size = self.model.config.vision_config.image_size
        mean, std = _CLIP_MEAN, _CLIP_STD
        try:
            from transformers import CLIPImageProcessor

            processor = CLIPImageProcessor.from_pretrained(model)
            mean, std = processor.image_mean, processor.image_std
        except (OSError, ValueError):
            pass  # no preprocessor_config.json: OpenAI's statistics
        self.mean = torch.tensor(mean, device=device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).reshape(1, 3, 1, 1)

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        return _features(self.model.get_text_features(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        ))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [-1, 1] (a VAE decode), differentiable."""
        pixels = (images.float() + 1) / 2
        pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        pixels = (pixels - self.mean) / self.std
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)))
