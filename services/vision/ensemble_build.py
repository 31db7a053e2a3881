"""Building an ensemble artifact (``linewatch train --detector ensemble``): its members trained now
or copied from trained model folders, checked to share one hold-out split, then the pre-screen
level and the ensemble's own calibration set on the held-out good images (see ensemble.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from services.vision.artifact import (
    CARD_FILE,
    ArtifactError,
    ModelCard,
    TrainingInfo,
    load_artifact,
    now_iso,
    read_card,
    save_artifact,
)
from services.vision.calibration import fit_threshold
from services.vision.dataset import DatasetError, SkippedFile, list_train_images
from services.vision.ensemble import (
    MEMBERS_DIR,
    EnsembleModel,
    ensemble_params,
    params_for_card,
    prescreen_level,
)
from services.vision.memory import release_free_memory
from services.vision.train import (
    TrainConfig,
    _batches,
    model_version,
    split_holdout,
    train,
    training_fingerprint,
)

DETECTORS = ("patchcore", "spade", "destseg", "diffusion")
STAGING = ".members-building"


def _unique(name: str, taken: list[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def check_member(
    card: ModelCard, name: str, config: TrainConfig, paths: list[Path], holdout_paths: list[Path]
) -> None:
    """Raise ValueError unless the member was trained on these images with the ensemble's hold-out
    split (so the held-out images are unseen by every member) at the ensemble's input size."""
    if card.kind == "ensemble":
        raise ValueError(f"member {name} is itself an ensemble; list its members instead")
    if card.image_size != config.image_size or (tuple(card.roi) if card.roi else None) != config.roi:
        raise ValueError(
            f"member {name} inspects {card.image_size} px (roi {card.roi}); the ensemble"
            f" {config.image_size} px (roi {config.roi}): pass the same --image-size and --roi"
        )
    skipped = {s["path"] for s in card.training.skipped}
    fingerprint = training_fingerprint([p for p in paths if str(p) not in skipped])
    if fingerprint != card.training.fingerprint:
        raise ValueError(
            f"member {name} was trained on other images than {config.data_root}/{config.category}"
            " holds now; retrain it on this data"
        )
    if card.training.folds:
        raise ValueError(
            f"member {name} was cross-fitted on every good image ({card.training.folds} folds), so the"
            " ensemble cannot calibrate on images it has not seen: train it with --folds 0"
            " --holdout-unseen, or name it (patchcore) in --members to train it here"
        )
    images = card.training.position_images
    if card.kind == "patchcore" and images is not None and images > card.training.n_fit:
        raise ValueError(
            f"member {name}'s per-position statistics include its held-out images ({images} images,"
            f" {card.training.n_fit} fitted), so the ensemble cannot calibrate on them unseen: train"
            " it with --holdout-unseen, or name it (patchcore) in --members to train it here"
        )
    held = len([p for p in holdout_paths if str(p) not in skipped])
    if card.params.get("seed") != config.seed or card.training.n_holdout != held:
        raise ValueError(
            f"member {name} held out other images (seed {card.params.get('seed')}, {card.training.n_holdout}"
            f" held out) than the ensemble (seed {config.seed}, {held}): its calibration images would"
            " not be unseen; train it with the ensemble's --seed and --holdout"
        )


