"""Stage 3: a mask of each image's causal object, found by GroundingDINO + SAM from the class name.

Runs offline in seconds with tiny RANDOM GroundingDINO and SAM checkpoints built from
configs (their boxes and masks are noise, so the thresholds are 0 here); the toy
benchmark's ground-truth masks are also shown through the ``column`` backend.

    python examples/05_masks.py --output_dir runs/examples/05

On real models, use ``MaskingConfig()``: ``IDEA-Research/grounding-dino-base`` +
``facebook/sam2.1-hiera-small`` at pinned revisions, LangSAM's thresholds (box 0.3,
text 0.25), and ``class_names`` naming the object (Waterbirds: ["bird", "bird"]).
"""

import argparse
import os
import tempfile
from collections import Counter

import numpy as np

from dbb_hf.data import load_benchmark
from dbb_hf.masking import MaskingConfig, run_masking
from dbb_hf.stages import ShardPlan
from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam

parser = argparse.ArgumentParser(description="Mask the class objects of toy images.")
parser.add_argument("--output_dir", help="Where models and masks go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-05-")

train = load_benchmark("toy", num_train=8, num_validation=4, num_test=4, seed=0)["train"]

# The toy data ships ground-truth masks: the column backend copies them into the mask columns.
truth = run_masking(train, MaskingConfig(backend="column"))
print("column backend:", Counter(truth["mask_status"]), "first box", truth[0]["mask_box"])

# GroundingDINO + SAM write a new `mask` column, so keep the ground truth under another name.
detector = save_tiny_grounding_dino(os.path.join(output_dir, "tiny-grounding-dino"))
segmenter = save_tiny_sam(os.path.join(output_dir, "tiny-sam"))
config = MaskingConfig(detector_id=detector, segmenter_id=segmenter, box_threshold=0.0, text_threshold=0.0)
masked = run_masking(train.rename_column("mask", "gt_mask"), config, class_names=["horizontal bar", "vertical bar"],
                     device="cpu", output_dir=os.path.join(output_dir, "masked"),
                     shards=ShardPlan(shard_size=4))
print("grounded_sam columns:", masked.column_names)
print("grounded_sam:", Counter(masked["mask_status"]))
for row in masked.select(range(3)):
    pixels = int((np.asarray(row["mask"]) > 127).sum())
    print(f"  {row['example_id']}: status {row['mask_status']}, score {row['mask_score']:.3f}, "
          f"box {[round(v, 1) for v in row['mask_box']]}, {pixels} mask pixels")
print(f"masked rows saved in shards under {os.path.join(output_dir, 'masked')}")
