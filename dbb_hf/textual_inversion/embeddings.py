"""The token-folder format: how learned tokens are written, read and loaded into a pipeline.

One file, ``learned_embeds.safetensors``, holds ``{token: tensor(num_vectors, dim)}``, the
layout ``pipe.load_textual_inversion(path)`` reads, with each token's provenance (class,
prompt word, initializer, model) as JSON in the file's ``dbb_hf`` metadata. A token folder
(``learn_tokens``' output, a run's ``tokens/``) holds:

- ``learned_embeds.safetensors``: every class's token, in class order, each with its
  ``class_index`` in the metadata;
- ``<class>/learned_embeds.safetensors``: one class's token (and its checkpoints);
- optionally ``tokens.json``, ``{"<class index>": {"class_name", "token", "file"}}`` with
  files relative to the folder: the index of a folder put together by hand.

Every reader of token folders (``load_tokens``, the ``inpaint`` command, the Hub cards)
goes through :func:`read_token_folder`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

EMBEDS_NAME = "learned_embeds.safetensors"
TOKENS_INDEX = "tokens.json"
METADATA_KEY = "dbb_hf"
INDEX_KEYS = ("class_name", "token", "file")


def vector_tokens(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a multi-vector token: ``tok``, ``tok_1``, ... (diffusers' naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def token_folder_name(class_name: str) -> str:
    """The per-class subfolder of ``learn_tokens``: the class name with unsafe characters replaced."""
    return re.sub(r"[^\w.-]+", "_", class_name.strip())


# ----------------------------------------------------------------------------- one file


def save_embeds(path: str, vectors: Mapping[str, torch.Tensor], info: Mapping[str, dict]) -> str:
    """Save ``{token: (num_vectors, dim)}`` with per-token provenance in the file's metadata.

    The metadata is a single key of sorted JSON: safetensors orders several metadata keys
    differently from one save to the next, and the same tokens must give the same bytes
    (a Hub folder twin is byte-identical to what a push uploads).
    """
    tensors = {token: v.detach().float().cpu().clone().contiguous() for token, v in vectors.items()}
    payload = json.dumps({"tokens": list(vectors), "info": dict(info)}, sort_keys=True, default=str)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={METADATA_KEY: payload})
    os.replace(tmp, path)  # a crash never leaves a half-written file that looks finished
    return path


def read_embeds(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Token vectors (in saved order) and their provenance from a ``learned_embeds.safetensors``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, EMBEDS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no textual-inversion embeddings at {path}")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    saved = json.loads(metadata.get(METADATA_KEY, "{}"))
    order = [t for t in saved.get("tokens", []) if t in tensors] + sorted(set(tensors) - set(saved.get("tokens", [])))
    return {token: tensors[token] for token in order}, saved.get("info", {})


# ----------------------------------------------------------------------------- a folder


@dataclass(frozen=True)
class SavedToken:
    """One token as a token folder holds it."""

    token: str
    vectors: torch.Tensor  # (dim,) or (num_vectors, dim)
    info: dict  # its provenance from the file's metadata
    file: str  # the file it was read from
    class_index: Optional[int] = None  # from tokens.json, or learn_tokens' combined file
    class_name: Optional[str] = None  # from tokens.json only: elsewhere the dataset's label names name classes


def holds_class_tokens(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` says which class each token is for (``tokens.json`` or the combined file)."""
    folder = os.fspath(folder)
    return any(os.path.isfile(os.path.join(folder, name)) for name in (TOKENS_INDEX, EMBEDS_NAME))


def read_token_folder(source) -> list[SavedToken]:
    """Every token of ``source``, in class order where the folder gives one.

    ``source``: a token folder (its ``tokens.json``, else its combined file, else every
    ``<class>/learned_embeds.safetensors``), one ``learned_embeds.safetensors`` file or
    its folder, or ``{token: file or folder}`` (a one-token file may be loaded under a
    new name).
    """
    if isinstance(source, Mapping):
        saved = [_named_token(token, path) for token, path in source.items()]
    else:
        path = os.fspath(source)
        if os.path.isfile(os.path.join(path, TOKENS_INDEX)):
            saved = _indexed_tokens(path)
        elif os.path.isdir(path) and not os.path.isfile(os.path.join(path, EMBEDS_NAME)):
            files = sorted(
                os.path.join(path, name, EMBEDS_NAME) for name in os.listdir(path)
                if os.path.isfile(os.path.join(path, name, EMBEDS_NAME))
            )
            if not files:
                raise FileNotFoundError(f"no {EMBEDS_NAME} in {path} or its subfolders")
            saved = [token for file in files for token in _file_tokens(file)]
        else:
            saved = _file_tokens(path)
    for token in saved:
        if token.vectors.ndim not in (1, 2):
            raise ValueError(f"{token.file}: token {token.token!r} has an embedding of shape "
                             f"{tuple(token.vectors.shape)}; expected (width,) or (vectors, width)")
    return saved


def _file_tokens(path: str) -> list[SavedToken]:
    vectors, info = read_embeds(path)
    if os.path.isdir(path):
        path = os.path.join(path, EMBEDS_NAME)
    tokens = []
    for token, tensor in vectors.items():
        provenance = info.get(token, {})
        class_index = provenance.get("class_index")
        tokens.append(SavedToken(token, tensor, provenance, path, None if class_index is None else int(class_index)))
    return tokens


