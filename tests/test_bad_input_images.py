"""Bad input, part A: corrupt and truncated images, unusual PIL modes, tiny and huge images,
empty and all-ones masks, no detection, and the accounting invariant (every input row of a
stage is kept, pruned or failed with its reason), down to a whole pipeline run."""

import dataclasses
import io
import json
import re
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, Value, load_from_disk
from PIL import Image

import dbb_hf.data as data_registry
from dbb_hf.accounting import AccountingError, account_stage, row_outcomes
from dbb_hf.cli import run_pipeline
from dbb_hf.config import DataConfig, load_yaml
from dbb_hf.data import DatasetFormatError
from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.images import UnreadableImageError, decode_image, to_rgb
from dbb_hf import pruning, selection
from dbb_hf.inpainting import inpaint_batch, run_inpainting
from dbb_hf.masking import MaskingConfig, load_masking_models, mask_batch, run_masking
from dbb_hf.modeling import eval_transform
from dbb_hf.presets import DEMO_PRESET
from dbb_hf.pruning import PruningConfig, apply_thresholds, score_edits
from dbb_hf.selection import score_dataset
from dbb_hf.stages import UnreadableRowsError, load_run_stage
from dbb_hf.tiny.detection import save_tiny_grounding_dino, save_tiny_sam
from edit_rows import NAMES, box_mask, compose_edits, linear_model, noise, rows_dataset, tiny_pipe  # noqa: F401  (tiny_pipe: a fixture)

torch.set_num_threads(2)


# ---------------------------------------------------------------- helpers


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


CORRUPT = b"this is not an image at all"


def truncated_png(seed=0) -> bytes:
    whole = encoded(noise(24, 20, seed))
    return whole[: len(whole) // 2]


def diffusers_edits(tiny_pipe, dataset):
    config, pipe = tiny_pipe
    return run_inpainting(dataset, config, pipe=pipe, class_names=["horizontal bar", "vertical bar"],
                          tokens=["horizontal", "vertical"])


# ---------------------------------------------------------------- modes: known answers


def _modes():
    """(mode, image of that mode, the RGB pixels it stands for), 10 x 6 pixels."""
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    p_image = Image.fromarray(index, mode="P")
    p_image.putpalette(palette.reshape(-1).tolist())
    cmy = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    cmyk = np.concatenate([cmy, np.zeros((6, 10, 1), np.uint8)], axis=2)
    cmyk[0, 0] = (0, 0, 0, 255)  # pure black ink
    cmyk_rgb = 255 - cmy
    cmyk_rgb[0, 0] = 0
    bits = gray > 127
    as_rgb = lambda g: np.repeat(g[..., None], 3, axis=2)  # noqa: E731
    return [
        ("L", Image.fromarray(gray, mode="L"), as_rgb(gray)),
        ("LA", Image.fromarray(np.stack([gray, alpha], 2), mode="LA"), as_rgb(gray)),
        ("RGBA", Image.fromarray(np.concatenate([rgb, alpha[..., None]], 2), mode="RGBA"), rgb),
        ("CMYK", Image.fromarray(cmyk, mode="CMYK"), cmyk_rgb),
        # 16-bit: the full range maps onto 0..255 (PIL's own convert would clip to white).
        ("I;16", Image.fromarray(gray.astype(np.uint16) * 257), as_rgb(gray)),
        ("I", Image.fromarray(gray.astype(np.int32) * 257, mode="I"), as_rgb(gray)),
        ("P", p_image, palette[index]),
        ("1", Image.fromarray(bits), as_rgb(bits.astype(np.uint8) * 255)),
    ]


MODES = _modes()


@pytest.mark.parametrize("mode,image,expected", MODES, ids=[m for m, _, _ in MODES])
def test_to_rgb_gives_the_pixels_each_mode_stands_for(mode, image, expected):
    assert image.mode == mode
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    np.testing.assert_array_equal(np.asarray(converted), expected)
    # The same after a round trip through a dataset (datasets stores these modes as TIFF or PNG).
    stored = Dataset.from_dict({"image": [image]}, features=Features({"image": ImageFeature()}))[0]["image"]
    assert stored.mode == mode
    np.testing.assert_array_equal(np.asarray(to_rgb(stored)), expected)


def test_16_bit_is_scaled_not_clipped():
    ramp = Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8))
    clipped = np.asarray(ramp.convert("RGB"))[..., 0]
    assert (clipped == 255).mean() > 0.9  # what PIL's own conversion makes of it: nearly all white
    values = np.asarray(to_rgb(ramp))[..., 0]
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) == 64


