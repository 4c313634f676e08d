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
        "sample --model ''": (["sample", "--model", "", "--prompt", "a red circle", "--out", out], "--model"),
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


# -- second round: broken model folders, NaN, sizes, forced kernels, API values ------------------

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

BROKEN_CONFIGS = {
    # case: (file, key, value or DELETE, what the one line must name)
    "VAE scaling_factor 0": ("vae/config.json", "scaling_factor", 0, "scaling_factor is 0"),
    "VAE scaling_factor NaN": ("vae/config.json", "scaling_factor", math.nan, "scaling_factor is nan"),
    "scheduler num_train_timesteps 0": ("scheduler/scheduler_config.json", "num_train_timesteps", 0,
                                        "num_train_timesteps is 0"),
    "scheduler num_train_timesteps null": ("scheduler/scheduler_config.json", "num_train_timesteps", None,
                                           "num_train_timesteps is None"),
    "scheduler beta_end NaN": ("scheduler/scheduler_config.json", "beta_end", math.nan, "beta_end is nan"),
    "tokenizer model_max_length 1e30": ("tokenizer/tokenizer_config.json", "model_max_length", 1e30,
                                        "model_max_length is 1e+30"),
    "tokenizer model_max_length 0": ("tokenizer/tokenizer_config.json", "model_max_length", 0,
                                     "model_max_length is 0"),
    "tokenizer without model_max_length": ("tokenizer/tokenizer_config.json", "model_max_length", "DELETE",
                                           "model_max_length is missing"),
}


def error_lines(capsys) -> list[str]:
    """stderr less the progress bars and the "not a student" warning; a traceback would stay."""
    lines = capsys.readouterr().err.strip().splitlines()
    return [line for line in lines if line.strip() and not any(w in line for w in ("warning:", "Loading", "sampling"))]


def broken_copy(source: Path, folder: Path, case: str) -> Path:
    file, key, value, _ = BROKEN_CONFIGS[case]
    shutil.copytree(source, folder)
    config = json.loads((folder / file).read_text())
    if value == "DELETE":
        del config[key]
    else:
        config[key] = value
    (folder / file).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_a_broken_model_folder_is_named_with_its_file_and_value(case, tiny_pipeline_dir, tmp_path):
    from tiue import TiUEPipeline

    folder = broken_copy(tiny_pipeline_dir, tmp_path / "model", case)
    file, _, _, expected = BROKEN_CONFIGS[case]
    with pytest.raises(ValueError) as error:
        TiUEPipeline.from_pretrained(folder)
    message = str(error.value)
    assert message.startswith(f"{folder / file}: {expected}"), message
    assert "\n" not in message