def _named_token(token: str, path) -> SavedToken:
    vectors, info = read_embeds(path)
    if token in vectors:
        vector = vectors[token]
    elif len(vectors) == 1:
        vector = next(iter(vectors.values()))  # a single-token file loaded under a new name
    else:
        raise ValueError(f"{path} holds {list(vectors)}, not {token!r}")
    return SavedToken(token, vector, info.get(token, next(iter(info.values()), {})), os.fspath(path))


def _indexed_tokens(folder: str) -> list[SavedToken]:
    index_path = os.path.join(folder, TOKENS_INDEX)
    with open(index_path) as f:
        index = json.load(f)
    tokens = []
    for class_index, entry in index.items():
        for key in INDEX_KEYS:
            if key not in entry:
                raise ValueError(f"{index_path}: class {class_index} has no {key!r}")
        path = os.path.join(folder, entry["file"])  # an absolute "file" stays absolute
        vectors, info = read_embeds(path)
        if list(vectors) != [entry["token"]]:
            raise ValueError(f"{path} holds {list(vectors)}; expected exactly the token {entry['token']!r}")
        token = entry["token"]
        tokens.append(
            SavedToken(token, vectors[token], info.get(token, {}), path, int(class_index), entry["class_name"])
        )
    return sorted(tokens, key=lambda t: t.class_index)


def tokens_by_class(source, class_names: Sequence[str]) -> list[str]:
    """Each class's token, in class order; a ValueError names the classes without one."""
    by_class = {t.class_index: t.token for t in read_token_folder(source) if t.class_index is not None}
    missing = [name for c, name in enumerate(class_names) if c not in by_class]
    if missing:
        raise ValueError(
            f"{os.fspath(source)} has no token for class(es) {missing}; it has tokens for class indices "
            f"{sorted(by_class)} ({by_class}) and the dataset's classes are {class_names}"
        )
    return [by_class[c] for c in range(len(class_names))]


# ----------------------------------------------------------------------------- a pipeline


def _encode(pipe, prompt: str) -> torch.Tensor:
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        pipe.maybe_convert_prompt(prompt, tokenizer), padding="max_length", truncation=True,
        max_length=tokenizer.model_max_length, return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


def verify_token(pipe, token: str, vectors: torch.Tensor, info: Mapping | None = None) -> None:
    """Raise unless ``token`` is live in ``pipe``: its own ids, its vectors, a changed prompt.

    Checks that each vector token converts to one new id (not the unknown token), that the
    text encoder's rows at those ids hold ``vectors``, and that a prompt with the token
    encodes differently from the same prompt with the initializer word (or without the
    token when the file does not name one).
    """
    info = dict(info or {})
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    vectors = vectors.reshape(-1, vectors.shape[-1])
    names = vector_tokens(token, vectors.shape[0])
    ids = []
    for name in names:
        encoded = tokenizer.encode(name, add_special_tokens=False)
        if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
            raise ValueError(f"token {name!r} is not in the pipeline's tokenizer (it encodes to {encoded})")
        ids.append(encoded[0])
    rows = text_encoder.get_input_embeddings().weight[ids].detach()
    if not torch.equal(rows.cpu(), vectors.to(dtype=rows.dtype)):
        raise ValueError(f"the text encoder's embedding of {token!r} is not the loaded vector")
    object_name = info.get("prompt_name", info.get("class_name", ""))
    template = info.get("prompt_template", "A photo of a {token} {class_name}")
    prompt = template.format(token=token, class_name=object_name)
    reference = template.format(token=info.get("initializer_token", ""), class_name=object_name)
    if torch.equal(_encode(pipe, prompt), _encode(pipe, " ".join(reference.split()))):
        raise ValueError(
            f"{prompt!r} encodes exactly like {reference!r}: the token {token!r} has no effect "
            "(its embedding was never trained)"
        )


def load_tokens(pipe, embeddings) -> list[str]:
    """Load learned tokens into ``pipe`` (any diffusers pipeline with textual-inversion support).

    ``embeddings``: anything :func:`read_token_folder` reads (a ``learn_tokens`` output
    folder, one ``learned_embeds.safetensors`` file or its folder, ``{token: file or
    folder}``). Returns the tokens in saved (class-index) order, each verified with
    ``verify_token``; anything that does not load raises.
    """
    saved = read_token_folder(embeddings)
    expected_dim = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    for entry in saved:
        if entry.vectors.shape[-1] != expected_dim:
            raise ValueError(
                f"{entry.file}: the embedding of {entry.token!r} has dimension {entry.vectors.shape[-1]} but the "
                f"pipeline's text encoder expects {expected_dim}; it was learned on another model"
            )
    tokens = [entry.token for entry in saved]
    try:
        pipe.load_textual_inversion([{entry.token: entry.vectors} for entry in saved], token=tokens)
    except ValueError as error:
        raise ValueError(f"could not load {tokens} from {sorted({e.file for e in saved})}: {error}") from error
    try:
        for entry in saved:
            verify_token(pipe, entry.token, entry.vectors, entry.info)
    except ValueError:
        # Leave the pipeline as it was: a token that does not work must not linger in it.
        names = [vector_tokens(e.token, e.vectors.reshape(-1, e.vectors.shape[-1]).shape[0]) for e in saved]
        pipe.unload_textual_inversion([name for vectors in names for name in vectors])
        raise
    return tokens
