"""Pooling `dbb-hf compare` folders of several splits: known-answer means, the paired
differences and their exact sign-flip p-value, and errors that name the folder or cell."""

import json

import pytest

from dbb_hf.compare import saved_cells
from dbb_hf.compare_pooling import paired, pooled_markdown, pooled_summary, run_cells, sign_flip_p_value


def _cell(folder, method, seed, worst, average=0.9):
    path = folder / "cells" / method / f"seed_{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    test = {"worst_group_accuracy": worst, "average_accuracy": average, "weighted_average_accuracy": average}
    path.write_text(json.dumps({"method": method, "seed": seed, "test": test}))


@pytest.fixture
def folders(tmp_path):
    """Two splits of two seeds each; on the 4 cells dbb - erm is +0.3, +0.1, +0.2, -0.1."""
    splits = [tmp_path / "split0", tmp_path / "split1"]
    for folder, (erm, dbb) in zip(splits, [((0.5, 0.6), (0.8, 0.7)), ((0.4, 0.7), (0.6, 0.6))]):
        for seed in (0, 1):
            _cell(folder, "erm", seed, erm[seed])
            _cell(folder, "dbb", seed, dbb[seed])
    return {"a": [str(p) for p in splits]}


@pytest.mark.parametrize("differences, p", [
    ([1.0, 1.0, 1.0], 2 / 8),            # only the two all-same-sign flips reach the observed mean
    ([3.0, 1.0], 2 / 4),                 # flipping the 1 alone keeps |mean| at 1 < 2
    ([0.1, -0.1], 1.0),                  # observed mean 0: every flip is as far
    ([0.2, 0.1, 0.3, 0.05, 0.15], 2 / 32),
])
def test_sign_flip_p_value_known_answers(differences, p):
    assert sign_flip_p_value(differences) == pytest.approx(p)


def test_pooled_mean_and_paired_differences(folders):
    dbb, erm = run_cells(folders, "a:dbb"), run_cells(folders, "a:erm")
    assert sorted(dbb) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    summary = pooled_summary(dbb)
    assert summary["worst_group_accuracy"]["mean"] == pytest.approx(0.675)
    assert summary["worst_group_accuracy"]["n"] == 4
    assert [s["mean"] for s in summary["per_split_worst_group"]] == pytest.approx([0.75, 0.6])
    p = paired(dbb, erm)
    assert p["differences"] == pytest.approx([0.3, 0.1, 0.2, -0.1])
    assert p["mean"] == pytest.approx(0.125)
    assert (p["wins"], p["ties"], p["losses"]) == (3, 0, 1)
    # 16 flips of (0.3, 0.1, 0.2, -0.1); |sum| >= 0.5 for (+ + + +), (+ + + -) and (+ - + -), and their mirrors.
    assert p["p_value"] == pytest.approx(6 / 16)
    table = pooled_markdown(folders, ["a:erm", "a:dbb"], [("a:dbb", "a:erm")])
    assert "| a:dbb | 4 | 67.5 ± " in table and "| a:dbb | a:erm | 4 | +12.5 ± " in table and "| 3 / 0 / 1 | 0.375 |" in table


def test_pairs_only_the_cells_both_runs_have(folders, tmp_path):
    other = tmp_path / "other"
    _cell(other, "dbb", 1, 0.5)  # split 0, seed 1 only
    p = paired(run_cells(folders, "a:dbb"), run_cells({"b": [str(other)]}, "b:dbb"))
    assert p["cells"] == [(0, 1)] and p["differences"] == pytest.approx([0.2])


def test_errors_name_the_folder_the_method_and_the_cell(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no cells/ folder"):
        saved_cells(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no 'jtt' cells \\(it has: dbb, erm\\)"):
        run_cells(folders, "a:jtt")
    with pytest.raises(ValueError, match="no folders are labelled 'b'"):
        run_cells(folders, "b:dbb")
    with pytest.raises(ValueError, match="LABEL:METHOD"):
        run_cells(folders, "dbb")
    bad = tmp_path / "split0" / "cells" / "erm" / "seed_0.json"
    bad.write_text('{"seed": 0}')
    with pytest.raises(ValueError, match="seed_0.json: not a compare cell"):
        saved_cells(tmp_path / "split0")
