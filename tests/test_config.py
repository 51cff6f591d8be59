"""The one config path: YAML layers (a recipe's YAML, presets, --config FILE) plus the
flags, into section configs (dbb_hf.config.resolve_configs), and the presets' builders."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import load_from_disk

from dbb_hf import presets
from dbb_hf.cli import main
from dbb_hf.config import DataConfig, environment_layer, resolve_configs, subset, to_yaml
from dbb_hf.inpainting import InpaintingConfig
from dbb_hf.masking import MaskingConfig
from dbb_hf.pipeline import SECTIONS, RunConfig


def write(path, sections):
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def masking_and_run(args, **kwargs):
    run, configs = resolve_configs({"masking": MaskingConfig}, [("run", RunConfig)], args, **kwargs)
    return configs["masking"], run


def test_layers_apply_in_order_recipe_preset_config_flags(tmp_path):
    recipe = write(tmp_path / "recipe.yaml", {"masking": {"dilation": 1, "box_threshold": 0.1, "text_threshold": 0.1}})
    preset = write(tmp_path / "preset.yaml", {"masking": {"dilation": 2, "box_threshold": 0.2}})
    config = write(tmp_path / "config.yaml", {"masking": {"dilation": 3}, "run": {"output_dir": "from-config"}})
    layers = dict(layers=[recipe], presets=[preset])
    masking, run = masking_and_run([], **layers)
    assert (masking.dilation, masking.box_threshold, masking.text_threshold) == (2, 0.2, 0.1)
    assert run.output_dir == RunConfig.output_dir
    masking, run = masking_and_run(["--config", config], **layers)
    assert (masking.dilation, masking.box_threshold, run.output_dir) == (3, 0.2, "from-config")
    masking, run = masking_and_run(["--config", config, "--masking_dilation", "4", "--output_dir", "flag"], **layers)
    assert (masking.dilation, masking.box_threshold, run.output_dir) == (4, 0.2, "flag")
    # --preset goes over the presets the caller names, in the order given.
    masking, _ = masking_and_run(["--preset", config, preset], **layers)
    assert masking.dilation == 2
    with pytest.raises(ValueError, match=r"unknown preset 'tinny': presets are \[.*'tiny'.*\]"):
        masking_and_run(["--preset", "tinny"])


def test_negative_numbers_in_scientific_notation_are_values_not_flags():
    from dbb_hf.pruning import PruningConfig

    _, configs = resolve_configs({"pruning": PruningConfig}, [("run", RunConfig)], ["--pruning_P", "-1e9", "-2.5E-3"])
    assert configs["pruning"].P == [-1e9, -2.5e-3]
    with pytest.raises(ValueError, match="--pruning_PP"):
        resolve_configs({"pruning": PruningConfig}, [("run", RunConfig)], ["--pruning_PP", "-1e9"])


def test_a_runs_config_yaml_is_a_valid_config_file(tmp_path):
    configs = {name: cls() for name, cls in SECTIONS.items()}
    saved = to_yaml({"data": DataConfig(dataset="toy"), "run": RunConfig(output_dir="old", shard_size=7), **configs,
                     "dbb_hf_version": "0.0"})
    (tmp_path / "config.yaml").write_text(saved)
    data, run, resolved = resolve_configs(SECTIONS, [("data", DataConfig), ("run", RunConfig)],
                                          ["--config", str(tmp_path / "config.yaml")])
    assert run.shard_size == 7 and run.output_dir == "old" and resolved == configs


def test_a_section_a_command_does_not_read_is_still_checked(tmp_path):
    typo = write(tmp_path / "typo.yaml", {"masking": {"backend": "column"}, "pruning": {"PP": [1.0]}})
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown field\(s\) \['PP'\] in section 'pruning'"):
        masking_and_run(["--config", typo])


@pytest.fixture
def fake_builder(monkeypatch):
    calls = []

    def build(folder):
        calls.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return {"detector": str(folder / "detector"), "segmenter": str(folder / "segmenter")}

    monkeypatch.setitem(presets.BUILDERS, "fake", (build, True))
    return calls


def test_a_preset_builder_runs_once_in_the_run_folder(tmp_path, fake_builder):
    preset = write(tmp_path / "fake.yaml", {"masking": {"detector_id": "<fake:detector>",
                                                        "segmenter_id": "<fake:segmenter>"}})
    run_dir = tmp_path / "run"
    masking, _ = masking_and_run(["--preset", preset, "--output_dir", str(run_dir)])
    assert fake_builder == [run_dir / "fake_models"]
    assert (masking.detector_id, masking.segmenter_id) == (str(run_dir / "fake_models" / "detector"),
                                                          str(run_dir / "fake_models" / "segmenter"))
    # A flag replacing both values leaves nothing to build.
    fake_builder.clear()
    masking, _ = masking_and_run(["--preset", preset, "--masking_detector_id", "mine", "--masking_segmenter_id", "theirs"])
    assert fake_builder == [] and (masking.detector_id, masking.segmenter_id) == ("mine", "theirs")
    # Resolved later, into a folder of the caller's choice.
    masking, _ = masking_and_run(["--preset", preset], build=False)
    assert isinstance(masking.detector_id, presets.Placeholder) and fake_builder == []
    built = presets.materialize(masking, tmp_path / "elsewhere")
    assert built.detector_id == str(tmp_path / "elsewhere" / "fake_models" / "detector")
    wrong = write(tmp_path / "wrong.yaml", {"masking": {"detector_id": "<fake:nothing>"}})
    with pytest.raises(ValueError, match=r"<fake:nothing>: builder 'fake' makes \['detector', 'segmenter'\], not 'nothing'"):
        masking_and_run(["--preset", wrong])


def test_the_stage_commands_chain_offline_with_the_tiny_preset(tmp_path, monkeypatch):
    # Without --output_dir (a stage command has none) the run folder is run.output_dir's default.
    monkeypatch.chdir(tmp_path)
    toy = DataConfig(options=["num_train=4", "num_validation=4", "num_test=4"]).load()["train"]
    toy.remove_columns("mask").save_to_disk("toy")
    shared = ["--preset", "tiny", "--class_prompts", "bar", "bar"]
    assert main(["mask", *shared, "--input", "toy", "--output", "masked"]) == 0
    assert (tmp_path / RunConfig.output_dir / "tiny_models" / "detector" / "config.json").is_file()
    masked = load_from_disk("masked")
    assert len(masked) == 4 and set(masked["mask_status"]) <= {"ok", "no_detection", "empty_mask"}
    assert all(np.asarray(m).shape == np.asarray(i).shape[:2] for m, i in zip(masked["mask"], masked["image"]))
    # One token per class although both classes' object is a "bar", as the pipeline learns them.
    assert main(["learn-tokens", *shared, "--input", "toy", "--output_dir", "tokens"]) == 0
    assert {p.name for p in (tmp_path / "tokens").iterdir() if p.is_dir()} == {"horizontal_bar", "vertical_bar"}
    selected = masked.add_column("target_label", [1 - y for y in masked["label"]])
    selected.cast_column("target_label", masked.features["label"]).save_to_disk("selected")
    assert main(["inpaint", *shared, "--input", "selected", "--tokens_dir", "tokens", "--output", "edits"]) == 0
    edits = load_from_disk("edits")
    assert "ok" in edits["generation_status"]  # threshold 0: the tiny detector's best box is kept
    for prompt, target, status in zip(edits["prompt"], edits["target_label"], edits["generation_status"]):
        if status == "ok":
            assert prompt == f"A photo of a <dbb-{['horizontal_bar', 'vertical_bar'][target]}> bar"


def test_environment_variables_are_a_typed_layer():
    environ = {"APP_INPAINTING_SCHEDULER": "", "APP_INPAINTING_NUM_INFERENCE_STEPS": "3",
               "APP_INPAINTING_COMPILE_UNET": "yes", "APP_CLASS_PROMPTS": "bar, bar", "OTHER_APP_X": "x"}
    layer = environment_layer("APP_", {"inpainting": InpaintingConfig}, {"run": RunConfig}, environ)
    assert layer == {"inpainting": {"scheduler": None, "num_inference_steps": 3, "compile_unet": True},
                     "run": {"class_prompts": ["bar", "bar"]}}
    with pytest.raises(ValueError, match=r"unknown setting\(s\) APP_SEED \(did you mean APP_INPAINTING_SEED\?\)"):
        environment_layer("APP_", {"inpainting": InpaintingConfig}, {"run": RunConfig}, {"APP_SEED": "1"})
    with pytest.raises(ValueError, match="APP_INPAINTING_NUM_INFERENCE_STEPS='many' is not a valid int"):
        environment_layer("APP_", {"inpainting": InpaintingConfig}, {}, {"APP_INPAINTING_NUM_INFERENCE_STEPS": "many"})


CELEBA_YAML = str(Path(__file__).resolve().parents[1] / "recipes" / "celeba.yaml")


def celeba_options(args, **kwargs):
    data, _ = resolve_configs({}, [("data", DataConfig)], args, layers=[CELEBA_YAML], **kwargs)
    return data.option_dict()


def test_options_merge_by_key_over_the_recipe_and_every_layer(tmp_path):
    recipe = {"target_attribute": "Blond_Hair", "spurious_attribute": "Male", "class_balance": True}
    assert celeba_options([]) == recipe
    # A flag that sets one option keeps the recipe's others (class balancing, the label).
    assert celeba_options(["--options", "spurious_attribute=Eyeglasses", "seed=3"]) == {
        **recipe, "spurious_attribute": "Eyeglasses", "seed": 3}
    # --config, a preset and the environment merge the same way, each over the layers below it.
    config = write(tmp_path / "config.yaml", {"data": {"options": ["class_balance=false", "split_by_identity=true"]}})
    preset = write(tmp_path / "preset.yaml", {"data": {"options": ["target_attribute=Smiling"]}})
    environment = environment_layer("APP_", {}, {"data": DataConfig}, {"APP_OPTIONS": "seed=5,~spurious_attribute"})
    merged = celeba_options(["--config", config, "--options", "seed=7"], presets=[preset],
                            overrides=[("the environment", environment)])
    assert merged == {"target_attribute": "Smiling", "class_balance": False, "seed": 7, "split_by_identity": True}
    # ~key removes a key a lower layer set; the recipe's order is kept, new keys come last.
    data, _ = resolve_configs({}, [("data", DataConfig)], ["--options", "~class_balance", "seed=1", "spurious_attribute=Young"],
                              layers=[CELEBA_YAML])
    assert data.options == ["target_attribute=Blond_Hair", "spurious_attribute=Young", "seed=1"]
    # A run's config.yaml records the whole merged list: given back over the recipe, it is
    # what the run used (the removed key stays removed), where another --config file merges.
    saved = write(tmp_path / "saved.yaml", {"data": dataclasses.asdict(data), "dbb_hf_version": "0.0"})
    assert celeba_options(["--config", saved]) == data.option_dict()
    assert "class_balance" in celeba_options(["--config", write(tmp_path / "other.yaml", {"data": dataclasses.asdict(data)})])
    with pytest.raises(ValueError, match=r"the command line: data options: '~class_balanse' removes option 'class_balanse', which no "
                                         r"earlier layer sets \(set: \['class_balance', 'spurious_attribute', "):
        celeba_options(["--options", "~class_balanse"])
    with pytest.raises(ValueError, match=r"config\.yaml: data options: option 'Male' is not of the form key=value"):
        celeba_options(["--config", write(tmp_path / "config.yaml", {"data": {"options": ["Male"]}})])


def test_options_start_afresh_for_another_dataset(tmp_path):
    # The recipe's CelebA options are no options of the hub loader: --dataset hub drops them.
    data, _ = resolve_configs({}, [("data", DataConfig)], ["--dataset", "hub", "--options", "label_column=y"],
                              layers=[CELEBA_YAML])
    assert (data.dataset, data.options) == ("hub", ["label_column=y"])
    other = write(tmp_path / "other.yaml", {"data": {"dataset": "waterbirds"}})
    assert celeba_options(["--config", other]) == {}
    same = write(tmp_path / "same.yaml", {"data": {"dataset": "celeba", "options": ["seed=2"]}})
    assert celeba_options(["--config", same])["class_balance"] is True


def test_a_command_without_the_options_field_still_refuses_the_flag():
    with pytest.raises(ValueError, match=r"unknown arguments \['--options', 'seed=1'\]"):
        resolve_configs({}, [("data", subset(DataConfig, ["dataset"]))], ["--options", "seed=1"], layers=[CELEBA_YAML])
