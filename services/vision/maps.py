"""Turning patch-score grids into smooth anomaly maps at the model's input resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps with reflect padding; sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps)
    radius = kernel.numel() // 2
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    kernel = kernel[kernel.numel() // 2 - radius : kernel.numel() // 2 + radius + 1]
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    maps = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    padded = F.pad(maps, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1))


def patch_scores_to_map(patch_scores: torch.Tensor, image_size: int, sigma: float) -> torch.Tensor:
    """(B, h, w) patch scores → (B, S, S) anomaly maps: bilinear upsampling, then Gaussian smoothing."""
    maps = F.interpolate(
        patch_scores.unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return gaussian_blur(maps, sigma).squeeze(1)
