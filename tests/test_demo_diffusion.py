"""`dbb-hf demo --generator diffusion` end to end on a small configuration, with a tiny
9-channel inpainting pipeline standing in for the miniature prior (same code paths: tokens
learned on the inpainting UNet, square-box masks, diffusers inpainting, IG pruning), and
the report's pruning section."""

import json
import shutil

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from dbb_hf.cli import main
from dbb_hf.masking import region_mask
from dbb_hf.miniature import PRIOR_PATH
from dbb_hf.presets import MINIATURE_PRIOR, demo_preset
from dbb_hf.report import pruning_counts
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline
from dbb_hf.stages import load_run_stage
from small_demo import SMALL


def _binary(image):
    return np.asarray(image.convert("L")) > 127


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    return save_tiny_inpaint_pipeline(tmp_path_factory.mktemp("prior") / "pipe")


def _demo(out, prior, *more):
    args = ["demo", "--generator", "diffusion", "--output_dir", str(out), *SMALL,
            "--textual_inversion_model_id", prior, "--inpainting_model_id", prior, *more]
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_prior):
    out = tmp_path_factory.mktemp("demo-diffusion")
    return out, _demo(out, tiny_prior)


def test_diffusion_preset_names_the_shipped_prior():
    preset = demo_preset("diffusion")
    assert preset["textual_inversion"]["model_id"] == PRIOR_PATH
    assert preset["inpainting"]["model_id"] == PRIOR_PATH and preset["inpainting"]["backend"] == "diffusers"
    assert preset["masking"] == {"backend": "column", "mask_column": "mask", "region": "square_box"}
    assert MINIATURE_PRIOR not in json.dumps(preset)
    compose = demo_preset("compose")
    assert compose["inpainting"]["backend"] == "compose" and "region" not in compose["masking"]
    assert compose["data"] == preset["data"] and compose["erm"] == preset["erm"]  # same benchmark and ERM
    with pytest.raises(ValueError, match="generator"):
        demo_preset("dall-e")
    with pytest.raises(SystemExit, match="generator"):
        main(["demo", "--generator", "dall-e"])


def test_diffusion_demo_learns_tokens_inpaints_square_boxes_and_prunes(run, tiny_prior):
    out, report = run
    assert report["models"]["inpainting"] == {"backend": "diffusers", "id": tiny_prior, "revision": "main"}
    assert report["tokens"] == ["<dbb-horizontal_bar>", "<dbb-vertical_bar>"]
    assert (out / "tokens" / "learned_embeds.safetensors").exists()
    pruned = load_run_stage(out, "pruning")
    assert len(pruned) == 12
    edited = pruned.filter(lambda s: s == "ok", input_columns="generation_status")
    assert len(edited) == 12  # every ground-truth mask is non-empty
    for row in edited:
        # The generator repainted the square around the object (the toy's mask, kept as
        # source_mask), with the target class's token and the shared object word.
        region = region_mask(_binary(row["source_mask"]), "square_box")
        assert np.array_equal(_binary(row["generated_mask"]), region)
        assert np.array_equal(_binary(row["mask"]), region)
        source, edit = np.asarray(row["image"]), np.asarray(row["generated"])
        assert np.array_equal(source[~region], edit[~region])  # pixels outside the mask unchanged
        assert row["prompt"] == f"a photo of a {report['tokens'][row['target_label']]} bar"
        assert row["generator"] == f"diffusers:{tiny_prior}@main"
    # Every generated edit is kept or pruned by a named rule, and the kept ones are the synthetic rows.
    synthetic = load_run_stage(out, "augmented")["synthetic"]
    assert len(synthetic) == sum(c["kept"] for c in report["pruning"].values()) == sum(pruned["keep"])
    for direction, c in report["pruning"].items():
        assert c["selected"] == 6 == c["kept"] + c["psi_rule_only"] + c["rho_rule_only"] + c["both_rules"]
        assert report["counts"][direction]["pruned"] == c["selected"] - c["kept"]
    markdown = (out / "report.md").read_text()
    assert "## Pruning" in markdown and "| psi rule only | rho rule only | both rules |" in markdown
    if sum(c["selected"] - c["kept"] for c in report["pruning"].values()):
        assert (out / "pruned.png").exists() and "![pruned](pruned.png)" in markdown


def test_diffusion_demo_is_deterministic(run, tiny_prior, tmp_path):
    out, report = run
    again = _demo(tmp_path / "again", tiny_prior)
    a, b = load_run_stage(out, "pruning"), load_run_stage(tmp_path / "again", "pruning")
    for x, y in zip(a["generated"], b["generated"]):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert a["rho"] == b["rho"] and a["keep"] == b["keep"]
    assert again["pruning"] == report["pruning"] and again["retrained"] == report["retrained"]


def test_a_new_lowest_loss_budget_keeps_the_learned_tokens(run, tiny_prior, tmp_path):
    # The paper tunes the budget on validation: each value selects and edits anew, but the
    # tokens come from the highest-loss images and are not learned again.
    out = tmp_path / "budget"
    shutil.copytree(run[0], out)
    token_files = sorted((out / "tokens").glob("*/learned_embeds.safetensors"))
    learned = {path: path.stat().st_mtime_ns for path in token_files}
    report = _demo(out, tiny_prior, "--selection_lowest_loss", "4,4")
    assert len(learned) == 2 and {path: path.stat().st_mtime_ns for path in token_files} == learned
    assert "textual_inversion_images" in report["reused_stages"]
    assert "selection" not in report["reused_stages"] and "generation" not in report["reused_stages"]
    assert sum(c["selected"] for c in report["pruning"].values()) == 8


def test_pruning_counts_known_answer():
    names = ["cat", "dog"]
    features = Features({"label": ClassLabel(names=names), "target_label": ClassLabel(names=names),
                         "keep": Value("bool"), "prune_reason": Value("string")})
    reasons = ["", "psi>=Psi", "rho<=P", "psi>=Psi;rho<=P", "rho<=P", "not_generated", ""]
    rows = {"label": [0, 0, 0, 0, 1, 1, 1], "target_label": [1, 1, 1, 1, 0, 0, 0],
            "keep": [r == "" for r in reasons], "prune_reason": reasons}
    counts = pruning_counts(Dataset.from_dict(rows, features=features))
    assert counts == {
        "cat->dog": {"selected": 4, "kept": 1, "psi_rule_only": 1, "rho_rule_only": 1, "both_rules": 1},
        "dog->cat": {"selected": 3, "kept": 1, "psi_rule_only": 0, "rho_rule_only": 1, "both_rules": 0,
                     "not_generated": 1},
    }
