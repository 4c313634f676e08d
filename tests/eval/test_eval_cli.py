"""`tiue eval` end to end on tiny models, the teacher CFG sampler, real-model feature paths."""

import json
import math

import numpy as np
from PIL import Image

from tiue.cli import main
from tiue.eval.runner import METRIC_KEYS


def _eval(args, tmp_path, name="out.json"):
    out = tmp_path / name
    assert main(["eval", *map(str, args), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_writes_every_metric(tiny_pipeline_dir, tiny_features_dir, tmp_path, capsys):
    result = _eval(["--model", tiny_pipeline_dir, "--features", tiny_features_dir, "--num-images", 8,
                    "--steps", 2, "--batch-size", 3], tmp_path)
    assert set(METRIC_KEYS) <= set(result)
    for key in METRIC_KEYS:
        assert math.isfinite(result[key]), key
    assert 0 <= result["accuracy"] <= 1 and result["seconds_per_image"] > 0
    assert result["num_images"] == 8 and result["feature_extractor"] == "shapes"
    assert "FID" in capsys.readouterr().out


def test_eval_teacher_with_guidance(tiny_pipeline_dir, tiny_features_dir, tmp_path):
    result = _eval(["--model", tiny_pipeline_dir, "--features", tiny_features_dir, "--num-images", 6,
                    "--steps", 2, "--mode", "loop", "--guidance-scale", 2.0], tmp_path)
    assert result["settings"]["guidance_scale"] == 2.0 and math.isfinite(result["fid"])


def test_guidance_scale_below_one_is_refused(tiny_pipeline_dir, capsys):
    assert main(["eval", "--model", str(tiny_pipeline_dir), "--guidance-scale", "0.5"]) == 1
    assert "--guidance-scale: expected a finite value >= 1" in capsys.readouterr().err


def test_gigagan_preprocessing_crops_the_centre_then_resizes():
    from tiue.eval.preprocessing import center_crop_resize

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 10:50] = 255  # the centred 40x40 square is white, the sides black
    out = center_crop_resize(Image.fromarray(pixels))
    assert out.shape == (256, 256, 3) and out.min() == 255


def test_eval_real_model_path_with_local_inception_and_clip(tiny_pipeline_dir, tmp_path):
    from standins import save_tiny_clip, save_tiny_inception

    from tiue.data.shapes import generate

    real = tmp_path / "real"
    real.mkdir()
    batch = generate(8, seed=0)
    for i, image in enumerate(batch.images):
        Image.fromarray(image).resize((48, 40)).save(real / f"{i}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(batch.captions[:4]) + "\n")
    result = _eval(["--model", tiny_pipeline_dir, "--prompt-file", prompts, "--real-images", real,
                    "--inception", save_tiny_inception(tmp_path / "inception.pt"),
                    "--clip", save_tiny_clip(tmp_path / "clip"), "--num-images", 8, "--steps", 2], tmp_path)
    assert result["feature_extractor"] == "inception" and result["num_real"] == 8
    assert -1 <= result["clip_score"] <= 1 and result["accuracy"] is None
    assert math.isfinite(result["fid"]) and math.isfinite(result["kid"])


def test_real_model_path_names_missing_inputs(tiny_pipeline_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["eval", "--model", str(tiny_pipeline_dir), "--prompt-file", str(prompts)]) == 1
    assert "--real-images" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_pipeline_dir), "--prompt-file", str(prompts), "--real-images",
                 str(tmp_path), "--inception", str(tmp_path / "missing.pt"), "--num-images", "6"]) == 1
    assert "--inception" in capsys.readouterr().err


def test_reference_metrics_measure_the_generator_against_itself(tiny_features_dir):
    from tiue.eval.runner import reference_metrics

    result = reference_metrics(12, seed=0, features=tiny_features_dir)
    assert set(METRIC_KEYS) <= set(result) and result["seconds_per_image"] is None
    assert math.isfinite(result["fid"]) and 0 <= result["accuracy"] <= 1


def test_clip_text_tokens_follow_gigagans_prefix_and_truncation(tmp_path):
    from standins import save_tiny_clip

    from tiue.eval.extractors import GIGAGAN_CLIP_PREFIX, ClipModel

    clip = ClipModel(save_tiny_clip(tmp_path / "clip"))
    tokenizer, limit = clip.tokenizer, clip.model.config.text_config.max_position_embeddings
    prefix = tokenizer(GIGAGAN_CLIP_PREFIX, add_special_tokens=False)["input_ids"]
    ids, mask = clip._tokens(["a red circle", "circle " * 200], GIGAGAN_CLIP_PREFIX)
    plain = tokenizer("a red circle")["input_ids"]
    row = ids[0, : int(mask[0].sum())].tolist()
    assert row == plain[:1] + prefix + plain[1:]  # [start] prefix caption [end]
    assert ids.shape[1] == limit and ids[1, -1] == tokenizer.eos_token_id and int(mask[1].sum()) == limit
    with_prefix, without = clip.text_embeddings(["a red circle"]), clip.text_embeddings(["a red circle"], prefix=None)
    assert not np.allclose(with_prefix, without)
    assert clip.model_name == "clip"


def test_clip_pixels_replay_gigagans_tensor_round_trip():
    from tiue.eval.preprocessing import gigagan_clip_pixels

    levels = np.arange(256, dtype=np.uint8)
    out = gigagan_clip_pixels(levels)
    assert out[0] == 0 and out[255] == 255 and out.dtype == np.uint8
    assert np.all((levels.astype(int) - out) <= 1) and (out != levels).sum() > 0
