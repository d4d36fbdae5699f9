"""Batched random photo augmentation in torch, for training the encoder.

The same family and ranges as :func:`onevision.data.augment.augment` (zoom,
aspect, rotation, shift, flip, contrast, brightness, an occluding rectangle,
sensor noise; blur left out), but on a whole batch at once with one
``affine_grid``/``grid_sample``: per-image PIL calls cost more than the
training step itself on a small CPU. Pixels uncovered by the transform take
the image's border colour, as in the numpy version.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_views(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """x: float (B, C, H, W) in [0, 1] -> a random re-photograph of each image, same shape."""
    if strength <= 0:
        return x
    s = float(strength)
    b, c, h, w = x.shape
    u = torch.rand(b, 12, generator=gen)  # every draw up front
    zoom = torch.exp((-0.15 + 0.50 * u[:, 0]) * s)
    aspect = torch.exp((-0.10 + 0.20 * u[:, 1]) * s)
    angle = (-15.0 + 30.0 * u[:, 2]) * s * math.pi / 180.0
    shift_x, shift_y = (-0.16 + 0.32 * u[:, 3]) * s, (-0.16 + 0.32 * u[:, 4]) * s  # grid units: 2 = full side
    flip = torch.where(u[:, 5] < min(0.5, 0.5 * s), -1.0, 1.0)
    # output pixel p samples input at A p + t: the inverse of "zoom in, rotate, shift"
    sx, sy = flip / (zoom * aspect.sqrt()), 1.0 / (zoom / aspect.sqrt())
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, -shift_x], 1), torch.stack([sin * sx, cos * sy, -shift_y], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1).median(dim=-1).values  # (B, C)
    warped = F.grid_sample(x - border[..., None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False) + border[..., None, None]
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    contrast = torch.exp((-0.3 + 0.6 * u[:, 6]) * s).view(b, 1, 1, 1)
    light = torch.exp((-0.3 + 0.6 * u[:, 7]) * s).view(b, 1, 1, 1)
    out = (mean + (warped - mean) * contrast) * light
    # occluding rectangle with p = min(0.9, 0.6 s²), side up to 0.1 + 0.25 min(s, 2) of the image
    side = 0.1 + 0.25 * min(s, 2.0)
    oh = (h * (0.1 + (side - 0.1) * u[:, 8])).round().clamp(min=1)
    ow = (w * (0.1 + (side - 0.1) * u[:, 9])).round().clamp(min=1)
    top = (u[:, 10] * (h - oh + 1)).floor()
    left = (u[:, 11] * (w - ow + 1)).floor()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    box = (rows >= top.view(b, 1, 1)) & (rows < (top + oh).view(b, 1, 1)) & (cols >= left.view(b, 1, 1)) & (cols < (left + ow).view(b, 1, 1))
    occluded = box & (torch.rand(b, 1, 1, generator=gen) < min(0.9, 0.6 * s * s))  # (B, H, W)
    fill = torch.rand(b, 1, 1, 1, generator=gen)
    out = torch.where(occluded[:, None], fill.expand(b, c, 1, 1), out)
    noise = torch.randn(out.shape, generator=gen) * (10.0 / 255.0 * s * torch.rand(b, 1, 1, 1, generator=gen))
    return (out + noise).clamp(0.0, 1.0)
