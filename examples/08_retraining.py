"""Stage 6: retrain on real + kept synthetic images with the upweighted loss (Eq. 6-8), and compare.

``build_augmented`` turns the pruned edits into a ``synthetic`` split (label = the new
class, with ``source_label``, ``source_example_id`` and every provenance column) beside
the real ``train``, ``validation`` and ``test``; ``train_classifier(synthetic=...)``
adds gamma_c times the mean loss of the edits into class c. Runs offline on a CPU
(stages 0-5 in brief: quick ERM, ground-truth masks, compose edits, IG pruning):

    python examples/08_retraining.py --output_dir runs/examples/08

On real data, retrain from your ERM model on a built or published augmented dataset
(``dbb_hf.load_augmented("<user>/waterbirds-dbb")``) with the paper's gammas, e.g.
``TrainingConfig(gammas=[2, 7])`` for CelebA, and the classifier of ``ClassifierConfig()``.
"""

import argparse
import dataclasses
import os
import tempfile
from collections import Counter

from dbb_hf.augmented import build_augmented
from dbb_hf.data import load_benchmark
from dbb_hf.inpainting import InpaintingConfig, prepare_donors, run_inpainting
from dbb_hf.masking import MaskingConfig, run_masking
from dbb_hf.modeling import ClassifierConfig, load_classifier
from dbb_hf.pruning import PruningConfig, apply_thresholds, class_confidence, score_edits
from dbb_hf.selection import SelectionConfig, score_dataset, select_lowest_loss
from dbb_hf.training import TrainingConfig, evaluate_split, train_classifier

parser = argparse.ArgumentParser(description="Upweighted retraining on the toy benchmark.")
parser.add_argument("--output_dir", help="Where the models and the dataset go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-08-")

dataset = load_benchmark("toy", num_train=256, num_validation=32, num_test=64, seed=0)
classifier = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
# Quick stages 0-5 (see 07_pruning.py); so short a run keeps its most accurate epoch, not its best worst group.
erm = TrainingConfig(output_dir=os.path.join(output_dir, "erm"), num_epochs=4, train_batch_size=32, optimizer="adam",
                     lr_scheduler="constant", augmentation="none", num_workers=0, selection_metric="accuracy")
erm_dir = train_classifier(dataset["train"], dataset["validation"], classifier, erm).model_dir
model = load_classifier(erm_dir)
scored = score_dataset(dataset["train"], model)
masked = run_masking(select_lowest_loss(scored, SelectionConfig(lowest_loss="0.25")), MaskingConfig(backend="column"))
edits = run_inpainting(masked, InpaintingConfig(backend="compose"), donors=prepare_donors(masked))
pruning = PruningConfig(P=[0.0], n_steps=8, device="cpu")
pruned = apply_thresholds(score_edits(edits, model, pruning, Psi=class_confidence(scored)), pruning.P)

augmented = build_augmented(dataset, pruned, pruning.P)  # records the P each edit passed
print(augmented)
synthetic = augmented["synthetic"]
print(f"synthetic: {len(synthetic)} kept edits of {len(pruned)}; (source_label, label) pairs:",
      dict(Counter(zip(synthetic["source_label"], synthetic["label"]))))

# Algorithm 2: continue from the ERM weights, real and synthetic images shuffled together.
retraining = dataclasses.replace(erm, output_dir=os.path.join(output_dir, "retrained"), num_epochs=2, gammas=[3.0, 3.0])
result = train_classifier(augmented["train"], augmented["validation"], classifier, retraining,
                          synthetic=augmented["synthetic"], init_model_dir=erm_dir)
for name, model_dir in (("erm", erm_dir), ("retrained", result.model_dir)):
    metrics = evaluate_split(load_classifier(model_dir), dataset["test"])
    print(f"{name}: test worst-group accuracy {metrics['worst_group_accuracy']:.3f},",
          f"average {metrics['average_accuracy']:.3f}")
augmented.save_to_disk(os.path.join(output_dir, "augmented"))
print(f"saved augmented/ to {output_dir}")
