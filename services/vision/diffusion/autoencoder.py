"""A tiny pretrained autoencoder (TAESD family) that maps images to a diffusion model's latent space.

The shared TAEF2 (FLUX.2's latent space: 32 channels at 1/8 of the image side, about 1.3 M
parameters each way) is TAESD's layout with one addition: the three blocks at the lowest
resolution (the encoder's last, the decoder's first) carry a "pool" branch — a 1x1 convolution to
4x the channels, GroupNorm in 4 groups, ReLU, a 1x1 convolution back — added to the block's input.
The module is built from the state_dict's own keys (latent channels from the last convolution,
pooled blocks from the ``.pool.`` keys), so TAESD, TAEF1 and TAEF2 files all load; images are
in [0, 1] on both sides. With these weights a 256 px bottle or tile image comes back at about
36 dB PSNR (tests/vision/test_diffusion.py checks at least 30).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class AutoencoderError(ValueError):
    """Weights that do not describe a tiny autoencoder this module can build."""


def _conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)  # type: ignore[arg-type]


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n_in, 4 * n_in, 1, bias=False),
                nn.GroupNorm(4, 4 * n_in),
                nn.ReLU(),
                nn.Conv2d(4 * n_in, n_in, 1, bias=False),
            )
            if pool
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _pooled(state: Mapping[str, torch.Tensor]) -> set[int]:
    return {int(key.split(".")[0]) for key in state if ".pool." in key}


def build_encoder(state: Mapping[str, torch.Tensor]) -> nn.Sequential:
    latent = int(state["14.weight"].shape[0]) if "14.weight" in state else 0
    if not latent:
        raise AutoencoderError("not a TAESD-style encoder: no final convolution '14.weight'")
    pooled = _pooled(state)

    def block(index: int) -> _Block:
        return _Block(64, 64, index in pooled)

    encoder = nn.Sequential(
        _conv(3, 64), block(1),
        _conv(64, 64, stride=2, bias=False), block(3), block(4), block(5),
        _conv(64, 64, stride=2, bias=False), block(7), block(8), block(9),
        _conv(64, 64, stride=2, bias=False), block(11), block(12), block(13),
        _conv(64, latent),
    )  # fmt: skip
    return encoder


def build_decoder(state: Mapping[str, torch.Tensor]) -> nn.Sequential:
    if "1.weight" not in state:
        raise AutoencoderError("not a TAESD-style decoder: no first convolution '1.weight'")
    latent = int(state["1.weight"].shape[1])
    pooled = _pooled(state)

    def block(index: int) -> _Block:
        return _Block(64, 64, index in pooled)

    return nn.Sequential(
        _Clamp(), _conv(latent, 64), nn.ReLU(),
        block(3), block(4), block(5), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        block(8), block(9), block(10), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        block(13), block(14), block(15), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False),
        block(18), _conv(64, 3),
    )  # fmt: skip


class TinyAutoencoder(nn.Module):
    """Encoder and decoder; :meth:`encode` takes images in [0, 1] (B, 3, H, W) with H, W multiples
    of 8, :meth:`decode` returns them in [0, 1]."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def latent_channels(self) -> int:
        last = self.encoder[-1]
        assert isinstance(last, nn.Conv2d)
        return int(last.out_channels)

    @classmethod
    def from_state_dicts(
        cls, encoder_state: Mapping[str, torch.Tensor], decoder_state: Mapping[str, torch.Tensor]
    ) -> TinyAutoencoder:
        model = cls(build_encoder(encoder_state), build_decoder(decoder_state))
        try:
            model.encoder.load_state_dict(dict(encoder_state), strict=True)
            model.decoder.load_state_dict(dict(decoder_state), strict=True)
        except RuntimeError as err:
            raise AutoencoderError(
                f"autoencoder weights do not fit the TAESD layout: {str(err)[:300]}"
            ) from err
        if model.latent_channels != int(decoder_state["1.weight"].shape[1]):
            raise AutoencoderError("encoder and decoder disagree on the number of latent channels")
        return model.eval().requires_grad_(False)

    @classmethod
    def load(cls, encoder_path: Path, decoder_path: Path) -> TinyAutoencoder:
        states = []
        for path in (encoder_path, decoder_path):
            if not Path(path).is_file():
                raise AutoencoderError(f"autoencoder weights {path} do not exist")
            try:
                states.append(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as err:
                raise AutoencoderError(f"cannot read autoencoder weights {path}: {err}") from err
        return cls.from_state_dicts(states[0], states[1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % 8 or images.shape[-2] % 8:
            raise AutoencoderError(f"image sides must be multiples of 8, got {tuple(images.shape[-2:])}")
        latents: torch.Tensor = self.encoder(images)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.decoder(latents)
        return images.clamp(0, 1)
