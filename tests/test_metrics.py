import json
import os
import subprocess
import sys
import textwrap

import evaluate
import numpy as np
import pytest
import torch

from dbb_hf.metrics import METRIC_PATH, format_group_table, group_metrics, load_worst_group_accuracy

NAMES = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Keep evaluate's copies of the module and its cache folders out of the home folder."""
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(sys, "path", list(sys.path))  # evaluate appends the modules cache to it
    return tmp_path / "metrics"


def test_known_answer_per_group(cache):
    # group 0: 3/4 right, group 1: 1/2, group 2: 0/1, group 3: 2/3
    references = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    predictions = [0, 0, 0, 1, 0, 1, 0, 1, 1, 0]
    groups = [0, 0, 0, 0, 1, 1, 2, 3, 3, 3]
    result = group_metrics(predictions, references, groups, group_names=NAMES, cache_dir=cache)
    assert result["per_group_accuracy"] == pytest.approx(
        {"landbird/land": 3 / 4, "landbird/water": 1 / 2, "waterbird/land": 0.0, "waterbird/water": 2 / 3}
    )
    assert list(result["group_counts"].values()) == [4, 2, 1, 3]
    assert result["worst_group"] == "waterbird/land"
    assert result["worst_group_accuracy"] == 0.0
    assert result["average_accuracy"] == pytest.approx(6 / 10)
    assert result["weighted_average_accuracy"] is None
    json.dumps(result)


def test_absent_group_is_none_and_not_the_worst(cache):
    # group 2 has no samples; every present group is >= 1/2 right
    references = [0, 0, 0, 1, 1]
    predictions = [0, 1, 0, 1, 1]
    groups = [0, 0, 1, 3, 3]
    result = group_metrics(predictions, references, groups, group_names=NAMES, cache_dir=cache)
    assert result["per_group_accuracy"]["waterbird/land"] is None
    assert result["group_counts"]["waterbird/land"] == 0
    assert result["worst_group"] == "landbird/land"
    assert result["worst_group_accuracy"] == pytest.approx(0.5)
    table = format_group_table(result)
    assert "| waterbird/land | 0 | absent |" in table
    assert "| landbird/land | 2 | 0.5000 |" in table
    assert "| **worst group** (landbird/land) | 2 | 0.5000 |" in table
    assert "| **average** (pooled) | 5 | 0.8000 |" in table


def test_groups_beyond_the_samples_need_group_names(cache):
    result = group_metrics([1, 1], [1, 0], [0, 1], cache_dir=cache)
    assert list(result["per_group_accuracy"]) == ["0", "1"]
    with pytest.raises(ValueError, match="out of range"):
        group_metrics([1, 1], [1, 0], [0, 4], group_names=NAMES, cache_dir=cache)


def test_weighted_average_by_training_groups(cache):
    # Waterbirds training counts; accuracies 1.0, 0.5, 0.0, 0.75
    counts = [3498, 184, 56, 1018]
    references = [0, 0, 0, 1, 1, 1, 1, 1]
    predictions = [0, 0, 1, 0, 1, 1, 1, 0]
    groups = [0, 1, 1, 2, 3, 3, 3, 3]
    result = group_metrics(predictions, references, groups, NAMES, train_group_counts=counts, cache_dir=cache)
    expected = (3498 * 1.0 + 184 * 0.5 + 56 * 0.0 + 1018 * 0.75) / sum(counts)
    assert result["weighted_average_accuracy"] == pytest.approx(expected)
    assert result["average_accuracy"] == pytest.approx(5 / 8)
    by_name = dict(zip(NAMES, counts))
    assert group_metrics(
        predictions, references, groups, group_names=NAMES, train_group_counts=by_name, cache_dir=cache
    )["weighted_average_accuracy"] == pytest.approx(expected)


def test_weighted_average_renormalises_over_groups_present(cache):
    counts = {0: 3498, 1: 184, 2: 56, 3: 1018}
    references = [0, 0, 1, 1]
    predictions = [0, 1, 1, 0]
    groups = [0, 1, 3, 3]  # group 2 absent
    result = group_metrics(predictions, references, groups, NAMES, train_group_counts=counts, cache_dir=cache)
    expected = (3498 * 1.0 + 184 * 0.0 + 1018 * 0.5) / (3498 + 184 + 1018)
    assert result["weighted_average_accuracy"] == pytest.approx(expected)
    assert "weighted by training groups" in format_group_table(result)


