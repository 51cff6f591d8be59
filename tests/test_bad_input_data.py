"""Bad input catalogue, part B: data semantics, numbers, token files and Hub ids.

Each case gets an error that names the problem (split, column, values, file, class,
id) raised before any work starts, or a per-row reason where only the row is bad.
Everything runs offline (HF_HUB_OFFLINE) on the toy benchmark with tiny models.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from dbb_hf.augmented import build_augmented
from dbb_hf.checks import check_classes_present
from dbb_hf.data import DatasetFormatError, load_benchmark
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.hub_access import HubUnreachableError
from dbb_hf.modeling import ClassifierConfig, create_classifier, save_classifier
from dbb_hf.preflight import preflight
from dbb_hf.pruning import apply_thresholds, class_confidence
from dbb_hf.selection import SelectionConfig, score_dataset, select_lowest_loss, select_textual_inversion
from dbb_hf.training import NonFiniteLossError, TrainingConfig, train_classifier
from offline_pipeline import make_pipeline, offline  # noqa: F401  (offline: an autouse fixture)

CLASSIFIER = ClassifierConfig("resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
NAMES = ["horizontal_bar", "vertical_bar"]


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=32, num_validation=8, num_test=8, seed=3))


def with_labels(dataset: Dataset, column: str, values: dict[int, int]) -> Dataset:
    """``dataset`` with ``column`` set to ``values`` at the given rows, bypassing ClassLabel's checks
    (as a cast, or a Hub dataset using -1 for "no label", would)."""
    feature = dataset.features[column]
    column_values = list(dataset[column])
    for row, value in values.items():
        column_values[row] = value
    plain = dataset.remove_columns(column).add_column(column, column_values, feature=Value("int64"))
    return plain.cast_column(column, feature)


def scored_rows(losses, labels, names=("a", "b"), probs=None) -> Dataset:
    columns = {
        "example_id": [f"r{i}" for i in range(len(losses))],
        "label": labels,
        "erm_loss": losses,
        "erm_probs": probs if probs is not None else [[0.5] * len(names)] * len(losses),
    }
    features = Features({"example_id": Value("string"), "label": ClassLabel(names=list(names)),
                         "erm_loss": Value("float32"), "erm_probs": Sequence(Value("float32"))})
    return Dataset.from_dict(columns, features=features)


def augmented_of(toy, targets=(1, 0, 1, 0)) -> DatasetDict:
    """The toy's augmented dataset with one kept "edit" (the image itself) per target given."""
    edits = toy["train"].select(range(len(targets))).map(
        lambda batch, idx: {"generated": batch["image"], "target_label": [targets[i] for i in idx],
                            "keep": [True] * len(idx)},
        batched=True, with_indices=True,
    )
    return build_augmented(toy, edits, P=[0.0])


def training_config(tmp_path, **overrides) -> TrainingConfig:
    settings = dict(output_dir=str(tmp_path), num_epochs=1, train_batch_size=16, eval_batch_size=16,
                    optimizer="adam", augmentation="none", num_workers=0, seed=0)
    settings.update(overrides)
    return TrainingConfig(**settings)




# ------------------------------------------------------------------ labels out of range


def test_hub_loader_names_split_column_and_values_of_labels_out_of_range(toy, tmp_path):
    # A Hub-style dataset whose test split is unlabelled (-1) and whose train has a label 5.
    source = DatasetDict({
        "train": with_labels(toy["train"], "label", {3: 5}),
        "validation": toy["validation"],
        "test": with_labels(toy["test"], "label", {0: -1, 1: -1}),
    }).remove_columns(["group", "mask"])
    folder = tmp_path / "hub-like"
    source.save_to_disk(str(folder))
    with pytest.raises(DatasetFormatError, match=r"split 'train'.*column 'label'.*\[5\]") as error:
        load_benchmark("hub", str(folder), label_column="label", spurious_column="spurious")
    assert toy["train"][3]["example_id"] in str(error.value)

    source["train"] = toy["train"].remove_columns(["group", "mask"])
    source.save_to_disk(str(tmp_path / "unlabelled-test"))
    with pytest.raises(DatasetFormatError, match=r"split 'test'.*\[-1\].*no label"):
        load_benchmark("hub", str(tmp_path / "unlabelled-test"), label_column="label", spurious_column="spurious")


