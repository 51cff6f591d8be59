"""The miniature world: a small inpainting diffusion prior trained on the toy world, shipped.

``PRIOR_PATH`` is a ``StableDiffusionInpaintPipeline.save_pretrained`` folder (32x32
images, 9-channel UNet, small CLIP text encoder) that loads offline with the same
``from_pretrained`` as any Hub pipeline; ``recipes/train_miniature_prior.py`` makes it and
its ``README.md`` card says how.
"""

from __future__ import annotations

import os

PRIOR_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prior")
# The independent judge of the quality gates and the tests: a small timm classifier
# trained on balanced toy data (benchmarks/miniature_gates.py --train_oracle).
ORACLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle")
