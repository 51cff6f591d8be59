"""What a full-size GPU run relies on, checked on the CPU: TF32 on CUDA devices, the
attention switch, integrated gradients sized from free memory, every model of a stage
freed before the next stage loads its own, the scores stage written once, and under
``accelerate launch`` the data decoded by the main process only, scoring and evaluation
shared by the processes, and the barrier timeout the run asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Image as ImageFeature, load_from_disk

import dbb_hf.pipeline as pipeline_module
import dbb_hf.textual_inversion.train as ti_train
from dbb_hf.config import DataConfig, resolve_layers
from dbb_hf.data.toy import LABEL_NAMES, ToyConfig, load_toy
from dbb_hf.devices import TF32_VARIABLE, resolve_device, use_tf32
from dbb_hf.images import keep_rows, verify_images
from dbb_hf.inpainting import InpaintingConfig, inpaint_batch, load_inpainting_pipeline
from dbb_hf.modeling import ClassifierConfig, create_classifier, save_classifier
from dbb_hf.pipeline import SECTIONS, Pipeline, RunConfig
from dbb_hf.pruning import (
    BACKWARD_OVERHEAD, MEMORY_FRACTION, PruningConfig, activation_bytes_per_image, auto_internal_batch_size,
    score_batch,
)
from dbb_hf.selection import score_dataset
from dbb_hf.training import evaluate_split

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER = ClassifierConfig("resnet10t", pretrained=False, image_size=32, crop_pct=1.0)


@pytest.fixture(scope="module")
def toy():
    return load_toy(ToyConfig(num_train=21, num_validation=13, num_test=8, seed=4))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from dbb_hf.presets import build_tiny_models

    # Where the tiny preset's builder keeps them for the run folder tiny_pipeline builds under.
    return build_tiny_models(tmp_path_factory.mktemp("tiny-root") / "tiny_models")


def classifier(seed: int = 0):
    torch.manual_seed(seed)
    return create_classifier(CLASSIFIER, num_classes=2).eval()


# ------------------------------------------------------------------ precision and kernels


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_cuda_devices_get_tf32_matmuls_and_the_cpu_is_left_alone(tf32_flags, monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    monkeypatch.setenv(TF32_VARIABLE, "0")
    assert use_tf32("cuda") is False and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.delenv(TF32_VARIABLE)
    # Every stage places its models through resolve_device (no GPU is needed to set the flags).
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_the_attention_kernel_is_switched_and_both_kernels_paint_the_same(tiny_models, toy):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    rows = toy["train"].select(range(2))
    batch = {"image": rows["image"], "mask": rows["mask"], "target_label": [1 - y for y in rows["label"]],
             "example_id": rows["example_id"]}
    painted = {}
    for attention, processor in (("sdpa", AttnProcessor2_0), ("eager", AttnProcessor)):
        config = InpaintingConfig(model_id=tiny_models["inpaint"], attention=attention, num_inference_steps=2,
                                  resolution=32)
        pipe = load_inpainting_pipeline(config, "cpu")
        for model in (pipe.unet, pipe.vae):
            assert {type(p) for p in model.attn_processors.values()} == {processor}
        out = inpaint_batch(batch, pipe=pipe, config=config, class_names=["flat bar", "upright bar"],
                            tokens=["flat", "upright"])
        painted[attention] = np.stack([np.asarray(image, np.int16) for image in out["generated"]])
    assert np.abs(painted["sdpa"] - painted["eager"]).max() <= 1  # the same maths, rounding apart
    with pytest.raises(ValueError, match="attention must be one of"):
        InpaintingConfig(attention="flash")
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the xformers package"):
            InpaintingConfig(attention="xformers")


# ------------------------------------------------------------------ integrated gradients sized from memory


def test_ig_passes_are_sized_from_free_memory_without_changing_the_scores(toy):
    model = classifier()
    per_image = activation_bytes_per_image(model)
    larger = create_classifier(ClassifierConfig("resnet10t", pretrained=False, image_size=64, crop_pct=1.0), 2).eval()
    assert 3.5 < activation_bytes_per_image(larger) / per_image < 4.5  # activations grow with the pixels
    config = PruningConfig(batch_size=4, n_steps=8)
    assert config.internal_batch_size == "auto" == PruningConfig().internal_batch_size
    ten_images = int(10 * per_image * BACKWARD_OVERHEAD / MEMORY_FRACTION) + 1
    assert auto_internal_batch_size(model, config, free_bytes=ten_images) == 10
    assert auto_internal_batch_size(model, config, free_bytes=2**50) == 32  # batch_size x n_steps: one pass
    with pytest.warns(UserWarning, match="fewer than pruning.batch_size 4"):
        assert auto_internal_batch_size(model, config, free_bytes=per_image) == 4
    # Flags give text: counts, auto and none are read from it; anything else is refused.
    assert PruningConfig(internal_batch_size="64").internal_batch_size == 64
    assert PruningConfig(internal_batch_size="none").internal_batch_size is None
    with pytest.raises(ValueError, match="internal_batch_size must be"):
        PruningConfig(internal_batch_size="lots")
    rows = toy["train"].select(range(4))
    batch = {"image": rows["image"], "generated": rows["image"][::-1], "mask": rows["mask"],
             "label": rows["label"], "target_label": [1 - y for y in rows["label"]]}
    auto = score_batch(batch, model=model, config=config, Psi=[0.5, 0.5])
    fixed = score_batch(batch, model=model, config=PruningConfig(batch_size=4, n_steps=8, internal_batch_size=4),
                        Psi=[0.5, 0.5])
    np.testing.assert_allclose(auto["rho"], fixed["rho"], rtol=1e-4, atol=1e-5)
    assert auto["psi"] == fixed["psi"]


# ------------------------------------------------------------------ the pipeline's stages


def tiny_pipeline(tmp_path, tiny_models, **run) -> Pipeline:
    sections = resolve_layers(presets=["tiny"], overrides=[{
        "run": {"class_prompts": ["flat bar", "upright bar"]}, "pruning": {"psi_rule": False, "P": [0.0]}}],
        build_root=Path(tiny_models["text2img"]).parents[1])
    configs = {name: cls(**sections.get(name, {})) for name, cls in SECTIONS.items()}
    run_config = RunConfig(**{**sections["run"], "output_dir": str(tmp_path / "run"), **run})
    return Pipeline(DataConfig(options=["num_train=21", "num_validation=13", "num_test=8", "seed=4"]),
                    run_config, configs)


def test_each_stage_frees_its_models_before_the_next_stage_loads_its_own(tmp_path, tiny_models, toy, monkeypatch):
    run = tiny_pipeline(tmp_path, tiny_models)
    erm_dir = tmp_path / "erm"
    save_classifier(classifier(), str(erm_dir), list(LABEL_NAMES))
    alive: list[tuple[str, weakref.ref]] = []
    still_loaded = []

    def watched(stage, load, models_of):
        def loading(*args, **kwargs):
            # The pipeline itself must have let go of every earlier model (no gc.collect() here).
            still_loaded.extend(f"{name} when {stage} loads" for name, ref in alive if ref() is not None)
            loaded = load(*args, **kwargs)
            alive.extend((stage, weakref.ref(model)) for model in models_of(loaded))
            return loaded
        return loading

    monkeypatch.setattr(ti_train, "load_components", watched(
        "textual inversion", ti_train.load_components, lambda c: [c["unet"], c["vae"], c["text_encoder"]]))
    monkeypatch.setattr(pipeline_module, "load_masking_models", watched(
        "masking", pipeline_module.load_masking_models, lambda m: [m.detector, m.segmenter]))
    monkeypatch.setattr(pipeline_module, "load_inpainting_pipeline", watched(
        "generation", pipeline_module.load_inpainting_pipeline, lambda p: [p.unet, p.vae, p.text_encoder]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, _ = run.generate(toy, str(erm_dir), "erm-fingerprint")
    assert {stage for stage, _ in alive} == {"textual inversion", "masking", "generation"}
    assert still_loaded == []
    assert [stage for stage, ref in alive if ref() is not None] == []  # and none outlives the stages
    assert len(pruned) == 6  # 3 lowest-loss images per class, each accounted for


def test_the_scores_stage_is_written_once_and_holds_only_the_scores(tmp_path, tiny_models, toy, monkeypatch):
    run = tiny_pipeline(tmp_path, tiny_models)
    saved = []
    save = Dataset.save_to_disk

    def counting(self, path, *args, **kwargs):
        saved.append(Path(path))
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_to_disk", counting)
    scored = run.score_split("scores", toy, "train", classifier(), "erm-fingerprint")
    assert len(saved) == 1 and not (tmp_path / "run" / "scores" / "main").exists()
    # The stage keeps the scores only; the split's images are not copied into it.
    assert load_from_disk(str(tmp_path / "run" / "scores")).column_names == ["example_id", "erm_loss", "erm_probs"]
    assert scored.column_names == toy["train"].column_names + ["erm_loss", "erm_probs"]
    assert list(scored["example_id"]) == list(toy["train"]["example_id"]) and len(scored["erm_loss"]) == len(toy["train"])


def test_another_process_drops_the_rows_the_main_process_found_unreadable(toy):
    undecoded = toy["train"].cast_column("image", ImageFeature(decode=False))
    rows = undecoded.to_list()
    rows[3]["image"] = {"bytes": b"not an image", "path": None}
    broken = Dataset.from_list(rows, features=undecoded.features).cast_column("image", ImageFeature())
    data = DatasetDict({"train": broken, "validation": toy["validation"]})
    checked, dropped = verify_images(data, "drop")
    assert [(d["split"], d["row"]) for d in dropped] == [("train", 3)]
    unchecked = keep_rows(data, dropped)
    assert list(unchecked["train"]["example_id"]) == list(checked["train"]["example_id"])
    assert unchecked["train"]._fingerprint == checked["train"]._fingerprint  # the same rows, the same stages after
    assert unchecked["validation"] is data["validation"]


# ------------------------------------------------------------------ two processes


SCRIPT = '''
import json, sys, time
from pathlib import Path
from accelerate import Accelerator
from datasets import load_from_disk
import dbb_hf.images
from dbb_hf.processes import process_state

out, timeout, sleep = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
state = process_state(timeout)
if state.is_main_process:
    time.sleep(sleep)  # the others wait at the barrier meanwhile
state.wait_for_everyone()
if len(sys.argv) > 4:
    from dbb_hf.config import DataConfig
    from dbb_hf.modeling import load_classifier
    from dbb_hf.pipeline import SECTIONS, Pipeline, RunConfig
    from dbb_hf.selection import score_dataset
    from dbb_hf.training import evaluate_split

    decoded = []
    check = dbb_hf.images.unreadable_rows
    dbb_hf.images.unreadable_rows = lambda *a, **k: decoded.append(1) or check(*a, **k)
    run = Pipeline(DataConfig(options=["num_train=21", "num_validation=13", "num_test=8", "seed=4"]),
                   RunConfig(output_dir=str(out / "run"), process_group_timeout=timeout),
                   {name: cls() for name, cls in SECTIONS.items()})
    dataset, _ = run.load_data()
    data, model = load_from_disk(sys.argv[4]), load_classifier(sys.argv[5])
    scored = score_dataset(data["train"], model, batch_size=4, processes=state)
    metrics = evaluate_split(model, data["validation"], batch_size=4, accelerator=Accelerator())
    (out / f"rank-{state.process_index}.json").write_text(json.dumps({"processes": state.num_processes,
        "decoded": len(decoded), "data_rows": len(dataset["train"]), "ids": list(scored["example_id"]),
        "loss": list(scored["erm_loss"]), "probs": list(scored["erm_probs"]), "metrics": metrics}, default=str))
'''


def launch(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "two_processes.py"
    script.write_text(SCRIPT)
    # torchrun starts the two CPU processes (what `accelerate launch --cpu` tells them: ACCELERATE_USE_CPU);
    # accelerate's own launcher starts a single process for a MULTI_CPU config on one machine.
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), *map(str, args)]
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_two_processes_share_scoring_and_evaluation_and_only_the_main_one_decodes_the_data(tmp_path, toy):
    data_dir, model_dir = tmp_path / "toy", tmp_path / "classifier"
    toy.save_to_disk(str(data_dir))
    model = classifier()
    save_classifier(model, str(model_dir), list(LABEL_NAMES))
    # The main process sleeps 15 s before the first barrier: the run's timeout (default 4 h) holds.
    result = launch(tmp_path, tmp_path, RunConfig().process_group_timeout, 15, data_dir, model_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["processes"] == ranks[1]["processes"] == 2
    assert ranks[0]["decoded"] > 0 and ranks[1]["decoded"] == 0  # rank 1 read the saved data stage
    assert ranks[0]["data_rows"] == ranks[1]["data_rows"] == 21
    alone = score_dataset(toy["train"], model, batch_size=4)
    for rank in ranks:  # every process gets every row's scores, in row order
        assert rank["ids"] == list(alone["example_id"])
        np.testing.assert_allclose(rank["loss"], list(alone["erm_loss"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rank["probs"], list(alone["erm_probs"]), rtol=1e-5, atol=1e-6)
    # 13 validation rows in batches of 4 over 2 processes: gather_for_metrics drops the padding.
    expected = json.loads(json.dumps(evaluate_split(model, toy["validation"], batch_size=4), default=str))
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == expected


def test_a_barrier_longer_than_the_process_group_timeout_ends_the_run(tmp_path):
    # The same wait as above with a 3 s timeout: the waiting process gives up, so the
    # timeout the run asks for is the one its processes run with.
    result = launch(tmp_path, tmp_path, 3, 15)
    assert result.returncode != 0
    assert "timed out" in (result.stdout + result.stderr).lower() or "timeout" in (result.stdout + result.stderr).lower()