def test_stages_refuse_labels_out_of_range_before_any_work(toy, tmp_path):
    bad_train = with_labels(toy["train"], "label", {0: 5})
    with pytest.raises(DatasetFormatError, match=r"training \(split 'train'\).*'label'.*\[5\]"):
        train_classifier(bad_train, toy["validation"], CLASSIFIER, training_config(tmp_path / "erm"))
    assert not (tmp_path / "erm").exists()  # refused before the model, loaders or folders were made

    bad_validation = with_labels(toy["validation"], "label", {2: -1})
    with pytest.raises(DatasetFormatError, match=r"split 'validation'.*\[-1\]"):
        train_classifier(toy["train"], bad_validation, CLASSIFIER, training_config(tmp_path / "erm"))

    model = create_classifier(CLASSIFIER, num_classes=2).eval()
    with pytest.raises(DatasetFormatError, match=r"score_dataset.*'label'.*\[5\]"):
        score_dataset(bad_train, model)
    with pytest.raises(DatasetFormatError, match=r"select_lowest_loss.*'label'.*\[7\]"):
        select_lowest_loss(with_labels(scored_rows([0.1, 0.2], [0, 1]), "label", {1: 7}), SelectionConfig())
    with pytest.raises(DatasetFormatError, match=r"class_confidence.*\[-3\]"):
        class_confidence(with_labels(scored_rows([0.1, 0.2], [0, 1]), "label", {0: -3}))

    # The pipeline checks every split (label and spurious) before ERM.
    pipeline = make_pipeline(tmp_path)
    dataset = pipeline.data.load()
    dataset["test"] = with_labels(dataset["test"], "spurious", {1: 9})
    with pytest.raises(DatasetFormatError, match=r"split 'test'.*'spurious'.*\[9\]"):
        preflight(pipeline.run, pipeline.configs, dataset)


# ------------------------------------------------------------------ a class with no samples


def test_a_class_without_samples_is_named_with_its_split(toy, tmp_path):
    only_horizontal = toy["train"].filter(lambda y: y == 0, input_columns="label")
    with pytest.raises(DatasetFormatError, match=r"split 'train'.*\['vertical_bar'\] have no rows"):
        check_classes_present(only_horizontal, what="the dataset", split="train")

    pipeline = make_pipeline(tmp_path)
    dataset = pipeline.data.load()
    dataset["train"] = only_horizontal
    with pytest.raises(DatasetFormatError, match=r"split 'train'.*'vertical_bar'"):
        preflight(pipeline.run, pipeline.configs, dataset)

    scored = scored_rows([0.3, 0.1], [0, 0])
    with pytest.raises(ValueError, match="class 'b' has no images"):
        select_lowest_loss(scored, SelectionConfig(lowest_loss="1"))
    with pytest.raises(ValueError, match="class 'b' has no training images"):
        select_textual_inversion(scored, None, SelectionConfig(ti_num_images=1))
    with pytest.raises(ValueError, match=r"class 1 \('b'\) has no training rows"):
        class_confidence(scored)


def test_a_gamma_for_a_class_without_edits_is_zero_and_warned(toy, tmp_path):
    # Every edit into vertical_bar was pruned: its gamma term is 0 (Eq. 6-8), and the user is told.
    augmented = augmented_of(toy, targets=(0, 0, 0))
    assert set(augmented["synthetic"]["label"]) == {0}
    with pytest.warns(UserWarning, match=r"no synthetic images of class\(es\) \['vertical_bar'\]"):
        train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(tmp_path / "re", gammas=[2, 3]),
                         synthetic=augmented["synthetic"])


# ------------------------------------------------------------------ missing columns


