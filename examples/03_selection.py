"""Stage 1: score every training image with the ERM model and select the images to edit.

The lowest-loss images of each class are its likely majority group: they get a
``target_label`` (the other class) and will be edited into it. The highest-loss ones are
likely minority images, used to learn each class's causal token (stage 2).

    python examples/03_selection.py --output_dir runs/examples/03

On real data, score with your ERM model (``load_classifier("runs/erm/model")``) and use the
paper's budgets, e.g. ``SelectionConfig(lowest_loss="12000,2000", ti_num_images=30)`` for
CelebA (counts per class; a single float is a fraction of every class).
"""

import argparse
import os
import tempfile

from dbb_hf.data import load_benchmark
from dbb_hf.modeling import ClassifierConfig, load_classifier
from dbb_hf.selection import (
    SelectionConfig, score_dataset, select_lowest_loss, select_textual_inversion, selection_purity,
)
from dbb_hf.training import TrainingConfig, train_classifier

parser = argparse.ArgumentParser(description="ERM scoring and lowest-loss selection on the toy benchmark.")
parser.add_argument("--output_dir", help="Where the model and the selection go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-03-")

# A quickly trained ERM model (see 02_erm.py).
dataset = load_benchmark("toy", num_train=128, num_validation=32, num_test=32, seed=0)
classifier = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
training = TrainingConfig(output_dir=os.path.join(output_dir, "erm"), num_epochs=1, optimizer="adam",
                          lr_scheduler="constant", augmentation="none", num_workers=0)
model = load_classifier(train_classifier(dataset["train"], dataset["validation"], classifier, training).model_dir)

scored = score_dataset(dataset["train"], model, batch_size=64)
print("scored columns:", scored.column_names)
print("first erm_loss values:", [round(v, 4) for v in scored["erm_loss"][:4]])

config = SelectionConfig(lowest_loss="0.25", ti_num_images=4)
selected = select_lowest_loss(scored, config)
print(f"selected {len(selected)} of {len(scored)} images; first target labels:", selected["target_label"][:4])
# Purity needs training group labels, which the method itself never uses (paper Table 4).
for name, row in selection_purity(selected, dataset["train"]).items():
    print(f"  {name}: {row['majority_selected']}/{row['selected']} from the majority group {row['majority_group']}")

ti_images = select_textual_inversion(scored, dataset["validation"], config)
print(f"textual-inversion images: {len(ti_images)} ({config.ti_source}), labels {list(ti_images['label'])}")

selected.save_to_disk(os.path.join(output_dir, "selected"))
ti_images.save_to_disk(os.path.join(output_dir, "ti_images"))
print(f"saved selected/ and ti_images/ to {output_dir}")
