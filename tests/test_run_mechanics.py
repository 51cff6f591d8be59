"""Run mechanics on real-folder cases the toy never produces: one mixed-precision policy per
run, the lock on the run folder, preflight refusals (a selection that can only be empty, a
missing mask column, validation groups), the validation split scored for
ti_source=validation_group, one prompt word per class for textual inversion and
inpainting, the commit (or digest) of every model a run loads, a thin image that fails only
its own row, and a lone last training image with a BatchNorm model.

Everything runs offline (HF_HUB_OFFLINE): Hub models come from a hand-made Hub cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from accelerate import PartialState
from accelerate.state import AcceleratorState
from datasets import DatasetDict, load_from_disk
from PIL import Image
from safetensors.torch import load_file

import dbb_hf.training as training
from dbb_hf.data import DatasetFormatError
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.inpainting import InpaintingConfig
from dbb_hf.modeling import ClassifierConfig
from dbb_hf.precision import resolve_sections
from dbb_hf.preflight import check_mask_column, check_selection
from dbb_hf.revisions import classifier_source, folder_digest, resolve_revision
from dbb_hf.run_lock import RunFolderLockedError, run_folder_lock
from dbb_hf.selection import SelectionConfig
from dbb_hf.textual_inversion import TextualInversionConfig, read_embeds
from dbb_hf.training import TrainingConfig, train_classifier
from edit_rows import NAMES, box_mask, compose_edits, linear_model, noise, rows_dataset, tiny_pipe  # noqa: F401  (tiny_pipe: a fixture)
from offline_pipeline import make_pipeline, offline  # noqa: F401  (offline: an autouse fixture)

CLASSIFIER = ClassifierConfig("resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=32, num_validation=8, num_test=8, seed=3))


def training_config(output_dir, **overrides) -> TrainingConfig:
    settings = dict(output_dir=str(output_dir), num_epochs=1, train_batch_size=16, eval_batch_size=16,
                    optimizer="adam", augmentation="none", num_workers=0, seed=0)
    return TrainingConfig(**{**settings, **overrides})


# ------------------------------------------------------------------ one precision policy per run


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one precision per process: each test here starts and ends without one."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def head_dtypes(monkeypatch):
    """The dtype of every output of the classifier's head: the precision the stage computed in."""
    seen = []
    create = training.create_classifier

    def spied(config, num_classes):
        model = create(config, num_classes)
        model.get_classifier().register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(training, "create_classifier", spied)
    return seen


def test_stages_with_different_precisions_share_one_process(toy, tmp_path, fresh_accelerate, head_dtypes, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    # ERM in fp32, then other stages that ask for bf16 and fp16 (autocast on the CPU, fp16 with
    # its own gradient scaler): each computes in its own precision, none raises.
    for precision, dtype in (("no", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        head_dtypes.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train_classifier(toy["train"], toy["validation"], CLASSIFIER,
                                      training_config(tmp_path / precision, mixed_precision=precision))
        assert set(head_dtypes) == {dtype}, precision
        assert all(math.isfinite(r["train_loss"]) for r in result.history)
    # The fp16 stage's gradient scaler is in its checkpoints: training resumes from them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train_classifier(toy["train"], toy["validation"], CLASSIFIER,
                                   training_config(tmp_path / "fp16", mixed_precision="fp16", num_epochs=2))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert (tmp_path / "fp16" / "checkpoints" / "epoch_2" / "custom_checkpoint_0.pkl").exists()


def test_textual_inversion_in_its_own_precision_beside_erm(toy, tmp_path, fresh_accelerate, monkeypatch):
    from dbb_hf.tiny.diffusion import save_tiny_text2img_pipeline
    from dbb_hf.textual_inversion import train_token

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(tmp_path / "erm", mixed_precision="no"))
    model_dir = save_tiny_text2img_pipeline(tmp_path / "sd", seed=0)
    config = TextualInversionConfig(model_id=model_dir, initializer_token="bar", max_train_steps=1, resolution=32,
                                    gradient_accumulation_steps=1, mixed_precision="bf16")
    learned = train_token(toy["train"].select(range(2)), "horizontal_bar", config, tmp_path / "token")
    assert learned.global_step == 1
    assert AcceleratorState().mixed_precision == "no"  # the process kept ERM's (the launcher's) precision


def test_the_launchers_precision_reaches_stages_left_at_launcher(toy, tmp_path, fresh_accelerate, head_dtypes,
                                                               monkeypatch):
    # What `accelerate launch --mixed_precision bf16` (or its config file) sets for the process.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert TrainingConfig().mixed_precision == "launcher" == TextualInversionConfig().mixed_precision
    resolved = resolve_sections({"erm": TrainingConfig(), "textual_inversion": TextualInversionConfig(),
                                 "retraining": TrainingConfig(mixed_precision="no")})
    assert [c.mixed_precision for c in resolved.values()] == ["bf16", "bf16", "no"]

    train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(tmp_path / "launcher"))
    assert set(head_dtypes) == {torch.bfloat16}
    # An explicit "no" is honoured by that stage alone, and said so: it no longer replaces the launcher's.
    head_dtypes.clear()
    with pytest.warns(UserWarning, match="mixed_precision 'no' from its config, not the launcher's 'bf16'"):
        train_classifier(toy["train"], toy["validation"], CLASSIFIER,
                         training_config(tmp_path / "fp32", mixed_precision="no"))
    assert set(head_dtypes) == {torch.float32}
    assert AcceleratorState().mixed_precision == "bf16"


