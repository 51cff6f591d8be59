"""`dbb-hf compare` on a small toy: every method over two seeds, the results files, the ERM model
shared by JTT, DFR and DBB, finished cells reused, the P sweep, and model selection without
any group label."""

import json
import shutil

import pytest

from dbb_hf.cli import main, run_compare
from dbb_hf.compare import METHODS, CompareConfig, parse_seeds
from dbb_hf.compare_pooling import paired, pooled_summary, run_cells
from dbb_hf.presets import demo_preset

# Eight methods over two seeds: a few minutes on an idle 2-core machine, more on a busy one.
pytestmark = pytest.mark.timeout(2400)

SMALL = [
    "--options", "num_train=128", "num_validation=64", "num_test=64", "correlation=0.98",
    "--erm_num_epochs", "1", "--retraining_num_epochs", "1", "--erm_train_batch_size", "32",
    "--retraining_train_batch_size", "32", "--pruning_n_steps", "4", "--num_grid_examples", "2",
    "--dfr_num_retrains", "2", "--dfr_max_iter", "200",
]


def _compare(out, *extra):
    return run_compare(["--output_dir", str(out), *SMALL, *extra], defaults=demo_preset("compose"))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    results = _compare(out, "--methods", ",".join(METHODS), "--seeds", "2", "--P_sweep", "0", "0.5")
    return out, results


def test_results_files_hold_every_method_over_every_seed(compared):
    out, results = compared
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == list(METHODS)
    for name, m in saved["methods"].items():
        assert m["seeds"] == [0, 1]
        for metric in ("worst_group_accuracy", "average_accuracy", "weighted_average_accuracy"):
            assert set(m[metric]) == {"mean", "std"}
            assert 0.0 <= m[metric]["mean"] <= 1.0 and m[metric]["std"] >= 0.0
        assert m["worst_group_accuracy"]["mean"] <= m["average_accuracy"]["mean"] + 1e-9
        assert len(m["per_group_accuracy"]) == 4
    used = {name: m["group_labels_used"] for name, m in saved["methods"].items()}
    assert used == {"erm": "validation", "reweight": "train", "upsample": "train", "groupdro": "train",
                    "jtt": "validation", "dfr": "validation", "dbb": "validation", "dbb_dfr": "validation"}
    table = (out / "results.md").read_text()
    for name in METHODS:
        assert f"| {name} | {used[name]} |" in table
    assert "## Test accuracy per group" in table and "horizontal_bar/water" in table
    assert (out / "results.png").stat().st_size > 1000
    # The std is over seeds: two different seeds give two different ERM models.
    erm_cells = [json.loads((out / "cells" / "erm" / f"seed_{s}.json").read_text()) for s in (0, 1)]
    assert erm_cells[0]["model_dir"] != erm_cells[1]["model_dir"]


def test_one_erm_model_per_seed_serves_jtt_dfr_and_dbb(compared):
    out, results = compared
    seed = out / "seed_0"
    assert (seed / "erm" / "model").is_dir() and (seed / "scores").is_dir()
    assert not (seed / "jtt_identification").exists()  # JTT's error set comes from the shared scores
    dfr = json.loads((seed / "dfr" / "model" / "dbb_hf.json").read_text())
    assert dfr["source_model"] == str(seed / "erm" / "model")
    dbb_dfr = json.loads((seed / "dbb_dfr" / "model" / "dbb_hf.json").read_text())
    assert dbb_dfr["source_model"] == str(seed / "retrained" / "model")
    jtt = results["methods"]["jtt"]["extra"][0]
    # The whole comparison's CPU time holds every cell's (each cell runs once here).
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*/seed_*.json")]
    assert results["cpu_seconds"] >= sum(cell["cpu_seconds"] for cell in cells) - 0.1 * len(cells)
    assert jtt["jtt_error_set"] == sum(jtt["jtt_error_set_groups"].values())
    # The run's own report shows the rho histograms of the kept and pruned edits.
    report = json.loads((seed / "report.json").read_text())
    assert set(report["rho_histograms"]) == {"horizontal_bar->vertical_bar", "vertical_bar->horizontal_bar"}
    assert (seed / "rho.png").exists() and "![rho](rho.png)" in (seed / "report.md").read_text()


