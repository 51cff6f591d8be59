"""Stage 5: prune the edits the ERM model does not see as the intended change.

An edit of class i into class i' is kept iff its source-class probability ``psi`` falls
below ``Psi_i`` (the class's mean confidence on training data) and the integrated
gradients of the class-i' logit over the edited pixels, ``rho``, exceed ``P_i'``. Runs
offline on a CPU: a quick ERM model, ground-truth masks and the compose generator.

    python examples/07_pruning.py --output_dir runs/examples/07

On real data, score the edits of stage 4 with your ERM model and the paper's thresholds,
e.g. ``PruningConfig(P=[2, 0.3])`` for CelebA (50 IG steps by default, on CUDA if present).
"""

import argparse
import os
import tempfile
from collections import Counter

from dbb_hf.data import load_benchmark
from dbb_hf.inpainting import InpaintingConfig, prepare_donors, run_inpainting
from dbb_hf.masking import MaskingConfig, run_masking
from dbb_hf.modeling import ClassifierConfig, load_classifier
from dbb_hf.pruning import PruningConfig, apply_thresholds, class_confidence, score_edits
from dbb_hf.selection import SelectionConfig, score_dataset, select_lowest_loss
from dbb_hf.training import TrainingConfig, train_classifier

parser = argparse.ArgumentParser(description="Score and prune edits of toy images.")
parser.add_argument("--output_dir", help="Where the model and scores go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-07-")

# Stages 0-4 in brief (see the examples before this one).
dataset = load_benchmark("toy", num_train=256, num_validation=32, num_test=32, seed=0)
classifier = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
# Worst-group accuracy stays 0 in so short a run (ERM takes the shortcut): keep the most accurate epoch.
training = TrainingConfig(output_dir=os.path.join(output_dir, "erm"), num_epochs=4, train_batch_size=32,
                          optimizer="adam", lr_scheduler="constant", augmentation="none", num_workers=0,
                          selection_metric="accuracy")
model = load_classifier(train_classifier(dataset["train"], dataset["validation"], classifier, training).model_dir)
scored = score_dataset(dataset["train"], model)
selected = select_lowest_loss(scored, SelectionConfig(lowest_loss="0.25"))
masked = run_masking(selected, MaskingConfig(backend="column"))
edits = run_inpainting(masked, InpaintingConfig(backend="compose"), donors=prepare_donors(masked))

Psi = class_confidence(scored)  # Eq. 3, over every training image of each class
config = PruningConfig(P=[0.0], n_steps=8, batch_size=16, device="cpu")
pruned = apply_thresholds(score_edits(edits, model, config, Psi=Psi), config.P)
print("Psi per class:", [round(p, 3) for p in Psi])
print("pruning columns:", [c for c in pruned.column_names if c not in edits.column_names])
for row in pruned.select(range(3)):
    print(f"  {row['example_id']}: psi {row['psi']:.3f}, rho {row['rho']:+.3f}, keep {row['keep']}",
          repr(row["prune_reason"]))
print(f"P=0: kept {sum(pruned['keep'])} of {len(pruned)}; reasons {dict(Counter(pruned['prune_reason']))}")

# Thresholds apply to the saved scores: trying another P does not recompute integrated gradients.
stricter = apply_thresholds(pruned, [0.3])
print(f"P=0.3: kept {sum(stricter['keep'])} of {len(stricter)}")
pruned.save_to_disk(os.path.join(output_dir, "pruned"))
print(f"saved pruned/ to {output_dir}")