def test_weighted_average_is_absent_when_no_evaluated_group_was_trained_on(cache):
    # MetaShift in the DISC setup: training groups cat/sofa, cat/bed, dog/bench, dog/bike;
    # validation and test only cat/shelf and dog/shelf. The weighted average has nothing to
    # weight by: it is None ("n/a"), the other metrics are computed as usual.
    names = ["cat/bed", "cat/shelf", "cat/sofa", "dog/bench", "dog/bike", "dog/shelf"]
    train_counts = {"cat/bed": 380, "cat/sofa": 231, "dog/bench": 145, "dog/bike": 367}
    result = group_metrics([0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 5, 5], group_names=names,
                           train_group_counts=train_counts, cache_dir=cache)
    assert result["weighted_average_accuracy"] is None
    assert result["worst_group"] == "cat/shelf" and result["worst_group_accuracy"] == 0.5
    assert result["average_accuracy"] == 0.75
    assert "| **average** (weighted by training groups) | 4 | n/a |" in format_group_table(result)
    # One evaluated group with training weight is enough for an average over it alone.
    partial = group_metrics([0], [0], [0], group_names=NAMES, train_group_counts=[5, 0, 0, 0], cache_dir=cache)
    assert partial["weighted_average_accuracy"] == 1.0


def test_bad_train_group_counts(cache):
    with pytest.raises(ValueError, match="3 entries but there are 4 groups"):
        group_metrics([0], [0], [0], group_names=NAMES, train_group_counts=[1, 2, 3], cache_dir=cache)
    with pytest.raises(ValueError, match="'bird'"):
        group_metrics([0], [0], [0], group_names=NAMES, train_group_counts={"bird": 3}, cache_dir=cache)


def test_length_mismatch_is_a_clear_error(cache):
    with pytest.raises(ValueError, match="same length"):
        group_metrics([0, 1, 1], [0, 1], [0, 1, 1], cache_dir=cache)
    metric = load_worst_group_accuracy(cache)
    with pytest.raises(ValueError, match=r"predictions \(3\) and references \(2\)"):
        metric.compute(predictions=[0, 1, 1], references=[0, 1], groups=[0, 1, 1])


def test_tensors_and_arrays_are_accepted(cache):
    result = group_metrics(torch.tensor([1, 0]), np.array([1, 1]), torch.tensor([0, 1]), cache_dir=cache)
    assert result["per_group_accuracy"] == {"0": 1.0, "1": 0.0}


def test_batches_accumulate_like_evaluate_metrics(cache):
    metric = load_worst_group_accuracy(cache)
    metric.add_batch(predictions=[0, 1], references=[0, 0], groups=[0, 0])
    metric.add_batch(predictions=[1], references=[1], groups=[1])
    result = metric.compute(group_names=["a", "b"])
    assert result["per_group_accuracy"] == {"a": 0.5, "b": 1.0}


def test_module_cache_in_two_tmp_dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("first", "second"):
        modules = tmp_path / name / "modules"
        monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", modules)
        metric = load_worst_group_accuracy(tmp_path / name / "metrics")
        assert metric.compute(predictions=[1, 0], references=[1, 1], groups=[0, 1])["worst_group"] == "1"
        copies = list(modules.glob("evaluate_modules/metrics/worst_group_accuracy/*/worst_group_accuracy.py"))
        assert len(copies) == 1


def test_loads_offline_from_the_folder_in_a_fresh_process(tmp_path):
    # Offline switches are read when evaluate is imported, hence a fresh interpreter.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    script = textwrap.dedent(
        f"""
        import json, evaluate
        metric = evaluate.load({METRIC_PATH!r}, keep_in_memory=True)
        print(json.dumps(metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], groups=[0, 1, 1])))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["per_group_accuracy"] == {"0": 1.0, "1": 0.5}
    assert (tmp_path / "modules" / "evaluate_modules").is_dir()
