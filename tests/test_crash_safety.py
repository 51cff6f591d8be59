"""Crash safety and determinism of the whole pipeline, in real processes.

A small run (toy benchmark, tiny Stable Diffusion, textual inversion, integrated-gradient
pruning, two epochs of ERM and of retraining) is killed with SIGKILL at points inside
every stage and rerun until it finishes; its artifacts must equal those of a run that
was never interrupted: the augmented dataset (every row, image bytes included), the ERM
and retrained weights, the learned tokens and the report's numbers. The runs are made
by ``tests/crash_runner.py``, which wraps library functions from the outside to pick the
kill points.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk
from safetensors import safe_open

from dbb_hf.augmented import load_augmented
from dbb_hf.stages import finish_interrupted_save, load_stage_output, save_stage_output

RUNNER = Path(__file__).with_name("crash_runner.py")
VOLATILE_REPORT_KEYS = ("timings_seconds", "reused_stages")


def run_plan(tmp: Path, models: Path, plan: list[dict]) -> list[int]:
    plan_file = tmp / f"plan-{len(list(tmp.glob('plan-*')))}.json"
    plan_file.write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, str(RUNNER), str(models), str(plan_file)],
                            env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("STATUSES ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(lines[-1][len("STATUSES "):])


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def finished_ok(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_content(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def artifacts(out: Path) -> dict:
    """Everything a user takes away from a run, in comparable form."""
    augmented = load_augmented(out)  # augmented/'s synthetic split and the data stage's real splits
    report = json.loads((out / "report.json").read_text())
    return {
        "augmented": {name: split.data.table for name, split in augmented.items()},
        "pruning": load_from_disk(str(out / "pruning")).data.table,  # the scores and verdicts, by row key
        # Files compared byte for byte; the token file by content (every tensor's bytes
        # and the metadata), which is what loading it reads.
        "weights": {name: sha256(out / name) for name in ("erm/model/model.safetensors", "retrained/model/model.safetensors")},
        "tokens": safetensors_content(out / "tokens" / "learned_embeds.safetensors"),
        "report": {k: v for k, v in report.items() if k not in VOLATILE_REPORT_KEYS},
    }


def _same_table(a: pa.Table, b: pa.Table, what: str, rounding: tuple[str, ...]) -> None:
    """Equal tables; the ``rounding`` float columns equal up to float rounding only."""
    rounded = [c for c in rounding if c in a.column_names]
    assert a.drop_columns(rounded).equals(b.drop_columns(rounded)), f"{what} differs"
    for column in rounded:
        x, y = (np.asarray(t[column].to_pylist(), dtype=np.float64) for t in (a, b))
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8, err_msg=f"{what}: {column}")


def assert_same_artifacts(a: dict, b: dict, rounding: tuple[str, ...] = ()) -> None:
    assert set(a["augmented"]) == set(b["augmented"])
    for name, table in a["augmented"].items():
        _same_table(table, b["augmented"][name], f"augmented[{name!r}]", rounding)
    _same_table(a["pruning"], b["pruning"], "the pruning scores", rounding)
    assert a["weights"] == b["weights"]
    assert a["tokens"] == b["tokens"]
    assert a["report"] == b["report"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (which also builds the tiny models)."""
    tmp = tmp_path_factory.mktemp("crash")
    models, out = tmp / "models", tmp / "reference"
    assert [finished_ok(s) for s in run_plan(tmp, models, [{"out": str(out)}])] == [True]
    return tmp, models, out, artifacts(out)


# Kill points in pipeline order. The run is killed at each in turn and rerun; every rerun
# resumes what the previous ones finished, and the next kill comes further on.
KILL_POINTS = [
    "saved:.data.tmp:1",                                   # data: temp folder written, not renamed
    "call:dbb_hf.training.dbb_loss@erm:3",                 # ERM: mid epoch 1
    "return:timm.models.save_for_hf@erm:1",                # ERM: epoch 1 model half saved (weights, no card)
    "return:accelerate.Accelerator.save_state@erm:1",      # ERM: checkpoint 1 written but not marked done
    "return:dbb_hf.training._save_checkpoint@erm:1",       # ERM: just after checkpoint 1
    "call:dbb_hf.training.dbb_loss@erm:2",                 # ERM: mid epoch 2 (resumed)
    "saved:.scores.tmp:1",                                 # scores: stage folder written (once), not renamed
    "call:dbb_hf.textual_inversion.train._diffusion_loss:2",  # textual inversion: step 2 of class 0
    "replaced:tokens/horizontal_bar/learned_embeds.safetensors:1",  # one class's token done
    "call:dbb_hf.textual_inversion.train._diffusion_loss:3",  # textual inversion: last step of class 1
    "replaced:masks/shards:1",                             # masks: 1 of 2 shards done
    "saved:.masks.tmp:1",                                  # masks: stage folder written, not renamed
    "call:dbb_hf.inpainting.inpaint_batch:2",              # generation: mid shard 0
    "saved:generation/shards:1",                           # generation: shard written, not renamed
    "replaced:generation/shards:2",                        # generation: both shards done, stage not saved
    "replaced:.generation.old:1",                          # generation: old folder moved away, new not in
    "call:dbb_hf.pruning.score_batch:3",                   # pruning: mid shard
    "saved:.pruning.tmp:1",                                # pruning: stage folder written, not renamed
    "saved:.augmented.tmp:1",                              # augmented dataset written, not renamed
    "call:dbb_hf.training.dbb_loss@retrained:7",           # retraining: mid epoch 2
    "return:dbb_hf.training._save_checkpoint@retrained:1",  # retraining: after its last checkpoint
    "replaced:evaluation.json:1",                          # evaluation saved, report not written
    "replaced:report.json:1",                              # report.json written, report.md not
]