def test_cli_names_a_broken_model_folder_in_one_line(tiny_pipeline_dir, tmp_path, capsys):
    folder = broken_copy(tiny_pipeline_dir, tmp_path / "model", "scheduler num_train_timesteps 0")
    code = main(["sample", "--model", str(folder), "--prompt", "a cat", "--out", str(tmp_path / "out")])
    error = error_lines(capsys)
    assert code == 1 and len(error) == 1, error
    assert "scheduler_config.json: num_train_timesteps is 0" in error[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def nan_model(tiny_pipeline_dir, tmp_path):
    """A model folder whose UNet weights hold a NaN (a broken or badly converted checkpoint)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-model"
    shutil.copytree(tiny_pipeline_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, weights)
    return folder


@pytest.mark.parametrize("mode, output_type", [("loopfree", "np"), ("loop", "pil"), ("loopfree", "latent")])
def test_nan_output_is_an_error_not_a_black_image(nan_model, mode, output_type):
    from tiue import TiUEPipeline
    from tiue.model_checks import NonFiniteOutputError

    pipe = TiUEPipeline.from_pretrained(nan_model)
    with pytest.raises(NonFiniteOutputError, match=r"NaN or infinite .* image\(s\) 0, 1 of 2"):
        pipe(["a cat", "a dog"], num_inference_steps=2, mode=mode, output_type=output_type)


def test_cli_refuses_nan_output_in_one_line_and_writes_no_image(nan_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sample", "--model", str(nan_model), "--prompt", "a cat", "--steps", "2", "--out", str(out)])
    error = error_lines(capsys)
    assert code == 1 and len(error) == 1 and "NaN or infinite images" in error[0], error
    assert not out.exists() or not list(out.iterdir())


def test_sizes_below_the_smallest_the_model_takes_are_refused_with_it(capsys, tmp_path):
    """The shapes model's UNet halves its latents twice and normalises 32 channels in 32 groups:
    at 8 px its GroupNorm gets one value per group. 12 px (3 latents) is the smallest that runs."""
    from tiue import TiUEPipeline

    pipe = TiUEPipeline.from_pretrained("shapes")
    with pytest.raises(ValueError, match=r"^height, width: 8 x 8 px is too small .* the smallest size is 12 x 12 px"):
        pipe("a red circle", height=8, width=8, output_type="np")
    assert pipe("a red circle", height=12, width=12, output_type="np").images.shape == (1, 12, 12, 3)
    code = main(["sample", "--model", "shapes", "--prompt", "a red circle", "--height", "8", "--width", "8", "--out", str(tmp_path / "o")])
    error = error_lines(capsys)
    assert code == 1 and len(error) == 1 and error[0].startswith("tiue sample: error: --height, --width: 8 x 8 px"), error


def test_sizes_no_machine_holds_are_refused_before_allocating(pipe, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^height: expected at most 16384 px .* got 300000$"):
        pipe("a cat", height=300000, width=64, output_type="np")
    # Within the bound, but 100000 images of 16384 x 16384 px need petabytes.
    with pytest.raises(ValueError, match=r"^height, width: 16384 x 16384 px for 100000 image\(s\) needs at least"):
        pipe("a cat", height=16384, width=16384, num_images_per_prompt=100000, output_type="np")
    code = main(["sample", "--model", "shapes", "--prompt", "a", "--width", "400000", "--out", str(tmp_path / "o")])
    error = error_lines(capsys)
    assert code == 1 and len(error) == 1 and error[0].startswith("tiue sample: error: --width: expected at most"), error


def test_cli_with_an_unavailable_forced_kernel_backend_says_why_in_one_line(tmp_path):
    """TIUE_KERNELS=cuda on a machine without tiue._C's CUDA kernels (the library raises
    BackendUnavailableError; the CLI prints its one line)."""
    import os

    from tiue.ops import dispatch

    if dispatch.unavailable_reason("cuda") is None:
        pytest.skip("tiue._C's CUDA kernels can run here")
    env = dict(os.environ, TIUE_KERNELS="cuda")
    result = subprocess.run(
        [sys.executable, "-m", "tiue", "sample", "--model", "shapes", "--prompt", "a red circle", "--steps", "1",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines == [lines[-1]] and "TIUE_KERNELS=cuda" in lines[-1] and "unavailable" in lines[-1], lines


@pytest.mark.parametrize("seed, error_type, expected", [
    ("3", TypeError, "seed: expected an int, got str '3'"),
    (2**70, ValueError, "seed: expected -2**63 <= seed <= 2**64 - 1"),
    (1.5, TypeError, "seed: expected an int, got float"),
])
def test_sample_seed_names_the_argument_before_the_model_loads(seed, error_type, expected):
    import tiue

    with pytest.raises(error_type) as error:
        tiue.sample("a cat", model="/no/such/model", seed=seed)  # the model is never looked at
    assert str(error.value).startswith(expected), str(error.value)


def test_sample_refuses_an_empty_model_name_instead_of_the_default():
    import tiue

    with pytest.raises(ValueError) as error:
        tiue.sample("a cat", model="")
    assert str(error.value).startswith("model: got an empty string"), str(error.value)


@pytest.mark.parametrize("prompt, error_type, expected", [
    ([], ValueError, "prompt: got an empty list"),
    (3, TypeError, "prompt: expected a string or a list of strings"),
    (["a", 1], TypeError, "prompt: expected a string or a list of strings"),
])
def test_encode_prompt_names_the_argument(pipe, prompt, error_type, expected):
    with pytest.raises(error_type) as error:
        pipe.encode_prompt(prompt)
    assert str(error.value).startswith(expected), str(error.value)
