"""Safe loading and secrets: what dbb_hf writes holds its weights as safetensors, every
pickle it reads is read with ``weights_only=True``, ``trust_remote_code`` is never on, and
a run with a Hub token in its environment leaves no trace of it anywhere.

The run is the CelebA recipe's tiny preset (every stage, with tiny models built offline),
then ``dbb-hf push --to_folder``, in a subprocess whose environment holds the token.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from dbb_hf.state_files import load_state_file, save_state_file
from celeba_folders import write_noise_celeba

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("dbb_hf", "recipes", "examples", "benchmarks")
# The only pickles a run may hold: accelerate's optimizer, scheduler and RNG states in the
# epoch checkpoints of the classifier training (accelerate has no other format for them).
ACCELERATE_PICKLE = re.compile(r"(optimizer|scheduler|sampler)(_\d+)?\.bin|random_states_\d+\.pkl")
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".joblib"}


# ----------------------------------------------------------------------------- the source, statically


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` unpickles without weights_only=True, saves a pickle, or trusts remote code."""
    problems = []

    def where(node) -> str:
        return f"{filename}:{node.lineno}"

    def keyword(call: ast.Call, name: str):
        return next((k.value for k in call.keywords if k.arg == name), None)

    def is_constant(node, value) -> bool:
        return isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "marshal") for m in modules):
                problems.append(f"{where(node)}: imports a pickle module")
            names = {a.name for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and {"load", "save"} & names:
                problems.append(f"{where(node)}: imports torch.load / torch.save by name")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == "torch.load" and not is_constant(keyword(node, "weights_only"), True):
                problems.append(f"{where(node)}: torch.load without weights_only=True")
            if name == "torch.save":
                problems.append(f"{where(node)}: torch.save writes a pickle (use safetensors)")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where(node)}: {name} (use yaml.safe_load)")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                if not is_constant(keyword(node, "allow_pickle"), False):
                    problems.append(f"{where(node)}: np.load without allow_pickle=False")
            remote = keyword(node, "trust_remote_code")
            if remote is not None and not is_constant(remote, False):
                problems.append(f"{where(node)}: trust_remote_code={ast.unparse(remote)}")
            if name in ("eval", "exec"):
                problems.append(f"{where(node)}: {name}()")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id == "trust_remote_code":
                default = node.value
                if isinstance(default, ast.Call):
                    default = keyword(default, "default")
                if not is_constant(default, False):
                    problems.append(f"{where(node)}: trust_remote_code field does not default to False")
    return problems


def test_the_checker_finds_what_it_looks_for():
    bad = (
        "import pickle\n"
        "from dataclasses import field\n"
        "x = torch.load(path)\n"
        "y = torch.load(path, weights_only=False)\n"
        "torch.save(state, path)\n"
        "cfg = yaml.load(text, Loader=yaml.Loader)\n"
        "a = np.load(path, allow_pickle=True)\n"
        "AutoModel.from_pretrained(model_id, trust_remote_code=True)\n"
        "class Config:\n"
        "    trust_remote_code: bool = field(default=True)\n"
    )
    found = unsafe_calls(bad)
    assert len(found) == 8, found
    good = (
        "x = torch.load(path, map_location='cpu', weights_only=True)\n"
        "cfg = yaml.safe_load(text)\n"
        "AutoModel.from_pretrained(model_id, trust_remote_code=False)\n"
        "model.eval()\n"
        "class Config:\n"
        "    trust_remote_code: bool = False\n"
    )
    assert unsafe_calls(good) == []


def test_no_unsafe_loading_in_the_source():
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    problems = [p for f in files for p in unsafe_calls(f.read_text(), str(f.relative_to(REPO)))]
    assert problems == []


