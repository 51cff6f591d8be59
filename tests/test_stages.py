"""The resumable, sharded stage runner: every input row exactly once, in order, whatever
the shard size and wherever a previous run stopped."""

import os

import pytest
from datasets import Dataset, Features, Value

from dbb_hf.stages import ShardPlan, run_resumable, source_signature

NEW = Features({"double": Value("int64")})


def _double(batch):
    return {"double": [2 * x for x in batch["x"]]}


def _run(dataset, out, shard_size, function=_double):
    return run_resumable(dataset, function, stage="double", config={"factor": 2}, new_features=NEW,
                         output_dir=out, shards=ShardPlan(shard_size), batch_size=2)


def test_rows_in_order_for_any_shard_size(tmp_path):
    dataset = Dataset.from_dict({"x": list(range(10))})
    for size in (1, 3, 10, 64):
        result = _run(dataset, tmp_path / f"s{size}", size)
        assert result["x"] == list(range(10)) and result["double"] == [2 * x for x in range(10)]


def test_rerun_with_another_shard_size_after_a_crash(tmp_path):
    dataset = Dataset.from_dict({"x": list(range(10))})
    calls = []

    def crash_after_one_shard(batch):
        if calls:
            raise RuntimeError("killed")
        calls.append(len(batch["x"]))
        return _double(batch)

    with pytest.raises(RuntimeError):
        _run(dataset, tmp_path, 3, crash_after_one_shard)  # batch 2 < shard 3: the 2nd batch crashes
    calls.clear()
    with pytest.raises(RuntimeError):
        _run(dataset, tmp_path, 2, crash_after_one_shard)  # shard 0 (rows 0-1) finished, then a crash
    result = _run(dataset, tmp_path, 4)  # rows cut by 4: no shard of size 2 or 3 may be reused
    assert result["x"] == list(range(10)) and result["double"] == [2 * x for x in range(10)]
    result = _run(dataset, tmp_path, 2)  # size 2 again: its finished shard is reused, the rest computed
    assert result["x"] == list(range(10)) and result["double"] == [2 * x for x in range(10)]


def test_source_signature_follows_the_files(tmp_path):
    assert source_signature(None) is None and source_signature("user/dataset-on-the-hub") is None
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"1")
    first = source_signature(tmp_path)
    assert source_signature(tmp_path) == first
    (tmp_path / "images" / "b.jpg").write_bytes(b"2")
    second = source_signature(tmp_path)
    assert second != first
    (tmp_path / "images" / "b.jpg").write_bytes(b"22")  # same name, new size
    assert source_signature(tmp_path) != second


def test_local_model_folders_join_the_fingerprint(tmp_path):
    from dbb_hf.pipeline import local_models

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"old")
    before = local_models(str(tmp_path), "owner/hub-model")
    assert before[0] is not None and before[1] is None  # Hub ids are pinned by id and revision
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"new")  # retrained in place, same size
    assert local_models(str(tmp_path), "owner/hub-model") != before
    # A clone, a reinstall or a restored workspace renews the files' times, not their bytes:
    # the stages made with the shipped priors stay reusable.
    now = local_models(str(tmp_path))
    os.utime(tmp_path / "unet" / "model.safetensors", ns=(1, 1))
    assert local_models(str(tmp_path)) == now


def test_a_run_reads_each_local_model_folder_once(tmp_path, monkeypatch):
    """The prior that learns the tokens and inpaints is one folder: config.yaml and every stage
    fingerprint take the digest resolved at the run's start (a local SD checkout is gigabytes)."""
    import dataclasses

    from dbb_hf import pipeline, revisions

    prior = tmp_path / "prior"
    (prior / "unet").mkdir(parents=True)
    (prior / "unet" / "model.safetensors").write_bytes(b"weights")
    pipe = _pipeline(tmp_path)
    for section in ("textual_inversion", "inpainting"):
        pipe.configs[section] = dataclasses.replace(pipe.configs[section], model_id=str(prior))
    pipe.given_configs = pipe.configs
    reads = []
    real = revisions.folder_digest
    monkeypatch.setattr(revisions, "folder_digest", lambda path: reads.append(path) or real(path))
    pipe.revisions = revisions.resolve_run(pipe.run, pipe.configs)
    assert pipe.revisions["textual_inversion"]["digest"] == pipe.revisions["inpainting"]["digest"] == real(prior)
    assert reads == [str(prior)]

    monkeypatch.setattr(pipeline, "folder_digest", lambda path: reads.append(path) or real(path))
    assert pipe._model_digests(str(prior), "owner/hub-model") == [real(prior), None]
    assert reads == [str(prior)]  # the stages read nothing more
    # A folder no role resolved (a given ERM model, say) is still read.
    other = tmp_path / "other"
    other.mkdir()
    assert pipe._model_digests(str(other)) == [real(other)] and reads[-1] == str(other)


# ---------------------------------------------------------------- column-only stage folders

def _pipeline(tmp_path):
    from dbb_hf.config import DataConfig
    from dbb_hf.pipeline import SECTIONS, Pipeline, RunConfig

    return Pipeline(DataConfig(), RunConfig(output_dir=str(tmp_path / "run")), {n: c() for n, c in SECTIONS.items()})