def test_missing_columns_name_the_stage_the_column_and_the_columns_present(toy, tmp_path):
    from dbb_hf.inpainting import InpaintingConfig, run_inpainting
    from dbb_hf.masking import MaskingConfig, run_masking
    from dbb_hf.pruning import PruningConfig, score_edits

    model = create_classifier(CLASSIFIER, num_classes=2).eval()
    train = toy["train"]
    cases = [
        (lambda: score_dataset(train.remove_columns("label"), model), r"score_dataset needs column\(s\) \['label'\]"),
        (lambda: select_lowest_loss(scored_rows([0.1], [0]).remove_columns("erm_loss"), SelectionConfig()),
         r"select_lowest_loss needs column\(s\) \['erm_loss'\]"),
        (lambda: class_confidence(scored_rows([0.1], [0]).remove_columns("erm_probs")),
         r"class_confidence needs column\(s\) \['erm_probs'\]"),
        (lambda: run_masking(train.remove_columns("mask"), MaskingConfig(backend="column", mask_column="mask")),
         r"masking \(backend 'column'\) needs column\(s\) \['mask'\]"),
        (lambda: run_inpainting(train, InpaintingConfig(backend="compose"), donors=train),
         r"target_label"),
        (lambda: score_edits(train, model, PruningConfig(), Psi=[0.9, 0.9]),
         r"pruning needs column\(s\) \['target_label', 'generated'\]"),
        (lambda: apply_thresholds(train, 0.0), r"apply_thresholds needs column\(s\) \['psi', 'rho'"),
        (lambda: train_classifier(train.remove_columns("image"), toy["validation"], CLASSIFIER,
                                  training_config(tmp_path / "t")),
         r"training \(split 'train'\) needs column\(s\) \['image'\]"),
    ]
    for call, message in cases:
        with pytest.raises(DatasetFormatError, match=message) as error:
            call()
        assert "the dataset has [" in str(error.value) or "it has [" in str(error.value)


# ------------------------------------------------------------------ class names that disagree


def test_class_lists_that_disagree_are_named_before_erm(toy, tmp_path):
    pipeline = make_pipeline(tmp_path, run={"class_prompts": ["bar"]})
    dataset = pipeline.data.load()
    with pytest.raises(ValueError, match=r"class_prompts has 1 entries \['bar'\].*2 classes \['horizontal_bar', "):
        preflight(pipeline.run, pipeline.configs, dataset)

    wrong_gammas = make_pipeline(tmp_path, retraining={"gammas": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"gammas has 3 values.*2 classes"):
        preflight(wrong_gammas.run, wrong_gammas.configs, dataset)

    typo = make_pipeline(tmp_path, textual_inversion={"class_initializer_tokens": ["vertical=bar"]})
    with pytest.raises(ValueError, match=r"class_initializer_tokens names \['vertical'\], which are not classes"):
        preflight(typo.run, typo.configs, dataset)

    # A classifier trained on other classes, given as --erm_model.
    other = tmp_path / "other-classifier"
    save_classifier(create_classifier(CLASSIFIER, num_classes=2), str(other), ["cat", "dog"])
    given = make_pipeline(tmp_path, run={"erm_model": str(other)})
    with pytest.raises(DatasetFormatError, match=r"\['horizontal_bar', 'vertical_bar'\].*--erm_model.*\['cat', 'dog'\]"):
        given()
    assert not (tmp_path / "run" / "scores").exists()

    # A published augmented dataset made for other classes.
    renamed = DatasetDict({split: ds.cast_column("label", ClassLabel(names=["cat", "dog"]))
                           for split, ds in augmented_of(toy).items()})
    renamed["synthetic"] = renamed["synthetic"].cast_column("source_label", ClassLabel(names=["cat", "dog"]))
    renamed.save_to_disk(str(tmp_path / "cats-dogs"))
    with_augmented = make_pipeline(tmp_path, run={"augmented_dataset": str(tmp_path / "cats-dogs")})
    with pytest.raises(DatasetFormatError, match=r"augmented dataset .*cats-dogs.* has \['cat', 'dog'\]"):
        preflight(with_augmented.run, with_augmented.configs, dataset)

    # Retraining from a classifier made for other classes.
    with pytest.raises(DatasetFormatError, match=r"initial classifier .* has \['cat', 'dog'\]"):
        train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(tmp_path / "r"),
                         init_model_dir=str(other))