def test_the_p_sweep_rethresholds_the_same_scores(compared):
    out, results = compared
    sweep = results["P_sweep"]
    assert list(sweep) == ["0", "0.5"]
    assert sweep["0"]["worst_group_accuracy"] == results["methods"]["dbb"]["worst_group_accuracy"]  # the run's P
    assert sweep["0.5"]["synthetic_rows"]["mean"] <= sweep["0"]["synthetic_rows"]["mean"]
    assert (out / "seed_0" / "dbb_P=0.5" / "retrained" / "model").is_dir()
    assert "## DBB per pruning threshold P" in (out / "results.md").read_text()


def test_a_rerun_reuses_every_finished_cell(compared):
    out, first = compared
    cell = out / "cells" / "jtt" / "seed_1.json"
    written = cell.stat().st_mtime_ns
    again = _compare(out, "--methods", "erm,jtt", "--seeds", "2")
    assert cell.stat().st_mtime_ns == written
    assert again["methods"]["jtt"] == {**first["methods"]["jtt"], "seconds": None, "cpu_seconds": None}


def test_a_changed_run_setting_recomputes_the_cells(compared, tmp_path):
    # --class_prompts, --erm_model, --augmented_dataset and --retrain_from_erm change what a
    # cell measures: a cell saved without them must not be reused.
    out = tmp_path / "copy"
    shutil.copytree(compared[0], out)
    cell = out / "cells" / "dbb" / "seed_0.json"
    before = json.loads(cell.read_text())
    again = _compare(out, "--methods", "erm,dbb", "--seeds", "1", "--retrain_from_erm", "false")
    after = json.loads(cell.read_text())
    assert after["fingerprint"] != before["fingerprint"]
    assert again["methods"]["dbb"]["seconds"] is not None  # computed in this run, not reused
    assert after["model_dir"].startswith(str(out))  # the copy's own retrained model, not the original's


def test_pooling_reads_the_cells_a_compare_wrote(compared):
    # The same folder listed as two "splits": the pooled mean is the folder's, and DBB
    # against itself ties on every cell (p = 1).
    out, results = compared
    folders = {"toy": [str(out), str(out)]}
    dbb = run_cells(folders, "toy:dbb")
    assert sorted(dbb) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    pooled = pooled_summary(dbb)["worst_group_accuracy"]
    assert pooled["mean"] == pytest.approx(results["methods"]["dbb"]["worst_group_accuracy"]["mean"])
    same = paired(dbb, run_cells(folders, "toy:dbb"))
    assert (same["ties"], same["p_value"]) == (4, 1.0)
    against_erm = paired(dbb, run_cells(folders, "toy:erm"))
    assert against_erm["n"] == 4 and against_erm["wins"] + against_erm["ties"] + against_erm["losses"] == 4


def test_model_selection_without_group_labels(tmp_path):
    results = _compare(tmp_path, "--methods", "erm,reweight,dfr", "--seeds", "1", "--model_selection", "worst_class")
    used = {name: m["group_labels_used"] for name, m in results["methods"].items()}
    assert used == {"erm": "none", "reweight": "train", "dfr": "none"}
    assert all(m["model_selection"] == "worst_class" for m in results["methods"].values())
    erm = json.loads((tmp_path / "seed_0" / "erm" / "model" / "dbb_hf.json").read_text())
    assert erm["selection_metric"] == "worst_class_accuracy"
    dfr = json.loads((tmp_path / "seed_0" / "dfr" / "model" / "dbb_hf.json").read_text())
    assert dfr["dfr"]["balance_by"] == "class"  # DFR balances classes, not groups
    assert "validation worst-class accuracy (no group labels)" in (tmp_path / "results.md").read_text()


def test_compare_config_checks_its_values():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "x", "1,1"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="unknown: \\['lisa'\\]"):
        CompareConfig(methods="erm,lisa")
    with pytest.raises(ValueError, match="model_selection"):
        CompareConfig(model_selection="oracle")
    with pytest.raises(ValueError, match="not a number"):
        CompareConfig(P_sweep=["two"])


def test_the_command_is_registered(capsys):
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--methods" in capsys.readouterr().out
