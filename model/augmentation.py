"""Photometric + geometric augmentation for the embedded teacher's training batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(rgb: torch.Tensor, disparity: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: rgb (B,3,H,W) in [0,1], disparity (B,H,W); every draw comes from ``gen``.

    Synthetic renders are clean and saturated; real photos are not: jitter brightness/contrast/saturation and
    channel gains, blur or sharpen (renders vs bicubic-resized photos), add sensor noise, flip left-right and
    zoom in (a longer focal length) so the net does not memorise one field of view.
    """
    b, _, h, w = rgb.shape

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (b,), generator=gen)

    flip = torch.rand(b, generator=gen) < 0.5
    rgb = torch.where(flip.view(b, 1, 1, 1), rgb.flip(-1), rgb)
    disparity = torch.where(flip.view(b, 1, 1), disparity.flip(-1), disparity)
    zoom = float(u(1.0, 1.35, 1))
    if zoom > 1.02:
        hh, ww = int(round(h * zoom)), int(round(w * zoom))
        oy = int(torch.randint(0, hh - h + 1, (1,), generator=gen))
        ox = int(torch.randint(0, ww - w + 1, (1,), generator=gen))
        rgb = F.interpolate(rgb, size=(hh, ww), mode="bilinear", align_corners=False)[..., oy:oy + h, ox:ox + w]
        disparity = F.interpolate(disparity[:, None], size=(hh, ww), mode="nearest")[:, 0, oy:oy + h, ox:ox + w]
    grey = rgb.mean(1, keepdim=True)
    rgb = grey + (rgb - grey) * u(0.3, 1.2).view(b, 1, 1, 1)                          # saturation
    rgb = rgb * u(0.85, 1.15, b, 3).view(b, 3, 1, 1)                                  # white balance
    mean = rgb.mean((1, 2, 3), keepdim=True)
    rgb = mean + (rgb - mean) * u(0.6, 1.4).view(b, 1, 1, 1)                          # contrast
    rgb = rgb * u(0.5, 1.4).view(b, 1, 1, 1)                                          # brightness
    rgb = rgb.clamp(0, 1) ** u(0.7, 1.4).view(b, 1, 1, 1)                             # gamma
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    blur = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="replicate"),
                    (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3), groups=3)
    amount = u(-0.8, 1.0).view(b, 1, 1, 1)                                            # < 0 sharpens
    rgb = rgb + amount * (blur - rgb)
    rgb = rgb + torch.randn(rgb.shape, generator=gen) * u(0.0, 0.03).view(b, 1, 1, 1)
    return rgb.clamp(0, 1), disparity
