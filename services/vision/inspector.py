"""A loaded model ready to inspect frames: batch scoring, normalisation, verdicts and defects.

Every runtime (the CLI, the embedded line, Triton's Python backend) goes through
:meth:`Inspector.score_batch` for the numbers and :meth:`Inspector.interpret` for the verdict, so
a frame gets the same score and defects wherever it is inspected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.vision.artifact import ModelCard, load_artifact
from services.vision.dataset import preprocess
from services.vision.defects import DefectRegion, find_defects
from services.vision.tracing import TRACE_GUARD


@dataclass
class Prediction:
    score_raw: float
    score: float  # normalised: the calibrated threshold sits at 0.5
    verdict: str  # "OK", "REVIEW" (the model is unsure: a person decides) or "NG"
    anomaly_map: np.ndarray = field(repr=False)  # (S, S) normalised pixel scores, float32
    defects: list[DefectRegion]
    embedding: np.ndarray = field(repr=False)  # (D,) float32, for clustering
    # an ensemble's members' calibrated image scores (0 at each member's own threshold); empty for a
    # single model, and without the members the cascade did not run
    member_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class RawScores:
    scores: np.ndarray  # (B,)
    maps: np.ndarray  # (B, S, S) float32
    embeddings: np.ndarray  # (B, D) float32
    residuals: np.ndarray | None = None  # (B, D, h, w): what defects add to good patches (PatchCore)
    member_z: np.ndarray | None = None  # (B, members): an ensemble's members' calibrated scores, NaN: not run


class Inspector:
    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        self.model = model.eval()
        self.card = card

    @classmethod
    def load(cls, model_dir: Path) -> Inspector:
        model, card = load_artifact(model_dir)
        return cls(model, card)

    @property
    def image_size(self) -> int:
        return self.card.image_size

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.stack([preprocess(image, self.card.image_size, self.card.roi) for image in images])

    def score_batch(self, batch: torch.Tensor) -> RawScores:
        """Raw scores, maps and embeddings for a preprocessed (B, 3, S, S) batch, and the residual
        features that give defects their embeddings when the model has them (PatchCore)."""
        residuals = None
        with TRACE_GUARD.shared(), torch.inference_mode():  # (no model is being traced meanwhile)
            with_residuals = getattr(self.model, "score_with_residuals", None)
            if callable(with_residuals):
                scores, maps, embeddings, grid = with_residuals(batch)
                residuals = grid.float().numpy() if grid is not None else None  # an ensemble's may lack them
            else:
                scores, maps, embeddings = self.model(batch)
        member_z = getattr(self.model, "last_member_z", None)
        return RawScores(
            scores.numpy(),
            maps.numpy().astype(np.float32),
            embeddings.numpy().astype(np.float32),
            residuals,
            member_z.numpy() if member_z is not None else None,
        )

    def interpret(self, raw: RawScores, frames_hw: Sequence[tuple[int, int]]) -> list[Prediction]:
        """Normalise, grade and outline defects; ``frames_hw`` are the original frame sizes."""
        card = self.card
        scores = card.image_calibration.normalise(raw.scores)
        predictions = []
        for i, frame_hw in enumerate(frames_hw):
            pixel_map = card.pixel_calibration.normalise(raw.maps[i]).astype(np.float32)
            features = raw.residuals[i] if raw.residuals is not None else None
            if card.roi is not None:
                x, y, w, h = card.roi
                defects = find_defects(pixel_map, card.defect_rules, (h, w), (x, y), features=features)
            else:
                defects = find_defects(pixel_map, card.defect_rules, frame_hw, features=features)
            score = float(scores[i])
            predictions.append(
                Prediction(
                    score_raw=float(raw.scores[i]),
                    score=score,
                    verdict=self.verdict(float(raw.scores[i]), score),
                    anomaly_map=pixel_map,
                    defects=defects,
                    embedding=raw.embeddings[i],
                    member_scores=self._member_scores(raw, i),
                )
            )
        return predictions

    def _member_scores(self, raw: RawScores, i: int) -> dict[str, float]:
        if raw.member_z is None or self.card.kind != "ensemble":
            return {}
        names = list(self.card.params.get("members", ())) or [str(m) for m in range(raw.member_z.shape[1])]
        return {
            name: round(float(z), 4)
            for name, z in zip(names, raw.member_z[i], strict=False)
            if np.isfinite(z)
        }

    def verdict(self, raw_score: float, score: float) -> str:
        """NG at the calibrated threshold (``score`` 0.5), REVIEW in the card's band below it, else OK."""
        if score >= 0.5:
            return "NG"
        band = self.card.review
        return "REVIEW" if band is not None and band.method != "off" and raw_score >= band.threshold else "OK"

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Prediction]:
        """Inspect decoded RGB frames, ``batch_size`` at a time."""
        predictions: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            raw = self.score_batch(self.preprocess(chunk))
            predictions.extend(self.interpret(raw, [(im.shape[0], im.shape[1]) for im in chunk]))
        return predictions