def test_a_tokens_folder_missing_a_class_is_named(tmp_path):
    from dbb_hf.cli import _tokens_by_class
    from dbb_hf.inpainting import InpaintingConfig, run_inpainting
    from dbb_hf.textual_inversion import save_embeds

    # learn_tokens' combined file with the token of class 0 only.
    save_embeds(str(tmp_path / "learned_embeds.safetensors"), {"<dbb-horizontal_bar>": torch.zeros(1, 32)},
                {"<dbb-horizontal_bar>": {"class_index": 0}})
    with pytest.raises(SystemExit, match=r"no token for class\(es\) \['vertical_bar'\]"):
        _tokens_by_class(str(tmp_path), NAMES)
    assert _tokens_by_class(str(tmp_path), NAMES[:1]) == ["<dbb-horizontal_bar>"]

    rows = load_toy(ToyConfig(num_train=4, num_validation=4, num_test=4))["train"]
    rows = rows.add_column("target_label", [1 - y for y in rows["label"]], feature=rows.features["label"])
    rows = rows.add_column("mask_status", ["ok"] * len(rows))
    with pytest.raises(ValueError, match=r"2 classes \['horizontal_bar', 'vertical_bar'\] but 1 tokens"):
        run_inpainting(rows, InpaintingConfig(), pipe=object(), class_names=["bar"], tokens=["<t0>"])


# ------------------------------------------------------------------ NaN and infinite numbers


def test_a_nan_training_loss_stops_with_epoch_and_step_and_keeps_the_last_good_model(toy, tmp_path, monkeypatch):
    import dbb_hf.training as training

    out = tmp_path / "erm"
    train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(out, num_epochs=1))
    saved = (out / "model" / "model.safetensors").read_bytes()

    real_loss = training.dbb_loss
    calls = []

    def diverging(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(training, "dbb_loss", diverging)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2 of 2 .*epoch_1"):
        train_classifier(toy["train"], toy["validation"], CLASSIFIER, training_config(out, num_epochs=2))
    assert (out / "model" / "model.safetensors").read_bytes() == saved
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_1"]


def test_nonfinite_erm_losses_are_left_out_of_selection_with_a_reason():
    data = scored_rows([0.1, math.nan, 0.3, math.inf, 0.2, 0.4], [0, 0, 0, 1, 1, 1])
    with pytest.warns(UserWarning, match=r"NaN or infinite for 2 row\(s\).*non-finite ERM loss.*\['r1', 'r3'\]"):
        selected = select_lowest_loss(data, SelectionConfig(lowest_loss="1.0"))
    assert list(selected["example_id"]) == ["r0", "r2", "r4", "r5"]
    with pytest.warns(UserWarning):
        picks = select_textual_inversion(data, None, SelectionConfig(ti_num_images=5))
    assert "r3" not in picks["example_id"] and "r1" not in picks["example_id"]
    all_nan = scored_rows([0.1, math.nan], [0, 1])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="class 'b' has no images with a finite erm_loss"):
        select_lowest_loss(all_nan, SelectionConfig(lowest_loss="1"))

    # Psi (Eq. 3) averages the finite rows only.
    probs = [[0.9, 0.1], [math.nan, math.nan], [0.7, 0.3], [0.2, 0.8]]
    with pytest.warns(UserWarning, match=r"1 training row\(s\) have NaN"):
        Psi = class_confidence(scored_rows([0.1] * 4, [0, 0, 0, 1], probs=probs))
    assert Psi == pytest.approx([0.8, 0.8])


