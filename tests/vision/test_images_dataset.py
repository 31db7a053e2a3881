"""Bad input: every unusable file gets a clear error naming it, or is handled when handling is obvious."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.vision.dataset import (
    DatasetError,
    iter_batches,
    list_test_samples,
    list_train_images,
)
from services.vision.images import ImageError, decode_image, load_image, load_mask


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def rgb(width: int = 64, height: int = 48) -> Image.Image:
    array = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array)


def test_zero_bytes_is_named_empty() -> None:
    with pytest.raises(ImageError, match=r"part-7\.png: empty file"):
        decode_image(b"", "part-7.png")


def test_truncated_png_is_a_decode_error_naming_the_file() -> None:
    data = encode(rgb(256, 256))
    with pytest.raises(ImageError, match=r"cut\.png: cannot decode image"):
        decode_image(data[: len(data) // 2], "cut.png")


def test_garbage_bytes_are_a_decode_error() -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"this is not an image at all", "x.jpg")


def test_one_pixel_image_is_refused_as_too_small() -> None:
    with pytest.raises(ImageError, match="1x1, smaller than"):
        decode_image(encode(Image.new("RGB", (1, 1))), "dot.png")


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    array = np.full((32, 40), 65535, dtype=np.uint16)
    array[:, :20] = 257 * 100
    decoded = decode_image(encode(Image.fromarray(array)), "deep.png")
    assert decoded.shape == (32, 40, 3) and decoded.dtype == np.uint8
    assert decoded[0, 0, 0] == 100 and decoded[0, 39, 2] == 255


def test_rgba_drops_alpha_and_grayscale_becomes_rgb() -> None:
    rgba = Image.new("RGBA", (20, 20), (10, 20, 30, 0))
    assert decode_image(encode(rgba), "a.png")[0, 0].tolist() == [10, 20, 30]
    gray = Image.new("L", (20, 20), 77)
    assert decode_image(encode(gray), "g.png")[5, 5].tolist() == [77, 77, 77]


def test_cmyk_jpeg_is_converted() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG"), "cmyk.jpg")
    assert decoded.shape == (32, 32, 3)
    red, green, blue = decoded[16, 16].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_huge_png_is_refused_before_decoding() -> None:
    huge = Image.new("L", (12000, 12000))
    with pytest.raises(ImageError, match=r"12000x12000 \(144\.0 MP\), above the 64 MP limit"):
        decode_image(encode(huge), "line-scan.png")


def test_large_jpeg_is_decoded_at_reduced_size() -> None:
    decoded = decode_image(encode(rgb(3000, 2000), "JPEG"), "big.jpg", max_megapixels=1.0)
    assert max(decoded.shape[:2]) <= 1500  # JPEG draft mode scales by powers of two


def test_unreadable_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.png: cannot read file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path)  # a directory


def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "000_mask.png"
    Image.new("L", (10, 10), 255).save(path)
    with pytest.raises(ImageError, match=r"000_mask\.png: mask is 10x10 but its image is 20x30"):
        load_mask(path, (30, 20))
    assert load_mask(path, (10, 10)).all()


def make_dataset(root: Path) -> Path:
    category = root / "widget"
    (category / "train" / "good").mkdir(parents=True)
    for i in range(4):
        rgb().save(category / "train" / "good" / f"{i:03d}.png")
    Image.new("L", (64, 48), 128).save(category / "train" / "good" / "gray.jpg")
    (category / "train" / "good" / "empty.png").write_bytes(b"")
    (category / "train" / "good" / "notes.txt").write_text("ignored")
    (category / "test" / "good").mkdir(parents=True)
    (category / "test" / "scratch").mkdir(parents=True)
    (category / "ground_truth" / "scratch").mkdir(parents=True)
    rgb().save(category / "test" / "good" / "000.png")
    rgb().save(category / "test" / "scratch" / "000.jpg")
    Image.new("L", (64, 48), 255).save(category / "ground_truth" / "scratch" / "000_mask.png")
    rgb().save(category / "test" / "scratch" / "001.png")  # no mask
    return root


def test_dataset_listing_matches_masks_by_stem_and_reports_missing_ones(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    assert [p.name for p in list_train_images(root, "widget")] == [
        "000.png",
        "001.png",
        "002.png",
        "003.png",
        "empty.png",
        "gray.jpg",
    ]
    samples, skipped = list_test_samples(root, "widget")
    assert [(s.path.name, s.defect_type, s.mask_path is not None) for s in samples] == [
        ("000.png", "good", False),
        ("000.jpg", "scratch", True),
    ]
    assert len(skipped) == 1 and skipped[0].path.endswith("001.png") and "no mask" in skipped[0].reason


def test_batches_skip_and_report_bad_files_instead_of_dying(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    skipped: list = []
    batches = list(iter_batches(list_train_images(root, "widget"), 32, 4, skipped))
    assert sum(b.images.shape[0] for b in batches) == 5
    assert batches[0].images.shape[1:] == (3, 32, 32)
    assert [(Path(s.path).name, s.reason) for s in skipped] == [("empty.png", "empty file (0 bytes)")]


def test_empty_or_missing_training_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no training folder"):
        list_train_images(tmp_path, "nothing")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no training images in"):
        list_train_images(tmp_path, "empty")


def test_opencv_leaves_the_cores_to_torch() -> None:
    import cv2

    import services.vision  # noqa: F401  (sets it)

    assert cv2.getNumThreads() == 1
