"""Stage 4: turn each selected image into its target class by repainting the masked object.

Two backends share one column contract:

- ``diffusers``: Stable Diffusion 2 inpainting with the prompt
  ``"A photo of a {token} {class_name}"`` where ``token`` is the learned token of the
  target class (paper Eq. 2). The pipeline's output is composited back onto the source
  after decoding, so every pixel outside the (dilated) mask is the source pixel exactly:
  the VAE round trip would otherwise change the spurious background the method keeps.
- ``compose``: no model. The source object is erased (filled with its row's background
  statistics) and the masked object of a donor image of the target class is pasted at
  the same place, as DaC composes images. It runs offline in milliseconds and is what the
  toy benchmark and the tests use.

Each example draws its randomness from its own seed, a stable hash of
``(config.seed, example_id, target_label)``: its result does not depend on the batch
size, the order of rows, or how many processes share the work.

Columns added: ``generated`` (Image, RGB, source size), ``generated_mask`` (Image "L",
0/255: the region the generator was allowed to change), ``prompt`` (string; None for
compose), ``seed`` (int64), ``generator`` (string), ``generation_status`` ("ok",
"skipped_no_mask", "skipped_empty_mask", "skipped_no_background" (the mask covers the
whole image), for compose "skipped_no_donor", and "failed: unreadable image: <error>");
compose also adds ``donor_example_id``. Skipped and failed rows are kept with
``generated`` = None.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset, Image as ImageFeature, Value
from PIL import Image

from .data.common import require_column_names
from .devices import diffusers_dtype, resolve_device, resolve_dtype
from .hub_access import reaching
from .images import to_rgb
from .mask_arithmetic import binary_mask, mask_image
from .revisions import default_revision
from .stages import ImageGuard, ShardPlan, run_stage

BACKENDS = ("diffusers", "compose")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION = ("sdpa", "eager", "xformers")
OK = "ok"
INPUT_COLUMNS = ("image", "mask", "target_label", "example_id")


@dataclass
class InpaintingConfig:
    backend: str = field(
        default="diffusers",
        metadata={"help": "diffusers (Stable Diffusion inpainting) or compose (paste a donor object; no model)."},
    )
    model_id: str = field(
        default="sd2-community/stable-diffusion-2-inpainting",
        metadata={"help": "Inpainting pipeline on the Hub or a local folder (the paper: Stable Diffusion 2 inpainting)."},
    )
    revision: str | None = field(
        default=None,
        metadata={"help": "Hub revision (branch, tag or commit) of model_id; default: for the default model the "
                  "commit 5f74973cbb64c8568780732c17f43eb269d63a0d, else main. The run records the commit it used."},
    )
    torch_dtype: str = field(
        default="auto",
        metadata={"help": "auto (float16 on CUDA, float32 otherwise), float32, float16 or bfloat16."},
    )
    scheduler: str | None = field(
        default=None,
        metadata={"help": "A diffusers scheduler class name (e.g. DPMSolverMultistepScheduler); default: the model's own."},
    )
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    strength: float = field(
        default=1.0, metadata={"help": "How much of the masked region is re-noised (1.0: generated from pure noise)."}
    )
    prompt_template: str = field(
        default="A photo of a {token} {class_name}",
        metadata={"help": "Prompt with {token} (the target class's learned token) and {class_name} placeholders."},
    )
    negative_prompt: str | None = field(default=None, metadata={"help": "Negative prompt (optional)."})
    resolution: int = field(
        default=512,
        metadata={"help": "Side of the square the pipeline runs at (a multiple of 8); outputs are resized back."},
    )
    mask_dilation: int = field(
        default=0, metadata={"help": "Grow the mask by this many pixels (square neighbourhood) before editing."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    seed: int = field(default=0, metadata={"help": "Base seed; each example's seed hashes it with the example's id."})
    attention: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel of the UNet and VAE: sdpa (PyTorch's fused scaled_dot_product_attention, "
            "flash or memory-efficient on a GPU), eager (diffusers' AttnProcessor: matmul, softmax, matmul, with "
            "the full attention matrix in memory) or xformers (needs the xformers package)."
        },
    )
    attention_slicing: bool = field(
        default=False,
        metadata={
            "help": "Compute attention in slices to save memory (replaces the attention kernel). Off by default: "
            "sdpa is already memory-efficient, and slicing is slower."
        },
    )
    compile_unet: bool = field(default=False, metadata={"help": "torch.compile the UNet (pays off on long GPU runs)."})

    def __post_init__(self):
        if self.revision is None:
            self.revision = default_revision(self.model_id)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {DTYPES}, got {self.torch_dtype!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0, got {self.mask_dilation}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        for placeholder in ("{token}", "{class_name}"):
            if placeholder not in self.prompt_template:
                raise ValueError(f"prompt_template {self.prompt_template!r} has no {placeholder} placeholder")
        if self.scheduler is not None:
            _scheduler_class(self.scheduler)
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.attention == "xformers" and importlib.util.find_spec("xformers") is None:
            raise ValueError("attention 'xformers' needs the xformers package, which is not installed; "
                             "'sdpa' (the default) is PyTorch's own fused attention")


def _scheduler_class(name: str) -> type:
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"scheduler {name!r} is not a diffusers scheduler class (e.g. DPMSolverMultistepScheduler)")
    return cls


def set_attention(pipe, attention: str) -> None:
    """Give the pipeline's UNet and VAE the attention kernel ``attention`` (see InpaintingConfig)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
        return
    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(processor())


