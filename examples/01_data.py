"""Stage "load": a benchmark as a DatasetDict with the dbb_hf column contract.

Runs offline in seconds on the embedded toy benchmark (bars over land or water):

    python examples/01_data.py --output_dir runs/examples/01

On real data, name the benchmark and its folder (the official layouts; see dbb_hf.data):

    load_benchmark("waterbirds", "data/waterbirds_v1.0")   # the folder with metadata.csv
    load_benchmark("celeba", "data/celeba", split_by_identity=True, seed=0)
    load_benchmark("hub", "<user>/<dataset>", label_column="y", spurious_column="place")
"""

import argparse
import tempfile

from dbb_hf.data import group_counts, load_benchmark

parser = argparse.ArgumentParser(description="Load a benchmark and show its columns.")
parser.add_argument("--output_dir", help="Where to save the dataset (default: a temporary folder).")
args = parser.parse_args()
output_dir = args.output_dir or tempfile.mkdtemp(prefix="dbb-01-")

# Train is 95 % correlated (horizontal bars on land, vertical on water); validation and test are balanced.
dataset = load_benchmark("toy", num_train=96, num_validation=32, num_test=32, correlation=0.95, seed=0)
print(dataset)
print("columns:", dataset["train"].column_names)
print("label names:", dataset["train"].features["label"].names)
print("spurious names:", dataset["train"].features["spurious"].names)
for split, counts in group_counts(dataset).items():
    print(f"groups in {split}: {counts}")

row = dataset["train"][0]
print("first row:", {k: row[k] for k in ("example_id", "label", "spurious", "group")}, "image", row["image"].size)

dataset.save_to_disk(output_dir)
print(f"saved to {output_dir} (reload with datasets.load_from_disk)")
