"""Anomaly synthesis (services/vision/synthesis.py): painted and Perlin defects, masks that say exactly
where the image changed, foregrounds, texture sources, determinism by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.vision.dataset import SkippedFile
from services.vision.images import load_image
from services.vision.synthesis import (
    MIN_MASK_SHARE,
    Synthesiser,
    SynthesisError,
    SynthesisSettings,
    foreground_mask,
    load_textures,
    paint_defect,
    perlin_noise,
    synthesise,
)
from services.vision.synthesis import PAINT_KINDS as KINDS

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
        # visible: a patch can be faint when the donor's texture is close to the part's own, and a
        # blotch's mask takes in its soft rim
        assert change[painted.mask].mean() > {"patch": 10, "blotch": 15, "stroke": 30}[kind]
        assert change[~painted.mask].max() == 0  # outside the mask the image is untouched


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
    with pytest.raises(ValueError, match="RGB images of one size"):
        paint_defect(textured(1), textured(2)[:64], rng)
    with pytest.raises(ValueError, match="unknown defect kind"):
        paint_defect(textured(1), textured(2), rng, "dent")


# --- Perlin synthesis ----------------------------------------------------------------------------


def batch_of(n: int, size: int = SIZE) -> torch.Tensor:
    return torch.stack([torch.from_numpy(textured(i)).permute(2, 0, 1) for i in range(n)])[..., :size, :size]


@pytest.mark.parametrize("source", ["procedural", "self"])
def test_perlin_defects_change_exactly_the_masked_pixels(source: str) -> None:
    images = batch_of(6)
    settings = SynthesisSettings(sources=(source,), beta=(0.6, 1.0))
    result = Synthesiser(settings).apply(images, torch.Generator().manual_seed(3))
    assert result.images.dtype == torch.uint8 and result.images.shape == images.shape
    assert result.sources == [source] * 6
    changed = (result.images != images).any(dim=1)
    for b in range(6):
        mask = result.masks[b]
        assert mask.float().mean() >= MIN_MASK_SHARE and mask.float().mean() <= 0.5
        assert not changed[b][~mask].any()  # bit-identical outside the mask
        assert changed[b][mask].float().mean() > 0.9  # and visibly changed inside it


def test_float_images_keep_their_dtype_and_a_probability_leaves_some_clean() -> None:
    images = batch_of(40).float() / 255
    result = Synthesiser().apply(images, torch.Generator().manual_seed(0), defect_probability=0.5)
    drawn = result.masks.flatten(1).any(dim=1)
    assert result.images.dtype == torch.float32
    assert 8 <= int(drawn.sum()) <= 32
    clean = ~drawn
    assert torch.equal(result.images[clean], images[clean])
    assert all((s == "") == bool(c) for s, c in zip(result.sources, clean, strict=True))


def test_the_same_seed_draws_the_same_defects_and_another_seed_others() -> None:
    images = batch_of(4)
    first = Synthesiser().apply(images, torch.Generator().manual_seed(11))
    again = Synthesiser().apply(images, torch.Generator().manual_seed(11))
    other = Synthesiser().apply(images, torch.Generator().manual_seed(12))
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.masks, other.masks)


def test_perlin_noise_is_bounded_and_takes_any_size() -> None:
    noise = perlin_noise(37, 91, (3, 5), torch.Generator().manual_seed(0))
    assert noise.shape == (37, 91)
    assert noise.abs().max() <= 1.5 and noise.std() > 0.1


def test_defects_stay_inside_a_given_foreground() -> None:
    images = batch_of(8)
    foreground = torch.zeros(8, SIZE, SIZE, dtype=torch.bool)
    foreground[:, 32:96, 40:100] = True
    result = Synthesiser().apply(images, torch.Generator().manual_seed(5), foreground)
    assert result.masks.any() and not (result.masks & ~foreground).any()
    assert torch.equal(result.images[..., :32, :], images[..., :32, :])
    painted = Synthesiser(SynthesisSettings(method="paint")).apply(
        images, torch.Generator().manual_seed(5), foreground
    )
    assert painted.masks.any() and not (painted.masks & ~foreground).any()
    assert set(painted.sources) <= set(KINDS)


def test_otsu_finds_the_bottle_and_auto_takes_the_whole_tile(bottle_root: Path) -> None:
    bottle = load_image(bottle_root / "bottle" / "train" / "good" / "000.png")
    part = foreground_mask(bottle, "auto")
    h, w = part.shape
    assert 0.3 < part.mean() < 0.9  # the round bottle, not the dark corners
    assert part[h // 2, w // 2] and not part[2, 2] and not part[-3, -3]
    tile_root = bottle_root.parent / "magnetic_tile" / "magnetic_tile" / "train" / "good"
    if not tile_root.is_dir():
        pytest.skip("shared magnetic tile set not found")
    tile = load_image(sorted(tile_root.iterdir())[0])
    assert foreground_mask(tile, "auto").all()
    assert foreground_mask(tile, "whole").all()


def test_single_image_synthesis_at_its_own_size_non_square() -> None:
    image = np.ascontiguousarray(textured(3)[:, :100])
    out, mask, source = synthesise(image, seed=4, settings=SynthesisSettings(foreground="whole"))
    assert out.shape == image.shape and mask.shape == (SIZE, 100) and source in ("procedural", "self")
    assert np.array_equal(out[~mask], image[~mask]) and mask.any()
    again = synthesise(image, seed=4, settings=SynthesisSettings(foreground="whole"))
    assert np.array_equal(again[0], out)


def test_texture_folders_skip_bad_files_and_feed_the_folder_source(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "textures" / "woven"
    folder.mkdir(parents=True)
    stripes = np.zeros((64, 80, 3), np.uint8)
    stripes[:, ::4] = (200, 30, 30)
    cv2.imwrite(str(folder / "stripes.png"), stripes)
    (folder / "broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(folder / "tiny.png"), stripes[:4, :4])
    skipped: list[SkippedFile] = []
    textures = load_textures(tmp_path / "textures", skipped)
    assert len(textures) == 1 and textures[0].shape == (3, 64, 80)
    assert sorted(Path(s.path).name for s in skipped) == ["broken.png", "tiny.png"]
    result = Synthesiser(SynthesisSettings(sources=("folder",)), textures).apply(
        batch_of(3), torch.Generator().manual_seed(1)
    )
    assert result.sources == ["folder"] * 3
    with pytest.raises(SynthesisError, match="needs texture images"):
        Synthesiser(SynthesisSettings(sources=("folder",)))
    with pytest.raises(SynthesisError, match="no usable texture"):
        load_textures(_empty(tmp_path), [])


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_bad_settings_are_refused_with_the_reason() -> None:
    with pytest.raises(SynthesisError, match="unknown synthesis method"):
        SynthesisSettings(method="diffusion")
    with pytest.raises(SynthesisError, match="beta"):
        SynthesisSettings(beta=(0.5, 1.5))
    with pytest.raises(SynthesisError, match="expected images"):
        Synthesiser().apply(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.Generator())
