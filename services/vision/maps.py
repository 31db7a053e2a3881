"""Turning patch-score grids into smooth anomaly maps at the model's input resolution.

Bilinear upsampling and a reflect-padded Gaussian blur are both linear and separable, so their
composition is one small matrix per axis: ``map = A_h @ scores @ A_w.T`` with ``A`` of shape
(S, h). That is exact and costs a few hundred thousand multiply-adds per map instead of a 33-tap
convolution over every output pixel.
"""

from __future__ import annotations

from functools import lru_cache

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
    radius = min(kernel.numel() // 2, maps.shape[-1] - 1, maps.shape[-2] - 1)
    centre = kernel.numel() // 2
    kernel = kernel[centre - radius : centre + radius + 1]
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    maps = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    padded = F.pad(maps, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1))


@lru_cache(maxsize=16)
def upsample_blur_operator(grid: int, size: int, sigma: float) -> torch.Tensor:
    """The (size, grid) matrix that upsamples one axis bilinearly and then blurs it."""
    basis = torch.eye(grid).view(grid, 1, grid, 1)  # each grid cell alone, as a grid x 1 image
    upsampled = F.interpolate(basis, size=(size, 1), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma)
        radius = min(kernel.numel() // 2, size - 1)
        centre = kernel.numel() // 2
        kernel = kernel[centre - radius : centre + radius + 1]
        kernel = kernel / kernel.sum()
        padded = F.pad(upsampled, (0, 0, radius, radius), mode="reflect")
        upsampled = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    return upsampled.view(grid, size).T.contiguous()


def patch_scores_to_map(patch_scores: torch.Tensor, image_size: int, sigma: float) -> torch.Tensor:
    """(B, h, w) patch scores → (B, S, S) anomaly maps: bilinear upsampling, then Gaussian smoothing."""
    rows = upsample_blur_operator(patch_scores.shape[1], image_size, float(sigma))
    cols = upsample_blur_operator(patch_scores.shape[2], image_size, float(sigma))
    return rows @ patch_scores.float() @ cols.T
