"""Uploading: each artifact's folder twin written to a temporary folder, checked for the
Hub token, and sent with ``HfApi.upload_folder``, so the Hub receives byte for byte what
a twin holds.

Hub tokens go to ``HfApi`` only (``token=None``: huggingface_hub's own lookup, ``HF_TOKEN``
or the saved login), never into a card, a file or a log; before an upload every file of the
twin is scanned for the token's value and the upload refused if it occurs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from huggingface_hub import HfApi
from huggingface_hub import get_token as stored_hub_token

from .folders import save_dataset_folder, save_embeddings_folder, save_model_folder
from .run import read_run, repo_ids


def assert_token_free(folder: str | os.PathLike, token: Optional[str]) -> None:
    """Raise if any file under ``folder`` contains ``token`` (the message never shows it)."""
    if not token:
        return
    needle = token.encode()
    chunk = 1 << 20
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            tail = b""
            while block := f.read(chunk):
                if needle in tail + block:
                    raise ValueError(f"{path} contains the Hub token; refusing to upload it")
                tail = block[-(len(needle) - 1) :] if len(needle) > 1 else b""


@dataclass(frozen=True)
class Artifact:
    """How one kind of artifact is written and uploaded."""

    save: Callable[..., Path]
    repo_type: str
    # Files of an earlier push that this one may not rewrite (shards of another count).
    delete_patterns: Optional[list[str]]
    commit_message: str


ARTIFACTS = {
    "dataset": Artifact(save_dataset_folder, "dataset", ["data/*"], "Upload DBB-augmented dataset"),
    "embeddings": Artifact(save_embeddings_folder, "model", ["*.safetensors"], "Upload DBB textual-inversion tokens"),
    "model": Artifact(save_model_folder, "model", None, "Upload DBB-retrained classifier"),
}


def _create_repo(api: HfApi, artifact: Artifact, repo_id: str, private: bool, revision: Optional[str]) -> str:
    repo_id = api.create_repo(repo_id, repo_type=artifact.repo_type, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type=artifact.repo_type, exist_ok=True)
    return repo_id


def _upload(api: HfApi, artifact: Artifact, folder: Path, repo_id: str, revision: Optional[str]) -> None:
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=artifact.repo_type,
        revision=revision,
        commit_message=artifact.commit_message,
        delete_patterns=artifact.delete_patterns,
    )


def _push(kind: str, run_dir, repo_id: str, *, token, private, revision, links) -> str:
    artifact = ARTIFACTS[kind]
    api = HfApi(token=token)
    # The repository first: a bare name resolves to the token owner's namespace, which the card links.
    repo_id = _create_repo(api, artifact, repo_id, private, revision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.save(run_dir, Path(tmp) / "repo", repo_id, links=links)
        assert_token_free(folder, token or stored_hub_token())
        _upload(api, artifact, folder, repo_id, revision)
    return repo_id


def push_dataset(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the dataset twin to the dataset repository ``repo_id``; returns the repository id."""
    return _push("dataset", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def push_embeddings(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the tokens twin to the model repository ``repo_id``; returns the repository id."""
    return _push("embeddings", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def push_model(
    run_dir, repo_id: str, token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
    *, links: Optional[Mapping[str, str]] = None,
) -> str:
    """Upload the classifier twin to the model repository ``repo_id``; returns the repository id."""
    return _push("model", run_dir, repo_id, token=token, private=private, revision=revision, links=links)


def publish_run(
    run_dir: str | os.PathLike,
    *,
    namespace: Optional[str] = None,
    to_folder: Optional[str | os.PathLike] = None,
    token: Optional[str] = None,
    private: bool = False,
    name_prefix: Optional[str] = None,
) -> dict[str, str]:
    """Publish a run's dataset, tokens (if any) and classifier, cross-linked.

    With ``to_folder``, write the twins to ``<to_folder>/{dataset,embeddings,model}`` and
    push nothing (cards link to ``namespace``'s ids, bare names without it); returns the
    folders. Otherwise push to ``<namespace>/<dataset>-dbb``, ``-dbb-tokens`` and
    ``-dbb-<architecture>``; returns the repository ids. All three twins are written and
    checked before the first upload, so a run that cannot be published pushes nothing.
    """
    if to_folder is None and namespace is None:
        raise ValueError("give namespace (to push to the Hub) or to_folder (to write the repositories locally)")
    ids = repo_ids(read_run(run_dir), namespace, name_prefix)
    if to_folder is not None:
        return {kind: str(ARTIFACTS[kind].save(run_dir, Path(to_folder) / kind, ids[kind], links=ids)) for kind in ids}
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {kind: ARTIFACTS[kind].save(run_dir, Path(tmp) / kind, ids[kind], links=ids) for kind in ids}
        for folder in folders.values():
            assert_token_free(folder, token or stored_hub_token())
        for kind, folder in folders.items():
            _create_repo(api, ARTIFACTS[kind], ids[kind], private, None)
            _upload(api, ARTIFACTS[kind], folder, ids[kind], None)
    return ids


def repo_url(kind: str, repo_id: str) -> str:
    """The web address of an artifact's repository (``kind`` as in ``ARTIFACTS``)."""
    prefix = "datasets/" if ARTIFACTS[kind].repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{repo_id}"

