"""The dbb_hf Space: one image through masking, inpainting and pruning, with the verdict.

Upload an image (or pick an example), say which class it shows (or let the classifier
decide) and which class it should become. The app masks the object of the source class
(GroundingDINO + SAM), repaints it with Stable Diffusion inpainting and the target class's
learned token, and scores the edit as the method's pruning stage does: ``psi`` (the
source-class probability on the edit) against ``Psi`` of the source class and ``rho``
(integrated gradients of the target logit inside the edited region) against ``P`` of the
target class. An edit is kept iff psi < Psi and rho > P.

Its settings are dbb_hf's stage configs plus the Space's own fields (``dbb_space/settings.py``),
read from ``DBB_SPACE_<FLAG>`` environment variables (a Space's "Variables") and
overridable by ``--<flag>`` flags (``python app.py --help`` lists them). ``--tiny`` (or
``DBB_SPACE_TINY=1``) builds tiny random models into a temporary folder at start and loads
them with the same ``from_pretrained`` calls: the UI runs offline, and its outputs are noise.

``--run_dir DIR`` (or ``DBB_SPACE_RUN_DIR``) runs on a finished dbb_hf run instead: its config,
ERM classifier, learned tokens, Psi and P, offline with the shipped miniature priors.

    python examples/space/app.py --tiny
    python examples/space/app.py --run_dir runs/demo          # after `dbb-hf demo --output_dir runs/demo`
    DBB_SPACE_CLASSIFIER=hf-hub:<user>/<erm-classifier> DBB_SPACE_PSI=0.97,0.93 python examples/space/app.py
"""

import sys

from dbb_space.page import main

if __name__ == "__main__":
    main(sys.argv[1:])
