"""Does a shapes teacher draw the captioned background, or the one its starting noise suggests?

    OMP_NUM_THREADS=1 python studies/shapes_background_probe.py MODEL [--steps 25] [--mean-free-noise]

Samples six captions that name six different backgrounds ("a red circle on a blue background",
...) with the same 32 starting noises each (DDIM loop, CFG 3) and reads each image's background
back with the embedded feature network. Prints, per caption, how often the background is the
captioned one and which backgrounds were drawn, then, per seed, how many distinct backgrounds
its six images have: 6 when the caption decides, 1 when the noise does. With
--mean-free-noise every starting noise has its per-channel mean removed (and is rescaled to unit
variance), to see whether the noise's mean alone carries the leak.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tiue.data.shapes import COLOURS, parse_caption
from tiue.eval.extractors import load_shapes_features
from tiue.sampling import load_pipeline

CAPTIONS = tuple(
    f"a {shape_colour} circle on a {background} background"
    for shape_colour, background in (
        ("red", "blue"), ("green", "white"), ("yellow", "black"), ("white", "red"), ("black", "green"), ("blue", "yellow")
    )
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--mean-free-noise", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = load_pipeline(args.model, "cpu", "fp32")
    pipe.set_progress_bar_config(disable=True)
    features = load_shapes_features()
    side = pipe.unet.config.sample_size
    noise = torch.randn(args.seeds, pipe.unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    if args.mean_free_noise:
        noise = noise - noise.mean((2, 3), keepdim=True)
        noise = noise / noise.std((2, 3), keepdim=True)

    colours = list(COLOURS)
    drawn = []
    for caption in CAPTIONS:
        images = pipe([caption] * args.seeds, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                      latents=noise.clone(), mode="loop", output_type="np").images
        pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
        _, predictions = features.features_and_predictions(pixels)
        backgrounds = predictions["background"]
        drawn.append(backgrounds)
        wanted = parse_caption(caption)["background"]
        counts = {colours[i]: int(n) for i, n in enumerate(np.bincount(backgrounds, minlength=len(colours))) if n}
        print(f"{caption:40s} captioned background drawn {np.mean(backgrounds == wanted):.2f}; drawn: {counts}")
    drawn = np.stack(drawn)  # (captions, seeds)
    overall = np.mean([np.mean(d == parse_caption(c)["background"]) for c, d in zip(CAPTIONS, drawn)])
    distinct = np.array([len(set(drawn[:, s].tolist())) for s in range(args.seeds)])
    print(f"background accuracy {overall:.3f}; distinct backgrounds per seed over the {len(CAPTIONS)} captions: "
          f"mean {distinct.mean():.2f} (6: the caption decides, 1: the noise does)")


if __name__ == "__main__":
    main()
