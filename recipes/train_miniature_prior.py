"""Train a miniature inpainting prior dbb_hf ships: `python recipes/train_miniature_prior.py [--flags]`.

One training code (:mod:`dbb_hf.miniature.training`) for two worlds: the toy world of
bars (``dbb_hf/miniature/prior``) and real CelebA faces (``dbb_hf/miniature/face_prior``).
The YAML files beside this script hold the settings of the shipped priors; every flag
overrides one field (``--help`` lists them); a rerun with the same ``--output_dir``
resumes from the latest checkpoint.

    python recipes/train_miniature_prior.py --config_file recipes/miniature_prior_toy.yaml --output_dir runs/prior
    python recipes/train_miniature_prior.py --config_file recipes/miniature_prior_face.yaml \\
        --data_dir ../shared/data/celeba-mini --output_dir runs/face_prior
"""

import sys

from dbb_hf.miniature.training import main

if __name__ == "__main__":
    sys.exit(main())