def build_ensemble(config: TrainConfig) -> ModelCard:
    """Train or copy the members into ``OUT/members``, calibrate the ensemble, save it."""
    started = time.perf_counter()
    specs = list(config.members)
    if len(specs) < 2:
        raise ValueError("an ensemble needs at least two members (--members)")
    paths = list_train_images(config.data_root, config.category)
    fit_paths, holdout_paths = split_holdout(paths, config.holdout, config.seed)
    out = Path(config.out_dir)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names: list[str] = []
    for i, spec in enumerate(specs):
        source = Path(spec)
        if (source / CARD_FILE).is_file():
            name = _unique(read_card(source).kind, names)
            shutil.copytree(source, staging / name, ignore=shutil.ignore_patterns("checkpoints", ".*"))
        elif spec in DETECTORS:
            name = _unique(spec, names)
            if config.progress:
                tqdm.write(f"ensemble member {i + 1} of {len(specs)}: training {spec}")
            train(
                replace(
                    config,
                    detector=spec,
                    out_dir=staging / name,
                    members=(),
                    layers=config.layers if spec in ("patchcore", "spade") else None,
                    position_weight=config.position_weight if spec == "patchcore" else "auto",
                    fold_holdout=False,
                )
            )
        else:
            raise ValueError(
                f"ensemble member {spec!r} is neither a model folder (no {CARD_FILE} there) nor one of"
                f" {', '.join(DETECTORS)}"
            )
        names.append(name)
    models, cards = [], []
    for name in names:
        try:
            model, card = load_artifact(staging / name)
        except ArtifactError as err:
            raise ValueError(f"member {name}: {err}") from err
        check_member(card, name, config, paths, holdout_paths)
        models.append(model)
        cards.append(card)
    params = ensemble_params(
        names,
        list(config.map_weights) if config.map_weights else None,
        list(config.image_weights) if config.image_weights else None,
        config.fusion,  # type: ignore[arg-type]
        config.pass_share,
    )
    ensemble = EnsembleModel(
        models, [(c.image_calibration, c.pixel_calibration) for c in cards], config.image_size, params
    ).eval()
    skipped: list[SkippedFile] = []
    firsts = []
    with torch.inference_mode():
        for batch in _batches(holdout_paths, config, skipped, "pre-screen"):
            firsts.append(ensemble.first_z(batch.images))
    if not firsts:
        raise DatasetError("no held-out image could be decoded, cannot calibrate")
    ensemble.params = replace(params, prescreen=prescreen_level(torch.cat(firsts), params.pass_share))
    image_scores, map_maxima, passed = [], [], 0
    with torch.inference_mode():
        for batch in _batches(holdout_paths, config, [], "calibration"):
            scores, maps, _ = ensemble(batch.images)
            image_scores.append(scores.numpy())
            map_maxima.append(maps.amax(dim=(1, 2)).numpy())
            passed += ensemble.last_passed
            release_free_memory()
    image_calibration = fit_threshold(np.concatenate(image_scores), config.target_fpr, config.confidence)
    pixel_calibration = fit_threshold(np.concatenate(map_maxima), config.target_fpr, config.confidence)
    members_dir = out / MEMBERS_DIR
    shutil.rmtree(members_dir, ignore_errors=True)
    staging.rename(members_dir)
    skipped_paths = {s.path for s in skipped}
    n_held = len(holdout_paths) - len(skipped)
    fingerprint = training_fingerprint([p for p in paths if str(p) not in skipped_paths])
    created = now_iso()
    summary: dict[str, Any] = {
        "members": [
            {
                "name": name,
                "kind": card.kind,
                "version": card.version,
                "fit_seconds": card.training.fit_seconds,
                "weights_sha256": card.weights_sha256,
            }
            for name, card in zip(names, cards, strict=True)
        ],
        "held_out_passed": passed,
        "held_out": n_held,
    }
    first = cards[0]
    card_fields = {
        "name": f"{config.category}-ensemble",
        "version": model_version(created, fingerprint),
        "kind": "ensemble",
        "backbone": first.backbone,
        "layers": first.layers,
        "activation": first.activation,
        "image_size": config.image_size,
        "roi": config.roi,
        "params": params_for_card(ensemble.params),
        "image_calibration": image_calibration,
        "pixel_calibration": pixel_calibration,
        "defect_rules": config.defect_rules,
        "training": TrainingInfo(
            data_root=str(config.data_root),
            category=config.category,
            n_images=len(paths) - len(skipped),
            n_fit=len(fit_paths),
            n_holdout=n_held,
            skipped=[{"path": s.path, "reason": s.reason} for s in skipped],
            fingerprint=fingerprint,
            fit_seconds=round(time.perf_counter() - started, 2),
            created_at=created,
            ensemble=summary,
        ),
    }
    return save_artifact(ensemble, card_fields, out)
