"""FID and KID under clean-fid's protocol: tiue's numbers equal clean-fid's own, run on the
same image folders with the same (stand-in) feature network and GigaGAN's preprocessing.

The comparison with clean-fid itself runs where clean-fid is installed (tiue does not need it:
`pip install --no-deps clean-fid` to run it); without it, test_clean_resize.py still checks
tiue's resize against numbers clean-fid produced."""

import numpy as np
import pytest
import torch
from PIL import Image

from cleanfid_compat import import_cleanfid_fid
from standins import save_tiny_inception

from tiue.eval.extractors import InceptionFeatures
from tiue.eval.fid import fid_from_features
from tiue.eval.kid import kernel_inception_distance
from tiue.eval.preprocessing import center_crop_resize
from tiue.eval.reference_cache import folder_features


def _folder(path, seed, count, shift=0):
    """Smooth random pictures of mixed, non-square sizes (so crop and resize both matter)."""
    rng = np.random.default_rng(seed)
    path.mkdir()
    for i in range(count):
        width, height = rng.integers(40, 90, size=2)
        small = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
        picture = Image.fromarray(np.clip(small.astype(int) + shift, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        picture.save(path / f"{i:03d}.png")
    return path


def _gigagan_transform(image_np):
    # GigaGAN's compute_fid: CenterCropLongEdge, then Lanczos to 256 (evaluation/evaluation.py).
    return center_crop_resize(Image.fromarray(image_np))


@pytest.fixture
def folders(tmp_path):
    return _folder(tmp_path / "real", 0, 24), _folder(tmp_path / "fake", 1, 20, shift=30)


def test_fid_and_kid_equal_clean_fids_on_the_same_features(folders, tmp_path, monkeypatch):
    pytest.importorskip("cleanfid", reason="clean-fid is not installed (optional: tiue's clean resize is its own; "
                        "`pip install --no-deps clean-fid` runs this comparison)")
    cleanfid_fid = import_cleanfid_fid(monkeypatch)
    extractor = InceptionFeatures(save_tiny_inception(tmp_path / "inception.pt"), protocol="clean")

    def standin(batch):  # clean-fid's clean mode: float 299x299 in [0, 255] in
        with torch.no_grad():
            return extractor.model.layers((batch - 128) / 128)

    kwargs = dict(mode="clean", custom_feat_extractor=standin, custom_image_tranform=_gigagan_transform,
                  device=torch.device("cpu"), num_workers=0, batch_size=7, verbose=False)
    theirs = cleanfid_fid.compute_fid(str(folders[0]), str(folders[1]), **kwargs)
    real, fake = (folder_features(f, extractor.features, center_crop_resize, "test", cache_dir=None, batch_size=5,
                                  progress=False) for f in folders)
    their_real = cleanfid_fid.get_folder_features(str(folders[0]), standin, num_workers=0, batch_size=7, device=torch.device("cpu"),
                                                  mode="clean", custom_image_tranform=_gigagan_transform, verbose=False)
    np.testing.assert_allclose(real, their_real, rtol=1e-5, atol=1e-6)
    assert fid_from_features(real, fake) == pytest.approx(theirs, rel=1e-5)
    assert theirs > 0.01  # the two sets differ: the test is not comparing zeros

    np.random.seed(3)
    their_kid = cleanfid_fid.kernel_distance(real, fake)
    assert kernel_inception_distance(real, fake, seed=3) == pytest.approx(their_kid, rel=1e-9)


def test_legacy_protocol_feeds_uint8_to_the_network(tmp_path):
    path = save_tiny_inception(tmp_path / "inception.pt")
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3)).astype(np.uint8)
    legacy = InceptionFeatures(path, protocol="legacy_tensorflow")
    expected = legacy.model(torch.from_numpy(images).permute(0, 3, 1, 2), return_features=True).detach().numpy()
    np.testing.assert_allclose(legacy.features(images), expected, rtol=1e-6)
    assert legacy.name == "inception-legacy_tensorflow"


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(ValueError, match=r"--inception: no such file: .*inception-2015-12-05\.pt.*nvlabs"):
        InceptionFeatures(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="--fid-protocol: expected clean or legacy_tensorflow, got 'dirty'"):
        InceptionFeatures(save_tiny_inception(tmp_path / "inception.pt"), protocol="dirty")


def test_real_features_are_cached_and_recomputed_when_the_folder_changes(tmp_path):
    folder = _folder(tmp_path / "real", 0, 6)
    calls = []

    def features(images):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :4].astype(np.float32)

    first = folder_features(folder, features, center_crop_resize, "x", tmp_path / "cache", 4, progress=False)
    again = folder_features(folder, features, center_crop_resize, "x", tmp_path / "cache", 4, progress=False)
    assert calls == [4, 2] and np.array_equal(first, again)
    folder_features(folder, features, center_crop_resize, "another extractor", tmp_path / "cache", 4, progress=False)
    assert calls == [4, 2, 4, 2]
    (folder / "000.png").unlink()
    assert folder_features(folder, features, center_crop_resize, "x", tmp_path / "cache", 4, progress=False).shape[0] == 5
