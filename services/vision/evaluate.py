"""Evaluating a trained detector on a labelled test set (MVTec layout)."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from services.vision.artifact import ModelCard
from services.vision.dataset import SkippedFile, TestSample, list_test_samples, resize_mask
from services.vision.images import ImageError, load_image, load_mask
from services.vision.inspector import Inspector
from services.vision.metrics import evaluate_detection

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "image_f1", "iap", "iap90", "fpr", "fnr")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class EvaluationReport:
    metrics: dict[str, float]
    n_images: int
    images_per_s: float  # inference only (model forward), at the evaluation batch size
    batch_size: int
    peak_rss_mb_inference: float
    skipped: list[SkippedFile] = field(default_factory=list)
    per_type: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: _finite(self.metrics.get(k, math.nan)) for k in METRIC_KEYS}
        out.update({k: _finite(v) for k, v in self.metrics.items() if k not in out})
        out["images_per_s"] = round(self.images_per_s, 2)
        out["batch_size"] = self.batch_size
        out["n_images"] = self.n_images
        out["per_type"] = self.per_type
        out["peak_rss_mb_inference"] = round(self.peak_rss_mb_inference, 1)
        out["skipped"] = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return out


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _load(sample: TestSample, image_size: int, roi: tuple[int, int, int, int] | None) -> tuple[Any, Any]:
    image = load_image(sample.path)
    if sample.mask_path is None:
        mask = np.zeros((image_size, image_size), dtype=bool)
    else:
        mask = resize_mask(load_mask(sample.mask_path, image.shape[:2]), image_size, roi)
    return image, mask


@dataclass
class ScoredTestSet:
    """A model's raw scores and maps on every usable test image, in the dataset's order."""

    names: list[str]  # "defect type/file name", e.g. "crack/exp1_num_4.png"
    scores: npt.NDArray[np.floating[Any]]  # (N,) raw image scores
    labels: npt.NDArray[np.int64]  # (N,) 1 = defective
    maps: npt.NDArray[np.floating[Any]]  # (N, S, S) raw anomaly maps at the model's input size
    masks: npt.NDArray[np.bool_]  # (N, S, S) ground truth at the same size
    inference_s: float  # model forward only
    peak_rss_mb: float  # while scoring, before the maps are gathered into one array
    skipped: list[SkippedFile] = field(default_factory=list)
    per_type: dict[str, int] = field(default_factory=dict)


def score_test_set(
    inspector: Inspector, data_root: Path, category: str, batch_size: int = 8, progress: bool = True
) -> ScoredTestSet:
    """Score every test image of ``data_root/category`` (MVTec layout) in batches of ``batch_size``;
    undecodable files are listed in ``skipped``, not fatal."""
    samples, skipped = list_test_samples(data_root, category)
    size, roi = inspector.card.image_size, inspector.card.roi
    scores, labels, maps, masks, names = [], [], [], [], []
    per_type: dict[str, int] = {}
    inference_s = 0.0
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(samples), batch_size):
        images, kept = [], []
        for sample in samples[start : start + batch_size]:
            try:
                image, mask = _load(sample, size, roi)
            except ImageError as err:
                skipped.append(SkippedFile(str(sample.path), err.reason))
                continue
            images.append(image)
            masks.append(mask)
            kept.append(sample)
        bar.update(len(samples[start : start + batch_size]))
        if not images:
            continue
        batch = inspector.preprocess(images)
        began = time.perf_counter()
        raw = inspector.score_batch(batch)
        inference_s += time.perf_counter() - began
        scores.append(raw.scores)
        maps.append(raw.maps)
        for sample in kept:
            labels.append(int(sample.is_defective))
            names.append(f"{sample.path.parent.name}/{sample.path.name}")
            per_type[sample.defect_type] = per_type.get(sample.defect_type, 0) + 1
    bar.close()
    rss = peak_rss_mb()
    if not scores:
        raise ValueError(f"no usable test image under {data_root}/{category}/test")
    return ScoredTestSet(
        names=names,
        scores=np.concatenate(scores),
        labels=np.asarray(labels, dtype=np.int64),
        maps=np.concatenate(maps),
        masks=np.stack(masks),
        inference_s=inference_s,
        peak_rss_mb=rss,
        skipped=skipped,
        per_type=per_type,
    )


def verdict_rates(card: ModelCard, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The three verdicts on a labelled test set: good parts called NG (``fpr``, as the metrics give
    it) and sent to REVIEW, defective parts called OK (``miss_rate``: with a REVIEW band, fewer than
    ``fnr``, which counts every defective part below the NG threshold) and sent to REVIEW; and the
    card's estimated miss rate at the same point, for comparison."""
    from services.vision.operating import estimates

    ng = card.image_calibration.threshold
    review = card.review.threshold if card.review is not None else ng
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    share = lambda mask, of: float(mask[of].mean()) if of.any() else math.nan  # noqa: E731
    out = {
        "good_review_share": share((s >= review) & (s < ng), ~y),
        "miss_rate": share(s < review, y),
        "defect_review_share": share((s >= review) & (s < ng), y),
        "review_share": float(((s >= review) & (s < ng)).mean()) if s.size else math.nan,
    }
    if card.operating is not None:
        out["estimated_miss_rate"] = estimates(card.operating, ng, card.review)["miss_rate"]
        out["estimated_false_alarm_rate"] = estimates(card.operating, ng, card.review)["false_alarm_rate"]
    return out


