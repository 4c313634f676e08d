"""Bad input, as a hostile but realistic user gives it: each gets one line that names the input,
a non-zero exit (CLI) or an exception (API), and leaves no file behind."""

import pytest
import torch

from tiue.cli import main

UNDECODABLE = b"a red circle\n\xff\xfe\xfa not utf-8\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad.txt").write_bytes(UNDECODABLE)
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    return tmp_path


def cli_cases(tmp):
    out = str(tmp / "out")
    sample = ["sample", "--model", "shapes", "--prompt", "a red circle", "--out", out]
    train = ["train", "--teacher", "shapes-teacher", "--captions", str(tmp / "captions.txt"), "--output-dir", out,
             "--batch-size", "2", "--max-steps", "1", "--device", "cpu", "--report-to", "none"]
    return {
        "sample --steps past the schedule": (sample + ["--steps", "1001"], "--steps"),
        "sample --device mps": (sample + ["--device", "mps"], "--device"),
        "sample --dtype fp64": (sample + ["--dtype", "fp64"], "--dtype"),
        "sample --seed 2**70": (sample + ["--seed", str(2**70)], "--seed"),
        "sample undecodable --prompt-file": (sample + ["--prompt-file", str(tmp / "bad.txt")], "--prompt-file"),
        "sample --out under a file": (sample[:-1] + [str(tmp / "a-file" / "out")], "--out"),
        "train fp16 on a CPU": (train + ["--mixed-precision", "fp16"], "--mixed-precision"),
        "train --seed 2**70": (train + ["--seed", str(2**70)], "--seed"),
        "train undecodable --captions": (train[:4] + [str(tmp / "bad.txt")] + train[5:], "--captions"),
        "train --output-dir under a file": (train[:6] + [str(tmp / "a-file" / "run")] + train[7:], "--output-dir"),
        "eval --seed 2**70": (["eval", "--model", "shapes", "--seed", str(2**70)], "--seed"),
        "eval --device mps": (["eval", "--model", "shapes", "--device", "mps"], "--device"),
    }


@pytest.mark.parametrize("case", list(cli_cases(__import__("pathlib").Path("/x"))))
def test_cli_gives_one_line_naming_the_input_and_writes_nothing(case, files, capsys):
    argv, flag = cli_cases(files)[case]
    before = sorted(p.name for p in files.iterdir())
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusal of a choice
        code = exit.code
    error = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None), case
    assert len([line for line in error if "error" in line]) == 1, error
    assert flag in error[-1], error
    assert sorted(p.name for p in files.iterdir()) == before, "a file was left behind"


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    from tiue import TiUEPipeline

    return TiUEPipeline.from_pretrained(tiny_pipeline_dir)


def api_cases(pipe):
    width = pipe.unet.config.cross_attention_dim
    latent = (1, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    return {
        "height=0": (dict(prompt="a cat", height=0), "height"),
        "width=-8": (dict(prompt="a cat", width=-8), "width"),
        "prompt_embeds of the wrong width": (dict(prompt_embeds=torch.zeros(1, 77, width + 1)), "prompt_embeds"),
        "prompt_embeds on meta": (dict(prompt_embeds=torch.zeros(1, 77, width, device="meta")), "prompt_embeds"),
        "generator not a Generator": (dict(prompt="a cat", generator=0), "generator"),
        "latents as a list": (dict(prompt="a cat", latents=[[0.0]]), "latents"),
        "latents on meta": (dict(prompt="a cat", latents=torch.zeros(latent, device="meta")), "latents"),
        "steps past the schedule, loop mode": (dict(prompt="a cat", num_inference_steps=1000, mode="loop"), "num_inference_steps"),
    }


@pytest.mark.parametrize("case", [
    "height=0", "width=-8", "prompt_embeds of the wrong width", "prompt_embeds on meta", "generator not a Generator",
    "latents as a list", "latents on meta", "steps past the schedule, loop mode",
])
def test_api_errors_name_the_argument(case, pipe):
    kwargs, name = api_cases(pipe)[case]
    with pytest.raises((ValueError, TypeError)) as error:
        pipe(output_type="np", **kwargs)
    assert str(error.value).startswith(f"{name}:"), str(error.value)
    assert "\n" not in str(error.value)
