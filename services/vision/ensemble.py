"""The ensemble: several trained detectors' calibrated maps fused into one, behind a cascade.

- **Members** are ordinary linewatch artifacts (PatchCore, SPADE, DeSTSeg, diffusion) kept inside
  the ensemble's folder (``members/<name>``), so the ensemble is one self-contained artifact that
  every runtime loads like any other.
- **Fusion in calibrated units:** each member's raw score and map are put on a common scale by its
  own calibration, ``z = (log raw - log threshold) / scale`` (the logit of its normalised score:
  0 at its threshold, one unit per spread of its held-out good scores). ``geometric`` fusion (the
  default) takes the weighted mean of the members' ``z`` and returns ``exp`` of it as the raw
  value; ``mean`` averages the members' normalised scores (logistic of ``z``), which saturates at
  both ends. Map and image score have their own weights: by default the maps are fused with equal
  weights and the image score is the first member's alone, so that the ensemble sharpens where a
  defect is without giving up the first member's separation of good and defective parts.
- **Cascade:** the first member is the pre-screen. Only frames whose first-member score reaches the
  pre-screen level go on to the other members; that level is set on the held-out good images so
  that a chosen share of good frames (``pass_share``) passes. A frame that stops at the pre-screen
  keeps the first member's values (the others are taken to agree), so a line keeps the first
  member's throughput on good parts and the expensive members refine the doubtful ones.
- **Where the refining members run:** here by default (:meth:`EnsembleModel.refine`); a runtime
  may hand them elsewhere by setting ``refiner`` (Triton: a BLS call to the recipe's ``-refine``
  model, which runs :meth:`~EnsembleModel.refine` on its own instances), with the same numbers.
- The ensemble's own calibration is fitted on the fused scores of the held-out good images, with
  the cascade applied exactly as on the line. Every member must have been trained on the same data
  with the same hold-out split, so those images are unseen by all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from services.vision.calibration import Calibration

MEMBERS_DIR = "members"
Fusion = Literal["geometric", "mean"]
PASS_ALL = 1000.0  # beyond the +-50 that calibrated_z clamps to
# frames past the pre-screen → the refining members' (image z (B, M-1), map z (B, M-1, S, S))
Refiner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EnsembleParams:
    members: tuple[str, ...] = ()  # member folders under members/, in order; the first pre-screens
    map_weights: tuple[float, ...] = ()
    image_weights: tuple[float, ...] = ()
    fusion: Fusion = "geometric"
    pass_share: float = 1.0  # share of good frames the pre-screen passes on (1: every frame)
    prescreen: float = 0.0  # the first member's z from which a frame goes on; set when calibrated

    def __post_init__(self) -> None:
        n = len(self.members)
        if n < 2:
            raise ValueError(f"an ensemble needs at least two members, got {n}")
        for name, weights in (("map", self.map_weights), ("image", self.image_weights)):
            if len(weights) != n:
                raise ValueError(f"{len(weights)} {name} weights for {n} members")
            if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
                raise ValueError(f"{name} weights must be finite, at least 0, and not all 0: {weights}")
        if self.map_weights[0] <= 0 or self.image_weights[0] <= 0:
            # a frame the pre-screen stops keeps the first member's values: it must count in both
            raise ValueError("the first member (the pre-screen) needs a map and an image weight above 0")
        if not 0.0 <= self.pass_share <= 1.0:
            raise ValueError(f"the pass share is a share from 0 to 1, got {self.pass_share}")
        if self.fusion not in ("geometric", "mean"):
            raise ValueError(f"fusion must be geometric or mean, got {self.fusion!r}")


def ensemble_params(
    members: list[str],
    map_weights: list[float] | None = None,
    image_weights: list[float] | None = None,
    fusion: Fusion = "geometric",
    pass_share: float = 1.0,
) -> EnsembleParams:
    """Params with the defaults filled in: equal map weights, the image score from the first member."""
    n = len(members)
    return EnsembleParams(
        members=tuple(members),
        map_weights=tuple(map_weights) if map_weights is not None else (1.0,) * n,
        image_weights=tuple(image_weights) if image_weights is not None else (1.0,) + (0.0,) * (n - 1),
        fusion=fusion,
        pass_share=pass_share,
    )


def params_from_card(raw: dict[str, Any]) -> EnsembleParams:
    values = dict(raw)
    for key in ("members", "map_weights", "image_weights"):
        values[key] = tuple(values[key])
    return EnsembleParams(**values)


def params_for_card(params: EnsembleParams) -> dict[str, Any]:
    return asdict(params)


def calibrated_z(calibration: Calibration, raw: torch.Tensor) -> torch.Tensor:
    """A member's raw scores in units of its calibration: the logit of its normalised score
    (:meth:`Calibration.normalise`), 0 at its threshold."""
    z = (
        raw.double().clamp_min(1e-12).log() - math.log(max(calibration.threshold, 1e-12))
    ) / calibration.scale
    return z.clamp(-50.0, 50.0)


@dataclass
class MemberOutput:
    image_z: torch.Tensor  # (B,)
    map_z: torch.Tensor  # (B, S, S)
    embeddings: torch.Tensor  # (B, D)
    residuals: torch.Tensor | None  # (B, D', h, w) where the member has them


class EnsembleModel(nn.Module):
    """Members with their calibrations, fused as :class:`EnsembleParams` says; returns raw fused
    scores and maps (positive, for the ensemble's own calibration), the first member's embeddings
    and, where it has them, its residual features (defect embeddings)."""

    def __init__(
        self,
        members: list[nn.Module],
        calibrations: list[tuple[Calibration, Calibration]],  # (image, pixel) per member
        image_size: int,
        params: EnsembleParams,
    ) -> None:
        super().__init__()
        if len(members) != len(params.members) or len(calibrations) != len(members):
            raise ValueError("one model and one calibration pair per member")
        self.members = nn.ModuleList(members)
        self.calibrations = calibrations
        self.image_size = image_size
        self.params = params
        self.last_passed = 0  # frames of the last batch that went past the pre-screen (observability)
        # the last batch's members' calibrated image scores (B, members): z, 0 at a member's own
        # threshold; NaN where the cascade did not run the member
        self.last_member_z: torch.Tensor | None = None
        self.refiner: Refiner | None = None  # None: :meth:`refine` here

    def member_output(self, index: int, images: torch.Tensor) -> MemberOutput:
        member = self.members[index]
        residuals = None
        with_residuals = getattr(member, "score_with_residuals", None)
        if callable(with_residuals):
            scores, maps, embeddings, residuals = with_residuals(images)
        else:
            scores, maps, embeddings = member(images)
        image_cal, pixel_cal = self.calibrations[index]
        return MemberOutput(
            calibrated_z(image_cal, scores), calibrated_z(pixel_cal, maps), embeddings, residuals
        )

    def refine(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members after the pre-screen on ``images``: their calibrated image scores (B, M-1)
        and maps (B, M-1, S, S), float64; NaN for a member with neither weight (not run)."""
        p = self.params
        n, others = images.shape[0], len(self.members) - 1
        image_z = torch.full((n, others), float("nan"), dtype=torch.float64)
        map_z: torch.Tensor | None = None
        for i in range(1, len(self.members)):
            if p.image_weights[i] == 0 and p.map_weights[i] == 0:
                continue
            out = self.member_output(i, images)
            if map_z is None:
                map_z = torch.full((n, others, *out.map_z.shape[1:]), float("nan"), dtype=torch.float64)
            image_z[:, i - 1] = out.image_z.double()
            map_z[:, i - 1] = out.map_z.double()
        if map_z is None:
            map_z = torch.full(
                (n, others, self.image_size, self.image_size), float("nan"), dtype=torch.float64
            )
        return image_z, map_z

    def _to_raw(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused values back to positive raw scores the ensemble's calibration reads."""
        if self.params.fusion == "geometric":
            return fused.exp()
        return fused  # already a mean of probabilities in (0, 1)

    def _unit(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.params.fusion == "geometric" else torch.sigmoid(z)

    def score_with_residuals(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        p = self.params
        first = self.member_output(0, images)
        image_fused = self._unit(first.image_z)
        map_fused = self._unit(first.map_z)
        passed = (first.image_z >= p.prescreen).nonzero().flatten()
        self.last_passed = int(passed.numel())
        member_z = torch.full((images.shape[0], len(self.members)), float("nan"), dtype=torch.float64)
        member_z[:, 0] = first.image_z.double()
        if passed.numel():
            image_z, map_z = (self.refiner or self.refine)(images[passed])
            image_sum = p.image_weights[0] * image_fused[passed]
            map_sum = p.map_weights[0] * map_fused[passed]
            for i in range(1, len(self.members)):
                if p.image_weights[i] == 0 and p.map_weights[i] == 0:
                    continue
                member_z[passed, i] = image_z[:, i - 1]
                image_sum = image_sum + p.image_weights[i] * self._unit(image_z[:, i - 1])
                map_sum = map_sum + p.map_weights[i] * self._unit(map_z[:, i - 1])
            image_fused = image_fused.clone()
            map_fused = map_fused.clone()
            image_fused[passed] = image_sum / sum(p.image_weights)
            map_fused[passed] = map_sum / sum(p.map_weights)
        scores = self._to_raw(image_fused).float()
        maps = self._to_raw(map_fused).float()
        self.last_member_z = member_z
        return scores, maps, first.embeddings.float(), first.residuals

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, maps, embeddings, _ = self.score_with_residuals(images)
        return scores, maps, embeddings

    def first_z(self, images: torch.Tensor) -> torch.Tensor:
        """The pre-screen's calibrated image scores (B,), to place the pre-screen level."""
        return self.member_output(0, images).image_z


def prescreen_level(first_z: torch.Tensor, pass_share: float) -> float:
    """The first member's ``z`` from which ``pass_share`` of these good frames go on; beyond the
    range ``z`` is clamped to for a share of 1 (every frame) or 0 (none), finite for the card."""
    if pass_share >= 1.0:
        return -PASS_ALL
    if pass_share <= 0.0:
        return PASS_ALL
    return float(torch.quantile(first_z.double(), 1.0 - pass_share))
