"""Inpainting (stage 4): tiny SD2 inpainting pipeline saved and reloaded offline, and the
model-free compose backend on the toy benchmark."""

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from dbb_hf import inpainting
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.inpainting import (
    InpaintingConfig,
    binary_mask,
    example_seed,
    load_inpainting_pipeline,
    prepare_donors,
    run_inpainting,
)
from dbb_hf.stages import ShardPlan
from dbb_hf.tiny.diffusion import build_clip_tokenizer, save_tiny_inpaint_pipeline

torch.set_num_threads(2)

CLASS_NAMES = ["horizontal bar", "vertical bar"]
TOKENS = ["<dbb-horizontal_bar>", "<dbb-vertical_bar>"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny-sd2-inpainting"))


def config_for(model_dir, **overrides):
    values = dict(model_id=model_dir, num_inference_steps=2, resolution=32, batch_size=2, mask_dilation=1)
    values.update(overrides)
    return InpaintingConfig(**values)


@pytest.fixture(scope="module")
def pipe(model_dir):
    pipe = load_inpainting_pipeline(config_for(model_dir), device="cpu")
    generator = torch.Generator().manual_seed(0)
    embeddings = [torch.randn(32, generator=generator) for _ in TOKENS]
    pipe.load_textual_inversion(embeddings, token=TOKENS, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    return pipe


def rectangle_mask(width, height, box):
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def source_dataset():
    """Rows of two sizes (one non-square), plus rows that must be skipped, not dropped."""
    rng = np.random.default_rng(0)
    rows = {"image": [], "mask": [], "target_label": [], "example_id": [], "mask_status": []}
    specs = [
        ((32, 32), (8, 8, 20, 16), 0, "ok"),
        ((40, 56), (5, 30, 25, 50), 1, "ok"),
        ((32, 32), (10, 2, 14, 30), 1, "ok"),
        ((40, 56), (0, 0, 0, 0), 0, "ok"),  # empty mask
        ((32, 32), (8, 8, 20, 16), 0, "no_detection"),
        ((40, 56), None, 1, "no_detection"),  # no mask at all
    ]
    for k, ((width, height), box, target, status) in enumerate(specs):
        rows["image"].append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        rows["mask"].append(None if box is None else rectangle_mask(width, height, box))
        rows["target_label"].append(target)
        rows["example_id"].append(f"ex-{k}")
        rows["mask_status"].append(status)
    features = Features(
        {
            "image": ImageFeature(),
            "mask": ImageFeature(),
            "target_label": Value("int64"),
            "example_id": Value("string"),
            "mask_status": Value("string"),
        }
    )
    return Dataset.from_dict(rows, features=features)


def by_id(dataset):
    return {row["example_id"]: row for row in dataset}


def test_tiny_tokenizer_tokenizes_arbitrary_prompts(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path)
    ids = tokenizer("A photo of a <dbb-vertical_bar> vertical bar! 42").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "photo</w>", "of</w>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a < dbb - vertical _ bar > vertical bar ! 4 2"


def test_outside_mask_unchanged_sizes_and_columns(pipe, model_dir):
    config = config_for(model_dir)
    data = source_dataset()
    result = run_inpainting(data, config, pipe=pipe, class_names=CLASS_NAMES, tokens=TOKENS)

    assert len(result) == len(data)
    assert result["example_id"] == data["example_id"]
    assert result.features["generated"] == ImageFeature()
    assert result.features["generated_mask"] == ImageFeature()
    assert result.features["seed"] == Value("int64")
    for name in ("prompt", "generator", "generation_status"):
        assert result.features[name] == Value("string")
    assert result["generation_status"] == ["ok"] * 3 + ["skipped_empty_mask", "skipped_no_mask", "skipped_no_mask"]
    assert set(result["generator"]) == {f"diffusers:{model_dir}@main"}

    for source, row in zip(data, result):
        assert row["prompt"] == f"A photo of a {TOKENS[row['target_label']]} {CLASS_NAMES[row['target_label']]}"
        assert row["seed"] == example_seed(config.seed, row["example_id"], row["target_label"])
        if row["generation_status"] != "ok":
            assert row["generated"] is None and row["generated_mask"] is None
            continue
        original = np.asarray(source["image"].convert("RGB"))
        generated = np.asarray(row["generated"])
        allowed = binary_mask(source["mask"], dilation=config.mask_dilation)
        assert row["generated"].size == source["image"].size
        assert row["generated"].mode == "RGB" and row["generated_mask"].mode == "L"
        assert np.array_equal(np.asarray(row["generated_mask"]) > 127, allowed)
        assert set(np.unique(np.asarray(row["generated_mask"]))) <= {0, 255}
        assert np.array_equal(generated[~allowed], original[~allowed])
        assert not np.array_equal(generated[allowed], original[allowed])


def test_result_independent_of_batch_size_and_order(pipe, model_dir):
    data = source_dataset().select(range(3))
    one = by_id(run_inpainting(data, config_for(model_dir, batch_size=1), pipe=pipe, class_names=CLASS_NAMES, tokens=TOKENS))
    reversed_three = by_id(
        run_inpainting(
            data.select([2, 1, 0]), config_for(model_dir, batch_size=3), pipe=pipe, class_names=CLASS_NAMES, tokens=TOKENS
        )
    )
    for example_id, row in one.items():
        a = np.asarray(row["generated"]).astype(int)
        b = np.asarray(reversed_three[example_id]["generated"]).astype(int)
        # Same seeds and noise; batched float kernels may round the last bit differently.
        assert np.abs(a - b).max() <= 1
    # ...while another base seed gives another image, so the comparison above has teeth.
    other = by_id(run_inpainting(data, config_for(model_dir, seed=1), pipe=pipe, class_names=CLASS_NAMES, tokens=TOKENS))
    diff = np.abs(np.asarray(other["ex-0"]["generated"]).astype(int) - np.asarray(one["ex-0"]["generated"]).astype(int))
    assert diff.max() > 10


def test_example_seed_is_stable_and_distinct():
    seeds = {example_seed(0, f"id-{k}", t) for k in range(50) for t in (0, 1)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert example_seed(3, "x", 1) == example_seed(3, "x", 1) != example_seed(4, "x", 1)
    # sha256 based, so the value is the same in every process and Python run.
    assert example_seed(0, "toy-train-000000", 1) == 3965941547543243454


def test_cache_is_stale_when_token_embeddings_change(pipe, model_dir):
    prompts = [f"A photo of a {t} {c}" for t, c in zip(TOKENS, CLASS_NAMES)]
    before = inpainting.prompt_embedding_fingerprint(pipe, prompts)
    assert before == inpainting.prompt_embedding_fingerprint(pipe, prompts)
    weight = pipe.text_encoder.get_input_embeddings().weight
    token_id = pipe.tokenizer.convert_tokens_to_ids(TOKENS[0])
    saved = weight[token_id].detach().clone()
    try:
        with torch.no_grad():
            weight[token_id] += 1.0
        assert inpainting.prompt_embedding_fingerprint(pipe, prompts) != before
    finally:
        with torch.no_grad():
            weight[token_id] = saved


def test_config_validation():
    with pytest.raises(ValueError, match="backend"):
        InpaintingConfig(backend="stable")
    with pytest.raises(ValueError, match="multiple of 8"):
        InpaintingConfig(resolution=500)
    with pytest.raises(ValueError, match="token"):
        InpaintingConfig(prompt_template="A photo of a {class_name}")
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        InpaintingConfig(scheduler="AutoencoderKL")


def test_missing_inputs_are_named(pipe, model_dir):
    data = source_dataset().remove_columns("target_label")
    with pytest.raises(ValueError, match="target_label"):
        run_inpainting(data, config_for(model_dir), pipe=pipe, class_names=CLASS_NAMES, tokens=TOKENS)
    with pytest.raises(ValueError, match="donors"):
        run_inpainting(source_dataset(), InpaintingConfig(backend="compose"))


# --- compose backend on the toy benchmark -------------------------------------------


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=40, num_validation=8, num_test=8))


def toy_sources(toy):
    train = toy["train"]
    return train.add_column("target_label", [1 - y for y in train["label"]]).select(range(12))


def test_compose_pastes_donor_object_and_keeps_background(toy):
    donors = prepare_donors(toy["validation"])
    sources = toy_sources(toy)
    config = InpaintingConfig(backend="compose", batch_size=5)
    result = run_inpainting(sources, config, donors=donors)
    donor_rows = by_id(donors)

    assert len(result) == len(sources)
    assert result["generation_status"] == ["ok"] * len(sources)
    assert set(result["generator"]) == {"compose"}
    for source, row in zip(sources, result):
        donor = donor_rows[row["donor_example_id"]]
        assert donor["label"] == source["target_label"]
        original = np.asarray(source["image"])
        generated = np.asarray(row["generated"])
        source_mask = binary_mask(source["mask"])
        donor_mask = binary_mask(donor["mask"])
        changed = np.asarray(row["generated_mask"]) > 127
        assert np.array_equal(changed, source_mask | donor_mask)
        assert np.array_equal(generated[~changed], original[~changed])
        assert np.array_equal(generated[donor_mask], np.asarray(donor["image"])[donor_mask])
        # The source's bar (one flat colour in the toy world) is gone where the donor's is not.
        erased = source_mask & ~donor_mask
        if erased.sum() > 4:
            bar_colour = original[source_mask][0]
            assert not np.all(generated[erased] == bar_colour)


def test_compose_is_deterministic_whatever_the_batching(toy):
    donors = prepare_donors(toy["validation"])
    sources = toy_sources(toy)
    first = run_inpainting(sources, InpaintingConfig(backend="compose", batch_size=1), donors=donors)
    second = by_id(
        run_inpainting(sources.select(range(11, -1, -1)), InpaintingConfig(backend="compose", batch_size=7), donors=donors)
    )
    for row in first:
        other = second[row["example_id"]]
        assert row["donor_example_id"] == other["donor_example_id"]
        assert np.array_equal(np.asarray(row["generated"]), np.asarray(other["generated"]))


def test_compose_skips_rows_it_cannot_edit(toy):
    sources = toy_sources(toy).select(range(3))
    sources = sources.add_column("mask_status", ["ok", "no_detection", "ok"])
    horizontal_only = prepare_donors(toy["validation"]).filter(lambda row: row["label"] == 0)
    result = run_inpainting(sources, InpaintingConfig(backend="compose"), donors=horizontal_only)
    expected = [
        "ok" if target == 0 else "skipped_no_donor" for target in sources["target_label"]
    ]
    expected[1] = "skipped_no_mask"
    assert result["generation_status"] == expected
    for row, status in zip(result, expected):
        assert (row["generated"] is None) == (status != "ok")


def test_rerun_with_same_config_reuses_cache(toy, tmp_path, monkeypatch):
    donors = prepare_donors(toy["validation"])
    sources = toy_sources(toy)
    config = InpaintingConfig(backend="compose", batch_size=4)
    first = run_inpainting(sources, config, donors=donors, cache_dir=tmp_path / "cache")
    resumable = run_inpainting(sources, config, donors=donors, output_dir=tmp_path / "run",
                               shards=ShardPlan(shard_size=5))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the stage ran again instead of using its cache")

    monkeypatch.setattr(inpainting, "compose_batch", must_not_run)
    again = run_inpainting(sources, config, donors=donors, cache_dir=tmp_path / "cache")
    resumed = run_inpainting(sources, config, donors=donors, output_dir=tmp_path / "run",
                             shards=ShardPlan(shard_size=5))
    assert again._fingerprint == first._fingerprint
    for a, b in ((first, again), (resumable, resumed), (first, resumed)):
        assert a["example_id"] == b["example_id"]
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["generated"], b["generated"]))
    with pytest.raises(AssertionError, match="ran again"):
        run_inpainting(sources, InpaintingConfig(backend="compose", seed=1), donors=donors, cache_dir=tmp_path / "cache")
