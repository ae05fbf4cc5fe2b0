import numpy as np
import pytest

from napari_samed2.errors import TrainingError
from napari_samed2.training.data import (
    ClipSampler,
    ObjectEnd,
    load_pairs,
    make_clip,
    make_pair,
    neighboured_ends,
    sample_prompt,
)
from tests.training.conftest import ellipse_pair


def _clips(seed, n=12, **options):
    pairs = load_pairs(*zip(ellipse_pair(0), ellipse_pair(1)))
    sampler = ClipSampler(pairs, np.random.default_rng(seed), clip_length=4, **options)
    return [sampler.sample() for _ in range(n)]


def test_clips_are_reproducible_from_the_seed_and_start_where_the_object_is():
    a, b, c = _clips(5), _clips(5), _clips(6)
    key = lambda clip: (clip.source, clip.frames, clip.prompt_kind, clip.prompt.box)  # noqa: E731
    assert [key(x) for x in a] == [key(x) for x in b]
    assert [key(x) for x in a] != [key(x) for x in c]
    for clip in a:
        assert clip.masks[0].any() and len(clip) == 4
        assert np.all(np.abs(np.diff(clip.frames)) == 1)
    assert {clip.reverse for clip in a} == {True, False}
    assert {clip.prompt_kind for clip in _clips(0, 40)} == {"box", "click", "mask"}