def mode_rows():
    """One selected row per mode at 24 x 20 (non-square), each with a box mask."""
    images = [image.resize((24, 20), Image.NEAREST) for _, image, _ in MODES]
    return rows_dataset(images, [box_mask(24, 20) for _ in images])


def test_every_stage_sees_rgb_of_each_mode(tiny_pipe):
    data = mode_rows()
    expected = [to_rgb(image.resize((24, 20), Image.NEAREST)) for _, image, _ in MODES]
    model = linear_model()

    # Classifier preprocessing and ERM scoring: each mode scores like its RGB equivalent.
    transform = eval_transform(model)
    for row, rgb in zip(data, expected):
        assert torch.equal(transform(to_rgb(row["image"])), transform(rgb))
    scored = score_dataset(data, model)
    as_rgb = data.cast_column("image", ImageFeature()).map(lambda r, i: {"image": expected[i]}, with_indices=True)
    np.testing.assert_allclose(scored["erm_loss"], score_dataset(as_rgb, model)["erm_loss"], rtol=1e-6)

    # Inpainting: RGB edits of the source's size, pixels outside the mask = the source in RGB.
    for edits in (compose_edits(data), diffusers_edits(tiny_pipe, data)):
        assert edits["generation_status"] == ["ok"] * len(MODES)
        for row, rgb in zip(edits, expected):
            edit = row["generated"]
            assert edit.mode == "RGB" and edit.size == (24, 20)
            outside = ~(np.asarray(row["generated_mask"]) > 127)
            np.testing.assert_array_equal(np.asarray(edit)[outside], np.asarray(rgb)[outside])

        if edits["generator"][0] != "compose":
            continue
        # Pruning: every edit scored, finite, and the same as for the RGB source.
        pruned = score_edits(edits, model, PruningConfig(n_steps=4, batch_size=4, device="cpu"), Psi=[0.9, 0.9])
        assert pruned["score_status"] == ["ok"] * len(MODES)
        rgb_sources = edits.map(lambda r, i: {"image": expected[i]}, with_indices=True)
        reference = score_edits(rgb_sources, model, PruningConfig(n_steps=4, batch_size=4, device="cpu"), Psi=[0.9, 0.9])
        np.testing.assert_allclose(pruned["rho"], reference["rho"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pruned["psi"], reference["psi"], rtol=1e-6)


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    config = MaskingConfig(detector_id=save_tiny_grounding_dino(root / "dino"), segmenter_id=save_tiny_sam(root / "sam"),
                           box_threshold=0.0, text_threshold=0.0, batch_size=4)
    return config, load_masking_models(config, "cpu")


def test_grounded_sam_masks_every_mode_at_its_size(detection):
    config, models = detection
    data = mode_rows().remove_columns("mask")
    masked = run_masking(data, config, class_names=["bar", "bar"], models=models)
    assert len(masked) == len(MODES)
    for row in masked:
        assert row["mask"].size == (24, 20) and row["mask"].mode == "L"
        assert row["mask_status"] in ("ok", "no_detection", "empty_mask")


# ---------------------------------------------------------------- sizes


def test_grounded_sam_masks_tiny_and_huge_images_at_their_size(detection):
    config, models = detection
    big = Image.fromarray(np.broadcast_to(np.linspace(0, 255, 4000, dtype=np.uint8)[None, :, None], (3000, 4000, 3)).copy())
    batch = {"image": [noise(8, 8), big], "label": [0, 1], "example_id": ["tiny", "huge"]}
    masks = mask_batch(batch, models=models, config=config, class_names=["bar", "bar"])
    assert [m.size for m in masks["mask"]] == [(8, 8), (4000, 3000)]
    assert all(status in ("ok", "empty_mask") for status in masks["mask_status"])  # threshold 0: a box each


def test_tiny_and_huge_images_go_through_every_stage(tiny_pipe):
    # 8 x 8 is smaller than every model input; 4000 x 3000 (12 MP) much larger. The stage
    # functions are called on batches directly: encoding 12 MP PNGs into Arrow would
    # dominate the test's time.
    big = Image.fromarray(np.broadcast_to(np.linspace(0, 255, 4000, dtype=np.uint8)[None, :, None], (3000, 4000, 3)).copy())
    batch = {"image": [noise(8, 8), big], "label": [0, 0], "target_label": [1, 1], "example_id": ["tiny", "huge"],
             "mask_status": ["ok", "ok"],
             "gt_mask": [box_mask(8, 8, (2, 2, 6, 6)), box_mask(4000, 3000, (1000, 800, 3000, 2200))]}
    model = linear_model()
    scores = selection.score_batch(batch, model=model, transform=eval_transform(model), device="cpu")
    assert np.isfinite(scores["erm_loss"]).all()
    masks = mask_batch(batch, models=None, config=MaskingConfig(backend="column", mask_column="gt_mask"), class_names=NAMES)
    assert masks["mask_status"] == ["ok", "ok"] and [m.size for m in masks["mask"]] == [(8, 8), (4000, 3000)]
    batch["mask"] = masks["mask"]
    config, pipe = tiny_pipe
    tracemalloc.start()
    try:
        edits = inpaint_batch(batch, pipe=pipe, config=config, class_names=NAMES, tokens=["horizontal", "vertical"])
        inpainting_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        scored = pruning.score_batch({**batch, **edits}, model=model, config=PruningConfig(n_steps=4, device="cpu"),
                                     Psi=[0.9, 0.9])
        pruning_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # numpy working memory: a few copies of the 36 MB image, not one per pixel and step.
    assert inpainting_peak < 400 * 2**20 and pruning_peak < 100 * 2**20, (inpainting_peak, pruning_peak)
    assert edits["generation_status"] == ["ok", "ok"] and scored["score_status"] == ["ok", "ok"]
    assert np.isfinite(scored["rho"]).all() and np.isfinite(scored["psi"]).all()
    for edit, mask, source in zip(edits["generated"], batch["mask"], batch["image"]):
        assert edit.size == source.size and edit.mode == "RGB"
        outside = ~(np.asarray(mask) > 127)
        np.testing.assert_array_equal(np.asarray(edit)[outside], np.asarray(source)[outside])
    # The compose backend (the toy's generator) on the tiny image; on 12 MP it also works,
    # with about 100 bytes of float64 working memory per pixel (README, Reliability).
    small = rows_dataset(batch["image"][:1], batch["mask"][:1])
    composed = compose_edits(small)
    assert composed["generation_status"] == ["ok"] and composed["generated"][0].size == (8, 8)


# ---------------------------------------------------------------- corrupt and truncated bytes


def test_decode_image_gives_a_stable_reason():
    with pytest.raises(UnreadableImageError, match="cannot identify image file") as error:
        decode_image({"bytes": CORRUPT, "path": None})
    assert "0x" not in str(error.value)  # no memory address: reasons are saved and compared across runs
    with pytest.raises(UnreadableImageError, match="truncated"):
        decode_image({"bytes": truncated_png(), "path": None})
    assert decode_image({"bytes": encoded(noise(4, 4)), "path": None}).size == (4, 4)


def bad_rows():
    """ex-0 fine, ex-1 corrupt image, ex-2 truncated image, ex-3 corrupt mask, ex-4 fine."""
    images = [noise(24, 20, 0), CORRUPT, truncated_png(2), noise(24, 20, 3), noise(24, 20, 4)]
    masks = [box_mask(24, 20) for _ in range(3)] + [CORRUPT, box_mask(24, 20)]
    return rows_dataset(images, masks)


def test_stages_record_unreadable_images_per_row(tiny_pipe):
    data = bad_rows()
    masked = run_masking(data.rename_column("mask", "gt_mask"), MaskingConfig(backend="column", mask_column="gt_mask"))
    status = masked["mask_status"]
    assert status[0] == status[4] == "ok"
    assert status[1].startswith("failed: unreadable image: cannot identify image file")
    assert status[2].startswith("failed: unreadable image: image file is truncated")
    assert status[3].startswith("failed: unreadable gt_mask: cannot identify image file")
    assert masked["mask"][1] is None and masked["example_id"] == data["example_id"]
    account_stage("masks", data, masked)

    model = linear_model()
    for edits in (compose_edits(masked), diffusers_edits(tiny_pipe, masked)):
        statuses = edits["generation_status"]
        assert statuses[0] == statuses[4] == "ok"
        assert statuses[1].startswith("failed: unreadable image") and statuses[2].startswith("failed: unreadable image")
        assert statuses[3] == "skipped_no_mask"  # its mask failed in masking, which says why
        account_stage("generation", masked, edits)
        scored = apply_thresholds(
            score_edits(edits, model, PruningConfig(n_steps=4, batch_size=4, device="cpu"), Psi=[0.9, 0.9]), P=0.0)
        assert scored["score_status"][1].startswith("failed: unreadable image")
        assert scored["score_status"][3] == "not_generated"
        assert scored["prune_reason"][3] == "not_generated"  # no edit: mask_status says why
        assert scored["prune_reason"][1].startswith("failed: unreadable image")
        account_stage("pruning", edits, scored)
        outcomes = {e: o for e, _, o in row_outcomes(scored)}
        assert outcomes["ex-1"].startswith("masks: failed: unreadable image")
        assert outcomes["ex-3"].startswith("masks: failed: unreadable gt_mask")
        assert outcomes["ex-0"] in ("kept", "pruned: psi>=Psi", "pruned: rho<=P", "pruned: psi>=Psi;rho<=P")


def test_a_column_mask_of_the_wrong_size_fails_its_own_row():
    # ex-1's mask was made for another image (a resized copy): 30 x 20 beside a 24 x 20 image.
    images = [noise(24, 20, k) for k in range(3)]
    truth = [box_mask(24, 20), box_mask(30, 20), box_mask(24, 20, (2, 2, 10, 10))]
    data = rows_dataset(images, truth).rename_column("mask", "gt_mask")
    with pytest.warns(UserWarning, match=r"masking: ex-1: failed: mask size mismatch"):
        masked = run_masking(data, MaskingConfig(backend="column", mask_column="gt_mask"))
    reason = "failed: mask size mismatch: column 'gt_mask' holds a 30x20 mask, the image is 24x20"
    assert masked["mask_status"] == ["ok", reason, "ok"] and masked["mask"][1] is None
    for k in (0, 2):  # the other rows are masked as if ex-1 were not there
        np.testing.assert_array_equal(np.asarray(masked["mask"][k]), np.asarray(truth[k]))
    counts = account_stage("masks", data, masked)
    assert counts["total"] == {"input": 3, "ok": 2, "failed": 1, "failed_reasons": {"failed: mask size mismatch": 1}}
    edits = compose_edits(masked)
    assert edits["generation_status"][1] == "skipped_no_mask"
    scored = apply_thresholds(score_edits(edits, linear_model(), PruningConfig(n_steps=4, device="cpu"),
                                          Psi=[0.9, 0.9]), P=0.0)
    assert {e: o for e, _, o in row_outcomes(scored)}["ex-1"] == f"masks: {reason}"


def test_pruning_records_an_edit_it_cannot_read():
    edits = compose_edits(run_masking(rows_dataset([noise(24, 20), noise(24, 20, 1)], [box_mask(24, 20)] * 2),
                                      MaskingConfig(backend="column")))
    # The edit of ex-1 is damaged after generation (a file changed on disk, say).
    raw = edits.cast_column("generated", ImageFeature(decode=False))
    raw = raw.map(lambda r, i: {"generated": {"bytes": CORRUPT, "path": None} if i == 1 else r["generated"]},
                  with_indices=True, features=raw.features)
    damaged = raw.cast_column("generated", ImageFeature())
    scored = apply_thresholds(score_edits(damaged, linear_model(), PruningConfig(n_steps=4, device="cpu"), Psi=[0.9, 0.9]),
                              P=0.0)
    assert scored["score_status"][0] == "ok"
    assert scored["score_status"][1].startswith("failed: unreadable generated: cannot identify image file")
    assert not scored["keep"][1] and scored["prune_reason"][1] == scored["score_status"][1]
    account_stage("pruning", damaged, scored)


def test_scoring_names_unreadable_rows():
    with pytest.raises(UnreadableRowsError, match=r"ex-1: failed: unreadable image.*ex-2: failed: unreadable image"):
        score_dataset(bad_rows(), linear_model())


def write_waterbirds(root, broken: dict):
    """An official-layout Waterbirds folder of 12 PNGs; ``broken`` = {file index: bytes}."""
    rows = []
    for k in range(12):
        name = f"001.Albatross/bird_{k}.png"
        (root / "001.Albatross").mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(broken.get(k, encoded(noise(12, 10, k))))
        rows.append({"img_filename": name, "y": k % 2, "split": k % 3, "place": (k // 2) % 2})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def test_loader_check_names_unreadable_files_or_drops_them(tmp_path):
    write_waterbirds(tmp_path, {3: CORRUPT, 7: truncated_png()})
    config = DataConfig(dataset="waterbirds", data_dir=str(tmp_path))
    with pytest.raises(DatasetFormatError, match=r"2 unreadable image\(s\)") as error:
        config.load()
    message = str(error.value)
    assert "bird_3.png" in message and "bird_7.png" in message and "truncated" in message
    assert "--bad_images drop" in message

    dataset, dropped = DataConfig(dataset="waterbirds", data_dir=str(tmp_path), bad_images="drop").load_checked()
    assert sorted(d["example_id"] for d in dropped) == ["001.Albatross/bird_3.png", "001.Albatross/bird_7.png"]
    assert {d["split"] for d in dropped} == {"train", "validation"}  # split = index % 3
    assert sum(len(s) for s in dataset.values()) == 10
    assert not {d["example_id"] for d in dropped} & {e for s in dataset.values() for e in s["example_id"]}
    # off: no check, the rows stay (a stage then fails them one by one).
    unchecked = DataConfig(dataset="waterbirds", data_dir=str(tmp_path), bad_images="off").load()
    assert sum(len(s) for s in unchecked.values()) == 12
    with pytest.raises(ValueError, match="bad_images"):
        DataConfig(bad_images="ignore")


def test_hub_loader_check_covers_images_stored_as_bytes(tmp_path):
    images = [{"bytes": encoded(noise(8, 8, k)), "path": None} for k in range(6)]
    images[4] = {"bytes": CORRUPT, "path": "photo_4.jpg"}
    split = Dataset.from_dict({"image": images, "y": [0, 1] * 3, "place": [0, 0, 1, 1, 0, 1]},
                              features=Features({"image": ImageFeature(), "y": Value("int64"), "place": Value("int64")}))
    DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(tmp_path / "saved")
    config = DataConfig(dataset="hub", data_dir=str(tmp_path / "saved"),
                        options=["label_column=y", "spurious_column=place"])
    with pytest.raises(DatasetFormatError, match=r"3 unreadable image\(s\).*train/train-4: failed: unreadable image"):
        config.load()


# ---------------------------------------------------------------- empty, all-ones masks, no detection


def test_empty_full_and_missing_masks_are_skipped_with_their_reason(tiny_pipe):
    size = (24, 20)
    masks = [box_mask(*size), box_mask(*size, fill=0), box_mask(*size, fill=255), box_mask(*size, fill=0)]
    data = rows_dataset([noise(*size, k) for k in range(4)], masks, statuses=["ok", "empty_mask", "ok", "no_detection"])
    model = linear_model()
    for edits in (compose_edits(data), diffusers_edits(tiny_pipe, data)):
        assert edits["generation_status"] == ["ok", "skipped_no_mask", "skipped_no_background", "skipped_no_mask"]
        scored = apply_thresholds(score_edits(edits, model, PruningConfig(n_steps=4, device="cpu"), Psi=[0.9, 0.9]), P=0.0)
        assert scored["prune_reason"][1:] == ["not_generated"] * 3 and not any(scored["keep"][1:])
        counts = account_stage("pruning", edits, scored)
        assert counts["total"]["input"] == 4 and counts["total"]["failed_reasons"] == {"not_generated": 3}
    # A row whose status says ok but whose mask is empty is caught by the generator itself.
    ok_but_empty = rows_dataset([noise(*size)], [box_mask(*size, fill=0)], statuses=["ok"])
    assert compose_edits(ok_but_empty)["generation_status"] == ["skipped_empty_mask"]
    assert diffusers_edits(tiny_pipe, ok_but_empty)["generation_status"] == ["skipped_empty_mask"]


def test_masking_column_marks_empty_masks_and_keeps_full_ones():
    size = (24, 20)
    data = rows_dataset([noise(*size)] * 3, [box_mask(*size), box_mask(*size, fill=0), box_mask(*size, fill=255)])
    masked = run_masking(data.rename_column("mask", "gt_mask"), MaskingConfig(backend="column", mask_column="gt_mask"))
    assert masked["mask_status"] == ["ok", "empty_mask", "ok"]
    assert masked["mask_box"][2] == [0.0, 0.0, 24.0, 20.0]
    assert account_stage("masks", data, masked)["total"] == {
        "input": 3, "ok": 2, "failed": 1, "failed_reasons": {"empty_mask": 1}}


def test_no_detection_rows_flow_to_not_generated(detection):
    config, models = detection
    data = rows_dataset([noise(24, 20, k) for k in range(3)], [None] * 3).remove_columns("mask")
    masked = run_masking(data, dataclasses.replace(config, box_threshold=1.0), class_names=["bar", "bar"], models=models)
    assert masked["mask_status"] == ["no_detection"] * 3
    edits = compose_edits(masked)
    assert edits["generation_status"] == ["skipped_no_mask"] * 3
    scored = apply_thresholds(score_edits(edits, linear_model(), PruningConfig(n_steps=4, device="cpu"), Psi=[0.9, 0.9]),
                              P=0.0)
    assert {o for _, _, o in row_outcomes(scored)} == {"masks: no_detection"}


# ---------------------------------------------------------------- the invariant itself


def test_accounting_catches_lost_duplicated_and_unexplained_rows():
    data = rows_dataset([noise(8, 8, k) for k in range(4)], [box_mask(8, 8) for _ in range(4)])
    masked = run_masking(data.rename_column("mask", "gt_mask"), MaskingConfig(backend="column", mask_column="gt_mask"))
    counts = account_stage("masks", data, masked)
    assert counts["horizontal_bar->vertical_bar"] == {"input": 4, "ok": 4, "failed": 0, "failed_reasons": {}}
    with pytest.raises(AccountingError, match=r"1 input row\(s\) missing: ex-2->t1"):
        account_stage("masks", data, masked.select([0, 1, 3]))
    with pytest.raises(AccountingError, match=r"duplicated or not in the input: ex-1->t1"):
        account_stage("masks", data.select([0, 1, 2, 3]), masked.select([0, 1, 1, 2, 3]))
    blank = masked.map(lambda r, i: {"mask_status": "" if i == 3 else r["mask_status"]}, with_indices=True)
    with pytest.raises(AccountingError, match=r"1 row\(s\) without an outcome: ex-3->t1: empty mask_status"):
        account_stage("masks", data, blank)


# ---------------------------------------------------------------- a whole run


SMALL = [
    "--options", "num_train=200", "num_validation=80", "num_test=80", "correlation=0.9",
    "--erm_num_epochs", "1", "--retraining_num_epochs", "1", "--erm_train_batch_size", "32",
    "--retraining_train_batch_size", "32", "--shard_size", "32", "--inpainting_batch_size", "32",
    "--pruning_n_steps", "2", "--num_grid_examples", "2", "--bad_images", "drop",
]


def _replace_cells(dataset, column, replacements: dict):
    """``dataset`` with ``column`` of rows ``replacements`` set to raw bytes."""
    raw = dataset.cast_column(column, ImageFeature(decode=False))

    def put(row, i):
        new = replacements.get(i)
        return {column: row[column] if new is None else {"bytes": new, "path": None}}

    return raw.map(put, with_indices=True, features=raw.features).cast_column(column, ImageFeature())


def damaged_toy(config):
    """The toy benchmark with every 10th training image corrupt (and every 7th + 3 truncated),
    a validation image corrupt, and corrupt, empty and all-ones ground-truth masks."""
    toy = load_toy(config)
    train, size = toy["train"], config.image_size
    images = {i: CORRUPT for i in range(0, len(train), 10)} | {i: truncated_png(i) for i in range(3, len(train), 70)}
    masks = {}
    for i in range(len(train)):
        if i % 10 == 1:
            masks[i] = CORRUPT
        elif i % 10 == 2:
            masks[i] = encoded(box_mask(size, size, fill=0))
        elif i % 10 == 5:
            masks[i] = encoded(box_mask(size, size, fill=255))
    train = _replace_cells(_replace_cells(train, "image", images), "mask", masks)
    return DatasetDict({"train": train, "validation": _replace_cells(toy["validation"], "image", {0: CORRUPT}),
                        "test": toy["test"]})


def test_a_run_with_bad_rows_finishes_and_accounts_for_every_row(tmp_path, monkeypatch):
    monkeypatch.setitem(data_registry.REGISTRY, "toy", data_registry.Benchmark(ToyConfig, damaged_toy, None))
    out = tmp_path / "run"
    report = run_pipeline(["--output_dir", str(out), *SMALL], defaults=load_yaml(DEMO_PRESET))
    saved = json.loads((out / "report.json").read_text())
    accounting = saved["accounting"]

    # Unreadable images never reach training: dropped at load, counted and listed.
    dropped = json.loads((out / "dropped_images.json").read_text())["rows"]
    bad_train = {f"toy-train-{i:06d}" for i in [*range(0, 200, 10), *range(3, 200, 70)]}
    assert accounting["data"]["train"] == {"input": 200, "ok": 200 - len(bad_train), "failed": len(bad_train),
                                           "failed_reasons": {"failed: unreadable image": len(bad_train)}}
    assert accounting["data"]["validation"]["failed"] == 1
    assert len(dropped) == len(bad_train) + 1
    assert {d["example_id"] for d in dropped if d["split"] == "train"} == bad_train

    # Every selected row appears exactly once in the final accounting, with its reason.
    selected = load_from_disk(str(out / "selection"))
    pruned = load_run_stage(out, "pruning")
    outcomes = row_outcomes(pruned)
    keys = [(e, t) for e, t, _ in outcomes]
    assert sorted(keys) == sorted(zip(selected["example_id"], selected["target_label"]))
    assert len(set(keys)) == len(keys)
    ids = {e for e, _ in keys}
    assert not ids & {d["example_id"] for d in dropped}
    index_of = {e: int(e.rsplit("-", 1)[1]) for e in ids}
    for example_id, _, outcome in outcomes:
        i = index_of[example_id]
        if i % 10 == 1:
            assert re.match(r"masks: failed: unreadable (source_)?mask: cannot identify image file", outcome), outcome
        elif i % 10 == 2:
            assert outcome == "masks: empty_mask"
        elif i % 10 == 5:
            assert outcome == "generation: skipped_no_background"
        else:
            assert outcome == "kept" or outcome.startswith("pruned: ") or outcome == "generation: skipped_no_donor"
    # Each stage's counts add up; the report carries them per direction and in total.
    for stage in ("masks", "generation", "pruning"):
        total = accounting[stage]["total"]
        assert total["input"] == len(selected)
        assert total["input"] == sum(v for k, v in total.items() if k in ("ok", "kept", "pruned", "failed"))
    assert sum(sum(c.values()) for c in accounting["outcomes"].values()) == len(selected)
    assert sum(c["kept"] for c in saved["counts"].values()) == len(load_run_stage(out, "augmented")["synthetic"])
    assert "Outcome of every selected row" in (out / "report.md").read_text()
    assert report["accounting"] == accounting
