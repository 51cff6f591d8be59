"""``--run_dir``: the Space on the models of a finished dbb_hf run, offline.

A run folder (``dbb-hf demo --output_dir DIR``, ``recipes/<dataset>.py --output_dir DIR``)
holds everything one edit needs, written by the pipeline itself:

- ``config.yaml``: the run's sections. The Space reads its ``masking``, ``inpainting`` and
  ``pruning`` as a layer under the environment and the flags, so the upload is masked,
  repainted and scored as the run's training images were (same backend, region, prompt,
  resolution, steps, P, IG steps);
- ``erm/model``: the ERM classifier (``save_classifier``) whose edits the run pruned;
- ``tokens/``: the learned class tokens (``learn_tokens``), with the diffusers generator;
- ``report.json``: Psi per source class, measured on the run's training set (Eq. 3);
- ``data/``: the benchmark's splits as loaded (kept for the toy and for local folders): the
  first test images of each class become the page's examples.

The run's inpainting model is a folder path (the shipped miniature priors) or a Hub id. A
run folder moved to another machine keeps the path of the checkout that made it; there the
shipped prior with the content digest the run recorded (``resolved_revisions``) stands in.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from dbb_hf.config import load_yaml
from dbb_hf.miniature import FACE_PRIOR_PATH, PRIOR_PATH
from dbb_hf.revisions import folder_digest

EXAMPLES_PER_CLASS = 2


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"run folder {path.parent}: no {path.name} ({what})")
    return path


def _inpainting_model(model_id: str, recorded: dict) -> str:
    """The run's inpainting model, or the shipped prior with the run's digest where its path is gone."""
    if os.path.isdir(model_id) or not os.path.isabs(model_id):
        return model_id  # a folder that is still there, or a Hub id
    digest = recorded.get("digest")
    for shipped in (PRIOR_PATH, FACE_PRIOR_PATH):
        if digest and os.path.isdir(shipped) and folder_digest(shipped) == digest:
            return shipped
    # Loading names the missing folder; --inpainting_model_id (a flag or variable) can still replace it.
    return model_id


def run_layers(run_dir: str | os.PathLike) -> list[tuple[str, dict]]:
    """The layers a run folder gives the Space's settings: its ``config.yaml``, then the Space's
    fields from the folder (classifier, Psi, tokens, object words, mask finder)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run_dir {str(run)!r} is not a folder")
    config_path = _require(run / "config.yaml", "the run writes it at start: is this a dbb_hf run folder?")
    sections = load_yaml(config_path)
    report = json.loads(_require(run / "report.json", "written when the run finishes, with Psi").read_text())
    if not report.get("Psi"):
        raise ValueError(f"{run / 'report.json'} holds no Psi: the run made no edits to prune")
    classifier = (sections.get("run") or {}).get("erm_model") or str(run / "erm" / "model")
    if not classifier.startswith("hf-hub:"):
        _require(Path(classifier) / "config.json", "the ERM classifier")
    inpainting = dict(sections.get("inpainting") or {})
    space: dict = {"classifier": classifier, "Psi": [float(p) for p in report["Psi"]]}
    prompts = (sections.get("run") or {}).get("class_prompts")
    if prompts:
        space["object_names"] = list(prompts)
    if inpainting.get("backend") == "diffusers":
        space["tokens"] = str(_require(run / "tokens", "the learned tokens of the diffusers generator"))
    masking = sections.get("masking") or {}
    if masking.get("backend") == "column" and (sections.get("data") or {}).get("dataset") == "toy":
        # The toy's masks are a dataset column; an upload has none, so the Space finds the object.
        space["find_object"] = "toy"
    layers = [(str(config_path), sections), (f"the run folder {run}", {"space": space})]
    if "model_id" in inpainting:
        recorded = ((sections.get("resolved_revisions") or {}).get("inpainting")) or {}
        model_id = _inpainting_model(inpainting["model_id"], recorded)
        if model_id != inpainting["model_id"]:
            layers.append((f"the shipped prior for {inpainting['model_id']}", {"inpainting": {"model_id": model_id}}))
    return layers


def write_examples(run_dir: str | os.PathLike, folder: str | os.PathLike | None = None) -> str:
    """The first ``EXAMPLES_PER_CLASS`` test images of each class of the run's ``data/``, saved as
    ``<example_id>_<class name>.png`` into ``folder`` (a new temporary folder when None); ""
    when the run kept no data (a Hub dataset is not saved in the run folder)."""
    from datasets import load_from_disk

    data = Path(run_dir) / "data"
    if not (data / "dataset_dict.json").exists():
        return ""
    test = load_from_disk(str(data))["test"]
    names = test.features["label"].names
    out = Path(folder or tempfile.mkdtemp(prefix="dbb-space-examples-"))
    out.mkdir(parents=True, exist_ok=True)
    labels = test["label"]
    for label, name in enumerate(names):
        for index in [i for i, y in enumerate(labels) if y == label][:EXAMPLES_PER_CLASS]:
            row = test[index]
            # An id may be a path inside the dataset (CelebA's "img_align_celeba/000003.jpg").
            stem = re.sub(r"[^A-Za-z0-9-]+", "-", str(row["example_id"]))
            row["image"].convert("RGB").save(out / f"{stem}_{name}.png")
    return str(out)
