"""The synthetic training-data generator: seeded, varied, labelled exactly, validated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from napari_samed2.errors import VolumeError
from napari_samed2.training.synthetic import (
    HELD_OUT_SEED,
    SyntheticConfig,
    held_out_cases,
    held_out_eval_cases,
    synthetic_case,
    synthetic_stream,
)

SMALL = SyntheticConfig.fixed_shape((16, 64, 64))


def case(seed: int, config: SyntheticConfig = SMALL):
    return synthetic_case(np.random.default_rng(seed), config)


@pytest.fixture(scope="module")
def cases():
    return [case(seed) for seed in range(6)]


def slice_extent(mask: np.ndarray) -> tuple[int, int]:
    slices = np.nonzero(mask.any(axis=(1, 2)))[0]
    return int(slices[0]), int(slices[-1])


def test_same_seed_same_arrays_other_seed_other_arrays(cases):
    again = case(0)
    np.testing.assert_array_equal(again.image, cases[0].image)
    np.testing.assert_array_equal(again.labels, cases[0].labels)
    assert again.corrupted == cases[0].corrupted and again.spacing == cases[0].spacing
    assert not np.array_equal(cases[1].image, cases[0].image)
    assert not np.array_equal(cases[1].labels, cases[0].labels)


def test_types_shapes_and_spacing(cases):
    for c in cases:
        assert c.image.shape == c.labels.shape == c.distractors.shape == (16, 64, 64)
        assert c.image.dtype == np.float32 and c.labels.dtype == np.uint8 and c.distractors.dtype == bool
        assert np.isfinite(c.image).all()
        assert len(c.spacing) == 3 and c.spacing[1] == c.spacing[2] and all(s > 0 for s in c.spacing)
    ranged = synthetic_case(np.random.default_rng(0), SyntheticConfig(depth=(10, 12), height=(40, 48), width=(50, 56)))
    depth, height, width = ranged.image.shape
    assert 10 <= depth <= 12 and 40 <= height <= 48 and 50 <= width <= 56


def test_every_object_is_present_and_labelled_one_to_n(cases):
    counts = set()
    for c in cases:
        assert set(np.unique(c.labels)) == set(range(c.num_objects + 1))
        assert c.num_objects >= 1
        counts.add(c.num_objects)
    assert len(counts) > 1  # the number of objects varies


def test_all_object_kinds_occur():
    kinds = {kind for seed in range(12) for kind in case(seed).kinds}
    assert kinds == {"ellipsoid", "tube", "lesion", "split lesion"}


def test_some_object_appears_and_vanishes_inside_the_volume(cases):
    inside = [
        (seed, label)
        for seed, c in enumerate(cases)
        for label in range(1, c.num_objects + 1)
        if 0 < slice_extent(c.labels == label)[0] and slice_extent(c.labels == label)[1] < c.labels.shape[0] - 1
    ]
    assert inside


def test_a_split_lesion_is_one_component_on_some_slice_and_two_on_another():
    config = SyntheticConfig.fixed_shape((16, 64, 64), kinds=("split lesion",), objects=(1, 1))
    for seed in range(8):
        mask = case(seed, config).labels == 1
        components = [ndimage.label(plane)[1] for plane in mask if plane.any()]
        if max(components) >= 2 and min(components) == 1:
            return
    pytest.fail("no split lesion split within 8 seeds")


def test_lesions_grow_and_shrink_along_z():
    config = SyntheticConfig.fixed_shape((16, 64, 64), kinds=("lesion",), objects=(1, 1))
    for seed in range(8):
        areas = (case(seed, config).labels == 1).sum(axis=(1, 2))
        first, last = np.nonzero(areas)[0][[0, -1]]
        peak = int(np.argmax(areas))
        if first < peak < last and areas[first] < areas[peak] > areas[last]:
            return
    pytest.fail("no lesion grew and shrank within 8 seeds")


def test_contrast_is_brighter_or_darker_than_the_surroundings():
    signs = set()
    config = SyntheticConfig.fixed_shape((16, 64, 64), corrupted_fraction=0.0)
    for seed in range(10):
        c = case(seed, config)
        for label in range(1, c.num_objects + 1):
            mask = c.labels == label
            core = ndimage.binary_erosion(mask, np.ones((1, 3, 3)))
            shell = ndimage.binary_dilation(mask, np.ones((1, 7, 7))) & (c.labels == 0) & ~c.distractors
            if core.sum() > 20 and shell.sum() > 20:
                signs.add(bool(np.median(c.image[core]) > np.median(c.image[shell])))
    assert signs == {True, False}


def test_distractors_look_like_objects_but_are_unlabelled():
    config = SyntheticConfig.fixed_shape((16, 64, 64), corrupted_fraction=0.0, distractors=(2, 2), bias=(0.0, 0.0))
    matches = 0
    for seed in range(4):
        c = case(seed, config)
        assert c.distractors.any()
        assert not c.labels[c.distractors].any()
        core = ndimage.binary_erosion(c.distractors, np.ones((1, 3, 3)))
        if core.sum() < 20:
            continue
        distractor = np.median(c.image[core])
        objects = [np.median(c.image[ndimage.binary_erosion(c.labels == i, np.ones((1, 3, 3)))]) for i in range(1, c.num_objects + 1)]
        tissue = np.median(c.image[(c.labels == 0) & ~c.distractors & (c.image > np.percentile(c.image, 40))])
        closest = min(abs(distractor - o) for o in objects if np.isfinite(o))
        if closest < 0.2 * abs(distractor - tissue):  # object-like, not tissue-like
            matches += 1
    assert matches >= 2


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_corrupted_fraction_is_respected(fraction):
    c = case(3, SyntheticConfig.fixed_shape((16, 64, 64), corrupted_fraction=fraction))
    assert len(c.corrupted) == round(fraction * 16) == len(c.corruption_kinds)
    assert list(c.corrupted) == sorted(set(c.corrupted)) and all(0 <= i < 16 for i in c.corrupted)


def test_corruptions_change_their_slices():
    config = SyntheticConfig.fixed_shape((16, 64, 64), corrupted_fraction=0.5)
    clean = SyntheticConfig.fixed_shape((16, 64, 64), corrupted_fraction=0.0)
    seen = set()
    for seed in range(3):
        c = case(seed, config)
        reference = case(seed, clean)  # same draws up to the corruption step
        np.testing.assert_array_equal(c.labels, reference.labels)  # labels keep the anatomy
        for index, kind in zip(c.corrupted, c.corruption_kinds):
            seen.add(kind)
            if kind == "dropped":
                assert np.ptp(c.image[index]) == 0
            else:
                change = np.abs(c.image[index] - reference.image[index])
                assert np.percentile(change, 99) > 0.3 * reference.image[index].std()  # streaks are thin
        untouched = [i for i in range(16) if i not in c.corrupted]
        np.testing.assert_array_equal(c.image[untouched], reference.image[untouched])
    assert seen == {"noise", "streaks", "dropped"}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"depth": (4, 4)}, "depth"),
        ({"height": (16, 64)}, "height"),
        ({"width": (64, 32)}, "width"),
        ({"corrupted_fraction": -0.1}, r"\[0, 1\]"),
        ({"corrupted_fraction": 1.5}, r"\[0, 1\]"),
        ({"objects": (0, 2)}, "objects"),
        ({"kinds": ("cube",)}, "kinds"),
    ],
)
def test_bad_arguments_raise_volume_errors(options, message):
    with pytest.raises(VolumeError, match=message):
        SyntheticConfig(**options)


def test_fixed_shape_and_generator_are_checked():
    with pytest.raises(VolumeError, match="at least|<= low"):
        SyntheticConfig.fixed_shape((16, 20, 64))
    with pytest.raises(VolumeError, match="slices, rows, columns"):
        SyntheticConfig.fixed_shape((64, 64))
    with pytest.raises(VolumeError, match="Generator"):
        synthetic_case(0, SMALL)


def test_streams_are_reproducible_and_held_out_seeds_are_kept_apart():
    first = [c.image for c in itertools.islice(synthetic_stream(7, SMALL), 2)]
    again = [c.image for c in itertools.islice(synthetic_stream(7, SMALL), 2)]
    other = next(synthetic_stream(8, SMALL)).image
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other)
    with pytest.raises(VolumeError, match="held out"):
        next(synthetic_stream(HELD_OUT_SEED, SMALL))
    with pytest.raises(VolumeError, match=">= 10000"):
        next(synthetic_stream(3, SMALL, held_out=True))
    validation = held_out_cases(2, SMALL)
    assert len(validation) == 2
    np.testing.assert_array_equal(validation[0].image, next(synthetic_stream(HELD_OUT_SEED, SMALL, held_out=True)).image)
    evaluated = held_out_eval_cases(2, SMALL, seed=HELD_OUT_SEED + 3)
    assert [c.name for c in evaluated] == [f"held-out {HELD_OUT_SEED + 3}/0", f"held-out {HELD_OUT_SEED + 3}/1"]
    source = held_out_cases(2, SMALL, seed=HELD_OUT_SEED + 3)
    for case, synthetic in zip(evaluated, source, strict=True):
        np.testing.assert_array_equal(case.image, synthetic.image)
        np.testing.assert_array_equal(case.label, synthetic.labels)
        assert case.spacing == synthetic.spacing and not case.spacing_assumed


def test_promptable_labels_make_each_look_alike_blob_an_object_of_its_own(cases):
    for c in cases:
        labels = c.promptable_labels(min_voxels=20)
        original = labels <= c.num_objects
        np.testing.assert_array_equal(labels[original], c.labels[original])  # labelled objects untouched
        extra = sorted(set(np.unique(labels)) - set(range(c.num_objects + 1)))
        assert extra == list(range(c.num_objects + 1, c.num_objects + 1 + len(extra)))  # ids follow on
        for value in extra:
            blob = labels == value
            assert blob.sum() >= 20 and c.distractors[blob].all()
            assert ndimage.label(blob)[1] == 1  # one connected blob per id
    assert any(len(set(np.unique(c.promptable_labels(20)))) > c.num_objects + 1 for c in cases)
