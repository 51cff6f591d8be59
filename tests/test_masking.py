"""Stage 3 (masking) with tiny random GroundingDINO / SAM / SAM 2 checkpoints built offline.

Random detectors give random boxes, so thresholds are set to 0 where detections are
wanted and to 1 where none are; the assertions are about the data flow and the mask
arithmetic, which do not depend on the weights.
"""

import dataclasses
import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.masking import (
    EMPTY_MASK,
    MASK_FEATURES,
    NO_DETECTION,
    OK,
    MaskingConfig,
    detect,
    dilate,
    load_masking_models,
    mask_bbox,
    mask_batch,
    post_process_grounded_detection,
    prompt_for,
    region_mask,
    run_masking,
)
from dbb_hf.stages import ShardPlan
from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam, save_tiny_sam2

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=8, num_validation=4, num_test=4))["train"]


@pytest.fixture(scope="module")
def unmasked(toy):
    """The toy split with its ground-truth mask kept aside, so a detector's mask is new."""
    return toy.rename_column("mask", "gt_mask")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    return {
        "detector": save_tiny_grounding_dino(root / "grounding-dino"),
        "sam": save_tiny_sam(root / "sam"),
        "sam2": save_tiny_sam2(root / "sam2"),
    }


def tiny_config(checkpoints, segmenter="sam", **overrides):
    values = dict(
        detector_id=checkpoints["detector"],
        segmenter_id=checkpoints[segmenter],
        box_threshold=0.0,
        text_threshold=0.0,
    )
    values.update(overrides)
    return MaskingConfig(**values)


@pytest.fixture(scope="module")
def sam_models(checkpoints):
    return load_masking_models(tiny_config(checkpoints), "cpu")


def binary(image):
    return np.asarray(image) > 127


def test_grounded_sam_columns_features_and_first_box(unmasked, checkpoints, sam_models):
    config = tiny_config(checkpoints)
    out = run_masking(unmasked, config, models=sam_models)

    assert len(out) == len(unmasked)
    assert out["example_id"] == unmasked["example_id"]
    for name, feature in MASK_FEATURES.items():
        assert out.features[name] == feature
    images = [image.convert("RGB") for image in unmasked["image"]]
    prompts = [prompt_for(unmasked.features["label"].int2str(y), config.prompt_template) for y in unmasked["label"]]
    detections = detect(images, prompts, models=sam_models, config=config)
    for row, image, (boxes, scores) in zip(out, images, detections):
        mask = np.asarray(row["mask"])
        assert row["mask"].mode == "L" and row["mask"].size == image.size
        assert set(np.unique(mask)) <= {0, 255}
        assert row["mask_status"] == (OK if mask.any() else EMPTY_MASK)
        # "first" is the highest-scoring box, reported clipped to the image.
        best = int(np.argmax(scores))
        w, h = image.size
        expected = np.clip(boxes[best], 0, [w, h, w, h])
        np.testing.assert_allclose(row["mask_box"], expected, rtol=1e-5)
        assert row["mask_score"] == pytest.approx(float(scores.max()))
    assert any(status == OK for status in out["mask_status"])