class _Payload:
    """A pickle that creates a file when unpickled: what a tampered checkpoint could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_accelerate_checkpoints_are_unpickled_with_weights_only(tmp_path):
    # accelerator.load_state reads optimizer, scheduler and RNG states through this loader
    # (the RNG file without load_kwargs): it must refuse anything but tensors and arrays.
    from accelerate.utils import load

    marker = tmp_path / "code-ran"
    tampered = tmp_path / "optimizer.bin"
    torch.save({"state": {}, "param_groups": [], "extra": _Payload(marker)}, tampered)
    for kwargs in ({}, {"weights_only": True}):  # accelerate's default, and what training.py passes
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load(tampered, map_location="cpu", **kwargs)
    assert not marker.exists()
    torch.save({"step": torch.tensor(3.0)}, tmp_path / "fine.bin")
    assert load(tmp_path / "fine.bin")["step"] == 3.0


# ----------------------------------------------------------------------------- training state without pickle


def test_training_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
    lora = {"unet": {"down.lora_A.weight": torch.randn(2, 4), "down.lora_B.weight": torch.zeros(4, 2)}}
    state = {"global_step": 3, "resume_key": "abc", "optimizer": optimizer.state_dict(), "lora": lora}
    path = tmp_path / "training_state.safetensors"
    save_state_file(state, path)

    with safe_open(str(path), framework="pt") as handle:  # a safetensors file, no pickle inside
        assert len(list(handle.keys())) == 2 * 3 + 2  # step, exp_avg, exp_avg_sq per parameter + LoRA
    loaded = load_state_file(path)
    assert loaded["global_step"] == 3 and loaded["resume_key"] == "abc"
    assert set(loaded["optimizer"]["state"]) == {0, 1}  # parameter indices stay ints
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert loaded["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    for index, values in optimizer.state_dict()["state"].items():
        for key, tensor in values.items():
            assert torch.equal(loaded["optimizer"]["state"][index][key], tensor), (index, key)
    assert all(torch.equal(loaded["lora"]["unet"][k], v) for k, v in lora["unet"].items())

    # A restored optimizer takes exactly the step the original takes.
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1.0)
    twin_optimizer.load_state_dict(loaded["optimizer"])
    batch = torch.randn(8, 4)
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):
        opt.zero_grad()
        net(batch).square().mean().backward()
        opt.step()
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)


def test_state_files_refuse_what_they_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="not function"):
        save_state_file({"hook": lambda: None}, tmp_path / "x.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ValueError, match="not a dbb_hf state file"):
        load_state_file(plain)


# ----------------------------------------------------------------------------- a whole run with a token set


@pytest.fixture(scope="module")
def tokened_run(tmp_path_factory):
    """The tiny CelebA recipe and ``dbb-hf push --to_folder`` with HF_TOKEN set; their output."""
    root = tmp_path_factory.mktemp("tokened")
    data = write_noise_celeba(root / "celeba")
    out = root / "run"
    hub_token, legacy_token = (f"hf_{secrets.token_hex(16)}" for _ in range(2))
    env = dict(
        os.environ, HF_TOKEN=hub_token, HUGGING_FACE_HUB_TOKEN=legacy_token, HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
    )
    commands = [
        [sys.executable, str(REPO / "recipes" / "celeba.py"), "--preset", "tiny", "--data_dir", str(data),
         "--output_dir", str(out), "--options", "split_by_identity=true", "--erm_num_epochs", "1",
         "--retraining_num_epochs", "1", "--erm_report_to", "tensorboard",
         # Keep every edit, so that the push has a synthetic split to publish.
         "--pruning_psi_rule", "false", "--pruning_P=-1e9"],
        [sys.executable, "-m", "dbb_hf.cli", "push", "--output_dir", str(out), "--to_folder", str(out / "hub"),
         "--hub_namespace", "me"],
    ]  # fmt: skip
    logs = []
    for command in commands:
        result = subprocess.run(command, env=env, cwd=root, capture_output=True, timeout=600)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-6000:]).decode(errors="replace")
    return out, (hub_token, legacy_token), b"\n".join(logs)


def test_the_token_leaves_no_trace(tokened_run):
    out, tokens, logs = tokened_run
    files = [p for p in out.rglob("*") if p.is_file()]
    written = {p.relative_to(out).as_posix() for p in files}
    assert {"config.yaml", "report.json", "report.md", "hub/dataset/README.md", "hub/model/README.md"} <= written
    assert any("tfevents" in name for name in written)  # the tracker's logs too
    for token in tokens:
        needle = token.encode()
        assert needle not in logs
        leaked = [str(p.relative_to(out)) for p in files if needle in p.read_bytes()]
        assert leaked == []
    config = yaml.safe_load((out / "config.yaml").read_text())

    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)

    assert not {"token", "hub_token", "hf_token", "use_auth_token"} & set(keys(config))


def test_weights_are_safetensors_and_the_only_pickles_are_read_safely(tokened_run):
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    out, _, _ = tokened_run
    weights, pickles = [], []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                assert list(handle.keys()), path
            weights.append(path)
            continue
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip (PK) or a bare pickle (protocol byte 0x80).
        if path.suffix in PICKLE_SUFFIXES or head.startswith((b"PK\x03\x04", b"\x80")):
            pickles.append(path)
    names = {p.relative_to(out).as_posix() for p in weights}
    assert {"erm/model/model.safetensors", "retrained/model/model.safetensors",
            "tokens/blond/learned_embeds.safetensors",
            "tokens/blond/checkpoint-2/training_state.safetensors",  # the textual-inversion resume state
            "hub/model/model.safetensors", "hub/embeddings/blond.safetensors"} <= names  # fmt: skip

    assert pickles  # the classifier's epoch checkpoints, kept for resuming
    unexpected = [
        p for p in pickles if not (ACCELERATE_PICKLE.fullmatch(p.name) and p.parent.parent.name == "checkpoints")
    ]
    assert unexpected == [], "pickles outside accelerate's checkpoint states"
    for path in pickles:
        # What accelerator.load_state unpickles, it unpickles with weights_only=True.
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            torch.load(path, map_location="cpu", weights_only=True)
