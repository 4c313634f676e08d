"""Bad inputs to `tiue eval` and `tiue eval coco30k` are refused in one line naming the input,
before the model loads or any image is sampled; resumed folders are checked against the model."""

import glob
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from standins import save_tiny_inception

from tiue.cli import main
from tiue.eval.preprocessing import IMAGE_EXTENSIONS, list_image_files


def _refused(capsys, args, expected, untouched=()):
    """`tiue eval ARGS` fails with one line holding `expected`, leaving `untouched` paths absent."""
    assert main(["eval", *map(str, args)]) == 1
    err = _error_line(capsys)
    assert expected in err, err
    for path in untouched:
        assert not os.path.exists(path), path
    return err


def _error_line(capsys) -> str:
    """The one error line on stderr (a loaded model's progress bars may precede it), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _png_header(path, width, height):
    """A PNG that declares width x height pixels (1-bit grey) but holds no pixel data: opening it
    reads the header only, decoding it would allocate the declared size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def real_run(tmp_path):
    """Arguments of a real-model evaluation whose inputs are all fine, and a model path that does
    not exist: a refusal naming an input proves the check came before the model loaded."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(real / f"{i}.png")
    inception = save_tiny_inception(tmp_path / "inception.pt")
    args = {"--model": tmp_path / "no-such-model", "--prompt-file": prompts, "--real-images": real, "--inception": inception,
            "--num-images": 8, "--out-dir": tmp_path / "images", "--cache-dir": "none", "--no-progress": None}
    return args


def _args(options: dict) -> list:
    return [x for flag, value in options.items() for x in ((flag,) if value is None else (flag, value))]


def test_real_model_without_inception_is_refused_before_loading(real_run, capsys):
    del real_run["--inception"]
    err = _refused(capsys, _args(real_run), "--inception: required with --prompt-file", [real_run["--out-dir"]])
    assert "inception-2015-12-05.pt" in err and "nvlabs" in err


def test_shapes_features_refuse_a_model_of_another_size_before_sampling(tiny_pipeline_dir, tiny_features_dir, tmp_path, capsys):
    model = tmp_path / "tiny-64px"
    shutil.copytree(tiny_pipeline_dir, model)
    config = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps(dict(config, sample_size=2 * config["sample_size"])))
    images = tmp_path / "images"
    _refused(capsys, ["--model", model, "--features", tiny_features_dir, "--num-images", 8, "--steps", 1, "--out-dir", images],
             "makes 64 px images, and the shapes feature network (--features) reads 32 px", [images])


@pytest.mark.parametrize("flag, value, expected", [
    ("--real-images", "typo", "--real-images: expected a folder of images, got"),
    ("--inception", "missing.pt", "--inception: no such file:"),
    ("--clip", "no-clip", "--clip: expected a local model folder with a config.json"),
    ("--prompt-file", "missing.txt", "--prompt-file: no such file:"),
    ("--nearest-k", 0, "--nearest-k: expected an integer from 1 to 999,999 (the k of the k-NN balls), got 0"),
    ("--nearest-k", -3, "--nearest-k: expected an integer from 1 to 999,999 (the k of the k-NN balls), got -3"),
    ("--num-images", 10**12, "--num-images: expected an integer from k + 1 = 6 to 1,000,000"),
])
def test_bad_inputs_are_named_before_loading(real_run, tmp_path, capsys, flag, value, expected):
    real_run[flag] = tmp_path / value if isinstance(value, str) else value
    _refused(capsys, _args(real_run), expected, [real_run["--out-dir"]])


def test_undecodable_prompt_file_is_named(real_run, capsys):
    real_run["--prompt-file"].write_bytes(b"\xff\xfe\x00bad")
    _refused(capsys, _args(real_run), "--prompt-file: cannot read", [real_run["--out-dir"]])


@pytest.mark.parametrize("side", [(10_000, 9_000), (100_000, 100_000)])  # PIL warns past its limit, raises past twice it
def test_decompression_bomb_in_real_images_is_named_before_loading(real_run, capsys, side):
    bomb = _png_header(real_run["--real-images"] / "zz-bomb.png", *side)
    err = _refused(capsys, _args(real_run), f"--real-images: {bomb} is too large to decode", [real_run["--out-dir"]])
    assert "decompression-bomb limit" in err


def test_unreadable_real_image_is_named_before_loading(real_run, capsys):
    broken = real_run["--real-images"] / "broken.png"
    broken.write_bytes(b"not a picture")
    _refused(capsys, _args(real_run), f"--real-images: cannot read {broken} as an image", [real_run["--out-dir"]])


@pytest.mark.parametrize("flag", ["--json", "--cache-dir", "--out-dir"])
def test_unwritable_outputs_are_refused_before_the_evaluation(real_run, tmp_path, capsys, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    real_run[flag] = blocker / "out.json" if flag == "--json" else blocker
    _refused(capsys, _args(real_run), f"{flag}: exists and is not a folder: {blocker}")
    real_run["--json"] = tmp_path
    if flag == "--json":  # a folder where the file should go
        _refused(capsys, _args(real_run), f"--json: expected a file path, got a folder: {tmp_path}")


def test_reference_folders_follow_clean_fids_file_rule(tmp_path):
    folder = tmp_path / "real"
    names = ["a.png", "a-c.png", "a/b.png", "b.JPEG", "c.tif", "sub/d.jpg", "sub/e.Png", "f.txt", ".DS_Store",
             ".000001.png", ".partial/x.png", "sub/.y.jpg", "g.PNG"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(folder / name, format="PNG")
    listed = [str(p.relative_to(folder)) for p in list_image_files(folder)]
    # Hidden files and folders skipped, extensions case-sensitive as clean-fid lists them, and
    # its order: sorted by path string ("a-c.png" before "a/b.png").
    assert listed == ["a-c.png", "a.png", "a/b.png", "b.JPEG", "c.tif", "g.PNG", "sub/d.jpg"]
    # clean-fid's listing, as its get_folder_features globs it (images only: no .npy here).
    theirs = sorted(f for ext in IMAGE_EXTENSIONS for f in glob.glob(os.path.join(folder, f"**/*.{ext}"), recursive=True))
    assert [str(p) for p in list_image_files(folder)] == theirs


def test_a_model_replaced_at_the_same_path_does_not_reuse_old_images(tmp_path, tiny_features_dir, capsys):
    from tiue.sampling import clear_pipeline_cache
    from tiue.testing.tiny import save_tiny_pipeline

    model, images = tmp_path / "model", tmp_path / "images"
    save_tiny_pipeline(model)
    args = ["eval", "--model", str(model), "--features", str(tiny_features_dir), "--num-images", "6", "--steps", "1",
            "--out-dir", str(images), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0  # the same model resumes (nothing left to sample)
    shutil.rmtree(model)
    save_tiny_pipeline(model, seed=1)  # another model, same path
    clear_pipeline_cache()
    assert main(args) == 1
    assert f"--out-dir: {images} holds images of another model at --model {model}" in _error_line(capsys)


def _coco_files(tmp_path, data):
    (tmp_path / "captions.json").write_text(json.dumps(data) if not isinstance(data, bytes) else data.decode())
    images = tmp_path / "val2014"
    images.mkdir(exist_ok=True)
    for image in data.get("images", []) if isinstance(data, dict) else []:
        if isinstance(image, dict) and isinstance(image.get("file_name"), str) and "/" not in image["file_name"]:
            Image.fromarray(np.full((30, 50, 3), image["id"] % 256, np.uint8)).save(images / image["file_name"])
    return ["eval", "coco30k", "--captions", str(tmp_path / "captions.json"), "--images", str(images)]


def _coco(num_images=8):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(num_images)]
    annotations = [{"id": 1000 + i, "image_id": 100 + i, "caption": f"caption {i}"} for i in range(num_images)]
    return {"images": images, "annotations": annotations}


@pytest.mark.parametrize("broken, expected", [
    ([1, 2], "holds a list"),
    ({"images": []}, "a non-empty 'images' list"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}]}, "has no 'annotations'"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1}]}, "annotations[0] has no str 'caption'"),
    ({"images": [{"id": 1, "file_name": "../a.jpg"}], "annotations": [{"id": 5, "image_id": 1, "caption": "c"}]},
     "expected a plain file name"),
    (b"{not json", "cannot read"),
])
def test_coco_captions_without_their_keys_are_named(tmp_path, capsys, broken, expected):
    args = _coco_files(tmp_path, broken)
    out = tmp_path / "coco"
    assert main([*args, "--out", str(out), "--num-pairs", "1"]) == 1
    err = _error_line(capsys)
    assert "--captions:" in err and expected in err, err
    assert not out.exists()


def test_coco_rebuild_with_other_settings_is_refused_not_mixed(tmp_path, capsys):
    args = _coco_files(tmp_path, _coco())
    out = tmp_path / "coco"
    assert main([*args, "--out", str(out), "--num-pairs", "4", "--seed", "3"]) == 0
    before = {p.name: p.read_bytes() for p in (out / "reference").iterdir()}
    assert main([*args, "--out", str(out), "--num-pairs", "4", "--seed", "3"]) == 0  # same settings: resumes
    for settings, changed in ((["--num-pairs", "4", "--seed", "4"], "seed"), (["--num-pairs", "6", "--seed", "3"], "num_pairs")):
        assert main([*args, "--out", str(out), *settings]) == 1
        err = _error_line(capsys)
        assert f"--out: {out} was built with other settings (differs in {changed})" in err, err
    assert {p.name: p.read_bytes() for p in (out / "reference").iterdir()} == before
    foreign = tmp_path / "foreign"
    (foreign / "reference").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(foreign / "reference" / "000000.png")
    assert main([*args, "--out", str(foreign), "--num-pairs", "4"]) == 1
    assert "holds files but no build.json" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [
    ("--guidance-scale", "inf", "--guidance-scale: expected a finite value >= 1"),
    ("--nearest-k", 10**9, "--nearest-k: expected an integer from 1 to 999,999"),
    ("--out-dir", "", "--out-dir: expected a path, got an empty string"),
    ("--json", "", "--json: expected a path, got an empty string"),
    ("--model", "", "--model: expected an embedded name, a local pipeline folder or a hub id, got ''"),
])
def test_more_bad_settings_are_named_before_loading(real_run, capsys, flag, value, expected):
    real_run[flag] = value
    _refused(capsys, _args(real_run), expected, [real_run["--out-dir"]] if real_run["--out-dir"] else [])
    assert not (os.path.exists("settings.json")), "an empty --out-dir wrote into the current folder"


def test_steps_past_the_models_schedule_are_refused_before_sampling(tiny_pipeline_dir, tiny_features_dir, tmp_path, capsys):
    images = tmp_path / "images"
    _refused(capsys, ["--model", tiny_pipeline_dir, "--features", tiny_features_dir, "--num-images", 8, "--steps", 5000,
                      "--out-dir", images], "--steps:", [images])
