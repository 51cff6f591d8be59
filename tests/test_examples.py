"""Every script in examples/ runs as a user runs it (a subprocess, offline) and prints what it made."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> lines (regular expressions) its output must contain
EXPECTED = {
    "01_data.py": [
        r"columns: \['image', 'label', 'spurious', 'group', 'example_id', 'mask'\]",
        r"groups in test: \{'horizontal_bar/land': 8, 'horizontal_bar/water': 8, 'vertical_bar/land': 8, "
        r"'vertical_bar/water': 8\}",
    ],
    "02_erm.py": [
        r"files: \['config.json', 'dbb_hf.json', 'model.safetensors'\]",
        r"test worst-group accuracy \d\.\d{3}",
    ],
    "03_selection.py": [r"'erm_loss', 'erm_probs'\]", r"selected 32 of 128 images", r"textual-inversion images: 8"],
    "04_causal_tokens.py": [r"loaded into the inpainting pipeline: \['<dbb-horizontal_bar>', '<dbb-vertical_bar>'\]"],
    "05_masks.py": [
        r"column backend: Counter\(\{'ok': 8\}\)",
        r"grounded_sam columns: .*'mask', 'mask_box', 'mask_score', 'mask_status'\]",
    ],
    "06_inpainting.py": [
        r"'donor_example_id'\]",
        r"diffusers: A photo of a <dbb-\w+> .* status ok",
        r"pixels outside the mask unchanged: True",
    ],
    "07_pruning.py": [
        r"pruning columns: \['psi', 'rho', 'psi_threshold', 'ig_target', 'score_status', 'keep', 'prune_reason'\]",
        r"P=0: kept \d+ of 64",
    ],
    "08_retraining.py": [r"synthetic: \d+ kept edits of 64", r"erm: test worst-group", r"retrained: test worst-group"],
}


def _check_toy_dataset(out):
    dataset = load_from_disk(str(out))
    assert {split: len(dataset[split]) for split in dataset} == {"train": 96, "validation": 32, "test": 32}


def _check_augmented(out):
    """The saved augmented dataset has the published layout; kept edits carry their NEW label."""
    augmented = load_from_disk(str(out / "augmented"))
    assert set(augmented) == {"train", "synthetic", "validation", "test"}
    synthetic = augmented["synthetic"]
    assert len(synthetic) > 0 and all(synthetic["keep"])
    assert synthetic["label"] == [1 - s for s in synthetic["source_label"]]


# What each script leaves in its output folder, and checks of its contents.
CHECKS = {"01_data.py": _check_toy_dataset, "08_retraining.py": _check_augmented}
ARTIFACTS = {
    "01_data.py": ["train", "validation", "test"],
    "02_erm.py": ["model/model.safetensors"],
    "03_selection.py": ["selected", "ti_images"],
    "04_causal_tokens.py": ["tokens/learned_embeds.safetensors"],
    "05_masks.py": ["masked"],
    "06_inpainting.py": ["edits", "tokens/learned_embeds.safetensors"],
    "07_pruning.py": ["pruned", "erm/model"],
    "08_retraining.py": ["augmented/synthetic", "retrained/model/model.safetensors"],
}


def test_every_example_is_tested_and_listed():
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(EXPECTED)
    readme = (EXAMPLES / "README.md").read_text()
    for script in scripts:
        assert f"python examples/{script} --output_dir" in readme, script


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_offline(script, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # One intra-op thread per example unless told otherwise: the test machines share a few cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output_dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    for pattern in EXPECTED[script]:
        assert re.search(pattern, run.stdout), f"{script}: no line matching {pattern!r} in:\n{run.stdout}"
    for artifact in ARTIFACTS[script]:
        assert (out / artifact).exists(), f"{script} did not write {artifact}"
    if script in CHECKS:
        CHECKS[script](out)
