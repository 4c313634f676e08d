import numpy as np
import pytest

from tiue.eval.agreement import attribute_accuracy, clip_score
from tiue.eval.fid import fid_from_features, frechet_distance
from tiue.eval.knn_metrics import f1_score, kth_neighbour_radii, prdc


def test_fid_of_identical_sets_is_zero():
    features = np.random.default_rng(0).normal(size=(200, 8))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_by_hand():
    # 1-D: (0 - 2)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 5
    assert frechet_distance([0.0], [[1.0]], [2.0], [[4.0]]) == pytest.approx(5.0)
    # Diagonal covariances: the sum of the per-dimension distances.
    value = frechet_distance([0.0, 1.0], np.diag([1.0, 9.0]), [1.0, 1.0], np.diag([4.0, 1.0]))
    assert value == pytest.approx((1 + 1 + 4 - 4) + (0 + 9 + 1 - 6))


def test_fid_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    assert fid_from_features(a, b) < 0.02
    assert fid_from_features(a, b + 1.0) == pytest.approx(3.0, abs=0.1)


def _line(*xs):
    return np.array([[x, 0.0] for x in xs])


def test_prdc_by_hand():
    """Real at 0, 4, 8, 12 (k=1 radius 4 each); generated at 2, 9, 10 (radii 7, 1, 1).

    precision: all three generated points lie in a real ball -> 1.
    recall: 0 and 4 lie in the ball of 2 (radius 7), 8 too (6 < 7); 12 in none -> 3/4.
    density: each generated point lies in two real balls -> 2 / k = 2.
    coverage: every real point has a generated point closer than 4 -> 1.
    """
    result = prdc(_line(0, 4, 8, 12), _line(2, 9, 10), k=1)
    assert result == pytest.approx({"precision": 1.0, "recall": 0.75, "density": 2.0, "coverage": 1.0})


def test_prdc_far_apart_sets_score_zero_and_identical_sets_one():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(50, 4))
    far = prdc(real, real + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    same = prdc(real, real, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0


def test_prdc_mode_collapse_keeps_precision_loses_recall_and_coverage():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 2))
    collapsed = rng.normal(scale=0.05, size=(300, 2))
    result = prdc(real, collapsed, k=5)
    assert result["precision"] > 0.95
    assert result["recall"] < 0.2 and result["coverage"] < 0.2


def test_kth_neighbour_radii_exclude_the_point_itself():
    np.testing.assert_allclose(kth_neighbour_radii(_line(0, 1, 3), 1), [1, 1, 2])
    np.testing.assert_allclose(kth_neighbour_radii(_line(0, 1, 3), 2), [3, 2, 3])


def test_prdc_errors_name_the_argument():
    with pytest.raises(ValueError, match="real"):
        prdc(np.zeros((3, 2)), np.zeros((10, 2)), k=5)
    with pytest.raises(ValueError, match="feature sizes"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)), k=5)


def test_f1():
    assert f1_score(0.5, 0.5) == pytest.approx(0.5)
    assert f1_score(1.0, 0.0) == 0.0 and f1_score(0.0, 0.0) == 0.0
    assert f1_score(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)


def test_attribute_accuracy_checks_only_named_attributes():
    from tiue.data.shapes import COLOURS, SHAPES

    colour = list(COLOURS).index
    prompts = ["a red circle", "a small blue square", "a red circle on a white background"]
    predictions = {
        "shape": np.array([SHAPES.index("circle"), SHAPES.index("square"), SHAPES.index("circle")]),
        "colour": np.array([colour("red"), colour("blue"), colour("red")]),
        "size": np.array([1, 1, 0]),  # prompt 2 asked for small (0): wrong
        "background": np.array([colour("green"), colour("black"), colour("black")]),  # prompt 3 wrong
    }
    result = attribute_accuracy(prompts, predictions)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["accuracy_shape"] == 1.0 and result["accuracy_size"] == 0.0
    assert result["accuracy_background"] == 0.0


def test_clip_score_is_the_mean_paired_cosine():
    image = np.array([[1.0, 0.0], [0.0, 2.0]])
    text = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert clip_score(image, text) == pytest.approx((1.0 + 1 / np.sqrt(2)) / 2)


def test_blocked_prdc_equals_one_block():
    rng = np.random.default_rng(4)
    real, generated = rng.normal(size=(90, 6)), rng.normal(size=(70, 6)) * 1.2
    whole = prdc(real, generated, k=5, block_size=1000)
    for block_size in (1, 7, 64):
        assert prdc(real, generated, k=5, block_size=block_size) == whole
    np.testing.assert_array_equal(kth_neighbour_radii(real, 5, block_size=7), kth_neighbour_radii(real, 5, block_size=500))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    from tiue.eval.kid import kernel_inception_distance

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    assert abs(kernel_inception_distance(a, b, num_subsets=20)) < 0.05
    assert kernel_inception_distance(a, b + 1.0, num_subsets=20) > 0.5
    with pytest.raises(ValueError, match="real, generated"):
        kernel_inception_distance(a, b[:, :3])


def _array_conversions(function, *args, **kwargs) -> int:
    """How many numpy array conversions (asarray, ascontiguousarray, array, astype) `function` makes."""
    import sys

    names = {"asarray", "ascontiguousarray", "array", "astype"}
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "c_call" and getattr(arg, "__name__", "") in names:
            count += 1

    sys.setprofile(profile)
    try:
        function(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return count


def test_prdc_converts_each_feature_set_once_not_once_per_block():
    rng = np.random.default_rng(6)
    real, generated = rng.normal(size=(120, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    one_block = _array_conversions(prdc, real, generated, k=3, block_size=1000)
    many_blocks = _array_conversions(prdc, real, generated, k=3, block_size=7)  # 18 + 15 + 18 blocks
    assert many_blocks == one_block, (one_block, many_blocks)


def test_prdc_refuses_k_below_one():
    rng = np.random.default_rng(7)
    real, generated = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    for k in (0, -1):
        with pytest.raises(ValueError, match=rf"k: expected an integer >= 1 .*got {k}"):
            prdc(real, generated, k=k)


def test_the_package_exports_the_functions_its_all_names():
    import importlib

    import tiue.eval

    importlib.import_module("tiue.eval.runner")  # imports every metric module first, as a real run does
    for name in tiue.eval.__all__:
        value = getattr(tiue.eval, name)
        assert callable(value) and not isinstance(value, type(tiue.eval)), name
    from tiue.eval import f1_score as exported_f1, prdc as exported_prdc

    assert exported_prdc is prdc and exported_f1 is f1_score