def test_nonfinite_pruning_scores_get_their_own_prune_reason():
    nan, inf = math.nan, math.inf
    scored = Dataset.from_dict(
        {"psi": [0.1, nan, 0.1, nan, 0.1], "rho": [1.0, nan, inf, 1.0, -inf],
         "psi_threshold": [0.5] * 5, "target_label": [1, 1, 1, 1, 1],
         "generation_status": ["ok", "ok", "ok", "skipped_empty_mask", "ok"]},
        features=Features({"psi": Value("float32"), "rho": Value("float32"), "psi_threshold": Value("float32"),
                           "target_label": ClassLabel(names=["a", "b"]), "generation_status": Value("string")}),
    )
    verdict = apply_thresholds(scored, 0.0)
    assert verdict["prune_reason"] == ["", "nonfinite_score", "nonfinite_score", "not_generated", "nonfinite_score"]
    assert verdict["keep"] == [True, False, False, False, False]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

    root = tmp_path_factory.mktemp("tiny-sd")
    return {"base": save_tiny_text2img_pipeline(root / "text2img", seed=0),
            "inpaint": save_tiny_inpaint_pipeline(root / "inpaint", seed=0)}


def test_a_nan_textual_inversion_loss_names_the_class_and_step(tiny_sd, toy, tmp_path, monkeypatch):
    import dbb_hf.textual_inversion as ti
    from dbb_hf.textual_inversion import train

    monkeypatch.setattr(train, "_diffusion_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    config = ti.TextualInversionConfig(model_id=tiny_sd["base"], initializer_token="bar", max_train_steps=2,
                                       resolution=32, checkpointing_steps=1)
    with pytest.raises(FloatingPointError, match=r"class 'horizontal_bar'.*loss is nan at step 1 of 2"):
        ti.train_token(toy["train"].select(range(2)), "horizontal_bar", config, tmp_path / "token")
    assert not (tmp_path / "token" / ti.EMBEDS_NAME).exists()


# ------------------------------------------------------------------ textual-inversion files


def test_token_files_of_the_wrong_size_or_with_a_token_in_the_vocabulary(tiny_sd, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from dbb_hf.textual_inversion import add_placeholder_tokens, load_tokens, save_embeds

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_sd["inpaint"])
    width = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    vocabulary = len(pipe.tokenizer)

    wrong = tmp_path / "sd1.safetensors"
    save_embeds(str(wrong), {"<dbb-bird>": torch.randn(1, width * 2)}, {})
    with pytest.raises(ValueError, match=rf"sd1.safetensors.*'<dbb-bird>'.*dimension {width * 2}.*expects {width}"):
        load_tokens(pipe, wrong)

    # A token the tokenizer already has: a vocabulary entry, or a token loaded before.
    word = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer.encode("bar", add_special_tokens=False))[0]
    taken = tmp_path / "taken.safetensors"
    save_embeds(str(taken), {word: torch.randn(1, width)}, {})
    with pytest.raises(ValueError, match=rf"could not load \['{word}'\] from .*taken.safetensors.*already in tokenizer"):
        load_tokens(pipe, taken)
    assert len(pipe.tokenizer) == vocabulary  # nothing half-loaded stays behind
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_embeds(str(first), {"<dbb-bird>": torch.randn(1, width)}, {})
    save_embeds(str(second), {"<dbb-bird>": torch.randn(1, width)}, {})
    assert load_tokens(pipe, first) == ["<dbb-bird>"]
    with pytest.raises(ValueError, match=r"could not load \['<dbb-bird>'\] from .*second.safetensors.*already in"):
        load_tokens(pipe, second)

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd["base"], subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd["base"], subfolder="text_encoder")
    add_placeholder_tokens(tokenizer, encoder, "<dbb-x>", 1, "bar")
    with pytest.raises(ValueError, match=r"already contains '<dbb-x>'"):
        add_placeholder_tokens(tokenizer, encoder, "<dbb-x>", 1, "bar")


# ------------------------------------------------------------------ Hub ids that cannot be reached


MISSING = "no-such-user/no-such-model"
UNREACHABLE = r"'no-such-user/no-such-\w+' \(revision {}\) could not be loaded: offline mode is on"


