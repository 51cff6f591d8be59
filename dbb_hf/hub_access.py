"""Reaching models and datasets on the Hub: one clear error when an id cannot be loaded.

diffusers, transformers, timm and datasets each report a missing repository, a wrong
revision or an unreachable Hub differently, some without naming the id. Every
``from_pretrained`` / ``load_dataset`` of a Hub id in dbb_hf runs inside :func:`reaching`,
which turns those errors into a :class:`HubUnreachableError` naming what was being
loaded, the id, the revision and the reason. :func:`check_reachable` fetches one small
file of a repository (from the local cache when offline), so a run can check the models
of its later stages before it spends hours on the earlier ones.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


class HubUnreachableError(OSError):
    """A Hub model or dataset could not be loaded: it does not exist, or the Hub cannot be reached."""


def looks_like_path(name: str) -> bool:
    """A Hub id is "name" or "namespace/name"; anything else can only be a (missing) folder."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _reason(error: BaseException, revision: Optional[str]) -> str:
    """Why loading failed, from the first error in the chain that the Hub client classifies."""
    for cause in _chain(error):
        if isinstance(cause, GatedRepoError):
            return "it is gated: accept its conditions on the Hub and set HF_TOKEN (or `hf auth login`)"
        if isinstance(cause, RevisionNotFoundError):
            return f"it has no revision {revision!r}"
        if isinstance(cause, RepositoryNotFoundError) or type(cause).__name__ == "DatasetNotFoundError":
            return "it does not exist on the Hub (or it is private and no token with access is set)"
        if isinstance(cause, (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError)):
            where = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else "the Hub could not be reached"
            return f"{where} and it is not in the local cache ({constants.HF_HUB_CACHE})"
    return f"{type(error).__name__}: {error}"


def describe(repo_id: str, revision: Optional[str], what: str, error: BaseException) -> str:
    return f"{what} {repo_id!r} (revision {revision or 'main'}) could not be loaded: {_reason(error, revision)}"


@contextmanager
def reaching(repo_id: str, revision: Optional[str], what: str) -> Iterator[None]:
    """Run a Hub load; its errors become a :class:`HubUnreachableError` naming ``what``, the id and revision.

    A local folder is not a Hub id: its errors pass through unchanged.
    """
    try:
        yield
    except HubUnreachableError:
        raise
    except HFValidationError as error:
        if os.path.isdir(repo_id):
            raise
        raise HubUnreachableError(
            f"{what} {repo_id!r} is neither an existing folder nor a valid Hub id ('name' or 'namespace/name')"
        ) from error
    except OSError as error:  # ConnectionError, FileNotFoundError and the Hub client's errors are OSErrors
        if os.path.isdir(repo_id):
            raise
        raise HubUnreachableError(describe(repo_id, revision, what, error)) from error


def check_reachable(repo_id: str, revision: Optional[str], what: str, filename: str,
                    repo_type: str = "model") -> None:
    """Raise unless ``repo_id`` is a folder, or ``filename`` of it can be fetched at ``revision``.

    Online this downloads one small file into the Hub cache (the model loads it later
    anyway); offline it is read from the cache.
    """
    if os.path.isdir(repo_id):
        return
    if looks_like_path(repo_id):
        raise FileNotFoundError(f"{what}: folder {repo_id!r} not found")
    with reaching(repo_id, revision, what):
        hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type)
