"""`accelerate launch recipes/celeba.py --preset tiny` end to end, on one and on two CPU
processes, against a small CelebA folder in the official layout written by the test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["Blond_Hair", "Eyeglasses", "Male"]


def write_celeba(root: Path, num_identities=16, per_identity=3) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for identity in range(num_identities):
        blond, male = (identity % 4) // 2, identity % 2
        for k in range(per_identity):
            index = identity * per_identity + k + 1
            rows.append((f"{index:06d}.jpg", blond, male, [0, 0, 1, 2][index % 4], identity))
    (root / "img_align_celeba").mkdir(parents=True)
    for name, blond, male, _, _ in rows:
        pixels = rng.integers(0, 255, (44, 36, 3), dtype=np.uint8)
        pixels[:12] = (230, 200, 80) if blond else (60, 40, 20)  # "hair"
        Image.fromarray(pixels).save(root / "img_align_celeba" / name)
    sign = lambda v: 1 if v else -1  # noqa: E731
    lines = [f"{len(rows)}", " ".join(ATTRIBUTES)]
    lines += [f"{n} {sign(b):2d} {sign(False):2d} {sign(m):2d}" for n, b, m, _, _ in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, _, p, _ in rows))
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, _, _, _, i in rows))
    return root


def accelerate_config(path: Path, num_processes: int) -> Path:
    path.write_text(
        "compute_environment: LOCAL_MACHINE\n"
        f"distributed_type: {'MULTI_CPU' if num_processes > 1 else 'NO'}\n"
        f"num_processes: {num_processes}\n"
        "num_machines: 1\nmachine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\n"
        "use_cpu: true\nrdzv_backend: static\nsame_network: true\n"
    )
    return path


def launch(tmp_path: Path, data_dir: Path, out: Path, num_processes: int):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config(tmp_path / f"accelerate-{num_processes}.yaml", num_processes)),
        str(REPO / "recipes" / "celeba.py"), "--preset", "tiny",
        "--data_dir", str(data_dir), "--output_dir", str(out),
        "--options", "split_by_identity=true", "--erm_num_epochs", "1", "--retraining_num_epochs", "1",
    ]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_celeba(tmp_path_factory.mktemp("data") / "celeba")


def _generated(out: Path):
    ds = load_from_disk(str(out / "generation"))
    return {
        row["example_id"]: (row["target_label"], row["generation_status"], np.asarray(row["generated"]).tobytes()
                            if row["generated"] is not None else None)
        for row in ds
    }


def test_recipe_runs_end_to_end_and_two_processes_generate_the_same_set(celeba, tmp_path):
    one = tmp_path / "one"
    launch(tmp_path, celeba, one, 1)
    report = json.loads((one / "report.json").read_text())
    assert {"erm", "retrained"} <= set(report)
    for model in ("erm", "retrained"):
        assert 0.0 <= report[model]["worst_group_accuracy"] <= 1.0
    assert set(report["erm"]["per_group_accuracy"]) == {"not_blond/female", "not_blond/male", "blond/female", "blond/male"}
    for name in ("not_blond", "blond"):
        assert (one / "tokens" / name / "learned_embeds.safetensors").exists()
    augmented = load_from_disk(str(one / "augmented"))
    assert set(augmented) == {"train", "synthetic", "validation", "test"}
    generated = _generated(one)
    assert len(generated) == 6  # 3 lowest-loss images per class
    assert any(status == "ok" for _, status, _ in generated.values())
    edits = load_from_disk(str(one / "generation"))
    for prompt, target in zip(edits["prompt"], edits["target_label"]):
        assert prompt == f"A photo of a <dbb-{['not_blond', 'blond'][target]}> hair"

    two = tmp_path / "two"
    launch(tmp_path, celeba, two, 2)
    assert _generated(two) == generated