def test_unreachable_hub_ids_name_the_id_and_revision(tmp_path):
    from dbb_hf.augmented import load_augmented
    from dbb_hf.inpainting import InpaintingConfig, load_inpainting_pipeline
    from dbb_hf.masking import MaskingConfig, load_masking_models
    from dbb_hf.modeling import load_classifier
    from dbb_hf.textual_inversion import TextualInversionConfig, load_components

    cases = [
        (lambda: load_inpainting_pipeline(InpaintingConfig(model_id=MISSING, revision="v2"), "cpu"),
         "inpainting model " + UNREACHABLE.format("v2")),
        (lambda: load_components(TextualInversionConfig(model_id=MISSING)), "textual-inversion model "
         + UNREACHABLE.format("main")),
        (lambda: load_masking_models(MaskingConfig(detector_id=MISSING, detector_revision="abc"), "cpu"),
         "masking detector " + UNREACHABLE.format("abc")),
        (lambda: load_classifier(f"hf-hub:{MISSING}"), "classifier 'hf-hub:no-such-user/no-such-model'"),
        (lambda: load_benchmark("hub", "no-such-user/no-such-dataset", label_column="y", spurious_column="s",
                                revision="v1"), "dataset " + UNREACHABLE.format("v1")),
        (lambda: load_augmented("no-such-user/no-such-dataset"), "augmented dataset " + UNREACHABLE.format("main")),
    ]
    for call, message in cases:
        with pytest.raises(HubUnreachableError, match=message):
            call()


def test_an_unreachable_model_of_a_later_stage_fails_before_erm(tiny_sd, tmp_path):
    pipeline = make_pipeline(tmp_path, inpainting={"backend": "diffusers", "model_id": MISSING, "revision": "v3"},
                             textual_inversion={"model_id": tiny_sd["base"]})
    with pytest.raises(HubUnreachableError, match=r"inpainting model \(inpainting.model_id\) " + UNREACHABLE.format("v3")):
        pipeline()
    assert not (tmp_path / "run" / "erm").exists()


def test_a_classifier_for_other_classes_is_refused_by_every_stage_that_uses_it(toy):
    from dbb_hf.pruning import PruningConfig, score_edits
    from dbb_hf.training import evaluate_split

    other = create_classifier(CLASSIFIER, num_classes=2).eval()
    other.pretrained_cfg = dict(other.pretrained_cfg, label_names=["cat", "dog"])
    edits = toy["train"].select(range(2)).map(
        lambda b: {"generated": b["image"], "target_label": [1 - y for y in b["label"]]}, batched=True)
    for call in (lambda: score_dataset(toy["train"], other), lambda: evaluate_split(other, toy["test"]),
                 lambda: score_edits(edits, other, PruningConfig(), Psi=[0.9, 0.9])):
        with pytest.raises(DatasetFormatError, match=r"trained on classes \['cat', 'dog'\], the dataset has \['horiz"):
            call()


def test_stage_commands_check_their_input_first(toy, tmp_path):
    from dbb_hf.cli import main

    train = str(tmp_path / "train")
    toy["train"].save_to_disk(train)
    with pytest.raises(DatasetFormatError, match=r"select_lowest_loss needs column\(s\) \['erm_loss'\]"):
        main(["select", "--input", train, "--output", str(tmp_path / "selected")])
    with pytest.raises(ValueError, match=r"class_prompts has 3 entries \['a', 'b', 'c'\] but the dataset has 2"):
        main(["mask", "--input", train, "--output", str(tmp_path / "m"), "--class_prompts", "a", "b", "c"])
    with pytest.raises(HubUnreachableError, match="augmented dataset " + UNREACHABLE.format("main")):
        main(["retrain", "--augmented", "no-such-user/no-such-dataset"])
    assert not (tmp_path / "selected").exists() and not (tmp_path / "m").exists()


def test_an_unreachable_erm_model_fails_before_any_stage(tmp_path):
    pipeline = make_pipeline(tmp_path, run={"erm_model": f"hf-hub:{MISSING}"})
    with pytest.raises(HubUnreachableError, match="classifier " + UNREACHABLE.format("main")):
        pipeline()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["data"]
