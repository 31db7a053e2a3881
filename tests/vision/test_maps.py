"""Anomaly maps: the composed upsample-and-blur operator equals doing both steps in turn."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from services.vision.maps import gaussian_blur, patch_scores_to_map


def test_operator_equals_interpolate_then_blur() -> None:
    scores = torch.rand(3, 32, 24, generator=torch.Generator().manual_seed(0))
    for sigma in (0.0, 1.5, 4.0):
        expected = gaussian_blur(
            F.interpolate(scores.unsqueeze(1), size=(256, 256), mode="bilinear", align_corners=False), sigma
        ).squeeze(1)
        assert torch.allclose(patch_scores_to_map(scores, 256, sigma), expected, atol=1e-5)


def test_blur_keeps_a_constant_map_constant_and_spreads_a_point() -> None:
    constant = patch_scores_to_map(torch.full((1, 16, 16), 2.0), 128, 4.0)
    assert torch.allclose(constant, torch.full_like(constant, 2.0), atol=1e-5)
    point = torch.zeros(1, 16, 16)
    point[0, 8, 8] = 1.0
    spread = patch_scores_to_map(point, 128, 4.0)[0]
    peak = divmod(int(spread.argmax()), 128)
    assert abs(peak[0] - 68) <= 1 and abs(peak[1] - 68) <= 1
    assert spread.max() < 0.5  # the blur spread the point out
