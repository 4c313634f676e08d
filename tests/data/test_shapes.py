import numpy as np
import pytest

from tiue.data import shapes as S


def test_same_seed_same_scenes_and_independent_of_count():
    a = S.generate(12, seed=3)
    b = S.generate(12, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    # Scene i does not depend on how many scenes were drawn, nor on where drawing started.
    c = S.generate(4, seed=3, start=8)
    np.testing.assert_array_equal(a.images[8:], c.images)
    assert S.generate(12, seed=4).captions != a.captions


def test_images_are_rgb_uint8_at_the_world_resolution():
    batch = S.generate(5, seed=0, world=S.WorldConfig(resolution=64))
    assert batch.images.shape == (5, 64, 64, 3) and batch.images.dtype == np.uint8


def test_captions_agree_with_labels():
    batch = S.generate(200, seed=1, world=S.WorldConfig(two_shape_probability=0.3))
    colours = list(S.COLOURS)
    assert (batch.labels["num_shapes"] == 2).any() and (batch.labels["num_shapes"] == 1).any()
    for i, caption in enumerate(batch.captions):
        parsed = S.parse_caption(caption)
        assert parsed["shape"] == batch.labels["shape"][i]
        assert parsed["colour"] == batch.labels["colour"][i]
        named = batch.labels["size_named"][i] == 1
        assert parsed["size"] == (batch.labels["size"][i] if named else S.UNNAMED)
        named = batch.labels["background_named"][i] == 1
        assert parsed["background"] == (batch.labels["background"][i] if named else S.UNNAMED)
        assert parsed["shape2"] == batch.labels["shape2"][i]
        assert parsed["colour2"] == batch.labels["colour2"][i]
        # The background never has a shape's colour.
        assert batch.labels["background"][i] not in (batch.labels["colour"][i], batch.labels["colour2"][i])
        assert colours[batch.labels["colour"][i]] in caption


def test_pixels_show_the_labelled_colours():
    for index in range(40):
        scene = S.sample_scene(seed=7, index=index)
        spec = scene.shapes[0]
        x, y = (int(v) for v in spec.centre)
        # The centre of every shape kind is inside it (and well inside for these radii).
        assert tuple(scene.image[y, x]) == S.COLOURS[spec.colour]
        corner = scene.image[0, 0]
        if not any(_covers(s, 0.5, 0.5) for s in scene.shapes):
            assert tuple(corner) == S.COLOURS[scene.background]


def _covers(spec, x, y):
    return (x - spec.centre[0]) ** 2 + (y - spec.centre[1]) ** 2 <= (spec.radius + 1) ** 2


def test_free_attributes_vary_for_one_caption():
    """Position, size and rotation are not fixed by the caption: one prompt, many pictures."""
    scenes = [S.sample_scene(seed=0, index=i, render_image=False) for i in range(600)]
    by_caption = {}
    for scene in scenes:
        by_caption.setdefault(scene.caption, []).append(scene.shapes[0])
    caption, specs = max(by_caption.items(), key=lambda item: len(item[1]))
    assert len(specs) >= 3
    assert len({round(s.centre[0], 3) for s in specs}) == len(specs)
    assert len({round(s.rotation, 3) for s in specs}) == len(specs)


def test_caption_space_holds_every_one_shape_caption():
    space = set(S.caption_space())
    assert len(space) == len(S.SHAPES) * len(S.COLOURS) * 3 * len(S.COLOURS)
    assert set(S.sample_captions(300, seed=5)) <= space
    assert "a red circle" in space and "a small blue square on a yellow background" in space
    words = {w for c in space for w in c.split()}
    assert words <= set(S.vocabulary())


@pytest.mark.parametrize(
    "caption, message",
    [("a purple circle", "unknown words"), ("a red circle on a red sky", "background"), ("red circle", "expected")],
)
def test_parse_caption_rejects_text_outside_the_world(caption, message):
    with pytest.raises(ValueError, match=message):
        S.parse_caption(caption)


def test_parse_caption_reads_two_shapes():
    labels = S.parse_caption("a red circle and a small blue square on a yellow background")
    assert labels["shape"] == S.SHAPES.index("circle") and labels["shape2"] == S.SHAPES.index("square")
    assert labels["size2"] == S.SIZES.index("small") and labels["size"] == S.UNNAMED
    assert labels["background"] == list(S.COLOURS).index("yellow")


@pytest.mark.parametrize("caption", ["a red circle", "a small blue square on a yellow background",
                                     "a green cross and a large white triangle"])
def test_scene_for_caption_draws_right_answers(caption):
    scenes = [S.scene_for_caption(caption, seed=0, index=i) for i in range(6)]
    for scene in scenes:
        assert scene.caption == caption
        spec = scene.shapes[0]
        x, y = (int(v) for v in spec.centre)
        assert tuple(scene.image[y, x]) == S.COLOURS[spec.colour] or len(scene.shapes) == 2
    assert len({s.shapes[0].centre for s in scenes}) == 6  # free attributes vary
    again = S.scene_for_caption(caption, seed=0, index=3)
    np.testing.assert_array_equal(again.image, scenes[3].image)
