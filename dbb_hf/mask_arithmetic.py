"""Mask arithmetic the stages share: masks as images and arrays, dilation, the region to
repaint and its box. Masks are boolean arrays ``(H, W)`` here; in dataset columns they are
mode "L" images with 0/255 pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REGIONS = ("mask", "box", "square_box")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of a boolean mask with a (2 * pixels + 1) square (a max filter)."""
    if pixels == 0:
        return mask
    grid = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.max_pool2d(grid, 2 * pixels + 1, stride=1, padding=pixels)[0, 0].numpy() > 0


def _square_span(start: int, stop: int, side: int, limit: int) -> tuple[int, int]:
    """``[start, stop)`` grown to ``side`` pixels around its centre (the odd pixel after it),
    shifted back inside ``[0, limit)`` where it sticks out, cut only when ``side > limit``."""
    start -= (side - (stop - start)) // 2
    start = max(0, min(start, limit - side))
    return start, min(start + side, limit)


def region_mask(mask: np.ndarray, region: str) -> np.ndarray:
    """The region to repaint from an object's boolean mask ``(H, W)``.

    ``mask``: the mask itself. ``box``: its bounding box filled. ``square_box``: the
    bounding box grown to a square of side ``max(h, w)`` centred on the box, shifted
    inwards where it would leave the image and cut only where the image is narrower than
    the side. An empty mask gives an empty region.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    mask = np.asarray(mask, dtype=bool)
    if region == "mask" or not mask.any():
        return mask
    x1, y1, x2, y2 = (int(v) for v in mask_bbox(mask))
    if region == "square_box":
        side = max(x2 - x1, y2 - y1)
        height, width = mask.shape
        x1, x2 = _square_span(x1, x2, side, width)
        y1, y2 = _square_span(y1, y2, side, height)
    out = np.zeros_like(mask)
    out[y1:y2, x1:x2] = True
    return out


def mask_bbox(mask: np.ndarray) -> list[float]:
    """xyxy pixel-edge box of a mask's pixels (x2, y2 exclusive); empty list for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as the mode "L" image (0/255) the mask columns hold."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def binary_mask(mask: Image.Image, dilation: int = 0) -> np.ndarray:
    """A boolean array of a mask image (> 127), grown by ``dilation`` pixels in each direction."""
    return dilate(np.asarray(mask.convert("L")) > 127, dilation)
