"""Record what clean-fid's own "clean" resizer makes of a few fixed images, for
tests/eval/test_clean_resize.py (which then needs no clean-fid). Run where clean-fid is
importable (only its resize module is used, so `pip install --no-deps --target DIR clean-fid`
and PYTHONPATH=DIR are enough):

    PYTHONPATH=/tmp/cleanfid python tests/eval/cleanfid_reference.py

It writes tests/eval/data/cleanfid_clean_resize.json: for each input (seeded numpy draws, made
again by the test) clean-fid's version, the output's per-channel sums and a fixed grid of its
pixels.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "data" / "cleanfid_clean_resize.json"
# (seed, height, width): smaller, larger, and non-square inputs than 299x299.
INPUTS = ((0, 256, 256), (1, 40, 70), (2, 333, 310))
GRID = np.linspace(0, 298, 13).round().astype(int)  # rows and columns sampled


def reference_image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth-ish uint8 pictures with sharp edges: overshoot and clipping both occur."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
    image[: height // 2, : width // 3] = 255
    image[height // 2 :, width // 3 : width // 2] = 0
    return image


def main() -> None:
    from importlib.metadata import version

    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    records = []
    for seed, height, width in INPUTS:
        out = resize(reference_image(seed, height, width))
        records.append({"seed": seed, "height": height, "width": width, "shape": list(out.shape),
                        "channel_sums": [float(out[:, :, c].astype(np.float64).sum()) for c in range(3)],
                        "grid": out[np.ix_(GRID, GRID)].tolist()})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"clean_fid_version": version("clean-fid"),
                               "grid": GRID.tolist(), "records": records}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
