"""A pipeline on a tiny toy benchmark with the demo's offline backends, and the fixture that keeps
the Hub clients offline: for the tests that check what a run refuses and what it keeps."""

import datasets
import huggingface_hub
import pytest

from dbb_hf.config import DataConfig
from dbb_hf.pipeline import SECTIONS, Pipeline, RunConfig


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test of a module that imports this fixture may touch the network: the Hub clients run
    in offline mode."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def make_pipeline(tmp_path, *, run=None, **sections) -> Pipeline:
    """A pipeline on a tiny toy with the demo's offline backends, sections overridden by keyword."""
    defaults = {
        "classifier": dict(model_name="resnet10t", pretrained=False, image_size=32, crop_pct=1.0),
        "masking": dict(backend="column", mask_column="mask"),
        "inpainting": dict(backend="compose"),
    }
    configs = {}
    for name, cls in SECTIONS.items():
        configs[name] = cls(**{**defaults.get(name, {}), **sections.get(name, {})})
    data = DataConfig(options=["num_train=32", "num_validation=8", "num_test=8"])
    return Pipeline(data, RunConfig(output_dir=str(tmp_path / "run"), **(run or {})), configs)
