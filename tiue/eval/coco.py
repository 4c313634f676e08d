"""COCO2014-30K: the caption list and reference images of the paper's Table 1.

The rule (tiue's reading; GigaGAN's released evaluation code takes a ready captions.txt and
does not contain the sampling step, so it could not be confirmed there): from
captions_val2014.json, draw 30,000 distinct val2014 images without replacement, and one of
each image's captions, all with numpy's default_rng(seed) (seed 0 by default), images
ordered by image id and captions by annotation id before the draw, so the list depends only
on the file and the seed. Line i of captions.txt is the caption of reference image i.

Reference images are written as GigaGAN's evaluation sees them: centre-cropped to a square
and Lanczos-resized to 256x256 (so re-preprocessing them is the identity). Note GigaGAN's
own script compares against the whole val2014 folder (40,504 images); pass that folder as
--real-images to follow it to the letter (docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tiue.eval.preprocessing import center_crop_resize
from tiue.files import write_text_atomically

__all__ = ["select_pairs", "build_coco_subset", "COCO30K_SIZE"]

COCO30K_SIZE = 30_000


def select_pairs(captions_json: dict, num_pairs: int = COCO30K_SIZE, seed: int = 0) -> list[dict]:
    """[{'image_id', 'file_name', 'annotation_id', 'caption'}] of `num_pairs` distinct images."""
    files = {image["id"]: image["file_name"] for image in captions_json["images"]}
    by_image: dict[int, list[dict]] = {}
    for annotation in sorted(captions_json["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    image_ids = sorted(i for i in by_image if i in files)
    if not 1 <= num_pairs <= len(image_ids):
        raise ValueError(f"--num-pairs: expected 1 to {len(image_ids)} (captioned images in the file), got {num_pairs}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(image_ids), num_pairs, replace=False)
    pairs = []
    for position in chosen:
        image_id = image_ids[position]
        annotation = by_image[image_id][rng.integers(len(by_image[image_id]))]
        # Captions can hold newlines; captions.txt has one caption per line.
        caption = " ".join(annotation["caption"].split())
        pairs.append({"image_id": image_id, "file_name": files[image_id], "annotation_id": annotation["id"], "caption": caption})
    return pairs


def build_coco_subset(captions_file: str | Path, image_folder: str | Path, out: str | Path,
                      num_pairs: int = COCO30K_SIZE, seed: int = 0, progress: bool = True) -> Path:
    """Write out/captions.txt, out/pairs.json and out/reference/NNNNNN.png; return `out`.
    Images already written (by an interrupted run) are kept."""
    captions_file, image_folder, out = Path(captions_file), Path(image_folder), Path(out)
    if not captions_file.is_file():
        raise ValueError(f"--captions: expected COCO's captions_val2014.json, got {captions_file} (no such file)")
    if not image_folder.is_dir():
        raise ValueError(f"--images: expected the val2014 image folder, got {image_folder} (not a folder)")
    pairs = select_pairs(json.loads(captions_file.read_text()), num_pairs, seed)
    missing = [p["file_name"] for p in pairs if not (image_folder / p["file_name"]).is_file()]
    if missing:
        raise ValueError(f"--images: {len(missing)} chosen images are not in {image_folder}, e.g. {missing[0]}")
    reference = out / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(tqdm(pairs, desc="reference images", unit="img", disable=not progress)):
        target = reference / f"{i:06d}.png"
        if not target.is_file():
            temporary = target.with_name(f".{target.name}.tmp.png")
            Image.fromarray(center_crop_resize(Image.open(image_folder / pair["file_name"]))).save(temporary)
            temporary.replace(target)
    write_text_atomically(out / "pairs.json", json.dumps({"seed": seed, "source": captions_file.name, "pairs": pairs}, indent=1) + "\n")
    write_text_atomically(out / "captions.txt", "".join(p["caption"] + "\n" for p in pairs))
    return out