def _picture(value: int):
    from PIL import Image

    return Image.new("L", (4, 3), value)


def _edits():
    """Rows per (image, target), as from the selection on: two targets of image a."""
    from datasets import ClassLabel, Image

    features = Features({"example_id": Value("string"), "target_label": ClassLabel(num_classes=3),
                         "image": Image(), "mask": Image(), "label": Value("int64")})
    return Dataset.from_dict({"example_id": ["a", "a", "b", "c"], "target_label": [1, 2, 0, 0],
                              "image": [_picture(v) for v in (10, 10, 20, 30)],
                              "mask": [_picture(v) for v in (1, 1, 2, 3)], "label": [0, 0, 1, 2]}, features=features)


def _generate(dataset):
    """A stage that replaces the input's ``mask`` and adds an image column and a status."""
    from datasets import Image

    from dbb_hf.stages import map_new_columns

    def edit(batch):
        return {"mask": [_picture(255) for _ in batch["label"]],
                "generated": [_picture(100 + y) for y in batch["label"]],
                "status": [f"ok {t}" for t in batch["target_label"]]}

    return map_new_columns(dataset, edit, new_features={"mask": Image(), "generated": Image(), "status": Value("string")})


# What the generation stage of these tests writes, and the stage folder its input comes from.
GENERATION = {"written": ["mask", "generated", "status"], "source": "masks"}


def _table(dataset):
    return dataset.with_format("arrow")[:]


def test_a_stage_folder_keeps_only_its_own_columns_and_joins_to_the_whole_output(tmp_path):
    from datasets import load_from_disk

    run, base = _pipeline(tmp_path), _edits()
    expected, calls = _generate(base), []

    def compute(stage_dir):
        calls.append(stage_dir)
        return _generate(base)

    joined = run._cached_columns("generation", "fp", base, compute, **GENERATION)
    # The folder: the row keys and what the stage wrote (the replaced mask too); never the input's image.
    saved = load_from_disk(str(tmp_path / "run" / "generation"))
    assert saved.column_names == ["example_id", "target_label", "mask", "generated", "status"]
    # Joined back: what the whole output was, column for column and row for row.
    assert joined.column_names == ["example_id", "target_label", "image", "mask", "label", "generated", "status"]
    assert _table(joined).equals(_table(expected))
    assert [p.getpixel((0, 0)) for p in joined["mask"]] == [255] * 4  # the replaced column, not the input's
    # A rerun reads the folder and joins it again, computing nothing.
    again = run._cached_columns("generation", "fp", base, compute, **GENERATION)
    assert len(calls) == 1 and "generation" in run.reused and _table(again).equals(_table(expected))


def test_a_stage_folder_of_other_rows_is_refused_naming_it(tmp_path):
    run, base = _pipeline(tmp_path), _edits()
    run._cached_columns("generation", "fp", base, lambda d: _generate(base), **GENERATION)
    # Same fingerprint, other input rows (a folder copied from another run, or edited by hand).
    other = base.select([0, 2, 1, 3])
    with pytest.raises(ValueError, match=r"run/generation holds the columns of other rows .*row 1 has example_id "
                                         r"'a' where the input has 'b'.*Delete .*generation"):
        run._cached_columns("generation", "fp", other, lambda d: _generate(other), **GENERATION)


def test_a_stage_writing_an_undeclared_column_is_refused(tmp_path):
    run, base = _pipeline(tmp_path), _edits()
    with pytest.raises(ValueError, match=r"stage 'generation' returned columns .*can only keep \['mask', 'generated'\]"):
        # A new column the stage did not name would be missing from its folder.
        run._cached_columns("generation", "fp", base, lambda d: _generate(base), written=["mask", "generated"],
                            source="masks")
    with pytest.raises(ValueError, match=r"row 0 has example_id 'b'"):
        run._cached_columns("generation", "fp", base, lambda d: _generate(base.select([2, 1, 0, 3])), **GENERATION)


def test_a_whole_stage_folder_saved_by_an_older_version_is_still_read(tmp_path):
    from dbb_hf.stages import save_stage_output

    run, base = _pipeline(tmp_path), _edits()
    whole = _generate(base)
    save_stage_output(tmp_path / "run" / "pruning", whole, "fp-pruning")

    def compute(stage_dir):
        raise AssertionError("recomputed a stage whose whole output was saved")

    found = run._cached_columns("pruning", "fp-pruning", base, compute, **GENERATION)
    assert _table(found).equals(_table(whole)) and run.reused == ["pruning"]


def test_a_replaced_column_keeps_its_place_through_later_joins(tmp_path):
    from datasets import load_from_disk

    from dbb_hf.stages import join_columns

    Dataset.from_dict({"x": [1], "m": [2], "y": [3]}).save_to_disk(tmp_path / "a")
    Dataset.from_dict({"m": [9], "n": [4]}).save_to_disk(tmp_path / "b")
    replaced = join_columns(load_from_disk(tmp_path / "a"), load_from_disk(tmp_path / "b"))
    # A memory-mapped table reordered by select_columns went back to its old order at the next join.
    later = join_columns(replaced, Dataset.from_dict({"z": [5]}))
    assert later.column_names == ["x", "m", "y", "n", "z"] and later[0] == {"x": 1, "m": 9, "y": 3, "n": 4, "z": 5}
