"""The shapes world's models, each built and trained by its own module.

tokenizer: a CLIP tokenizer over the world's words. text_encoder: a small CLIPTextModel.
vae: a small AutoencoderKL trained on the world's images. teacher: the SD-shaped teacher
UNet, trained on VAE latents, saved with the others as a pipeline folder. features: the
feature network behind FID/PRDC and attribute accuracy. recipes: YAML recipes that retrain
each of them with one command (`tiue world train --config configs/shapes-*.yaml`).
"""
