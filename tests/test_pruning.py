import math

import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Sequence, Value
from PIL import Image
from transformers import HfArgumentParser

import dbb_hf.pruning as pruning
from dbb_hf.modeling import ClassifierConfig, create_classifier, eval_transform, geometric_transform
from dbb_hf.pruning import (
    PruningConfig,
    apply_thresholds,
    class_confidence,
    compute_class_confidence,
    explain_edit,
    ig_heatmap,
    image_transform,
    integrated_gradients,
    mask_transform,
    parse_thresholds,
    prune_reason,
    rethreshold,
    score_batch,
    score_edits,
)

torch.set_num_threads(2)

SIZE = 40  # images are resized to 36 and centre-cropped to 32 by the models below
INPUT = 32
NAMES = ["horizontal_bar", "vertical_bar", "dot"]


def linear_model(num_classes=3, seed=0, dtype=torch.float32):
    """f(x) = W flatten(x) + b: IG of logit t from x to x' is exactly (x' - x) * W[t]."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * INPUT * INPUT, num_classes))
    model.pretrained_cfg = {
        "input_size": (3, INPUT, INPUT),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": (0.4, 0.5, 0.6),
        "std": (0.2, 0.25, 0.3),
    }
    return model.to(dtype).eval()


def tiny_resnet(num_classes=3, seed=0):
    torch.manual_seed(seed)
    config = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=INPUT, crop_pct=0.875)
    return create_classifier(config, num_classes).eval()


def random_image(rng, size=(SIZE, SIZE)):
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def edited(rng, image, box):
    """An edit of ``image`` inside ``box`` and the mask of that box (mode L, 0/255)."""
    pixels = np.asarray(image).copy()
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = rng.integers(0, 256, (bottom - top, right - left, 3), dtype=np.uint8)
    mask = np.zeros(pixels.shape[:2], np.uint8)
    mask[top:bottom, left:right] = 255
    return Image.fromarray(pixels), Image.fromarray(mask, mode="L")


def edit_rows(n=5, seed=0, missing=(1,), with_generated_mask=True):
    """Rows shaped like the inpainting stage's output; rows in ``missing`` failed to generate."""
    rng = np.random.default_rng(seed)
    rows = {"image": [], "label": [], "target_label": [], "mask": [], "generated": [], "example_id": []}
    if with_generated_mask:
        rows["generated_mask"] = []
    for k in range(n):
        image = random_image(rng)
        box = (5 + k, 8, 22 + k, 30)
        edit, edit_mask = edited(rng, image, box)
        _, object_mask = edited(rng, image, (4, 4, 30, 34))
        label = k % 3
        rows["image"].append(image)
        rows["label"].append(label)
        rows["target_label"].append((label + 1) % 3)
        rows["mask"].append(object_mask)
        rows["generated"].append(None if k in missing else edit)
        rows["example_id"].append(f"ex{k}")
        if with_generated_mask:
            rows["generated_mask"].append(None if k in missing else edit_mask)
    features = {
        "image": ImageFeature(),
        "label": ClassLabel(names=NAMES),
        "target_label": ClassLabel(names=NAMES),
        "mask": ImageFeature(),
        "generated": ImageFeature(),
        "example_id": Value("string"),
    }
    if with_generated_mask:
        features["generated_mask"] = ImageFeature()
    return Dataset.from_dict(rows, features=Features(features))


def closed_form(model, original, edit, mask, target):
    """rho of the linear model, from the model's own preprocessing and weights."""
    x = eval_transform(model)(original).double()
    x_edit = eval_transform(model)(edit).double()
    m = torch.from_numpy(np.asarray(geometric_transform(model, nearest=True)(mask)) > 127).double()
    w = model[1].weight[target].detach().double().view(3, INPUT, INPUT)
    return float(((x_edit - x) * w * m).sum())


PSI = [0.9, 0.8, 0.7]


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("make_model", [linear_model, tiny_resnet])
def test_image_preprocessing_is_exactly_the_eval_transform(make_model):
    model = make_model()
    rng = np.random.default_rng(0)
    for size in [(SIZE, SIZE), (57, 43)]:
        image = random_image(rng, size)
        ours = image_transform(model)(image)
        assert ours.shape == (3, INPUT, INPUT)
        assert torch.equal(ours, eval_transform(model)(image))


