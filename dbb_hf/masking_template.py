"""The ``template`` masking backend: the hair region of an aligned face, with no detector.

The paper masks CelebA's hair with LangSAM prompted "hair.". Without GroundingDINO and
SAM weights, aligned face crops (CelebA's ``img_align_celeba``, FFHQ-style crops) still
put the face in nearly the same place in every image, so a fixed template in the image's
own coordinates covers the hair well enough to repaint it:

    hair = head ellipse  -  face ellipse  -  neck band (below the face's centre)

Ellipses are ``(centre x, centre y, half width, half height)`` as fractions of the
image's width and height, so the template follows the image's size. The defaults are
CelebA's alignment, read off the difference between the mean blond and mean non-blond
face of ``celeba-mini`` (5,419 aligned 178x218 crops): the head ellipse holds the bright
arch of the difference (hair above the forehead and beside the face down to the
shoulders), the face ellipse the dark oval between hairline and chin, which the edit must
keep (it carries the spurious attribute). Another alignment (FFHQ crops show more
background around a smaller face) needs its own fractions, measured the same way.

The template is a stand-in for "hair." detection: it does not look at the pixels, so
short hair leaves background inside the mask and very long hair reaches outside it. A
user with a GPU keeps ``grounded_sam``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# CelebA's aligned crops (see the module docstring).
HEAD_ELLIPSE = (0.5, 0.6, 0.46, 0.55)
FACE_ELLIPSE = (0.5, 0.61, 0.18, 0.21)
NECK_WIDTH = 0.75


@dataclass(frozen=True)
class HairTemplate:
    """One alignment's template: the arguments of :func:`hair_template` (default: CelebA's).

    The masking backend and textual inversion's ``mask_region="template"`` both take it from
    the run's masking config, so a token learns to paint the region that will be repainted.
    """

    head: tuple[float, ...] = HEAD_ELLIPSE
    face: tuple[float, ...] = FACE_ELLIPSE
    neck_width: float = NECK_WIDTH  # checked where the mask is drawn, by hair_template

    def mask(self, height: int, width: int) -> np.ndarray:
        """This template's hair region of a ``(height, width)`` image (:func:`hair_template`)."""
        return hair_template(height, width, self.head, self.face, self.neck_width)


def check_ellipse(name: str, ellipse: Sequence[float]) -> None:
    """A clear error for an ellipse that is not 4 fractions with positive half axes."""
    if len(ellipse) != 4:
        raise ValueError(f"{name} must be 4 fractions (centre x, centre y, half width, half height), got {list(ellipse)}")
    if min(ellipse[2:]) <= 0:
        raise ValueError(f"{name} half axes must be positive, got {list(ellipse)}")


def _ellipse(height: int, width: int, ellipse: Sequence[float]) -> np.ndarray:
    cx, cy, rx, ry = ellipse
    ys = (np.arange(height) + 0.5)[:, None] / height
    xs = (np.arange(width) + 0.5)[None, :] / width
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def hair_template(
    height: int,
    width: int,
    head: Sequence[float] = HEAD_ELLIPSE,
    face: Sequence[float] = FACE_ELLIPSE,
    neck_width: float = NECK_WIDTH,
) -> np.ndarray:
    """The hair region ``(height, width)`` bool of an aligned face of that size.

    ``neck_width`` is the width of the band kept out below the face's centre, as a
    fraction of the face ellipse's width (0: no band), so the chin and neck stay.
    """
    check_ellipse("head", head)
    check_ellipse("face", face)
    if not 0.0 <= neck_width <= 1.0:
        raise ValueError(f"neck_width must be in [0, 1], got {neck_width}")
    hair = _ellipse(height, width, head) & ~_ellipse(height, width, face)
    if neck_width > 0:
        cx, cy, rx, _ = face
        xs = (np.arange(width) + 0.5) / width
        ys = (np.arange(height) + 0.5) / height
        band = (np.abs(xs - cx) <= neck_width * rx)[None, :] & (ys >= cy)[:, None]
        hair &= ~band
    return hair


def jittered_template(
    height: int, width: int, rng: np.random.Generator, shift: float = 0.04, scale: float = 0.1,
    template: HairTemplate = HairTemplate(),
) -> np.ndarray:
    """``template`` moved by up to ``shift`` and its head scaled by up to ``scale`` (training masks).

    Faces are aligned by their eyes, not by their hair; a prior trained on slightly varied
    templates does not learn one exact outline.
    """
    dx, dy = rng.uniform(-shift, shift, 2)
    grow_x, grow_y = 1.0 + rng.uniform(-scale, scale, 2)
    (hx, hy, hw, hh), (fx, fy, fw, fh) = template.head, template.face
    moved = HairTemplate((hx + dx, hy + dy, hw * grow_x, hh * grow_y), (fx + dx, fy + dy, fw, fh), template.neck_width)
    return moved.mask(height, width)
