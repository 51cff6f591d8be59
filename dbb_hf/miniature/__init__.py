"""The miniature priors: small inpainting diffusion priors dbb_hf trains on its own worlds and ships.

``PRIOR_PATH`` (the toy world's bars, 32x32) and ``FACE_PRIOR_PATH`` (real aligned CelebA
faces, 64x64, hair repainted by colour) are ``StableDiffusionInpaintPipeline.save_pretrained``
folders (9-channel UNet, small CLIP text encoder) that load offline with the same
``from_pretrained`` as any Hub pipeline; ``recipes/train_miniature_prior.py`` makes them
(:mod:`dbb_hf.miniature.training`, one training code, a world per config) and their
``README.md`` cards say how. ``ORACLE_PATH`` and ``FACE_ORACLE_PATH`` are the independent
timm classifiers that judge their quality gates (``benchmarks/miniature_gates.py``).
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
PRIOR_PATH = os.path.join(_HERE, "prior")
# The independent judge of the quality gates and the tests: a small timm classifier
# trained on balanced toy data (benchmarks/miniature_gates.py --train_oracle).
ORACLE_PATH = os.path.join(_HERE, "oracle")
FACE_PRIOR_PATH = os.path.join(_HERE, "face_prior")
# Blond vs not blond, trained on group-balanced real faces of the face prior's identities
# (benchmarks/miniature_gates.py --world face --train_oracle).
FACE_ORACLE_PATH = os.path.join(_HERE, "face_oracle")
