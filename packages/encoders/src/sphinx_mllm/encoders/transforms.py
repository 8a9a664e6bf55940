"""Pixel transforms: a PIL image to the normalised tensor an encoder expects, the normalisation
constants of the encoder families, and SPHINX's re-normalisation between them.

Resizing uses Pillow (bicubic, antialiased, as torchvision does on PIL images), so the result
equals the preprocessing of open_clip and timm for the same size and statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
from einops import rearrange
from PIL import Image

Size: TypeAlias = int | tuple[int, int]
Stats: TypeAlias = tuple[float, float, float]

OPENAI_CLIP_MEAN: Stats = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: Stats = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
HALF_MEAN: Stats = (0.5, 0.5, 0.5)  # SigLIP and others normalise to [-1, 1]
HALF_STD: Stats = (0.5, 0.5, 0.5)


def to_size(size: Size | Sequence[int]) -> tuple[int, int]:
    """`224` or `(224, 224)` -> `(224, 224)` as (height, width)."""
    pair = (size, size) if isinstance(size, int) else tuple(int(side) for side in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"An image size is a positive int or (height, width), got {size!r}")
    return pair


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float tensor `[3, H, W]` in [0, 1]."""
    rgb = image.convert("RGB")
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    chw = rearrange(data, "(h w c) -> c h w", h=rgb.height, w=rgb.width, c=3)
    return chw.float().div_(255)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(pixels - mean) / std per channel, for `[3, H, W]` or `[B, 3, H, W]`."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(shape)
    return (pixels - mean_t) / std_t


def renormalize(
    pixels: torch.Tensor,
    source: tuple[Sequence[float], Sequence[float]],
    target: tuple[Sequence[float], Sequence[float]],
) -> torch.Tensor:
    """Undo the `source` (mean, std) normalisation and apply the `target` one."""
    shape = (3, 1, 1)
    (source_mean, source_std), (target_mean, target_std) = source, target

    def as_tensor(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=pixels.dtype, device=pixels.device).view(shape)

    raw = pixels * as_tensor(source_std) + as_tensor(source_mean)
    return (raw - as_tensor(target_mean)) / as_tensor(target_std)


def clip_to_imagenet(pixels: torch.Tensor) -> torch.Tensor:
    """SPHINX's step for DINOv2: a CLIP-normalised tensor re-normalised to ImageNet statistics."""
    return renormalize(pixels, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), (IMAGENET_MEAN, IMAGENET_STD))


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to the target (bicubic), centre-crop, to tensor, normalise.

    With `crop=False` the image is resized to the target size directly (aspect not kept); a
    square input, such as SPHINX's padded square, gives the same result either way.
    """

    size: tuple[int, int]
    mean: Stats
    std: Stats
    crop: bool = True

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"ImageTransform expects a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        height, width = self.size
        if self.crop:
            image = self._resize_shorter_side(image, min(height, width))
            left = round((image.width - width) / 2.0)
            top = round((image.height - height) / 2.0)
            image = image.crop((left, top, left + width, top + height))
        else:
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        return normalize(pil_to_tensor(image), self.mean, self.std)

    @staticmethod
    def _resize_shorter_side(image: Image.Image, side: int) -> Image.Image:
        width, height = image.size
        if width <= height:
            new_size = (side, int(side * height / width))
        else:
            new_size = (int(side * width / height), side)
        return image.resize(new_size, Image.Resampling.BICUBIC)