# ------------------------------------------------------------------ a lone last training image


def test_a_lone_last_training_image_does_not_stop_batchnorm_training(toy, tmp_path):
    train = toy["train"].select(range(17))  # batches of 16 and 1
    with pytest.warns(UserWarning, match="17 training images in batches of 16 leave one image alone"):
        whole = train_classifier(train, toy["validation"], CLASSIFIER,
                                 training_config(tmp_path / "whole", num_epochs=2))
    assert [r["epoch"] for r in whole.history] == [1, 2]
    # Deterministic and resumable: resumed from the epoch-1 checkpoint, epoch 2 ends with the same weights.
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "epoch_1", tmp_path / "resumed" / "checkpoints" / "epoch_1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train_classifier(train, toy["validation"], CLASSIFIER,
                                   training_config(tmp_path / "resumed", num_epochs=2))
    assert resumed.history == whole.history
    weights = [load_file(tmp_path / run / "checkpoints" / "epoch_2" / "model.safetensors") for run in ("whole", "resumed")]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)


# ------------------------------------------------------------------ preflight refusals


def test_a_selection_that_can_only_be_empty_is_refused_before_erm(tmp_path):
    pipeline = make_pipeline(tmp_path, selection={"lowest_loss": "0"})
    with pytest.raises(ValueError, match=r"lowest_loss is '0': no image of any class would be selected"):
        pipeline()
    assert not (tmp_path / "run" / "erm").exists()
    configs = {"selection": SelectionConfig(lowest_loss="0.0,3")}
    check_selection(configs, ["a", "b"])  # one class with a budget is enough
    with pytest.raises(ValueError, match=r"the dataset has one class \['cat'\]"):
        check_selection(configs, ["cat"])


def test_a_missing_mask_column_is_refused_before_erm(toy, tmp_path):
    pipeline = make_pipeline(tmp_path, masking={"backend": "column", "mask_column": "gt_mask"})
    with pytest.raises(DatasetFormatError, match=r"column 'gt_mask' \(--masking_mask_column\), which the train split "
                                                 r"does not have; it has \['image', 'label', .*'mask'\]"):
        pipeline()
    assert not (tmp_path / "run" / "erm").exists()
    # The dataset's own `mask` is kept as `source_mask` by the pipeline: both names are accepted.
    from dbb_hf.masking import MaskingConfig

    for name in ("mask", "source_mask"):
        check_mask_column({"masking": MaskingConfig(backend="column", mask_column=name)}, toy)
    with pytest.raises(DatasetFormatError, match="'label' holds ClassLabel.*not images"):
        check_mask_column({"masking": MaskingConfig(backend="column", mask_column="label")}, toy)


def test_validation_groups_for_tokens_are_checked_before_erm(tmp_path, tiny_models):
    diffusion = {"textual_inversion": {"model_id": tiny_models["text2img"], "initializer_token": "bird"},
                 "inpainting": {"backend": "diffusers", "model_id": tiny_models["inpaint"]}}
    # Group 1 (horizontal bar on water) is not a group of class 1.
    pipeline = make_pipeline(tmp_path, selection={"ti_source": "validation_group", "ti_validation_groups": [0, 1]},
                             **diffusion)
    with pytest.raises(ValueError, match=r"validation group 1 holds class\(es\) \[0\], not class 1"):
        pipeline()
    assert not (tmp_path / "run" / "erm").exists()