def test_mask_lands_on_the_same_pixels_as_the_image():
    model = tiny_resnet()
    # A bright square on black, and its mask: after preprocessing both cover the same pixels.
    pixels = np.zeros((47, 53, 3), np.uint8)
    pixels[10:30, 20:41] = 255
    mask = Image.fromarray((pixels[..., 0] > 0).astype(np.uint8) * 255, mode="L")
    m = mask_transform(model)(mask)
    assert m.dtype == torch.bool and m.shape == (INPUT, INPUT)
    bright = geometric_transform(model)(Image.fromarray(pixels)).convert("L")
    bright = torch.from_numpy(np.asarray(bright) > 127)
    assert (m != bright).sum() <= 2 * INPUT  # at most the resampled edge differs
    assert m.float().mean() > 0.1


# ---------------------------------------------------------------- IG known answers


@pytest.mark.parametrize("ig_target", ["target", "source"])
def test_rho_and_psi_match_the_closed_form_of_a_linear_model(ig_target):
    model = linear_model()
    data = edit_rows(n=4, missing=(1,))
    config = PruningConfig(n_steps=8, ig_target=ig_target, batch_size=4)
    out = score_batch(data[:], model=model, config=config, Psi=PSI)
    assert set(out) == {"psi", "rho", "psi_threshold", "ig_target", "score_status"}
    for k in range(4):
        row = data[k]
        explained = row["target_label"] if ig_target == "target" else row["label"]
        assert out["ig_target"][k] == explained
        assert out["psi_threshold"][k] == PSI[row["label"]]
        if row["generated"] is None:
            assert math.isnan(out["psi"][k]) and math.isnan(out["rho"][k])
            assert out["score_status"][k] == "not_generated"
            continue
        expected = closed_form(model, row["image"], row["generated"], row["generated_mask"], explained)
        assert out["rho"][k] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        with torch.no_grad():
            probs = model(eval_transform(model)(row["generated"])[None]).softmax(-1)[0]
        assert out["psi"][k] == pytest.approx(float(probs[row["label"]]), abs=1e-6)


def test_rho_mean_is_the_sum_per_mask_pixel():
    model = linear_model()
    data = edit_rows(n=4, missing=(1,))
    summed = score_batch(data[:], model=model, config=PruningConfig(n_steps=8, batch_size=4), Psi=PSI)
    mean = score_batch(data[:], model=model, config=PruningConfig(n_steps=8, batch_size=4, rho="mean"), Psi=PSI)
    for k in (0, 2, 3):
        pixels = int((np.asarray(geometric_transform(model, nearest=True)(data[k]["generated_mask"])) > 127).sum())
        assert pixels > 0
        assert mean["rho"][k] == pytest.approx(summed["rho"][k] / pixels, rel=1e-5)
        assert mean["psi"][k] == summed["psi"][k]  # psi does not depend on the reduction
    assert PruningConfig().scoring_settings() != PruningConfig(rho="mean").scoring_settings()  # new cache key
    with pytest.raises(ValueError, match="rho must be one of"):
        PruningConfig(rho="max")


def test_source_and_target_give_different_rho():
    model = linear_model()
    data = edit_rows(n=3, missing=())
    by_target = score_batch(data[:], model=model, config=PruningConfig(n_steps=4), Psi=PSI)
    by_source = score_batch(data[:], model=model, config=PruningConfig(n_steps=4, ig_target="source"), Psi=PSI)
    assert by_target["ig_target"] == data["target_label"]
    assert by_source["ig_target"] == data["label"]
    assert not np.allclose(by_target["rho"], by_source["rho"])
    assert by_target["psi"] == by_source["psi"]


