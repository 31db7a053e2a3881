"""Datasets in the MVTec AD layout and the preprocessing every detector shares.

Layout::

    ROOT/CAT/train/good/*                       good training images
    ROOT/CAT/test/good/*, ROOT/CAT/test/<type>/*    test images
    ROOT/CAT/ground_truth/<type>/<stem>_mask.png    defect masks (matched by stem)

Files that cannot be used are reported as :class:`SkippedFile` and never stop a dataset run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from services.vision.images import IMAGE_SUFFIXES, ImageError, load_image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Roi = tuple[int, int, int, int]  # x, y, width, height in original image pixels


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (missing folder, no images)."""


@dataclass(frozen=True)
class TestSample:
    path: Path
    defect_type: str  # "good" or the defect folder name
    mask_path: Path | None

    @property
    def is_defective(self) -> bool:
        return self.defect_type != "good"


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_train_images(root: Path, category: str) -> list[Path]:
    folder = Path(root) / category / "train" / "good"
    if not folder.is_dir():
        raise DatasetError(f"no training folder {folder} (expected the MVTec layout ROOT/CAT/train/good)")
    images = _images_in(folder)
    if not images:
        raise DatasetError(f"no training images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


def _find_mask(gt_folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", f"{stem}.png", f"{stem}_mask.jpg", f"{stem}.jpg", f"{stem}.bmp"):
        candidate = gt_folder / name
        if candidate.is_file():
            return candidate
    return None


def list_test_samples(root: Path, category: str) -> tuple[list[TestSample], list[SkippedFile]]:
    """Every test image with its defect type and mask; defect images without a mask are skipped."""
    test_dir = Path(root) / category / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"no test folder {test_dir} (expected the MVTec layout ROOT/CAT/test/<type>)")
    samples: list[TestSample] = []
    skipped: list[SkippedFile] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        gt_dir = Path(root) / category / "ground_truth" / type_dir.name
        for path in _images_in(type_dir):
            if type_dir.name == "good":
                samples.append(TestSample(path, "good", None))
                continue
            mask = _find_mask(gt_dir, path.stem)
            if mask is None:
                skipped.append(SkippedFile(str(path), f"no mask for it in {gt_dir}"))
            else:
                samples.append(TestSample(path, type_dir.name, mask))
    if not samples:
        raise DatasetError(f"no test images under {test_dir}")
    return samples, skipped


def crop_roi(image: np.ndarray, roi: Roi | None) -> np.ndarray:
    if roi is None:
        return image
    x, y, w, h = roi
    height, width = image.shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ImageError("<roi>", f"ROI {roi} does not fit inside the {width}x{height} image")
    return image[y : y + h, x : x + w]


def resize_for_model(image: np.ndarray, image_size: int, roi: Roi | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) → its ROI as RGB uint8 (S, S, 3), as the model sees it."""
    image = crop_roi(image, roi)
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if min(h, w) > image_size else cv2.INTER_LINEAR
    return cv2.resize(image, (image_size, image_size), interpolation=interpolation)


def preprocess(image: np.ndarray, image_size: int, roi: Roi | None = None) -> torch.Tensor:
    """RGB uint8 (H, W, 3) → normalised float tensor (3, S, S) for an ImageNet backbone."""
    resized = resize_for_model(image, image_size, roi)
    scaled = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def resize_mask(mask: np.ndarray, image_size: int, roi: Roi | None = None) -> np.ndarray:
    mask = crop_roi(mask, roi)
    small = cv2.resize(mask.astype(np.uint8), (image_size, image_size), interpolation=cv2.INTER_NEAREST)
    return small.astype(bool)


@dataclass
class LoadedBatch:
    images: torch.Tensor  # (B, 3, S, S)
    paths: list[Path]
    originals_hw: list[tuple[int, int]]


def iter_batches(
    paths: Sequence[Path],
    image_size: int,
    batch_size: int,
    skipped: list[SkippedFile],
    roi: Roi | None = None,
    workers: int = 2,
) -> Iterator[LoadedBatch]:
    """Decode and preprocess images in batches; unusable files are appended to ``skipped``."""

    def load(path: Path) -> tuple[torch.Tensor, tuple[int, int]] | SkippedFile:
        try:
            image = load_image(path)
            return preprocess(image, image_size, roi), (image.shape[0], image.shape[1])
        except ImageError as err:
            return SkippedFile(str(path), err.reason)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            tensors, kept, sizes = [], [], []
            for path, result in zip(chunk, pool.map(load, chunk), strict=True):
                if isinstance(result, SkippedFile):
                    skipped.append(result)
                else:
                    tensors.append(result[0])
                    sizes.append(result[1])
                    kept.append(path)
            if tensors:
                yield LoadedBatch(torch.stack(tensors), kept, sizes)