def evaluate(
    inspector: Inspector, data_root: Path, category: str, batch_size: int = 8, progress: bool = True
) -> EvaluationReport:
    scored = score_test_set(inspector, data_root, category, batch_size, progress)
    metrics = evaluate_detection(
        scored.scores,
        scored.labels,
        scored.maps,
        scored.masks,
        threshold=inspector.card.image_calibration.threshold,
    )
    metrics.update(verdict_rates(inspector.card, scored.scores, scored.labels))
    n_images = len(scored.labels)
    return EvaluationReport(
        metrics=metrics,
        n_images=n_images,
        images_per_s=n_images / scored.inference_s if scored.inference_s > 0 else math.nan,
        batch_size=batch_size,
        peak_rss_mb_inference=scored.peak_rss_mb,
        skipped=scored.skipped,
        per_type=scored.per_type,
    )


MIN_REAL_DEFECTS = 3


def defect_images(folder: Path) -> list[Path]:
    """The images of defective parts below ``folder``: every image file but those in folders named
    ``good`` and MVTec's ``*_mask`` files (a test set's folder may be given whole)."""
    from services.vision.images import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [
        p for p in paths if not p.stem.endswith("_mask") and "good" not in p.relative_to(folder).parts[:-1]
    ]


def real_defect_scores(inspector: Inspector, folder: Path) -> tuple[list[float], list[SkippedFile]]:
    """The model's raw image scores of the defect images below ``folder`` (:func:`defect_images`),
    and the files it could not read; ValueError when fewer than :data:`MIN_REAL_DEFECTS` scored."""
    from services.vision.dataset import iter_batches

    skipped: list[SkippedFile] = []
    scores: list[float] = []
    for batch in iter_batches(defect_images(folder), inspector.image_size, 8, skipped, inspector.card.roi):
        scores.extend(float(s) for s in inspector.score_batch(batch.images).scores)
    if len(scores) < MIN_REAL_DEFECTS:
        raise ValueError(
            f"{folder}: {len(scores)} readable defect images, {MIN_REAL_DEFECTS} needed at least"
        )
    return scores, skipped


def with_real_defects(card: ModelCard, scores: list[float], name: str) -> ModelCard:
    """The card with ``scores`` of real defects in its operating curve's defect scores."""
    if card.operating is None:
        raise ValueError(
            f"{card.name} {card.version} keeps no operating curve (trained before there was one)"
        )
    curve = card.operating.model_copy(update={"defects": f"real: {name}", "defect_scores": scores})
    return card.model_copy(update={"operating": curve})