# ------------------------------------------------------------------ two runs, one folder


HOLD = """
import sys, time
from accelerate import PartialState
from dbb_hf.run_lock import run_folder_lock
with run_folder_lock(sys.argv[1], PartialState()):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        pipeline = make_pipeline(tmp_path)
        message = rf"the run folder {out} is in use by another dbb_hf run \(pid {holder.pid} on " \
                  rf"{socket.gethostname()}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"
        with pytest.raises(RunFolderLockedError, match=message):
            pipeline()
        assert not (out / "data").exists() and not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # A lock left by a dead process blocks nothing: the OS released it with the process.
    with run_folder_lock(out, PartialState()):
        assert json.loads((out / ".dbb_hf.lock.json").read_text())["pid"] == os.getpid()
    assert not (out / ".dbb_hf.lock.json").exists()


# ------------------------------------------------------------------ model revisions


COMMITS = {"tiny-org/grounding-dino": "1" * 40, "tiny-org/sam": "2" * 40, "tiny-org/sd-inpaint": "3" * 40}


def hub_cache_entry(cache: Path, repo_id: str, folder: str | Path, commit: str, refs=("main",)) -> None:
    """``folder``'s files laid out as the Hub cache holds a download of ``repo_id`` at ``commit``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


def test_the_commit_of_a_hub_model_is_read_from_the_cache_offline(tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text("{}")
    cache = tmp_path / "hub"
    hub_cache_entry(cache, "org/model", model, "a" * 40, refs=("main", "v1"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for revision in ("main", "v1", "a" * 40, None):
        assert resolve_revision("org/model", revision, ["unet/config.json"])["commit"] == "a" * 40
    assert resolve_revision("org/model", "v2", ["unet/config.json"]) == {"id": "org/model", "revision": "v2", "commit": None}
    assert resolve_revision("org/other", "main", ["config.json"])["commit"] is None
    # A local folder records the digest of its files' contents.
    digest = resolve_revision(str(model), "main", ["config.json"])
    assert digest == {"id": str(model), "digest": folder_digest(model)} and digest["digest"].startswith("sha256:")
    os.utime(model / "unet" / "config.json", (1, 1))
    assert folder_digest(model) == digest["digest"]
    (model / "unet" / "config.json").write_text('{"changed": 1}')
    assert folder_digest(model) != digest["digest"]


def test_default_models_are_pinned_and_classifier_weights_are_located():
    assert TextualInversionConfig().revision == "f5bc1bd97485577aa0b946fa8a9004e2ec147402"
    assert InpaintingConfig().revision == "5f74973cbb64c8568780732c17f43eb269d63a0d"
    # Another model id is not given the default model's commit.
    assert TextualInversionConfig(model_id="me/sd").revision == "main" == InpaintingConfig(model_id="me/sd").revision
    assert classifier_source("resnet50") == ("timm/resnet50.a1_in1k", None)
    assert classifier_source("hf-hub:me/net@v2") == ("me/net", "v2")
    assert classifier_source("local-dir:/models/net") == ("/models/net", None)


# ------------------------------------------------------------------ a run on a real-looking folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from dbb_hf.presets import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


CLASS_PROMPTS = ["flat bar", "upright bar"]
THIN = "train-thin"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, tiny_models):
    """A run on a Hub-style dataset folder (17 training images, one of them 1 x 500 pixels),
    with textual inversion from validation groups, per-class prompt words, and Hub ids for
    the masking and inpainting models (a hand-made Hub cache, offline)."""
    from dbb_hf.cli import run_pipeline

    root = tmp_path_factory.mktemp("folder-run")
    cache = root / "hub"
    for repo_id, name in (("tiny-org/grounding-dino", "detector"), ("tiny-org/sam", "segmenter"),
                          ("tiny-org/sd-inpaint", "inpaint")):
        hub_cache_entry(cache, repo_id, tiny_models[name], COMMITS[repo_id])
    toy = load_toy(ToyConfig(num_train=16, num_validation=8, num_test=8, seed=5))
    thin = toy["train"].select([0]).map(
        lambda row: {"image": Image.fromarray(np.full((500, 1, 3), 200, np.uint8)), "example_id": THIN})
    data_dir = root / "data"
    train = datasets.concatenate_datasets([toy["train"], thin.cast(toy["train"].features)])
    DatasetDict({"train": train, "validation": toy["validation"], "test": toy["test"]}).save_to_disk(data_dir)
    # The tiny preset, with the models of the fixture (the Hub cache above serves them by id).
    overrides = {
        "data": {"dataset": "hub", "data_dir": str(data_dir),
                 "options": ["label_column=label", "spurious_column=spurious", "example_id_column=example_id"]},
        "run": {"class_prompts": CLASS_PROMPTS, "num_grid_examples": 2, "shard_size": 16},
        "selection": {"lowest_loss": "1.0", "ti_source": "validation_group", "ti_num_images": 2},
        "masking": {"detector_id": "tiny-org/grounding-dino", "detector_revision": "main",
                    "segmenter_id": "tiny-org/sam", "segmenter_revision": "main", "batch_size": 4},
        "inpainting": {"model_id": "tiny-org/sd-inpaint", "revision": "main", "batch_size": 8},
        "textual_inversion": {"model_id": tiny_models["text2img"]},
        "pruning": {"psi_rule": False, "P": [0.0]},
    }
    out = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = run_pipeline(["--output_dir", str(out)], presets=("tiny",), overrides=(overrides,))
    return {"out": out, "report": report, "warnings": [str(w.message) for w in caught], "models": tiny_models,
            "toy": toy}


def test_the_validation_split_is_scored_for_validation_group_tokens(folder_run):
    out, toy = folder_run["out"], folder_run["toy"]
    assert (out / "report.json").exists()
    scored = load_from_disk(out / "validation_scores")
    assert len(scored) == len(toy["validation"]) and np.isfinite(scored["erm_loss"]).all()
    ti_images = load_from_disk(out / "textual_inversion_images")
    assert set(ti_images["example_id"]) <= set(toy["validation"]["example_id"])
    # Each class's images come from one validation group of that class.
    for label in (0, 1):
        rows = ti_images.filter(lambda y: y == label, input_columns="label")
        assert len(set(rows["group"])) == 1 and len(rows) == 2


def test_textual_inversion_and_inpainting_name_each_class_with_one_word(folder_run):
    out = folder_run["out"]
    _, info = read_embeds(out / "tokens")
    by_class = {entry["class_index"]: (token, entry["prompt_name"]) for token, entry in info.items()}
    assert [by_class[c][1] for c in (0, 1)] == CLASS_PROMPTS
    assert [by_class[c][0] for c in (0, 1)] == ["<dbb-horizontal_bar>", "<dbb-vertical_bar>"]
    generated = load_from_disk(out / "generation")
    prompts = {(t, p) for t, p in zip(generated["target_label"], generated["prompt"]) if p}
    assert prompts and all(p.endswith(f"{by_class[t][0]} {CLASS_PROMPTS[t]}") for t, p in prompts)


def test_every_model_records_the_commit_it_resolved(folder_run, tmp_path):
    from dbb_hf.hub import save_dataset_folder, save_embeddings_folder

    out, models = folder_run["out"], folder_run["models"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved_revisions"]
    assert resolved["masking_detector"] == {"id": "tiny-org/grounding-dino", "revision": "main",
                                            "commit": COMMITS["tiny-org/grounding-dino"]}
    assert resolved["masking_segmenter"]["commit"] == COMMITS["tiny-org/sam"]
    assert resolved["inpainting"]["commit"] == COMMITS["tiny-org/sd-inpaint"]
    assert resolved["textual_inversion"] == {"id": models["text2img"], "digest": folder_digest(models["text2img"])}
    report = json.loads((out / "report.json").read_text())
    assert report["resolved_revisions"] == resolved
    markdown = (out / "report.md").read_text()
    assert f"| masking_detector | tiny-org/grounding-dino | main -> {COMMITS['tiny-org/grounding-dino']} |" in markdown
    # The edits name the commit that made them, and the cards carry it.
    generators = set(load_from_disk(out / "generation")["generator"])
    assert generators == {f"diffusers:tiny-org/sd-inpaint@{COMMITS['tiny-org/sd-inpaint']}"}
    card = (save_dataset_folder(out, tmp_path / "dataset", "me/toy-dbb") / "README.md").read_text()
    assert f"| tiny-org/grounding-dino | main | {COMMITS['tiny-org/grounding-dino']} |" in card
    embeddings = (save_embeddings_folder(out, tmp_path / "tokens", "me/toy-dbb-tokens") / "README.md").read_text()
    assert f'"tiny-org/sd-inpaint", revision="{COMMITS["tiny-org/sd-inpaint"]}"' in embeddings


def test_a_thin_image_fails_its_own_row_and_the_run_goes_on(folder_run):
    out = folder_run["out"]
    masks = load_from_disk(out / "masks")
    statuses = dict(zip(masks["example_id"], masks["mask_status"]))
    assert statuses[THIN].startswith("failed: the masking models cannot take this 1x500 image: ValueError")
    assert all(not s.startswith("failed") for e, s in statuses.items() if e != THIN)
    assert any(f"masking: {THIN}: failed" in w for w in folder_run["warnings"])
    outcomes = json.loads((out / "report.json").read_text())["accounting"]["outcomes"]
    failed = sum(n for counts in outcomes.values() for outcome, n in counts.items() if "cannot take this 1x500" in outcome)
    assert failed == 1
    # 17 training images in batches of 8: ERM left one image out of each epoch instead of stopping.
    assert any("17 training images in batches of 8" in w for w in folder_run["warnings"])


def test_thin_and_tiny_images_go_through_the_other_stages(tiny_pipe):
    from dbb_hf import pruning, selection
    from dbb_hf.inpainting import inpaint_batch
    from dbb_hf.masking import MaskingConfig, mask_batch
    from dbb_hf.modeling import eval_transform
    from dbb_hf.pruning import PruningConfig

    sizes = [(1, 500), (500, 1), (1, 2), (2, 2)]
    images = [noise(w, h, seed=k) for k, (w, h) in enumerate(sizes)]
    masks = [box_mask(w, h, (0, 0, max(1, w // 2), max(1, h // 2))) for w, h in sizes]
    n = len(sizes)
    batch = {"image": images, "label": [0] * n, "target_label": [1] * n, "example_id": [f"{w}x{h}" for w, h in sizes],
             "mask_status": ["ok"] * n, "gt_mask": masks}
    model = linear_model()
    scores = selection.score_batch(batch, model=model, transform=eval_transform(model), device="cpu")
    assert np.isfinite(scores["erm_loss"]).all()
    copied = mask_batch(batch, models=None, config=MaskingConfig(backend="column", mask_column="gt_mask"),
                        class_names=NAMES)
    assert copied["mask_status"] == ["ok"] * n and [m.size for m in copied["mask"]] == sizes
    batch["mask"] = copied["mask"]
    config, pipe = tiny_pipe
    edits = inpaint_batch(batch, pipe=pipe, config=config, class_names=NAMES, tokens=["horizontal", "vertical"])
    assert edits["generation_status"] == ["ok"] * n and [e.size for e in edits["generated"]] == sizes
    for edit, mask, source in zip(edits["generated"], batch["mask"], images):
        outside = ~(np.asarray(mask) > 127)
        np.testing.assert_array_equal(np.asarray(edit)[outside], np.asarray(source)[outside])
    scored = pruning.score_batch({**batch, **edits}, model=model, config=PruningConfig(n_steps=4, device="cpu"),
                                 Psi=[0.9, 0.9])
    assert scored["score_status"] == ["ok"] * n and np.isfinite(scored["rho"]).all()
    composed = compose_edits(rows_dataset(images, masks))
    assert composed["generation_status"] == ["ok"] * n


def test_learn_tokens_command_names_tokens_after_classes_and_prompts_with_class_prompts(tmp_path, tiny_models, toy):
    from dbb_hf.cli import main

    images = str(tmp_path / "images")
    toy["train"].select(range(4)).save_to_disk(images)
    main(["learn-tokens", "--input", images, "--output_dir", str(tmp_path / "tokens"), "--class_prompts", "bar", "bar",
          "--textual_inversion_model_id", tiny_models["text2img"], "--textual_inversion_initializer_token", "bird",
          "--textual_inversion_max_train_steps", "1", "--textual_inversion_resolution", "32",
          "--textual_inversion_gradient_accumulation_steps", "1"])
    _, info = read_embeds(tmp_path / "tokens")
    assert {token: entry["prompt_name"] for token, entry in info.items()} == {
        "<dbb-horizontal_bar>": "bar", "<dbb-vertical_bar>": "bar"}