def test_middle_start_clips_begin_at_the_objects_middle_and_run_past_its_end():
    """The demo model jumped to other structures once its object ended (the evaluation prompts
    the middle slice and tracks to the volume's ends): such clips teach it to let go."""
    pairs = load_pairs(*ellipse_pair(0))
    present = pairs[0].objects[1]
    middle = int(present[len(present) // 2])
    sampler = ClipSampler(pairs, np.random.default_rng(0), clip_length=len(present), middle_start_prob=1.0)
    clips = [sampler.sample() for _ in range(20)]
    assert {clip.frames[0] for clip in clips} == {middle}
    forward = [clip for clip in clips if not clip.reverse]
    assert forward and all(not clip.masks[-1].any() for clip in forward)  # past the object's last slice
    assert {clip.frames[0] for clip in _clips(0, 40)} != {middle}  # off by default: starts vary
    with pytest.raises(TrainingError, match="middle_start_prob"):
        ClipSampler(pairs, np.random.default_rng(0), middle_start_prob=1.5)


def _stacked_objects() -> list:
    """Object 1 on slices 2-7 and object 2 on 10-15 at the same place (an end with a
    neighbour beyond it, each way); object 3 on 2-15 far from both (no neighbour beyond)."""
    label = np.zeros((20, 32, 32), np.uint8)
    label[2:8, 4:12, 4:12] = 1
    label[10:16, 6:14, 6:14] = 2
    label[2:16, 22:28, 22:28] = 3
    image = label.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, label.shape).astype(np.float32)
    return [make_pair(image, label, name="stacked")]


def test_end_start_clips_show_an_object_end_with_a_neighbour_going_on_beside_it():
    """Past its objects' ends the demo model ran on into the neighbour beside them (85 % of
    the wrong pixels): these clips put that case in front of it."""
    pairs = _stacked_objects()
    assert set(neighboured_ends(pairs, 12)) == {ObjectEnd(0, 1, False), ObjectEnd(0, 2, True)}
    assert neighboured_ends(pairs, 3) == []  # 2 slices past an end reach neither neighbour
    sampler = ClipSampler(pairs, np.random.default_rng(0), clip_length=12, end_start_prob=1.0)
    clips = [sampler.sample() for _ in range(30)]
    assert {(clip.object_id, clip.reverse) for clip in clips} == {(1, False), (2, True)}
    for clip in clips:
        present = pairs[0].objects[clip.object_id]
        middle = int(present[len(present) // 2])
        gone = ~clip.masks.any(axis=(1, 2))
        assert clip.masks[0].any() and gone.sum() >= 12 // 3  # a third of the clip past the end
        if clip.reverse:
            assert present.min() <= clip.frames[0] <= middle
        else:
            assert middle <= clip.frames[0] <= present.max()
    with pytest.raises(TrainingError, match="end_start_prob"):
        ClipSampler(pairs, np.random.default_rng(0), end_start_prob=-0.1)

def test_reversed_clip_holds_the_slices_in_tracking_order():
    pair = make_pair(*ellipse_pair(0))
    clip = make_clip(pair, 1, [5, 4, 3], "mask", np.random.default_rng(0))
    assert clip.reverse
    assert np.array_equal(clip.masks, pair.label[[5, 4, 3]] == 1)
    assert np.array_equal(clip.volume.raw_frame(0), pair.image[5])
    assert np.array_equal(clip.prompt.mask, clip.masks[0])


def test_prompts_are_boxes_clicks_or_masks_inside_the_frame():
    mask = np.zeros((40, 50), bool)
    mask[10:20, 5:30] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = sample_prompt(mask, "box", rng).box
        assert 0 <= box[0] < box[2] <= 39 and 0 <= box[1] < box[3] <= 49
        assert abs(box[0] - 10) <= 20 and abs(box[3] - 29) <= 20
    click = sample_prompt(mask, "click", rng)
    assert click.labels.tolist() == [1] and mask[tuple(click.points[0].astype(int))]
    assert sample_prompt(mask, "mask", rng).mask is not None


def test_single_slice_clips_mix_with_tracking_clips_and_are_never_mask_prompted():
    """One run trains the 2D model and tracking together (image steps alone after tracking
    cost tracking what they gave 2D, docs/training.md)."""
    clips = _clips(0, 60, single_slice_prob=0.5)
    lengths = {len(clip) for clip in clips}
    assert lengths == {1, 4}
    singles = [clip for clip in clips if len(clip) == 1]
    assert 15 <= len(singles) <= 45
    assert all(clip.masks[0].any() and clip.prompt_kind in ("box", "click") for clip in singles)
    assert {clip.prompt_kind for clip in clips if len(clip) == 4} == {"box", "click", "mask"}
    assert {len(clip) for clip in _clips(0, 40)} == {4}  # off by default
    with pytest.raises(TrainingError, match="single-slice clips need box or click"):
        _clips(0, single_slice_prob=0.5, prompt_probs={"mask": 1.0})
    with pytest.raises(TrainingError, match="single_slice_prob"):
        _clips(0, single_slice_prob=2.0)


def test_revival_clips_start_before_their_object_told_absent_with_a_click_due_where_it_appears():
    """A click where tracking had lost the object fixed that slice alone (run 8): revival
    clips teach that a click overrides an "absent" memory and the next slices follow."""
    pairs = _stacked_objects()
    sampler = ClipSampler(pairs, np.random.default_rng(0), clip_length=6, revive_prob=1.0)
    clips = [sampler.sample() for _ in range(40)]
    assert {clip.reverse for clip in clips} == {True, False}
    gaps = set()
    for clip in clips:
        assert clip.prompt_kind == "absent" and clip.prompt.mask is not None and not clip.prompt.mask.any()
        (gap,) = clip.correct_at
        gaps.add(gap)
        assert 1 <= gap <= 3  # at most half the clip before the object
        assert not clip.masks[:gap].any() and clip.masks[gap].any()  # its first slice, in tracking order
    assert gaps == {1, 2, 3}
    plain = _clips(0, 40)
    assert all(clip.correct_at == () and clip.prompt_kind != "absent" for clip in plain)  # off by default
    # an object on the volume's first and last slices has no slice before it: a plain clip instead
    label = np.zeros((6, 16, 16), np.uint8)
    label[:, 4:10, 4:10] = 1
    everywhere = ClipSampler([make_pair(label.astype(np.float32), label)], np.random.default_rng(0), clip_length=4,
                             revive_prob=1.0)
    assert all(clip.prompt_kind != "absent" and clip.masks[0].any() for clip in (everywhere.sample() for _ in range(10)))
    with pytest.raises(TrainingError, match="revive_prob"):
        ClipSampler(pairs, np.random.default_rng(0), revive_prob=1.5)
    with pytest.raises(TrainingError, match="is on slice 2: an 'absent' prompt there is wrong"):
        make_clip(pairs[0], 1, [2, 3], "absent", np.random.default_rng(0))


def test_box_noise_sets_how_far_box_corners_move():
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:50] = True
    tight = np.array([20, 10, 39, 49], float)

    def spread(noise):
        rng = np.random.default_rng(0)
        return np.mean([np.abs(np.array(sample_prompt(mask, "box", rng, box_noise=noise).box) - tight).mean() for _ in range(50)])

    assert spread(0.0) == 0.0
    assert 0 < spread(0.03) < spread(0.1) / 2
    with pytest.raises(TrainingError, match="box_noise"):
        _clips(0, box_noise=-0.1)


def test_only_prompt_kinds_and_probabilities_that_exist():
    with pytest.raises(TrainingError, match="unknown prompt kinds"):
        _clips(0, prompt_probs={"scribble": 1.0})
    with pytest.raises(TrainingError, match="clip_length"):
        ClipSampler(load_pairs(*ellipse_pair(0)), np.random.default_rng(0), clip_length=0)


def test_axis_moves_the_slicing_axis_first():
    image, label = ellipse_pair(0)
    pair = make_pair(np.moveaxis(image, 0, 2), np.moveaxis(label, 0, 2), axis=2, spacing=(0.5, 0.5, 3.0))
    assert pair.image.shape == image.shape and pair.spacing == (3.0, 0.5, 0.5)
    assert np.array_equal(pair.label, label)


def test_pairs_from_files_and_from_a_generator(tmp_path):
    import tifffile

    image, label = ellipse_pair(0)
    tifffile.imwrite(tmp_path / "img.tif", image, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"spacing": 2.0})
    tifffile.imwrite(tmp_path / "lbl.tif", label)
    from_files = load_pairs([tmp_path / "img.tif"], [tmp_path / "lbl.tif"])[0]
    from napari_samed2.io import read_image

    assert from_files.name == "img.tif" and from_files.spacing == read_image(tmp_path / "img.tif")[0][1]["scale"]
    assert from_files.spacing[1:] == pytest.approx((0.5, 0.5))  # the voxel size the file states
    assert np.array_equal(from_files.label, label)
    from_generator = load_pairs((ellipse_pair(seed) for seed in range(3)))
    assert len(from_generator) == 3 and all(p.objects.keys() == {1} for p in from_generator)
    with pytest.raises(TrainingError, match="labels are missing"):
        load_pairs(image)


def test_the_sample_family_never_includes_the_volume_napari_opens():
    from napari_samed2.io.sample import synthetic_volume
    from napari_samed2.training.trainer import sample_family_pairs

    pairs = sample_family_pairs(2)
    opened = synthetic_volume()  # seed 0: what the main command shows
    assert [p.name for p in pairs] == ["sample family 1", "sample family 2"]
    assert all(not np.array_equal(np.asarray(p.image), opened.image) for p in pairs)
    np.testing.assert_array_equal(np.asarray(pairs[1].image), synthetic_volume(seed=2).image)