def test_mask_batch_is_deterministic_across_image_sizes_and_prompt_lengths(unmasked, checkpoints, sam_models):
    config = tiny_config(checkpoints, mask_policy="union")
    batch = unmasked[:4]
    # Waterbirds-like input: every image its own size, prompts of different token lengths.
    sizes = [(32, 32), (48, 40), (24, 36), (40, 24)]
    batch["image"] = [image.resize(size) for image, size in zip(batch["image"], sizes)]
    class_names = ["bird", "a long horizontal bar"]
    first = mask_batch(batch, models=sam_models, config=config, class_names=class_names)
    again = mask_batch(batch, models=sam_models, config=config, class_names=class_names)
    assert [m.size for m in first["mask"]] == sizes
    assert first["mask_box"] == again["mask_box"]
    for a, b in zip(first["mask"], again["mask"]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for (w, h), box in zip(sizes, first["mask_box"]):
        assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h


def test_union_contains_first(unmasked, checkpoints, sam_models):
    first = run_masking(unmasked, tiny_config(checkpoints, mask_policy="first"), models=sam_models)
    union = run_masking(unmasked, tiny_config(checkpoints, mask_policy="union"), models=sam_models)
    for a, b in zip(first, union):
        mask_a, mask_b = binary(a["mask"]), binary(b["mask"])
        assert not (mask_a & ~mask_b).any()
        x1, y1, x2, y2 = a["mask_box"]
        u1, v1, u2, v2 = b["mask_box"]
        assert u1 <= x1 and v1 <= y1 and u2 >= x2 and v2 >= y2
        assert b["mask_score"] == pytest.approx(a["mask_score"])
    assert sum(binary(m).sum() for m in union["mask"]) > sum(binary(m).sum() for m in first["mask"])


def test_sam2_segmenter(unmasked, checkpoints):
    config = tiny_config(checkpoints, segmenter="sam2", mask_policy="union")
    models = load_masking_models(config, "cpu")
    assert type(models.segmenter).__name__ == "Sam2Model"
    out = run_masking(unmasked, config, models=models)
    assert len(out) == len(unmasked)
    for row, image in zip(out, unmasked["image"]):
        assert row["mask"].size == image.size
        assert set(np.unique(np.asarray(row["mask"]))) <= {0, 255}
        assert row["mask_status"] in (OK, EMPTY_MASK) and len(row["mask_box"]) == 4


def test_rows_without_detection_are_kept_and_marked(unmasked, checkpoints, sam_models):
    none = run_masking(unmasked, tiny_config(checkpoints, box_threshold=1.0), models=sam_models)
    assert none["example_id"] == unmasked["example_id"]
    assert set(none["mask_status"]) == {NO_DETECTION}
    assert all(box == [] for box in none["mask_box"]) and set(none["mask_score"]) == {0.0}
    for mask, image in zip(none["mask"], unmasked["image"]):
        assert mask.size == image.size and not np.asarray(mask).any()

    # A threshold between the images' best scores: some rows detected, some not, all kept.
    config = tiny_config(checkpoints)
    images = [image.convert("RGB") for image in unmasked["image"]]
    prompts = [prompt_for(unmasked.features["label"].int2str(y), config.prompt_template) for y in unmasked["label"]]
    best = np.array([scores.max() for _, scores in detect(images, prompts, models=sam_models, config=config)])
    threshold = float(np.sort(best)[len(best) // 2 - 1])
    mixed = run_masking(unmasked, tiny_config(checkpoints, box_threshold=threshold), models=sam_models)
    detected = best > threshold
    assert 0 < detected.sum() < len(best)
    for row, found in zip(mixed, detected):
        assert (row["mask_status"] != NO_DETECTION) == found
        assert (len(row["mask_box"]) == 4) == found


def test_dilation_grows_a_known_mask_by_the_right_amount():
    mask = np.zeros((16, 16), bool)
    mask[5, 5] = True
    mask[0, 15] = True
    grown = dilate(mask, 2)
    expected = np.zeros((16, 16), bool)
    expected[3:8, 3:8] = True
    expected[0:3, 13:16] = True  # clipped at the border
    assert np.array_equal(grown, expected)
    assert np.array_equal(dilate(mask, 0), mask)


def test_column_backend_copies_ground_truth_exactly(toy, unmasked):
    out = run_masking(toy, MaskingConfig(backend="column"))
    assert out.features["mask"] == MASK_FEATURES["mask"]
    for row, truth in zip(out, toy["mask"]):
        assert np.array_equal(np.asarray(row["mask"]), np.asarray(truth))
        assert row["mask_box"] == mask_bbox(binary(truth)) and row["mask_status"] == OK
        assert row["mask_score"] == 1.0

    # Dilated copy of a renamed ground truth: each bar grows by one pixel per side.
    grown = run_masking(unmasked, MaskingConfig(backend="column", mask_column="gt_mask", dilation=1))
    for row, truth in zip(grown, unmasked["gt_mask"]):
        x1, y1, x2, y2 = mask_bbox(binary(truth))
        w, h = truth.size
        box = [max(x1 - 1, 0), max(y1 - 1, 0), min(x2 + 1, w), min(y2 + 1, h)]
        assert row["mask_box"] == box
        assert binary(row["mask"]).sum() == (box[2] - box[0]) * (box[3] - box[1])


def test_existing_mask_column_is_never_overwritten(toy):
    with pytest.raises(ValueError, match="mask"):
        run_masking(toy, MaskingConfig())
    with pytest.raises(ValueError, match="mask"):
        run_masking(toy, MaskingConfig(backend="column", dilation=2))
    with pytest.raises(ValueError, match="no_such_column"):
        run_masking(toy, MaskingConfig(backend="column", mask_column="no_such_column"))


class _Recorder:
    def __init__(self, result):
        self.result, self.calls = result, []


class _NewSpelling(_Recorder):
    def post_process_grounded_object_detection(
        self, outputs, input_ids=None, threshold=0.25, text_threshold=0.25, target_sizes=None, text_labels=None
    ):
        self.calls.append({"threshold": threshold, "text_threshold": text_threshold, "target_sizes": target_sizes})
        return [self.result]


class _OldSpelling(_Recorder):
    def post_process_grounded_object_detection(
        self, outputs, input_ids, box_threshold=0.25, text_threshold=0.25, target_sizes=None
    ):
        self.calls.append(
            {"threshold": box_threshold, "text_threshold": text_threshold, "target_sizes": target_sizes}
        )
        return [self.result]


@pytest.mark.parametrize(
    "processor_class, result",
    [
        (_NewSpelling, {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": [3], "text_labels": ["bird"]}),
        (_OldSpelling, {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": ["bird"]}),
    ],
)
def test_detection_adapter_handles_both_keyword_spellings(processor_class, result):
    processor = processor_class(result)
    out = post_process_grounded_detection(
        processor, object(), torch.zeros(1, 3), box_threshold=0.3, text_threshold=0.25, target_sizes=[(32, 32)]
    )
    assert processor.calls == [{"threshold": 0.3, "text_threshold": 0.25, "target_sizes": [(32, 32)]}]
    assert out[0]["text_labels"] == ["bird"]
    assert torch.equal(out[0]["boxes"], result["boxes"])


class _Exploding:
    def __call__(self, *args, **kwargs):
        raise AssertionError("the cached result should have been reused")


def test_cache_reuses_results(unmasked, checkpoints, sam_models, tmp_path):
    config = tiny_config(checkpoints)
    first = run_masking(unmasked, config, models=sam_models, cache_dir=tmp_path)
    broken = dataclasses.replace(sam_models, detector=_Exploding())
    again = run_masking(unmasked, config, models=broken, cache_dir=tmp_path)
    assert again["mask_box"] == first["mask_box"] and again["mask_status"] == first["mask_status"]
    # Another config is another fingerprint: it runs the models.
    with pytest.raises(AssertionError, match="cached"):
        run_masking(unmasked, tiny_config(checkpoints, box_threshold=0.5), models=broken, cache_dir=tmp_path)


def test_resumable_run_keeps_every_row_in_order(unmasked, checkpoints, sam_models, tmp_path):
    config = tiny_config(checkpoints)
    plain = run_masking(unmasked, config, models=sam_models)
    sharded = run_masking(unmasked, config, models=sam_models, output_dir=tmp_path, shards=ShardPlan(shard_size=3))
    assert sharded["example_id"] == unmasked["example_id"]
    assert sharded["mask_box"] == plain["mask_box"]


def test_prompt_is_lower_case_class_name_with_a_period():
    assert prompt_for("horizontal_bar", "{class_name}.") == "horizontal bar."
    assert prompt_for("Bird", "{class_name}.") == "bird."
    assert prompt_for("bird", "a photo of a {class_name}") == "a photo of a bird."


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "sam3"},
        {"mask_policy": "largest"},
        {"box_threshold": 1.5},
        {"text_threshold": -0.1},
        {"dilation": -1},
        {"prompt_template": "a photo."},
        {"torch_dtype": "int8"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MaskingConfig(**bad)


@pytest.mark.skipif(importlib.util.find_spec("lang_sam") is not None, reason="lang_sam is installed")
def test_lang_sam_backend_says_it_is_not_installed():
    with pytest.raises(ImportError, match="grounded_sam"):
        load_masking_models(MaskingConfig(backend="lang_sam"), "cpu")


class _FakeLangSAM:
    """LangSAM's predict() output format: the first image finds nothing, the others two boxes."""

    def __init__(self, sam_type):
        self.sam_type, self.prompts = sam_type, []

    def predict(self, images, prompts, box_threshold=0.3, text_threshold=0.25):
        self.prompts += prompts
        results = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "masks": [], "mask_scores": []}]
        for image in images[1:]:
            w, h = image.size
            masks = np.zeros((2, h, w), np.float32)
            masks[0, :4, :4] = 1
            masks[1, -4:, -4:] = 1
            boxes = np.array([[0, 0, 4, 4], [w - 4, h - 4, w, h]], np.float32)
            results.append({"boxes": boxes, "scores": np.array([0.4, 0.9]), "masks": masks, "mask_scores": [1, 1]})
        return results


def test_lang_sam_backend_applies_the_mask_policy(unmasked, monkeypatch):
    module = types.ModuleType("lang_sam")
    module.__spec__ = importlib.machinery.ModuleSpec("lang_sam", None)
    module.LangSAM = _FakeLangSAM
    monkeypatch.setitem(sys.modules, "lang_sam", module)
    data = unmasked.select(range(3))
    w, h = data[0]["image"].size

    config = MaskingConfig(backend="lang_sam", lang_sam_type="sam2.1_hiera_tiny")
    models = load_masking_models(config, "cpu")
    assert models.lang_sam.sam_type == "sam2.1_hiera_tiny"
    first = run_masking(data, config, models=models)
    names = data.features["label"].names
    assert models.lang_sam.prompts == [prompt_for(names[y], config.prompt_template) for y in data["label"]]
    assert first[0]["mask_status"] == NO_DETECTION and not binary(first[0]["mask"]).any()
    for row in first.select(range(1, 3)):
        assert row["mask_box"] == [w - 4, h - 4, w, h] and row["mask_score"] == pytest.approx(0.9)
        assert binary(row["mask"])[-4:, -4:].all() and binary(row["mask"]).sum() == 16

    union = run_masking(data, dataclasses.replace(config, mask_policy="union"), models=models)
    for row in union.select(range(1, 3)):
        assert row["mask_box"] == [0, 0, w, h] and row["mask_score"] == pytest.approx(0.9)
        assert binary(row["mask"]).sum() == 32


def _box(shape, y1, y2, x1, x2):
    out = np.zeros(shape, bool)
    out[y1:y2, x1:x2] = True
    return out


def test_region_mask_known_answers():
    bar = np.zeros((16, 16), bool)
    bar[6:8, 3:11] = True  # a horizontal bar 8 wide, 2 high
    bar[6, 3] = False  # not a full rectangle, so "box" differs from "mask"
    assert np.array_equal(region_mask(bar, "mask"), bar)
    assert np.array_equal(region_mask(bar, "box"), _box((16, 16), 6, 8, 3, 11))
    # Square of side 8 centred on the box: rows 6-8 grown by 3 on each side.
    assert np.array_equal(region_mask(bar, "square_box"), _box((16, 16), 3, 11, 3, 11))
    # An odd difference puts the extra pixel after the box: height 3 -> 8 gives 2 above, 3 below.
    tall = _box((16, 16), 5, 8, 4, 12)
    assert np.array_equal(region_mask(tall, "square_box"), _box((16, 16), 3, 11, 4, 12))
    # Near the top edge the square is shifted down instead of cut.
    top = _box((16, 16), 0, 2, 2, 12)
    assert np.array_equal(region_mask(top, "square_box"), _box((16, 16), 0, 10, 2, 12))
    # A vertical bar at the right edge: shifted left.
    right = _box((16, 16), 2, 12, 15, 16)
    assert np.array_equal(region_mask(right, "square_box"), _box((16, 16), 2, 12, 6, 16))
    # Wider than the image is tall: cut to the image's height.
    wide = _box((6, 16), 2, 3, 1, 15)
    assert np.array_equal(region_mask(wide, "square_box"), _box((6, 16), 0, 6, 1, 15))
    empty = np.zeros((8, 8), bool)
    for region in ("mask", "box", "square_box"):
        assert not region_mask(empty, region).any()
    with pytest.raises(ValueError, match="region"):
        region_mask(bar, "circle")


def test_region_applies_before_dilation_for_the_column_backend(unmasked):
    config = MaskingConfig(backend="column", mask_column="gt_mask", region="square_box", dilation=1)
    out = run_masking(unmasked, config)
    for row, truth in zip(out, unmasked["gt_mask"]):
        expected = dilate(region_mask(binary(truth), "square_box"), 1)
        assert np.array_equal(binary(row["mask"]), expected)
        assert row["mask_box"] == mask_bbox(expected)
    # The region is part of the config, hence of the stage's fingerprint.
    plain = run_masking(unmasked, dataclasses.replace(config, region="mask"))
    assert out._fingerprint != plain._fingerprint
    with pytest.raises(ValueError, match="mask"):
        run_masking(unmasked.rename_column("gt_mask", "mask"), MaskingConfig(backend="column", region="box"))


def test_region_applies_to_the_detected_mask(unmasked, checkpoints, sam_models):
    config = tiny_config(checkpoints, region="box")
    batch = unmasked[:4]
    plain = mask_batch(batch, models=sam_models, config=tiny_config(checkpoints), class_names=["a", "b"])
    boxed = mask_batch(batch, models=sam_models, config=config, class_names=["a", "b"])
    for a, b in zip(plain["mask"], boxed["mask"]):
        assert np.array_equal(binary(b), region_mask(binary(a), "box"))
    assert plain["mask_box"] == boxed["mask_box"]
