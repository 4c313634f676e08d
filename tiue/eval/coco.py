"""COCO2014-30K: the caption list and reference images of the paper's Table 1.

The rule (tiue's reading; GigaGAN's released evaluation code takes a ready captions.txt and
does not contain the sampling step, so it could not be confirmed there): from
captions_val2014.json, draw 30,000 distinct val2014 images without replacement, and one of
each image's captions, all with numpy's default_rng(seed) (seed 0 by default), images
ordered by image id and captions by annotation id before the draw, so the list depends only
on the file and the seed. Line i of captions.txt is the caption of reference image i.

`build.json`, written before the first image, records what the folder is built from (captions
file digest, image folder, number of pairs, seed): a rebuild with the same settings resumes,
one with other settings is refused, so no reference image can be left from another draw.

Reference images are written as GigaGAN's evaluation sees them: centre-cropped to a square
and Lanczos-resized to 256x256 (so re-preprocessing them is the identity). Note GigaGAN's
own script compares against the whole val2014 folder (40,504 images); pass that folder as
--real-images to follow it to the letter (docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tiue.eval.preprocessing import center_crop_resize, open_image
from tiue.files import check_writable_folder, write_text_atomically

__all__ = ["select_pairs", "build_coco_subset", "read_captions_file", "COCO30K_SIZE"]

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


def _entries(data: dict, key: str, fields: dict, path: Path) -> None:
    entries = data.get(key)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--captions: expected COCO's captions JSON (a non-empty {key!r} list), {path} has "
                         f"{'no ' + repr(key) if key not in data else type(entries).__name__ + ' ' + repr(key)}")
    for position, entry in enumerate(entries):
        for field, kind in fields.items():
            if not isinstance(entry, dict) or not isinstance(entry.get(field), kind) or isinstance(entry.get(field), bool):
                raise ValueError(f"--captions: {path}: {key}[{position}] has no {kind.__name__} {field!r}; expected "
                                 f"COCO's captions JSON ({key} entries with {', '.join(fields)})")


def read_captions_file(path: Path) -> dict:
    """COCO's captions JSON, checked for every key select_pairs reads (one line naming the file)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"--captions: cannot read {path} as JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"--captions: expected COCO's captions JSON (an object with images and annotations), "
                         f"{path} holds a {type(data).__name__}")
    _entries(data, "images", {"id": int, "file_name": str}, path)
    _entries(data, "annotations", {"id": int, "image_id": int, "caption": str}, path)
    for image in data["images"]:
        name = image["file_name"]
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"--captions: {path}: image {image['id']} has file_name {name!r}; expected a plain file name")
    return data


def _claim_output(out: Path, record: dict) -> None:
    """Record the build's settings in out/build.json, or check them against the recorded ones."""
    check_writable_folder("--out", out)
    recorded = out / "build.json"
    if recorded.is_file():
        found = json.loads(recorded.read_text())
        if found != record:
            changed = sorted(k for k in set(found) | set(record) if found.get(k) != record.get(k))
            raise ValueError(f"--out: {out} was built with other settings (differs in {', '.join(changed)}); expected "
                             "a new folder, or the settings it was built with (delete it to rebuild)")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} holds files but no build.json (not a folder this command built, or built by an "
                         "older tiue); expected an empty or new folder")
    write_text_atomically(recorded, json.dumps(record, indent=1, sort_keys=True) + "\n")


def build_coco_subset(captions_file: str | Path, image_folder: str | Path, out: str | Path,
                      num_pairs: int = COCO30K_SIZE, seed: int = 0, progress: bool = True) -> Path:
    """Write out/build.json, out/captions.txt, out/pairs.json and out/reference/NNNNNN.png; return
    `out`. Images already written by an interrupted run with the same settings are kept."""
    captions_file, image_folder, out = Path(captions_file), Path(image_folder), Path(out)
    if not captions_file.is_file():
        raise ValueError(f"--captions: expected COCO's captions_val2014.json, got {captions_file} (no such file)")
    if not image_folder.is_dir():
        raise ValueError(f"--images: expected the val2014 image folder, got {image_folder} (not a folder)")
    pairs = select_pairs(read_captions_file(captions_file), num_pairs, seed)
    missing = [p["file_name"] for p in pairs if not (image_folder / p["file_name"]).is_file()]
    if missing:
        raise ValueError(f"--images: {len(missing)} chosen images are not in {image_folder}, e.g. {missing[0]}")
    digest = hashlib.sha256(captions_file.read_bytes()).hexdigest()
    _claim_output(out, {"captions_sha256": digest, "images": str(image_folder.resolve()), "num_pairs": num_pairs, "seed": seed})
    reference = out / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(tqdm(pairs, desc="reference images", unit="img", disable=not progress)):
        target = reference / f"{i:06d}.png"
        if not target.is_file():
            temporary = target.with_name(f".{target.name}.tmp.png")
            Image.fromarray(center_crop_resize(open_image(image_folder / pair["file_name"], "--images"))).save(temporary)
            temporary.replace(target)
    write_text_atomically(out / "pairs.json", json.dumps({"seed": seed, "source": captions_file.name, "pairs": pairs}, indent=1) + "\n")
    write_text_atomically(out / "captions.txt", "".join(p["caption"] + "\n" for p in pairs))
    return out
