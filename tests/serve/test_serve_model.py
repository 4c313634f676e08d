"""The served model's pass (no server, no gradio): with guidance, each image keeps its own
negative prompt within a shared pass, as `tiue sample --guidance-scale --negative-prompt` draws it."""

import numpy as np
import pytest
from PIL import Image

from tiue.cli import main
from tiue.sampling import load_pipeline
from tiue.serve.model import ServedModel
from tiue.serve.requests import Limits, RequestError, parse_request


def test_a_guided_pass_gives_each_image_its_own_negative_prompt(tmp_path):
    served = ServedModel("shapes", load_pipeline("shapes", "cpu"), guidance_scale=2.0)
    assert served.bounds().guided
    images = served.sample(["a red circle", "a red circle"], ["a blue background", ""], [3, 3], 4, 32, 32)
    served_pixels = [np.asarray(image, dtype=np.int16) for image in images]
    # The negative prompt changes the image (else this test could not tell them apart).
    assert np.abs(served_pixels[0] - served_pixels[1]).max() > 8
    for pixels, negative in zip(served_pixels, ["a blue background", None]):
        out = tmp_path / (negative or "none")
        flags = ["--negative-prompt", negative] if negative else []
        assert main(["sample", "--prompt", "a red circle", "--seed", "3", "--guidance-scale", "2", *flags,
                     "--out", str(out)]) == 0
        want = np.asarray(Image.open(out / "00000-seed3.png"), dtype=np.int16)
        # A pass of two against `tiue sample`'s batch of one: at most one level apart, rarely.
        assert np.abs(pixels - want).max() <= 1 and (pixels == want).mean() >= 0.99


def test_an_unguided_model_takes_no_negative_prompt():
    bounds = ServedModel("shapes", load_pipeline("shapes", "cpu")).bounds()
    assert not bounds.guided and bounds.steps_error(4) is None
    with pytest.raises(RequestError, match="^negative_prompt: this server samples without guidance"):
        parse_request({"prompt": "a cat", "negative_prompt": "a dog"}, Limits(), bounds)