def test_mask_falls_back_to_the_object_mask():
    model = linear_model()
    data = edit_rows(n=2, missing=(), with_generated_mask=False)
    out = score_batch(data[:], model=model, config=PruningConfig(n_steps=4), Psi=PSI)
    for k in range(2):
        row = data[k]
        expected = closed_form(model, row["image"], row["generated"], row["mask"], row["target_label"])
        assert out["rho"][k] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_completeness_on_a_tiny_resnet():
    # Smooth activations and no max-pool, so the quadrature converges and completeness can
    # be checked tightly (with ReLU the integrand is piecewise constant: errors of a few
    # percent remain at 64 steps).
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet10t", pretrained=False, num_classes=3, act_layer="silu", replace_stem_pool=True, zero_init_last=False
    )
    model = model.double().eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, INPUT, INPUT, dtype=torch.float64)
    x_edit = x.clone()
    x_edit[:, :, 8:24, 8:24] = 3 * torch.randn(2, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        rows = torch.arange(2)
        gap = model(x_edit)[rows, target] - model(x)[rows, target]
    coarse = integrated_gradients(model, x_edit, x, target, n_steps=2, return_convergence_delta=True)[1]
    attributions, delta = integrated_gradients(model, x_edit, x, target, n_steps=12, return_convergence_delta=True)
    totals = attributions.sum((1, 2, 3))
    # Completeness: IG sums to f(x') - f(x); captum's delta is the quadrature error.
    assert torch.allclose(delta, totals - gap, rtol=0, atol=1e-12)
    assert (delta.abs() <= 1e-6 * gap.abs()).all(), (delta, gap)
    assert (coarse.abs() > 100 * delta.abs()).all()  # the path is not linear: steps matter
    # Pixels the edit did not change get no attribution (IG multiplies by x' - x).
    assert attributions[:, :, :8].abs().max() == 0


def test_batched_attributions_equal_per_image_calls():
    model = tiny_resnet()
    torch.manual_seed(2)
    x = torch.randn(3, 3, INPUT, INPUT)
    x_edit = x + 0.5 * torch.randn(3, 3, INPUT, INPUT)
    target = torch.tensor([0, 1, 2])
    # internal_batch_size 6: two steps of all three rows per forward pass.
    batched = integrated_gradients(model, x_edit, x, target, n_steps=4, internal_batch_size=6)
    single = torch.cat(
        [integrated_gradients(model, x_edit[b : b + 1], x[b : b + 1], target[b : b + 1], n_steps=4) for b in range(3)]
    )
    assert (batched - single).abs().max() <= 1e-5


# ---------------------------------------------------------------- Psi (Eq. 3)


def test_class_confidence_known_answer():
    probs = [[0.9, 0.1, 0.0], [0.7, 0.2, 0.1], [0.2, 0.8, 0.0], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    data = Dataset.from_dict(
        {"erm_probs": probs, "label": [0, 0, 1, 1, 2]},
        features=Features({"erm_probs": Sequence(Value("float32")), "label": ClassLabel(names=NAMES)}),
    )
    assert class_confidence(data) == pytest.approx([0.8, 0.6, 0.8])


def test_class_confidence_errors_name_the_problem():
    with pytest.raises(ValueError, match="erm_probs"):
        class_confidence(Dataset.from_dict({"label": [0]}))
    empty_class = Dataset.from_dict(
        {"erm_probs": [[0.9, 0.1, 0.0]], "label": [0]},
        features=Features({"erm_probs": Sequence(Value("float32")), "label": ClassLabel(names=NAMES)}),
    )
    with pytest.raises(ValueError, match="vertical_bar"):
        class_confidence(empty_class)


def test_compute_class_confidence_averages_the_model_softmax_over_each_class():
    model = linear_model()
    rng = np.random.default_rng(3)
    images = [random_image(rng) for _ in range(7)]
    labels = [0, 1, 2, 0, 1, 2, 2]
    data = Dataset.from_dict(
        {"image": images, "label": labels},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=NAMES)}),
    )
    Psi = compute_class_confidence(model, data, batch_size=3, device="cpu")
    with torch.no_grad():
        probs = model(torch.stack([eval_transform(model)(img) for img in images])).softmax(-1).numpy()
    expected = [np.mean([probs[k, c] for k in range(7) if labels[k] == c]) for c in range(3)]
    assert Psi == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- keep rule


def scored_rows():
    nan = float("nan")
    return Dataset.from_dict(
        {
            "psi": [0.1, 0.95, 0.1, 0.95, nan, 0.5],
            "rho": [2.0, 2.0, 0.1, 0.1, nan, 0.3],
            "psi_threshold": [0.9, 0.9, 0.9, 0.9, 0.9, 0.6],
            "label": [0, 0, 0, 0, 1, 1],
            "target_label": [1, 1, 1, 1, 0, 0],
        },
        features=Features(
            {
                "psi": Value("float32"),
                "rho": Value("float32"),
                "psi_threshold": Value("float32"),
                "label": ClassLabel(names=["a", "b"]),
                "target_label": ClassLabel(names=["a", "b"]),
            }
        ),
    )