def load_inpainting_pipeline(config: InpaintingConfig, device: str | torch.device | None = None):
    """Load the inpainting pipeline once (``from_pretrained`` with the pinned revision) and ready it."""
    from diffusers import StableDiffusionInpaintPipeline

    device = resolve_device(device)
    with reaching(config.model_id, config.revision, "inpainting model"):
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            config.model_id,
            revision=config.revision,
            **diffusers_dtype(resolve_dtype(config.torch_dtype, device)),
            safety_checker=None,
            requires_safety_checker=False,
        )
    if config.scheduler is not None:
        pipe.scheduler = _scheduler_class(config.scheduler).from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    set_attention(pipe, config.attention)
    if config.attention_slicing:
        pipe.enable_attention_slicing()
    if config.compile_unet:
        pipe.unet.compile()
    return pipe


def example_seed(base_seed: int, example_id: str, target_label: int) -> int:
    """A stable 63-bit seed for one example (sha256, so the same in every process and run)."""
    key = json.dumps([int(base_seed), str(example_id), int(target_label)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def _row_status(batch: dict, i: int) -> str:
    statuses = batch.get("mask_status")
    if (statuses is not None and statuses[i] != OK) or batch["mask"][i] is None:
        return "skipped_no_mask"
    return OK


def _source_and_mask(batch: dict, i: int, dilation: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(to_rgb(batch["image"][i]))
    mask = batch["mask"][i]
    if mask.size != batch["image"][i].size:
        raise ValueError(
            f"example {batch['example_id'][i]!r}: mask size {mask.size} differs from image size {batch['image'][i].size}"
        )
    return image, binary_mask(mask, dilation)


def _editable_rows(batch: dict, statuses: list[str], dilation: int):
    """(index, source, mask) of the rows still OK, marking rows whose mask is empty or covers
    the whole image (nothing of the source would be kept: no edit in the method's sense)."""
    for i, status in enumerate(statuses):
        if status != OK:
            continue
        source, mask = _source_and_mask(batch, i, dilation)
        if not mask.any():
            statuses[i] = "skipped_empty_mask"
            continue
        if mask.all():
            statuses[i] = "skipped_no_background"
            continue
        yield i, source, mask


def _check_batch(batch: dict) -> None:
    require_column_names(batch.keys(), INPUT_COLUMNS, "the inpainting input")


def class_prompt(config: InpaintingConfig, class_names: Sequence[str], tokens: Sequence[str], target: int) -> str:
    if not 0 <= target < len(tokens):
        raise ValueError(f"target_label {target} has no token: {len(tokens)} tokens given ({list(tokens)})")
    return config.prompt_template.format(token=tokens[target], class_name=class_names[target])


def inpaint_batch(batch: dict, *, pipe, config: InpaintingConfig, class_names: Sequence[str], tokens: Sequence[str]) -> dict:
    """Map function: inpaint each row's masked region with the prompt of its target class."""
    _check_batch(batch)
    n = len(batch["example_id"])
    out = {
        "generated": [None] * n,
        "generated_mask": [None] * n,
        "prompt": [class_prompt(config, class_names, tokens, int(t)) for t in batch["target_label"]],
        "seed": [example_seed(config.seed, e, t) for e, t in zip(batch["example_id"], batch["target_label"])],
        "generator": [f"diffusers:{config.model_id}@{config.revision}"] * n,
        "generation_status": [_row_status(batch, i) for i in range(n)],
    }
    todo, sources, masks = [], [], []
    for i, source, mask in _editable_rows(batch, out["generation_status"], config.mask_dilation):
        todo.append(i)
        sources.append(source)
        masks.append(mask)
    if not todo:
        return out

    side = (config.resolution, config.resolution)
    # Resize the mask with bilinear weights and keep every touched pixel, so the model may
    # repaint at least the whole object; the final composite uses the exact mask.
    pipe_masks = [mask_image(m).resize(side, Image.BILINEAR).point(lambda v: 255 if v > 0 else 0) for m in masks]
    # One CPU generator per example: the same noise on any device, whatever the batch.
    generators = [torch.Generator("cpu").manual_seed(out["seed"][i]) for i in todo]
    negative = [config.negative_prompt] * len(todo) if config.negative_prompt is not None else None
    images = pipe(
        prompt=[out["prompt"][i] for i in todo],
        image=[Image.fromarray(s).resize(side, Image.BICUBIC) for s in sources],
        mask_image=pipe_masks,
        height=config.resolution,
        width=config.resolution,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        strength=config.strength,
        negative_prompt=negative,
        generator=generators,
        output_type="pil",
    ).images
    for i, source, mask, image in zip(todo, sources, masks, images):
        painted = np.asarray(image.convert("RGB").resize((source.shape[1], source.shape[0]), Image.BICUBIC))
        out["generated"][i] = Image.fromarray(np.where(mask[..., None], painted, source))
        out["generated_mask"][i] = mask_image(mask)
    return out


def prepare_donors(dataset: Dataset) -> Dataset:
    """Rows usable as donors: an OK, non-empty mask (columns image, mask, label, example_id)."""
    require_column_names(dataset.column_names, ("image", "mask", "label", "example_id"), "the donor dataset")
    keep = ["image", "mask", "label", "example_id"] + (["mask_status"] if "mask_status" in dataset.column_names else [])
    donors = dataset.select_columns(keep)

    def usable(batch):
        statuses = batch.get("mask_status") or [OK] * len(batch["mask"])
        return [m is not None and s == OK and bool(binary_mask(m).any()) for m, s in zip(batch["mask"], statuses)]

    return donors.filter(usable, batched=True, desc="donors with a usable mask")


def _erase(source: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill ``mask`` with each row's unmasked mean plus Gaussian noise of that row's std.

    Row statistics follow backgrounds that change with height (horizon, waves, sky to
    ground); a row with no unmasked pixel takes the whole image's statistics.
    """
    pixels = source.astype(np.float64)
    visible = (~mask).astype(np.float64)[..., None]
    count = visible.sum(axis=1)
    global_mean = (pixels * visible).sum(axis=(0, 1)) / visible.sum()
    global_std = np.sqrt(np.maximum(((pixels - global_mean) ** 2 * visible).sum(axis=(0, 1)) / visible.sum(), 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (pixels * visible).sum(axis=1) / count
        std = np.sqrt(np.maximum((pixels**2 * visible).sum(axis=1) / count - mean**2, 0))
    empty = count[:, 0] == 0
    mean[empty], std[empty] = global_mean, global_std
    # Noise for every pixel, so the random stream does not depend on the mask's shape.
    fill = mean[:, None, :] + std[:, None, :] * rng.standard_normal(source.shape)
    fill = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], fill, source)


def compose_batch(batch: dict, *, donors: Dataset, config: InpaintingConfig) -> dict:
    """Map function: erase the source object and paste a donor object of the target class."""
    _check_batch(batch)
    n = len(batch["example_id"])
    out = {
        "generated": [None] * n,
        "generated_mask": [None] * n,
        "prompt": [None] * n,
        "seed": [example_seed(config.seed, e, t) for e, t in zip(batch["example_id"], batch["target_label"])],
        "generator": ["compose"] * n,
        "generation_status": [_row_status(batch, i) for i in range(n)],
        "donor_example_id": [None] * n,
    }
    donor_labels = np.asarray(donors["label"])
    donor_ok = (
        np.asarray([s == OK for s in donors["mask_status"]])
        if "mask_status" in donors.column_names
        else np.ones(len(donors), dtype=bool)
    )
    for i, source, mask in _editable_rows(batch, out["generation_status"], config.mask_dilation):
        candidates = np.flatnonzero((donor_labels == int(batch["target_label"][i])) & donor_ok)
        if len(candidates) == 0:
            out["generation_status"][i] = "skipped_no_donor"
            continue
        rng = np.random.default_rng(out["seed"][i])
        donor = donors[int(candidates[rng.integers(len(candidates))])]
        size = batch["image"][i].size
        donor_image = np.asarray(to_rgb(donor["image"]).resize(size, Image.BICUBIC))
        donor_mask = binary_mask(donor["mask"].resize(size, Image.NEAREST))
        composed = np.where(donor_mask[..., None], donor_image, _erase(source, mask, rng))
        out["generated"][i] = Image.fromarray(composed)
        out["generated_mask"][i] = mask_image(mask | donor_mask)
        out["donor_example_id"][i] = donor["example_id"]
    return out


def failed_rows(batch: dict, reasons: Sequence[str], *, config: InpaintingConfig, **_) -> dict:
    """The generation columns of rows whose image cannot be read: no edit, the reason as status."""
    generator = "compose" if config.backend == "compose" else f"diffusers:{config.model_id}@{config.revision}"
    n = len(reasons)
    out = {
        "generated": [None] * n,
        "generated_mask": [None] * n,
        "prompt": [None] * n,
        "seed": [example_seed(config.seed, e, t) for e, t in zip(batch["example_id"], batch["target_label"])],
        "generator": [generator] * n,
        "generation_status": list(reasons),
    }
    if config.backend == "compose":
        out["donor_example_id"] = [None] * n
    return out


# A row whose image cannot be read fails alone; a row without a mask is skipped by the stage itself.
IMAGE_GUARD = ImageGuard(columns=("image", "mask"), required=("image",), fail=failed_rows)


def inpainting_features(backend: str) -> dict:
    features = {
        "generated": ImageFeature(),
        "generated_mask": ImageFeature(),
        "prompt": Value("string"),
        "seed": Value("int64"),
        "generator": Value("string"),
        "generation_status": Value("string"),
    }
    if backend == "compose":
        features["donor_example_id"] = Value("string")
    return features


def prompt_embedding_fingerprint(pipe, prompts: Sequence[str]) -> str:
    """A hash of the prompts' token ids and their input embeddings.

    Learned tokens keep their names when retrained; hashing their embedding vectors makes
    a cached result go stale when the tokens change.
    """
    prompts = list(prompts)
    if hasattr(pipe, "maybe_convert_prompt"):  # multi-vector textual-inversion tokens
        prompts = pipe.maybe_convert_prompt(prompts, pipe.tokenizer)
    ids = sorted({i for row in pipe.tokenizer(prompts).input_ids for i in row})
    weight = pipe.text_encoder.get_input_embeddings().weight
    digest = hashlib.sha256(json.dumps([prompts, ids]).encode())
    digest.update(weight[ids].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def run_inpainting(
    dataset: Dataset,
    config: InpaintingConfig,
    *,
    pipe=None,
    donors: Dataset | None = None,
    class_names: Sequence[str] | None = None,
    tokens: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    shards: ShardPlan | None = None,
    extra_fingerprint: Sequence = (),
) -> Dataset:
    """Run the inpainting stage over ``dataset`` (every row kept; see the module docstring).

    With ``output_dir`` the work is sharded and crash-safe (``run_resumable``; ``shards``:
    the shard size, and ``ShardPlan.for_processes`` to share it between GPUs); otherwise
    ``datasets.map`` with ``cache_dir`` for caching. The cache key
    covers the config, the input, the model id/revision and the prompts' token embeddings
    (or the donors); ``extra_fingerprint`` names anything else the pipe depends on (e.g.
    the hash of LoRA weights loaded into it).
    """
    require_column_names(dataset.column_names, INPUT_COLUMNS, "the inpainting input dataset")
    if config.backend == "diffusers":
        if pipe is None:
            raise ValueError("the diffusers backend needs pipe= (see load_inpainting_pipeline)")
        if class_names is None or tokens is None or len(class_names) != len(tokens):
            raise ValueError(
                f"the diffusers backend needs class_names= and tokens=, one per class; got class_names={class_names} "
                f"and tokens={tokens}"
            )
        label = dataset.features.get("label")
        if getattr(label, "names", None) is not None and len(label.names) != len(tokens):
            raise ValueError(
                f"the dataset has {len(label.names)} classes {label.names} but {len(tokens)} tokens {list(tokens)} "
                "were given: a token folder missing a class, or one learned for other classes?"
            )
        function, fn_kwargs = inpaint_batch, {"pipe": pipe, "class_names": list(class_names), "tokens": list(tokens)}
        prompts = [class_prompt(config, class_names, tokens, t) for t in range(len(tokens))]
        parts = [config.model_id, config.revision, prompts, prompt_embedding_fingerprint(pipe, prompts)]
    else:
        if donors is None:
            raise ValueError("the compose backend needs donors= (see prepare_donors)")
        require_column_names(donors.column_names, ("image", "mask", "label", "example_id"), "the donor dataset")
        function, fn_kwargs = compose_batch, {"donors": donors}
        parts = ["compose", donors._fingerprint]
    parts += list(extra_fingerprint)
    return run_stage(
        dataset,
        function,
        cache_dir=cache_dir,
        output_dir=output_dir,
        shards=shards,
        stage=f"inpainting-{config.backend}",
        config=config,
        new_features=inpainting_features(config.backend),
        fn_kwargs={**fn_kwargs, "config": config},
        batch_size=config.batch_size,
        fingerprint_parts=parts,
        guard=IMAGE_GUARD,
    )
