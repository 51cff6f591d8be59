"""DBB on celeba: `accelerate launch recipes/celeba.py --data_dir DIR [--flags]`.

Defaults (the paper's hyperparameters) are in celeba.yaml beside this script; every flag
overrides one config field (`--help` lists them). `--preset tiny` swaps in tiny random
models so the whole method runs offline in seconds (tests).
"""

import os
import sys

from dbb_hf.recipes import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "celeba.yaml")))