def test_keep_rule_on_hand_made_scores():
    out = apply_thresholds(scored_rows(), P=[0.2, 1.0])
    assert out["prune_reason"] == ["", "psi>=Psi", "rho<=P", "psi>=Psi;rho<=P", "not_generated", ""]
    assert out["keep"] == [True, False, False, False, False, True]
    # A single P applies to every target class; the last row now fails the rho rule.
    assert apply_thresholds(scored_rows(), P=0.5)["keep"] == [True, False, False, False, False, False]
    # Without the psi rule only rho decides.
    assert apply_thresholds(scored_rows(), P="0.2,1", psi_rule=False)["keep"] == [True, True, False, False, False, True]
    # Explicit Psi per source class replaces the saved psi_threshold.
    assert apply_thresholds(scored_rows(), P=[0.2, 1.0], Psi=[0.99, 0.4])["keep"] == [
        True, True, False, False, False, False
    ]


def test_keep_rule_boundaries_are_strict():
    assert prune_reason(0.5, 1.0, Psi_source=0.5, P_target=0.0) == "psi>=Psi"
    assert prune_reason(0.4, 1.0, Psi_source=0.5, P_target=1.0) == "rho<=P"
    assert prune_reason(0.4, float("nan"), Psi_source=0.5, P_target=0.0) == "not_generated"


def test_apply_thresholds_errors():
    with pytest.raises(ValueError, match="2 classes"):
        apply_thresholds(scored_rows(), P=[1, 2, 3])
    with pytest.raises(ValueError, match="rho"):
        apply_thresholds(scored_rows().remove_columns("rho"), P=1)


# ---------------------------------------------------------------- the stage


