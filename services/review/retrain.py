"""Retraining from reviewed frames: when it is due, what it learns from, and the new model version.

**When** (:class:`RetrainRules`, :func:`reasons_to_retrain`), for a recipe's production model:

- ``false_alarms``: at least this many of its NG or REVIEW frames were confirmed good by a person;
- ``max_miss_rate``: the miss rate its card estimates is above this bound (real defects confirmed by
  reviewers replace the card's synthetic ones when there are enough, see below);
- ``drift``: a drift alert was raised for the recipe since the model was made.

**What** (:func:`build_training_set`): the model's own training images (``train/good`` of the data it
names, linked) plus every frame of the recipe a person confirmed good (its image from the blob
store), as a new MVTec-layout set; the frames confirmed defective go beside it (``defects/``) and,
when there are at least three, they set the new model's operating curve (``calibrate --defects``).
The new model is trained with the production model's settings and registered as a new version;
promoting it stays a person's decision unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.storage.label_query import LabelQuery
from services.storage.ports import BlobStore, LabelStore, RecordStore
from services.vision.artifact import ModelCard
from services.vision.train import TrainConfig

CONFIRMED_GOOD = "confirmed-good"


@dataclass(frozen=True)
class RetrainRules:
    false_alarms: int | None = 20
    max_miss_rate: float | None = 0.10
    drift: bool = True


@dataclass
class TrainingSet:
    root: Path  # the MVTec-layout root (root/category/train/good)
    category: str
    base_images: int
    confirmed_good: int
    confirmed_defects: int
    missing_images: int  # reviewed frames whose image is gone from the blob store (keep_frames off)

    @property
    def defects_dir(self) -> Path:
        return self.root / self.category / "defects"


def confirmed_false_alarms(labels: LabelStore, recipe: str, model_version: str) -> int:
    """The model's NG and REVIEW frames that a person confirmed good."""
    return sum(
        labels.count_labels(
            LabelQuery(recipe=recipe, model_version=model_version, verdict=v, decision="good")
        )
        for v in ("NG", "REVIEW")
    )


def reasons_to_retrain(
    rules: RetrainRules, card: ModelCard, recipe: str, labels: LabelStore, records: RecordStore | None
) -> list[str]:
    """Why the recipe's model (``card``) is due for retraining; empty when it is not."""
    from services.vision.operating import estimates

    reasons: list[str] = []
    if rules.false_alarms is not None:
        count = confirmed_false_alarms(labels, recipe, card.version)
        if count >= rules.false_alarms:
            reasons.append(f"{count} confirmed false alarms (rule: {rules.false_alarms})")
    if rules.max_miss_rate is not None and card.operating is not None:
        miss = estimates(card.operating, card.image_calibration.threshold, card.review)["miss_rate"]
        if miss == miss and miss > rules.max_miss_rate:
            reasons.append(f"estimated miss rate {miss:.1%} above {rules.max_miss_rate:.1%}")
    if rules.drift and records is not None:
        made = datetime.fromisoformat(card.training.created_at.replace("Z", "+00:00"))
        drifts = [
            alert
            for alert in records.list_alerts(limit=10_000)
            if alert.kind.endswith("drift")
            and alert.details.get("recipe") == recipe
            and alert.raised_at > made
        ]
        if drifts:
            reasons.append(f"{len(drifts)} drift alerts since the model was made ({drifts[0].message})")
    return reasons


def build_training_set(
    base_root: Path, category: str, recipe: str, labels: LabelStore, blobs: BlobStore, out_root: Path
) -> TrainingSet:
    """The base set's ``train/good`` (linked) plus the recipe's confirmed-good frames, and its
    confirmed-defective frames in ``defects/``, under ``out_root`` (which must not exist yet)."""
    from services.vision.dataset import list_train_images

    good_dir = out_root / category / "train" / "good"
    defects_dir = out_root / category / "defects"
    out_root.mkdir(parents=True)
    good_dir.mkdir(parents=True)
    defects_dir.mkdir(parents=True)
    base = list_train_images(base_root, category)
    for path in base:
        os.symlink(path.resolve(), good_dir / path.name)
    counts = {"good": 0, "defect": 0, "missing": 0}
    offset = 0
    while True:
        page = labels.query_labels(LabelQuery(recipe=recipe, status="reviewed", limit=1000, offset=offset))
        if not page:
            break
        offset += len(page)
        for label in page:
            if label.image is None or not blobs.exists(label.image.uri):
                counts["missing"] += 1
                continue
            decision = label.ground_truth
            folder = good_dir if decision == "good" else defects_dir
            name = f"{CONFIRMED_GOOD if decision == 'good' else 'confirmed-defect'}-{label.frame_id}"
            (folder / f"{name}.{label.image.encoding}").write_bytes(blobs.get(label.image.uri))
            counts["good" if decision == "good" else "defect"] += 1
    return TrainingSet(out_root, category, len(base), counts["good"], counts["defect"], counts["missing"])


def retrain_config(
    card: ModelCard, data: TrainingSet, out_dir: Path, weights: Path | None, progress: bool
) -> TrainConfig:
    """The training settings of ``card`` (a PatchCore model) on the new set."""
    if card.kind != "patchcore":
        raise ValueError(f"retraining a {card.kind} model from reviews is not built yet (PatchCore only)")
    folds = card.training.folds or 0
    return TrainConfig(
        data_root=data.root,
        category=data.category,
        out_dir=out_dir,
        backbone=card.backbone,
        weights=weights,
        activation=card.activation,
        layers=list(card.layers),
        image_size=card.image_size,
        coreset_ratio=float(card.params.get("coreset_ratio", 0.02)),
        target_fpr=card.image_calibration.target_fpr,
        review_fpr=card.review.review_fpr if card.review is not None else None,
        folds=folds,
        roi=card.roi,
        seed=int(card.params.get("seed", 0)),
        defect_rules=card.defect_rules,
        progress=progress,
    )
