"""`tiue eval coco30k`: the caption list and reference images from local COCO files."""

import json

import numpy as np
import pytest
from PIL import Image

from tiue.cli import main
from tiue.eval.coco import select_pairs


def _captions_json(num_images=12, captions_per_image=5):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(num_images)]
    annotations = [{"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": f"image {i} caption {j}\n"}
                   for i in range(num_images) for j in range(captions_per_image)]
    return {"images": images, "annotations": annotations[::-1]}  # file order must not matter


def test_pairs_are_distinct_images_fixed_by_the_seed():
    data = _captions_json()
    pairs = select_pairs(data, num_pairs=8, seed=0)
    assert len({p["image_id"] for p in pairs}) == 8
    assert pairs == select_pairs(json.loads(json.dumps(data)), num_pairs=8, seed=0)
    assert pairs != select_pairs(data, num_pairs=8, seed=1)
    for pair in pairs:  # each caption belongs to its image, newlines collapsed
        assert pair["caption"].startswith(f"image {pair['image_id'] - 100} caption ") and "\n" not in pair["caption"]
    with pytest.raises(ValueError, match=r"--num-pairs: expected 1 to 12 .* got 13"):
        select_pairs(data, num_pairs=13)


def test_coco30k_command_writes_captions_and_256px_references(tmp_path, capsys):
    data = _captions_json()
    (tmp_path / "captions_val2014.json").write_text(json.dumps(data))
    images = tmp_path / "val2014"
    images.mkdir()
    for image in data["images"]:
        Image.fromarray(np.full((30, 50, 3), image["id"] % 256, np.uint8)).save(images / image["file_name"])
    out = tmp_path / "coco"
    args = ["eval", "coco30k", "--captions", str(tmp_path / "captions_val2014.json"), "--images", str(images),
            "--out", str(out), "--num-pairs", "6", "--seed", "3"]
    assert main(args) == 0
    captions = (out / "captions.txt").read_text().splitlines()
    pairs = json.loads((out / "pairs.json").read_text())
    assert len(captions) == 6 and [p["caption"] for p in pairs["pairs"]] == captions and pairs["seed"] == 3
    references = sorted((out / "reference").glob("*.png"))
    assert len(references) == 6 and Image.open(references[0]).size == (256, 256)
    # Reference i is the image of caption i.
    assert np.asarray(Image.open(references[2]))[0, 0, 0] == pairs["pairs"][2]["image_id"] % 256
    (images / data["images"][0]["file_name"]).unlink()
    assert main([*args[:-4], "--num-pairs", "12"]) == 1
    assert "--images: 1 chosen images are not in" in capsys.readouterr().err