def test_score_edits_accounts_for_every_row_and_reuses_its_cache(tmp_path):
    model = linear_model()
    data = edit_rows(n=5, missing=(1, 3))
    config = PruningConfig(n_steps=4, batch_size=2, device="cpu")
    scored = score_edits(data, model, config, Psi=PSI, cache_dir=tmp_path / "cache")
    assert len(scored) == len(data)
    assert scored["example_id"] == data["example_id"]
    assert set(data.column_names) | {"psi", "rho", "psi_threshold", "ig_target", "score_status"} == set(
        scored.column_names)
    assert scored.features["psi"] == Value("float32") and scored.features["ig_target"] == Value("int32")
    rho = np.array(scored["rho"], dtype=float)
    assert np.isnan(rho[[1, 3]]).all() and np.isfinite(rho[[0, 2, 4]]).all()

    # Same input, settings, Psi and weights: served from the cache, the model is not called.
    def explode(*args):
        raise AssertionError("the model ran although the scores were cached")

    model.register_forward_pre_hook(explode)
    again = score_edits(data, model, PruningConfig(n_steps=4, batch_size=2, P=[5.0], device="cpu"), Psi=PSI,
                        cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(np.array(again["rho"], float), rho)


def test_weights_fingerprint_changes_with_the_weights_only():
    assert pruning.weights_fingerprint(tiny_resnet(seed=0)) == pruning.weights_fingerprint(tiny_resnet(seed=0))
    assert pruning.weights_fingerprint(tiny_resnet(seed=0)) != pruning.weights_fingerprint(tiny_resnet(seed=1))


def test_score_edits_resumable_matches_map(tmp_path):
    model = linear_model()
    data = edit_rows(n=5, missing=(2,))
    config = PruningConfig(n_steps=4, batch_size=2, device="cpu")
    by_map = score_edits(data, model, config, Psi=PSI)
    resumable = score_edits(data, model, config, Psi=PSI, output_dir=tmp_path / "run")
    assert resumable["example_id"] == by_map["example_id"]
    np.testing.assert_array_equal(np.array(resumable["rho"], float), np.array(by_map["rho"], float))


def test_rethreshold_a_saved_dataset_without_integrated_gradients(tmp_path, monkeypatch):
    model = linear_model()
    scored = score_edits(edit_rows(n=4, missing=(0,)), model, PruningConfig(n_steps=4, device="cpu"), Psi=PSI)
    scored.save_to_disk(tmp_path / "scored")

    def no_ig(*args, **kwargs):
        raise AssertionError("re-thresholding must not recompute integrated gradients")

    monkeypatch.setattr(pruning, "integrated_gradients", no_ig)
    monkeypatch.setattr(pruning, "IntegratedGradients", no_ig)
    rho = np.array(scored["rho"], float)
    lenient = rethreshold(tmp_path / "scored", P=float(np.nanmin(rho)) - 1, psi_rule=False)
    strict = rethreshold(tmp_path / "scored", P=float(np.nanmax(rho)) + 1)
    assert lenient["keep"] == [False, True, True, True]
    assert lenient["prune_reason"][0] == "not_generated"
    assert strict["keep"] == [False] * 4
    assert all("rho<=P" in r for r in strict["prune_reason"][1:])
    # Re-applying replaces the verdict columns instead of stacking them.
    twice = rethreshold(strict, P=float(np.nanmin(rho)) - 1, psi_rule=False)
    assert twice["keep"] == lenient["keep"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        rethreshold(tmp_path / "nowhere", P=1)


def test_score_batch_requires_eval_mode_and_aligned_sizes():
    model = linear_model()
    data = edit_rows(n=2, missing=())
    with pytest.raises(ValueError, match="training mode"):
        score_batch(data[:], model=model.train(), config=PruningConfig(n_steps=2), Psi=PSI)
    model.eval()
    batch = data[:]
    batch["generated"][0] = batch["generated"][0].resize((64, 64))
    with pytest.raises(ValueError, match="ex0"):
        score_batch(batch, model=model, config=PruningConfig(n_steps=2), Psi=PSI)


# ---------------------------------------------------------------- config


def test_config_parses_thresholds_and_validates():
    assert PruningConfig(P="2,0.3").P == [2.0, 0.3]
    assert PruningConfig(P=["2,0.3"]).P == [2.0, 0.3]
    assert PruningConfig(P=1).P == [1.0]
    assert parse_thresholds(["1", 0.5]) == [1.0, 0.5]
    for bad in ["a", "nan", ""]:
        with pytest.raises(ValueError, match="threshold"):
            PruningConfig(P=bad)
    with pytest.raises(ValueError, match="ig_target"):
        PruningConfig(ig_target="new")
    with pytest.raises(ValueError, match="method"):
        PruningConfig(method="simpson")
    with pytest.raises(ValueError, match="internal_batch_size"):
        PruningConfig(batch_size=32, internal_batch_size=16)
    (parsed,) = HfArgumentParser(PruningConfig).parse_args_into_dataclasses(
        ["--P", "2", "0.3", "--ig_target", "source", "--n_steps", "20"]
    )
    assert parsed.P == [2.0, 0.3] and parsed.ig_target == "source" and parsed.n_steps == 20


# ---------------------------------------------------------------- explanations


def test_explain_edit_matches_the_stage_and_draws_a_heatmap():
    model = linear_model()
    data = edit_rows(n=1, missing=())
    row = data[0]
    config = PruningConfig(n_steps=4)
    result = explain_edit(model, row["image"], row["generated"], row["generated_mask"], row["label"],
                          row["target_label"], config)
    stage = score_batch(data[:], model=model, config=config, Psi=PSI)
    assert result["rho"] == pytest.approx(stage["rho"][0], rel=1e-5)
    assert result["psi"] == pytest.approx(stage["psi"][0], rel=1e-5)
    assert result["attributions"].shape == (3, INPUT, INPUT)
    assert result["heatmap"].size == (INPUT, INPUT) and result["heatmap"].mode == "RGB"


def test_ig_heatmap_shows_the_image_where_nothing_is_attributed():
    rng = np.random.default_rng(4)
    image = random_image(rng, (16, 16))
    attributions = np.zeros((3, 16, 16))
    assert np.array_equal(np.asarray(ig_heatmap(attributions, image)), np.asarray(image))
    attributions[:, 4, 5] = -1.0
    signed = np.asarray(ig_heatmap(attributions, signed=True))
    unsigned = np.asarray(ig_heatmap(attributions))
    assert signed.shape == unsigned.shape == (16, 16, 3)
    assert signed[4, 5, 2] > signed[4, 5, 0]  # negative attribution is blue in RdBu_r
    assert unsigned[4, 5].sum() > unsigned[0, 0].sum()  # bright where attributed (inferno)
    with pytest.raises(ValueError, match="geometric_transform"):
        ig_heatmap(attributions, random_image(rng, (20, 16)))
