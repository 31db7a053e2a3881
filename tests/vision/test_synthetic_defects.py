"""Synthetic defects painted onto good images: masks that say exactly where the image changed."""

from __future__ import annotations

import numpy as np
import pytest

from services.vision.synthetic_defects import KINDS, MIN_MASK_SHARE, paint_defect

SIZE = 128


def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((SIZE, SIZE, 3), 120, np.float32) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_image_where_its_mask_is_and_only_about_there(kind: str) -> None:
    good, donor = textured(1), textured(2)
    for seed in range(10):
        painted = paint_defect(good, donor, np.random.default_rng(seed), kind)
        assert painted.kind == kind
        assert painted.image.shape == good.shape and painted.image.dtype == np.uint8
        assert painted.mask.shape == (SIZE, SIZE) and painted.mask.mean() >= MIN_MASK_SHARE
        change = np.abs(painted.image.astype(np.int16) - good.astype(np.int16)).max(axis=2)
        # visible: a patch can be faint when the donor's texture is close to the part's own
        assert change[painted.mask].mean() > (10 if kind == "patch" else 30)
        # outside the mask the image is untouched, but for the anti-aliased or soft rim around it
        rim = np.zeros_like(painted.mask)
        ys, xs = np.nonzero(painted.mask)
        rim[max(0, ys.min() - 8) : ys.max() + 9, max(0, xs.min() - 8) : xs.max() + 9] = True
        assert change[~rim].max() == 0


def test_the_same_generator_paints_the_same_defect_and_another_paints_another() -> None:
    good, donor = textured(1), textured(2)
    first = paint_defect(good, donor, np.random.default_rng(7))
    again = paint_defect(good, donor, np.random.default_rng(7))
    other = paint_defect(good, donor, np.random.default_rng(8))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.mask, other.mask)


def test_random_kinds_cover_all_three() -> None:
    rng = np.random.default_rng(0)
    kinds = {paint_defect(textured(1), textured(2), rng).kind for _ in range(30)}
    assert kinds == set(KINDS)


def test_images_of_different_sizes_or_an_unknown_kind_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="square RGB images of one size"):
        paint_defect(textured(1), textured(2)[:64], rng)
    with pytest.raises(ValueError, match="unknown defect kind"):
        paint_defect(textured(1), textured(2), rng, "dent")
