"""FLUX's latent layouts: flowctl's states are unpacked latents (B, C, H, W); the transformer
sees them packed into 2x2 patches, (B, H/2 * W/2, 4C), with one position id per patch.

The functions do what ``FluxPipeline._pack_latents``, ``_unpack_latents`` and
``_prepare_latent_image_ids`` do (the same permutations; only a copy, so no bit changes).
"""

from __future__ import annotations

import torch

from flowctl._checks import check_int, check_tensor
from flowctl.errors import ShapeError


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as (B, H/2 * W/2, 4C) patch tokens; H and W must be even."""
    latents = check_tensor("latents", latents, finite=False)
    if latents.dim() != 4:
        raise ShapeError("latents", f"expected (batch, channels, height, width), got {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ShapeError("latents", f"height and width must be even (2x2 patches), got {(h, w)}")
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/2 * W/2, 4C) patch tokens as (B, C, H, W) latents of ``height`` x ``width``
    latent pixels (even; not image pixels)."""
    packed = check_tensor("packed", packed, finite=False)
    height, width = check_int("height", height, minimum=2), check_int("width", width, minimum=2)
    if height % 2 or width % 2:
        raise ShapeError("height", f"latent height and width must be even, got {(height, width)}")
    if packed.dim() != 3 or packed.shape[1] != (height // 2) * (width // 2) or packed.shape[2] % 4:
        raise ShapeError("packed", f"expected (batch, {(height // 2) * (width // 2)}, 4 * channels), got {tuple(packed.shape)}")
    b, _, channels = packed.shape
    x = packed.reshape(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def latent_image_ids(height: int, width: int, *, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """(height * width, 3) position ids of the patch grid (0, row, column), ``height`` x
    ``width`` patches, built as ``FluxPipeline._prepare_latent_image_ids`` builds them."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)
