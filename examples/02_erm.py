"""Stage 0: train the ERM classifier (a timm model in an Accelerate loop) and measure worst-group accuracy.

Runs offline on a CPU in well under a minute: a resnet10t from scratch on a small toy benchmark.

    python examples/02_erm.py --output_dir runs/examples/02

On real models, use the config defaults: ``ClassifierConfig()`` is an ImageNet-pretrained
timm ``resnet50`` (downloaded from the Hub), ``TrainingConfig()`` SGD with a cosine schedule
and timm augmentation for 10 epochs; several GPUs:
``accelerate launch examples/02_erm.py --output_dir runs/erm``.
The saved model loads without dbb_hf: ``timm.create_model("local-dir:<output_dir>/model", pretrained=True)``.
"""

import argparse
import os
import tempfile

from dbb_hf.data import load_benchmark
from dbb_hf.modeling import ClassifierConfig, load_classifier
from dbb_hf.training import TrainingConfig, evaluate_split, train_classifier

parser = argparse.ArgumentParser(description="Train an ERM classifier on the toy benchmark.")
parser.add_argument("--output_dir", help="Where checkpoints and the model go (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-02-")

dataset = load_benchmark("toy", num_train=256, num_validation=64, num_test=64, seed=0)
classifier = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
training = TrainingConfig(
    output_dir=output_dir, num_epochs=2, train_batch_size=64, optimizer="adam", learning_rate=1e-3,
    lr_scheduler="constant", augmentation="none", num_workers=0,
)
result = train_classifier(dataset["train"], dataset["validation"], classifier, training)
print(f"best epoch {result.best_epoch}; model saved to {result.model_dir}")
print("files:", sorted(os.listdir(result.model_dir)))

model = load_classifier(result.model_dir)
# ERM leans on the background: its worst groups are the classes on their minority background.
metrics = evaluate_split(model, dataset["test"])
print("test per-group accuracy:", metrics["per_group_accuracy"])
print(f"test worst-group accuracy {metrics['worst_group_accuracy']:.3f}, average {metrics['average_accuracy']:.3f}")
