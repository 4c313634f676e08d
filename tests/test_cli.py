import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tiue.cli import main


def test_sample_writes_one_png_per_prompt_and_a_grid(tiny_pipeline_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    out = tmp_path / "out"
    code = main(
        ["sample", "--model", str(tiny_pipeline_dir), "--prompt", "a photo of a cat",
         "--prompt-file", str(prompts), "--batch-size", "2", "--seed", "5", "--out", str(out)]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000-seed5.png", "00001-seed6.png", "00002-seed7.png", "grid.png"]
    assert Image.open(out / "00001-seed6.png").size == (32, 32)
    assert Image.open(out / "grid.png").size == (64, 64)


def test_images_do_not_depend_on_batch_size(tiny_pipeline_dir, tmp_path):
    for batch_size in ("1", "3"):
        main(["sample", "--model", str(tiny_pipeline_dir), "--prompt", "a", "--prompt", "b",
              "--prompt", "c", "--batch-size", batch_size, "--out", str(tmp_path / batch_size)])
    for name in ("00000-seed0.png", "00002-seed2.png"):
        a = np.asarray(Image.open(tmp_path / "1" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "3" / name), dtype=np.int16)
        # Same noise; batched and single matmuls may round one 8-bit level apart.
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize(
    "extra, argument",
    [
        (["--height", "30"], "--height"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--prompt-file", "missing.txt"], "--prompt-file"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_files(tiny_pipeline_dir, tmp_path, capsys, extra, argument):
    out = tmp_path / "out"
    code = main(["sample", "--model", str(tiny_pipeline_dir), "--prompt", "a cat", "--out", str(out), *extra])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tiue sample: error: {argument}")
    assert not out.exists()


def test_missing_model_folder_is_an_error(tmp_path, capsys):
    code = main(["sample", "--model", str(tmp_path / "nowhere"), "--prompt", "a", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "tiue", "sample", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--prompt-file" in result.stdout and "--out" in result.stdout
