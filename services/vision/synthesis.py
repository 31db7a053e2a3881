"""Anomaly synthesis: defects drawn onto good images, each with the exact mask of what changed.

Real defect samples are rare, so detectors that learn from defects (DeSTSeg's segmentation head),
settings that trade sensitivities (PatchCore's position weight) and miss-rate estimates all use
synthetic ones. Two methods:

- ``perlin`` (DRAEM / DeSTSeg): a mask from multi-scale Perlin noise above a threshold (irregular
  regions from specks to a third of the part), restricted to the part's foreground, filled from a
  texture source and blended in with a random factor ``beta`` (the texture's share). Texture
  sources: ``procedural`` (coloured fractal noise), ``self`` (the image itself turned, flipped and
  shifted: other regions of the same part) and ``folder`` (a folder of texture images the user
  supplies, DTD-style). Vectorised in torch: the noise, the textures and the blend are whole-tensor
  operations, so that synthesis outpaces a training step by far (``benchmarks/synthesis.py``).
- ``paint``: the three painted kinds used to choose PatchCore's position weight: ``patch`` (a piece
  of another good image), ``stroke`` (a scratch or a crack) and ``blotch`` (a stain); numpy/OpenCV.

Every method changes pixels only inside the mask it returns (outside it the image is bit-identical),
restricts the mask to the foreground, and is deterministic by seed (a ``torch.Generator`` or a numpy
``Generator`` seeded by the caller).

The foreground: ``otsu`` thresholds the blurred grey image and keeps the side that touches the
image's border less (the part, not the background); ``whole`` is the whole image (textures such as
magnetic tile); ``auto`` is ``otsu`` when that finds a part, else ``whole``; a ROI given to training
crops before any of this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from services.vision.dataset import SkippedFile
from services.vision.images import IMAGE_SUFFIXES, ImageError, load_image

METHODS: Final = ("perlin", "paint")
SOURCES: Final = ("procedural", "self", "folder")
PAINT_KINDS: Final = ("patch", "stroke", "blotch")
FOREGROUNDS: Final = ("auto", "otsu", "whole")
MIN_MASK_SHARE: Final = 0.002  # a synthetic defect covers at least this share of the image
MAX_TRIES: Final = 20  # draws before a mask that is too small is accepted as it is

Foreground = Literal["auto", "otsu", "whole"]


class SynthesisError(ValueError):
    """Settings or inputs synthesis cannot work with; the message says why."""


@dataclass(frozen=True)
class SynthesisSettings:
    """How defects are drawn (defaults follow DRAEM and DeSTSeg)."""

    method: str = "perlin"
    # Perlin grid cells per side: 2**k with k drawn from [min_scale, max_scale) per axis; each
    # further octave doubles them at half the amplitude (multi-scale edges)
    min_scale: int = 0
    max_scale: int = 6
    octaves: int = 2
    threshold: float = 0.5  # noise above this (its range is about ±1) is the defect
    beta: tuple[float, float] = (0.15, 1.0)  # the texture's share inside the mask (DeSTSeg 0.15-1)
    sources: tuple[str, ...] = ("procedural", "self")  # "folder" joins when textures are given
    foreground: Foreground = "auto"
    max_share: float = 0.5  # a mask over this share of the foreground is drawn again
    paint_kinds: tuple[str, ...] = PAINT_KINDS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SynthesisError(f"unknown synthesis method {self.method!r}; choose one of {METHODS}")
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise SynthesisError(f"texture sources {list(self.sources)}: choose from {SOURCES}")
        if self.foreground not in FOREGROUNDS:
            raise SynthesisError(f"foreground {self.foreground!r}: choose one of {FOREGROUNDS}")
        if not 0 <= self.min_scale < self.max_scale <= 8:
            raise SynthesisError(
                f"Perlin scales need 0 <= min < max <= 8, got {self.min_scale}, {self.max_scale}"
            )
        if not 0 < self.beta[0] <= self.beta[1] <= 1:
            raise SynthesisError(f"beta is a share range 0 < low <= high <= 1, got {self.beta}")
        bad = [k for k in self.paint_kinds if k not in PAINT_KINDS]
        if bad or not self.paint_kinds:
            raise SynthesisError(f"paint kinds {list(self.paint_kinds)}: choose from {PAINT_KINDS}")


# --- foreground -------------------------------------------------------------------------------


def foreground_mask(image: npt.NDArray[np.uint8], mode: Foreground = "auto") -> npt.NDArray[np.bool_]:
    """Where on an RGB uint8 (H, W, 3) image a defect may go (see the module's docstring)."""
    height, width = image.shape[:2]
    whole = np.ones((height, width), bool)
    if mode == "whole":
        return whole
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), max(1.0, min(height, width) / 128))
    _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([binary[0], binary[-1], binary[:, 0], binary[:, -1]])
    part = binary.astype(bool) if border.mean() < 0.5 else ~binary.astype(bool)
    border_share = float(np.concatenate([part[0], part[-1], part[:, 0], part[:, -1]]).mean())
    share = float(part.mean())
    if mode == "auto" and (border_share > 0.25 or not 0.05 <= share <= 0.95):
        return whole  # no part stands apart from a background: a texture fills the frame
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, width // 64) | 1,) * 2)
    closed = cv2.morphologyEx(part.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    filled = _fill_holes(closed.astype(np.uint8))
    return filled.astype(bool) if filled.any() else whole


def _fill_holes(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Holes inside the part (a bottle's dark mouth) belong to it: flood the background from the
    border and keep everything it did not reach."""
    height, width = mask.shape
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((height + 4, width + 4), np.uint8), (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return (mask.astype(bool) | holes).astype(np.uint8)


# --- Perlin noise -------------------------------------------------------------------------------


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Gradient (Perlin) noise (H, W) with ``cells`` = (rows, columns) of lattice cells, values in
    about [-1, 1]; any size (no divisibility needed). Where the cells are large the noise is smooth,
    so it is computed on a grid of 8 samples per cell (at most the full size) and upsampled."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    grad_y, grad_x = torch.sin(angles), torch.cos(angles)
    sample_h, sample_w = min(height, rows * 8), min(width, cols * 8)
    ys = torch.arange(sample_h, dtype=torch.float32) * (rows / sample_h)
    xs = torch.arange(sample_w, dtype=torch.float32) * (cols / sample_w)
    y0, x0 = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        # rows then columns by index_select: far cheaper than gathering (H, W, 2) pairs
        gy = grad_y.index_select(0, y0 + dy).index_select(1, x0 + dx)
        gx = grad_x.index_select(0, y0 + dy).index_select(1, x0 + dx)
        return gy * (fy - dy) + gx * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), tx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), tx)
    noise = math.sqrt(2) * torch.lerp(top, bottom, ty)
    if (sample_h, sample_w) != (height, width):
        noise = F.interpolate(noise[None, None], size=(height, width), mode="bilinear", align_corners=False)[
            0, 0
        ]
    return noise


def value_noise(
    channels: int, height: int, width: int, cells: int, octaves: int, generator: torch.Generator
) -> torch.Tensor:
    """Octaves of smooth random noise (C, H, W) with unit spread: random lattices upsampled
    bicubically, each octave twice the cells at half the amplitude. Cheaper than Perlin; for
    textures, where its lattice artefacts do not matter."""
    total = torch.zeros(channels, height, width)
    for octave in range(max(1, octaves)):
        n = cells * 2**octave
        lattice = torch.randn(1, channels, n + 1, n + 1, generator=generator)
        total += (
            0.5**octave * F.interpolate(lattice, size=(height, width), mode="bicubic", align_corners=False)[0]
        )
    return total / total.std().clamp_min(1e-6)


def fractal_noise(
    height: int, width: int, cells: tuple[int, int], octaves: int, generator: torch.Generator
) -> torch.Tensor:
    """Octaves of Perlin noise, each with twice the cells and half the amplitude of the last."""
    total = torch.zeros(height, width)
    octaves = max(1, octaves)
    for octave in range(octaves):
        scale = 2**octave
        total += 0.5**octave * perlin_noise(height, width, (cells[0] * scale, cells[1] * scale), generator)
    # the sum's spread divided back to one octave's, so that one threshold means the same at any count
    return total / math.sqrt(sum(0.25**k for k in range(octaves)))


def _dihedral(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 turns and flips of the last two dimensions (square tensors only for odd k)."""
    turned = torch.rot90(tensor, k % 4, dims=(-2, -1))
    return turned.flip(-1) if k >= 4 else turned


def perlin_mask(
    height: int,
    width: int,
    settings: SynthesisSettings,
    generator: torch.Generator,
    foreground: torch.Tensor | None = None,
) -> torch.Tensor:
    """A boolean defect mask (H, W) from thresholded multi-scale Perlin noise inside ``foreground``;
    drawn again while it covers less than MIN_MASK_SHARE of the image or more than ``max_share``
    of the foreground (after MAX_TRIES the last draw is kept, empty only when the foreground is)."""
    area = foreground.sum().item() if foreground is not None else height * width
    mask = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(MAX_TRIES):
        exponents = torch.randint(settings.min_scale, settings.max_scale, (2,), generator=generator)
        cells = (int(2 ** exponents[0].item()), int(2 ** exponents[1].item()))
        turn = int(torch.randint(0, 8, (1,), generator=generator).item())
        square = max(height, width)
        noise = fractal_noise(square, square, cells, settings.octaves, generator)
        noise = _dihedral(noise, turn)[:height, :width]
        mask = noise > settings.threshold
        if foreground is not None:
            mask &= foreground
        covered = int(mask.sum().item())
        if covered >= MIN_MASK_SHARE * height * width and covered <= settings.max_share * max(area, 1):
            break
    return mask


# --- texture sources ------------------------------------------------------------------------------


def procedural_texture(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A coloured fractal-noise texture (3, H, W) in [0, 1]: three noise fields mixed into colours,
    then a random contrast and level per channel."""
    cells = 2 ** int(torch.randint(1, 6, (1,), generator=generator).item())
    # drawn at half the size and upsampled: the finest octave is still 2 pixels a cell or more
    small_h, small_w = max(8, height // 2), max(8, width // 2)
    noise = value_noise(3, small_h, small_w, cells, 3, generator)
    if (small_h, small_w) != (height, width):
        noise = F.interpolate(noise[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    mix = torch.rand(3, 3, generator=generator)
    noise = torch.einsum("ij,jhw->ihw", mix / mix.sum(dim=1, keepdim=True), noise)
    contrast = 0.15 + 0.35 * torch.rand(3, 1, 1, generator=generator)
    level = torch.rand(3, 1, 1, generator=generator)
    return (level + contrast * noise).clamp(0, 1)


def self_texture(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The image (3, H, W) in [0, 1] itself, turned or flipped, shifted, and its level and contrast
    changed: material from elsewhere on the same part."""
    height, width = image.shape[-2:]
    turn = int(torch.randint(0, 8 if height == width else 2, (1,), generator=generator).item())
    if height != width:
        turn *= 2  # 0 or a half turn keep a non-square shape
    texture = _dihedral(image, turn)
    shift = (
        int(torch.randint(0, height, (1,), generator=generator).item()),
        int(torch.randint(0, width, (1,), generator=generator).item()),
    )
    texture = torch.roll(texture, shift, dims=(-2, -1))
    gain = 0.6 + 0.8 * torch.rand(1, generator=generator)
    offset = 0.3 * (torch.rand(1, generator=generator) - 0.5)
    return (texture * gain + offset).clamp(0, 1)


def folder_texture(
    textures: Sequence[torch.Tensor], height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """A random crop of a random texture image, resized to (3, H, W) in [0, 1]."""
    source = textures[int(torch.randint(0, len(textures), (1,), generator=generator).item())]
    src_h, src_w = source.shape[-2:]
    share = 0.3 + 0.7 * torch.rand(1, generator=generator).item()
    crop_h, crop_w = max(8, int(src_h * share)), max(8, int(src_w * share))
    top = int(torch.randint(0, src_h - crop_h + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, src_w - crop_w + 1, (1,), generator=generator).item())
    crop = source[:, top : top + crop_h, left : left + crop_w].float().unsqueeze(0) / 255.0
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]


def load_textures(
    folder: Path, skipped: list[SkippedFile], max_side: int = 512, limit: int = 500
) -> list[torch.Tensor]:
    """Texture images from ``folder`` (recursively), as uint8 (3, H, W) tensors no larger than
    ``max_side``; unreadable files are appended to ``skipped``. At most ``limit`` are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SynthesisError(f"texture folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    textures: list[torch.Tensor] = []
    for path in paths[:limit]:
        try:
            image = load_image(path)
        except ImageError as err:
            skipped.append(SkippedFile(str(path), err.reason))
            continue
        if min(image.shape[:2]) < 16:
            skipped.append(
                SkippedFile(str(path), f"too small for a texture: {image.shape[1]}x{image.shape[0]}")
            )
            continue
        scale = max_side / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        textures.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    if not textures:
        raise SynthesisError(f"no usable texture image in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return textures


# --- the synthesiser ------------------------------------------------------------------------------


@dataclass
class SynthesisBatch:
    images: torch.Tensor  # like the input: uint8 (B, 3, H, W) or float in [0, 1]
    masks: torch.Tensor  # bool (B, H, W); all False where no defect was drawn
    sources: list[str]  # per image: the texture source, the paint kind, or "" (left clean)


@dataclass
class Synthesiser:
    """Draws defects onto batches of good images (see the module's docstring).

    ``textures``: images for the ``folder`` source (:func:`load_textures`); when given, ``folder``
    joins the settings' sources."""

    settings: SynthesisSettings = field(default_factory=SynthesisSettings)
    textures: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        sources = list(self.settings.sources)
        if self.textures:
            if "folder" not in sources:
                sources.append("folder")
        elif "folder" in sources:
            raise SynthesisError("the folder texture source needs texture images (--textures DIR)")
        self._sources = sources

    def apply(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        foregrounds: torch.Tensor | None = None,
        defect_probability: float = 1.0,
    ) -> SynthesisBatch:
        """A defect on each image of ``images`` (B, 3, H, W) — uint8, or float in [0, 1] — with
        probability ``defect_probability``; ``foregrounds`` (B, H, W) bool where defects may go
        (default: the whole image). Returns images of the input's dtype and the masks."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise SynthesisError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        is_uint8 = images.dtype == torch.uint8
        batch, _, height, width = images.shape
        masks = torch.zeros(batch, height, width, dtype=torch.bool)
        pixels = images.float() / 255.0 if is_uint8 else images.float()
        fills = pixels.clone()
        betas = torch.zeros(batch, 1, 1, 1)
        sources = [""] * batch
        for b in range(batch):
            if torch.rand(1, generator=generator).item() >= defect_probability:
                continue
            foreground = foregrounds[b] if foregrounds is not None else None
            if self.settings.method == "paint":
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
                donor = (b + 1) % batch
                painted = _paint_on_tensor(pixels[b], pixels[donor], seed, self.settings.paint_kinds)
                mask, fills[b], sources[b] = painted[1], painted[0], painted[2]
                if foreground is not None:
                    mask = mask & foreground
                masks[b] = mask
                betas[b] = 1.0
                continue
            masks[b] = perlin_mask(height, width, self.settings, generator, foreground)
            source = self._sources[
                int(torch.randint(0, len(self._sources), (1,), generator=generator).item())
            ]
            if source == "procedural":
                fills[b] = procedural_texture(height, width, generator)
            elif source == "self":
                fills[b] = self_texture(pixels[b], generator)
            else:
                assert self.textures is not None
                fills[b] = folder_texture(self.textures, height, width, generator)
            low, high = self.settings.beta
            betas[b] = low + (high - low) * torch.rand(1, generator=generator)
            sources[b] = source
        blended = pixels + betas * (fills - pixels)
        inside = masks.unsqueeze(1)
        if is_uint8:
            out = torch.where(inside, (blended * 255).round().clamp(0, 255).to(torch.uint8), images)
        else:
            out = torch.where(inside, blended.clamp(0, 1).to(images.dtype), images)
        return SynthesisBatch(out, masks, sources)


def synthesise(
    image: npt.NDArray[np.uint8],
    seed: int,
    settings: SynthesisSettings | None = None,
    textures: list[torch.Tensor] | None = None,
    foreground: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], str]:
    """One defect on one RGB uint8 (H, W, 3) image: the image, its mask and the source used.
    The foreground defaults to the settings' mode computed on ``image``."""
    settings = settings or SynthesisSettings()
    if foreground is None:
        foreground = foreground_mask(image, settings.foreground)
    if settings.method == "paint":  # the donor is the image itself, shifted, for a single image
        rng = np.random.default_rng(seed)
        donor = np.roll(image, (image.shape[0] // 3, image.shape[1] // 3), axis=(0, 1))
        painted = paint_defect(image, donor, rng, foreground=foreground, kinds=settings.paint_kinds)
        return painted.image, painted.mask, painted.kind
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    result = Synthesiser(settings, textures).apply(tensor, generator, torch.from_numpy(foreground)[None])
    return result.images[0].permute(1, 2, 0).numpy().copy(), result.masks[0].numpy(), result.sources[0]


# --- painted defects (numpy / OpenCV) ---------------------------------------------------------------


@dataclass(frozen=True)
class PaintedDefect:
    image: npt.NDArray[np.uint8]  # (H, W, 3) RGB
    mask: npt.NDArray[np.bool_]  # (H, W)
    kind: str


def _region(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.bool_]:
    """An irregular blob: smoothed noise above a threshold, inside an ellipse of 6-25% of the side."""
    side = min(height, width)
    noise = cv2.GaussianBlur(
        rng.random((height, width), dtype=np.float32), (0, 0), rng.uniform(2, 6) * side / 256
    )
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.03, 0.125, 2) * side
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if not inside.any():
        inside[int(cy), int(cx)] = True
    return inside & (noise >= np.quantile(noise[inside], rng.uniform(0.2, 0.5)))


def _patch(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    height, width = image.shape[:2]
    mask = _region(rng, height, width)
    piece = np.rot90(donor, 2 if height != width else int(rng.integers(1, 4)))
    piece = np.roll(piece, (int(rng.integers(0, height)), int(rng.integers(0, width))), axis=(0, 1)).astype(
        np.float32
    )
    piece = np.clip(piece * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40), 0, 255)
    beta = rng.uniform(0.5, 1.0)
    out = image.astype(np.float32)
    out[mask] = (1 - beta) * out[mask] + beta * piece[mask]
    return out, mask


def _stroke(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    height, width = image.shape[:2]
    side = min(height, width)
    size = np.array([width, height], np.float64)
    points = [rng.uniform(0.15, 0.85, 2) * size]
    for _ in range(int(rng.integers(2, 5))):
        step = rng.normal(0, 0.08, 2) * side
        points.append(np.clip(points[-1] + step, 0, size - 1))
    line = np.zeros((height, width), np.uint8)
    thickness = max(1, round(rng.uniform(1.5, 4.0) * side / 256))
    cv2.polylines(line, [np.array(points, np.int32).reshape(-1, 1, 2)], False, 1, thickness, cv2.LINE_AA)
    mask = line.astype(bool)
    shift = rng.uniform(60, 140) * rng.choice([-1.0, 1.0])
    out = image.astype(np.float32)
    out[mask] += shift
    return out, mask


def _blotch(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    height, width = image.shape[:2]
    side = min(height, width)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.03, 0.1, 2) * side
    yy, xx = np.mgrid[0:height, 0:width]
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    weight = np.clip(1.5 - distance, 0, 1).astype(np.float32)  # flat inside, soft towards the rim
    gain = rng.choice([rng.uniform(0.35, 0.7), rng.uniform(1.4, 1.9)])
    out = image.astype(np.float32)
    out *= (1 + (gain - 1) * weight)[..., None]
    return out, weight > 0  # the soft rim is part of the defect: every changed pixel is in the mask


_PAINTERS: Final = {"patch": _patch, "stroke": _stroke, "blotch": _blotch}


def paint_defect(
    image: npt.NDArray[np.uint8],
    donor: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    kind: str | None = None,
    foreground: npt.NDArray[np.bool_] | None = None,
    kinds: Sequence[str] = PAINT_KINDS,
) -> PaintedDefect:
    """``image`` (H, W, 3) with one painted defect of ``kind`` (random among ``kinds`` when None)
    and its mask; ``donor`` is another good image of the same size (the patch kind takes its
    texture). Pixels outside the mask (and outside ``foreground``, when given) are unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape != donor.shape:
        raise SynthesisError(f"expected two RGB images of one size, got {image.shape} and {donor.shape}")
    kind = kind or str(rng.choice(list(kinds)))
    if kind not in _PAINTERS:
        raise SynthesisError(f"unknown defect kind {kind!r}; expected one of {PAINT_KINDS}")
    painted, mask = _PAINTERS[kind](rng, image, donor)
    for _ in range(MAX_TRIES):  # a region drawn at the very edge can come out too small: draw again
        if foreground is not None:
            mask = mask & foreground
        if mask.mean() >= MIN_MASK_SHARE:
            break
        painted, mask = _PAINTERS[kind](rng, image, donor)
    out = np.where(mask[..., None], np.clip(painted, 0, 255).round().astype(np.uint8), image)
    return PaintedDefect(out, mask, kind)


def _paint_on_tensor(
    image: torch.Tensor, donor: torch.Tensor, seed: int, kinds: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`paint_defect` on float (3, H, W) tensors in [0, 1]."""
    as_array = lambda t: (t.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731
    painted = paint_defect(as_array(image), as_array(donor), np.random.default_rng(seed), kinds=kinds)
    filled = torch.from_numpy(painted.image).permute(2, 0, 1).float() / 255.0
    return filled, torch.from_numpy(painted.mask), painted.kind
