"""The resumable, sharded stage runner: every input row exactly once, in order, whatever
the shard size and wherever a previous run stopped."""

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
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"newer weights")
    assert local_models(str(tmp_path), "owner/hub-model") != before
