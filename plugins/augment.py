"""Part 1 preprocessing as batch transforms: normalize, flip, pad_crop.

Each works on a whole float batch (N, C, H, W) with tensor ops on the batch's device: no
per-image Python loop. A spec's `data.transforms` list fixes the order, which matters: the
homework flips before normalizing and zero-pads after.
"""
from __future__ import annotations

import torch
from torch import nn

from runner import Setting, hookimpl


class Normalize(nn.Module):
    """(x - mean) / std per channel, with statistics of the training images (pixel scale 0-255)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalize":
        # float64 sums: 10,000 x 1,024 values per channel would lose digits in float32.
        pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        return cls(pixels.mean(dim=1), pixels.std(dim=1))

    def forward(self, x):
        return (x - self.mean) / self.std


class RandomFlip(nn.Module):
    """Mirror each image left-right with probability p."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(3), x)


class PadCrop(nn.Module):
    """Zero-pad `pad` pixels on each side, then cut a random window of the original size per image."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad
        self._grids: dict = {}  # index grids per batch shape: made once, not every step (GPU launches)

    def forward(self, x):
        n, c, h, w = x.shape
        key = (n, c, h, w, x.device)
        if key not in self._grids:
            arange = lambda size: torch.arange(size, device=x.device)
            self._grids[key] = (arange(n)[:, None, None, None], arange(c)[None, :, None, None],
                                arange(h)[None, None, :, None], arange(w)[None, None, None, :])
        images, channels, rows, cols = self._grids[key]
        top, left = torch.randint(0, 2 * self.pad + 1, (2, n, 1, 1, 1), device=x.device)
        padded = nn.functional.pad(x, (self.pad,) * 4)
        return padded[images, channels, rows + top, cols + left]


@hookimpl
def register_transforms(register):
    register("normalize", lambda settings, train_images: Normalize.fit(train_images), {},
             help="per-channel zero mean, unit std (training-set statistics); train and eval")
    register("flip", lambda settings, _: RandomFlip(settings["p"]),
             {"p": Setting(0.5, "probability of a flip", min=0.0, max=1.0)},
             train_only=True, help="random horizontal flip; training only")
    register("pad_crop", lambda settings, _: PadCrop(settings["pad"]),
             {"pad": Setting(4, "zero padding on each side", min=0)},
             train_only=True, help="zero-pad then random crop back to 32x32; training only")
