"""The baselines' known answers: JTT's error set and upsampling, DFR's balanced subset, its
regression and its frozen backbone, GroupDRO's group-weight update, group reweighting, and
the training loop's hooks they use (a loss object, per-sample sampling weights)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from dbb_hf.baselines import GroupDROLoss, GroupReweightedLoss, error_set, group_weights, upsample, upsampling_weights
from dbb_hf.baselines.dfr import DFRConfig, balanced_subset, extract_features, fit_logistic_regression, head, run_dfr
from dbb_hf.baselines.jtt import upsampled_indices
from dbb_hf.data import load_benchmark
from dbb_hf.modeling import ClassifierConfig, create_classifier, load_classifier, save_classifier
from dbb_hf.training import TrainingConfig, WeightedEpochSampler, train_classifier, worst_class_accuracy


def _scored(probs, labels):
    features = Features({"erm_probs": Sequence(Value("float32")), "label": ClassLabel(names=["a", "b", "c"]),
                         "example_id": Value("string")})
    return Dataset.from_dict({"erm_probs": probs, "label": labels, "example_id": [f"x{i}" for i in range(len(labels))]},
                             features=features)


# ---------------------------------------------------------------- JTT


def test_jtt_error_set_is_the_misclassified_training_images():
    scored = _scored([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]],
                     [0, 0, 2, 1, 1])
    assert error_set(scored).tolist() == [1, 3, 4]


def test_jtt_upsampling_puts_each_error_image_lambda_up_times():
    assert upsampled_indices(5, np.array([1, 3]), 3) == [0, 1, 2, 3, 4, 1, 3, 1, 3]
    assert upsampled_indices(4, np.array([2]), 1) == [0, 1, 2, 3]  # lambda_up = 1 is ERM
    scored = _scored([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], [0, 0, 2])
    up = upsample(scored, error_set(scored), lambda_up=4)
    counts = {e: up["example_id"].count(e) for e in scored["example_id"]}
    assert counts == {"x0": 1, "x1": 4, "x2": 1}
    with pytest.raises(ValueError, match="error-set indices"):
        upsampled_indices(3, np.array([3]), 2)


# ---------------------------------------------------------------- DFR


def test_dfr_balanced_subset_has_the_smallest_group_size_of_every_group():
    groups = np.array([0] * 7 + [1] * 2 + [2] * 4 + [3] * 3)
    rows = balanced_subset(groups, np.random.default_rng(0))
    assert np.bincount(groups[rows]).tolist() == [2, 2, 2, 2]
    assert len(set(rows.tolist())) == len(rows)  # no row twice
    again = balanced_subset(groups, np.random.default_rng(0))
    assert rows.tolist() == again.tolist()
    other = [balanced_subset(groups, np.random.default_rng(s)).tolist() for s in range(1, 6)]
    assert any(o != rows.tolist() for o in other)  # a random subset, not always the first rows


def test_dfr_logistic_regression_meets_the_l1_optimality_conditions():
    # sum_i CE_i + ||W||_1 / C: at the optimum, each nonzero weight's loss gradient is
    # -sign(w) / C and each zero weight's is at most 1 / C in size.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=200) > 0).astype(int)
    C = 0.1
    W, b = fit_logistic_regression(x, y, 2, C, max_iter=20000, tol=1e-12)
    logits = x @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gradient = (p - np.eye(2)[y]).T @ x  # d sum CE / d W
    nonzero = np.abs(W) > 1e-8
    assert nonzero.any() and not nonzero.all()  # the L1 term zeroes the noise features
    assert np.allclose(gradient[nonzero], -np.sign(W[nonzero]) / C, atol=1e-4)
    assert (np.abs(gradient[~nonzero]) <= 1 / C + 1e-4).all()
    assert np.allclose((p - np.eye(2)[y]).sum(0), 0, atol=1e-4)  # the intercept is not penalised
    assert ((logits.argmax(1) == y).mean()) > 0.9


def test_dfr_resets_only_the_last_layer_and_saves_a_timm_model(tmp_path):
    toy = load_benchmark("toy", num_train=40, num_validation=48, num_test=8)
    classifier = ClassifierConfig("resnet10t", pretrained=False, image_size=32, crop_pct=1.0)
    torch.manual_seed(0)
    source = tmp_path / "erm"
    save_classifier(create_classifier(classifier, 2), str(source), ["horizontal_bar", "vertical_bar"])
    before = load_classifier(str(source)).state_dict()
    out = run_dfr(str(source), toy["validation"], str(tmp_path / "dfr"), DFRConfig(num_retrains=3, max_iter=300))
    after = load_classifier(out)
    head_names = {f"{name}.{p}" for name, module in after.named_modules() if module is head(after) for p in ("weight", "bias")}
    for name, tensor in after.state_dict().items():
        if name in head_names:
            assert not torch.equal(tensor, before[name]), name  # the head is new
        else:
            assert torch.equal(tensor, before[name]), name  # the backbone is frozen
    # The saved head is the regression on the frozen features: the backbone's features of the
    # reloaded model, through the new layer, give the model's own logits.
    features = torch.as_tensor(extract_features(after, toy["validation"]), dtype=torch.float32)
    last = head(after)
    expected = features @ last.weight.T + last.bias
    pixels = torch.stack([t for t in _pixels(after, toy["validation"])])
    with torch.no_grad():
        assert torch.allclose(after(pixels), expected, atol=1e-4)


def _pixels(model, dataset):
    from dbb_hf.modeling import eval_transform

    transform = eval_transform(model)
    return [transform(image.convert("RGB")) for image in dataset["image"]]


# ---------------------------------------------------------------- GroupDRO


def test_groupdro_q_update_matches_a_hand_computation():
    loss_fn = GroupDROLoss(num_groups=3, eta=0.5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    groups = torch.tensor([0, 0, 1])  # group 2 is not in the batch
    ce = F.cross_entropy(logits, labels, reduction="none").double()
    L0, L1 = ce[:2].mean().item(), ce[2].item()
    q = np.array([1 / 3 * math.exp(0.5 * L0), 1 / 3 * math.exp(0.5 * L1), 1 / 3])
    q /= q.sum()
    loss = loss_fn(logits, {"label": labels, "group": groups})
    assert loss_fn.q.numpy() == pytest.approx(q, rel=1e-6)
    assert loss.item() == pytest.approx(q[0] * L0 + q[1] * L1, rel=1e-6)
    # A second step multiplies again, from the updated q.
    loss_fn(logits, {"label": labels, "group": groups})
    q2 = q * np.array([math.exp(0.5 * L0), math.exp(0.5 * L1), 1.0])
    assert loss_fn.q.numpy() == pytest.approx(q2 / q2.sum(), rel=1e-6)
    # The weights travel with the checkpoints.
    restored = GroupDROLoss(3, 0.5)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.q, loss_fn.q)


def test_groupdro_gradient_flows_to_the_logits():
    logits = torch.zeros(4, 2, requires_grad=True)
    GroupDROLoss(2, 0.01)(logits, {"label": torch.tensor([0, 1, 0, 1]), "group": torch.tensor([0, 1, 1, 1])}).backward()
    assert logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- group reweighting / upsampling


def test_group_weights_are_inverse_counts_averaging_one_over_present_groups():
    w = group_weights([10, 30, 0, 60])
    inverse = np.array([1 / 10, 1 / 30, 0, 1 / 60])
    assert w == pytest.approx(inverse / inverse.sum() * 3)
    assert w[2] == 0 and w[[0, 1, 3]].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        group_weights([0, 0])


def test_group_reweighted_loss_matches_a_hand_computation():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    labels, groups = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1])
    loss = GroupReweightedLoss([1, 2])(logits, {"label": labels, "group": groups})
    w = group_weights([1, 2])
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert loss.item() == pytest.approx((w[0] * ce[0] + w[1] * ce[1] + w[1] * ce[2]).item() / 3, rel=1e-6)


def test_upsampling_draws_every_group_equally_often():
    groups = np.array([0] * 90 + [1] * 10)
    weights = upsampling_weights(groups, 2)
    sampler = WeightedEpochSampler(weights, seed=0)
    drawn = np.concatenate([np.asarray(list(sampler)) for sampler.epoch in range(20)])
    assert abs((groups[drawn] == 1).mean() - 0.5) < 0.05
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # an epoch's draw depends on (seed, epoch) only: resumable
    sampler.set_epoch(4)
    assert list(sampler) != first
    with pytest.raises(ValueError, match="sample_weights"):
        WeightedEpochSampler([0.0, 0.0])


def test_training_hooks_reach_the_loop(tmp_path):
    toy = load_benchmark("toy", num_train=64, num_validation=16, num_test=8)
    seen = []

    def loss_fn(logits, batch):
        seen.append(batch["group"].tolist())
        return F.cross_entropy(logits, batch["label"])

    config = TrainingConfig(output_dir=str(tmp_path / "t"), num_epochs=1, train_batch_size=16, optimizer="adam",
                            augmentation="none", num_workers=0, selection_metric="worst_class_accuracy")
    only_group_3 = (np.asarray(toy["train"]["group"]) == 3).astype(float)
    result = train_classifier(toy["train"], toy["validation"], ClassifierConfig("resnet10t", pretrained=False,
                              image_size=32, crop_pct=1.0), config, loss_fn=loss_fn, sample_weights=only_group_3)
    assert len(seen) == 4 and {g for batch in seen for g in batch} == {3}  # the sampler draws group 3 only
    assert "worst_class_accuracy" in result.best_validation
    with pytest.raises(ValueError, match="sample_weights has 3 values"):
        train_classifier(toy["train"], toy["validation"], ClassifierConfig("resnet10t", pretrained=False),
                         TrainingConfig(output_dir=str(tmp_path / "u")), sample_weights=[1.0, 1.0, 1.0])


def test_worst_class_accuracy_needs_no_groups():
    assert worst_class_accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == pytest.approx(0.5)