def test_killed_at_every_stage_and_rerun_gives_the_uninterrupted_result(reference):
    tmp, models, ref_out, expected = reference
    keep = expected["pruning"]["keep"].to_pylist()
    assert 0 < sum(keep) < len(keep)  # the run keeps some edits and prunes others
    out = tmp / "killed"
    plan = [{"out": str(out), "kill": point} for point in KILL_POINTS] + [{"out": str(out)}]
    statuses = run_plan(tmp, models, plan)
    # Every kill point was reached (the run died there), and the last rerun finished.
    assert [killed(s) for s in statuses[:-1]] == [True] * len(KILL_POINTS), list(zip(KILL_POINTS, statuses))
    assert finished_ok(statuses[-1])
    assert_same_artifacts(artifacts(out), expected)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and (".tmp" in p.name or ".old" in p.name)]
    assert leftovers == []


def file_hashes(out: Path) -> dict:
    """sha256 of the data and weight files a user takes away: the datasets' Arrow files and
    their JSON descriptions (data/ holds the augmented dataset's real splits), the models' weights (safetensors with one metadata key) and
    configs. (``stage.json`` holds timings and ``dbb_hf.json`` the output folder: not hashed.)"""
    names = ("dataset_info.json", "state.json", "dataset_dict.json", "config.json")
    files = [p for folder in ("data", "augmented", "erm/model", "retrained/model") for p in sorted((out / folder).rglob("*"))]
    return {str(p.relative_to(out)): sha256(p) for p in files if p.suffix in (".arrow", ".safetensors") or p.name in names}


# Settings that must not change any result: evaluation batch size (model selection),
# masking, inpainting and integrated-gradient batch sizes, and the shard size.
OTHER_BATCHING = [
    "--erm_eval_batch_size", "5", "--retraining_eval_batch_size", "7", "--masking_batch_size", "3",
    "--inpainting_batch_size", "3", "--pruning_batch_size", "3", "--pruning_internal_batch_size", "5",
    "--shard_size", "3",
]


@pytest.fixture(scope="module")
def more_runs(reference):
    """From one runner process: the same config again, other batching, and a copy of the
    reference rerun with another retraining config (one epoch instead of two)."""
    tmp, models, ref_out, _ = reference
    runs = {"again": tmp / "again", "rebatched": tmp / "rebatched", "changed": tmp / "changed"}
    shutil.copytree(ref_out, runs["changed"])
    statuses = run_plan(tmp, models, [
        {"out": str(runs["again"])},
        {"out": str(runs["rebatched"]), "flags": OTHER_BATCHING},
        {"out": str(runs["changed"]), "flags": ["--retraining_num_epochs", "1"]},
    ])
    assert [finished_ok(s) for s in statuses] == [True, True, True]
    return runs


def test_same_seed_and_config_give_bit_identical_artifacts(reference, more_runs):
    _, _, ref_out, expected = reference
    assert file_hashes(more_runs["again"]) == file_hashes(ref_out)
    assert_same_artifacts(artifacts(more_runs["again"]), expected)


def test_batch_and_shard_sizes_do_not_change_the_results(reference, more_runs):
    # A CPU convolution's result depends on the batch it is computed in by float rounding
    # (oneDNN blocks the work by batch size: ~1e-8 on a logit), so psi and rho (integrated
    # gradients: the scaled inputs are chunked by internal_batch_size) match to rounding;
    # every decision made from them (kept or pruned, why) and every image, label and weight
    # is identical.
    assert_same_artifacts(artifacts(more_runs["rebatched"]), reference[3], rounding=("psi", "rho"))


def test_a_changed_config_never_resumes_from_another_configs_checkpoints(more_runs):
    # The copied folder holds the two-epoch retraining's checkpoints; the one-epoch run
    # must train afresh, not resume from them (which would end at once, keeping the old model).
    retrained = more_runs["changed"] / "retrained"
    assert json.loads((retrained / "model" / "dbb_hf.json").read_text())["training"]["num_epochs"] == 1
    assert sorted(p.name for p in (retrained / "checkpoints").iterdir()) == ["epoch_1"]
    report = json.loads((more_runs["changed"] / "report.json").read_text())
    assert "retrained" not in report["reused_stages"] and "erm" in report["reused_stages"]


def test_a_save_stopped_between_its_renames_is_completed_not_recomputed(tmp_path):
    stage_dir = tmp_path / "generation"
    save_stage_output(stage_dir, Dataset.from_dict({"x": [1, 2]}), "old")
    # Killed in save_stage_output after moving the old output away, before moving the new in.
    tmp, old = tmp_path / ".generation.tmp", tmp_path / ".generation.old"
    Dataset.from_dict({"x": [3, 4, 5]}).save_to_disk(tmp)
    (tmp / "stage.json").write_text(json.dumps({"fingerprint": "new"}))
    os.replace(stage_dir, old)
    finish_interrupted_save(stage_dir)
    assert load_stage_output(stage_dir, "new")["x"] == [3, 4, 5]
    assert not tmp.exists() and not old.exists()
    # A temporary folder without its stage.json is incomplete: deleted, the output kept.
    Dataset.from_dict({"x": [6]}).save_to_disk(tmp)
    finish_interrupted_save(stage_dir)
    assert load_stage_output(stage_dir, "new")["x"] == [3, 4, 5] and not tmp.exists()
