"""tiue's own clean-fid "clean" resize (so `tiue eval` needs no clean-fid): checked against the
bicubic filter written out in numpy, and against numbers clean-fid itself produced
(tests/eval/cleanfid_reference.py wrote tests/eval/data/cleanfid_clean_resize.json)."""

import json
from pathlib import Path

import numpy as np
import pytest
from cleanfid_reference import GRID, reference_image

from tiue.eval.preprocessing import clean_resize


def _bicubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))


def _weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) resampling matrix: pixel centres mapped (o + 0.5) * scale, the kernel
    stretched by the scale when shrinking (antialiasing), taps inside the image, rows summing to 1."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    matrix = np.zeros((out_size, in_size))
    for o in range(out_size):
        centre = (o + 0.5) * scale
        first = max(int(centre - 2 * stretch + 0.5), 0)
        last = min(int(centre + 2 * stretch + 0.5), in_size)
        taps = np.arange(first, last)
        w = _bicubic((taps - centre + 0.5) / stretch)
        matrix[o, first:last] = w / w.sum()
    return matrix


def _clean_resize_in_numpy(image: np.ndarray, size: int = 299) -> np.ndarray:
    rows, cols = _weights(image.shape[0], size), _weights(image.shape[1], size)
    out = np.stack([rows @ image[:, :, c].astype(np.float64) @ cols.T for c in range(3)], axis=2)
    return np.clip(out, 0, 255)


@pytest.mark.parametrize("shape", [(256, 256), (40, 70), (333, 310)])
def test_clean_resize_is_the_unquantised_bicubic_filter(shape):
    image = reference_image(7, *shape)
    ours = clean_resize(image)
    assert ours.shape == (299, 299, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _clean_resize_in_numpy(image), atol=2e-3)
    # Unquantised: the values are not all whole numbers (a uint8 round trip would make them so).
    assert np.any(ours != np.round(ours))


def test_clean_resize_equals_clean_fids_recorded_output():
    recorded = json.loads((Path(__file__).parent / "data" / "cleanfid_clean_resize.json").read_text())
    assert recorded["grid"] == GRID.tolist()
    for record in recorded["records"]:
        ours = clean_resize(reference_image(record["seed"], record["height"], record["width"]))
        assert list(ours.shape) == record["shape"]
        np.testing.assert_allclose(ours[np.ix_(GRID, GRID)], np.array(record["grid"], np.float32), rtol=0, atol=1e-4)
        sums = [ours[:, :, c].astype(np.float64).sum() for c in range(3)]
        np.testing.assert_allclose(sums, record["channel_sums"], rtol=1e-9)


def test_clean_resize_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"image: expected an \(H, W, 3\) array"):
        clean_resize(np.zeros((8, 8), np.uint8))
