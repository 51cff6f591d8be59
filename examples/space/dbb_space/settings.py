"""The Space's settings: its own fields (:class:`SpaceConfig`) and the stage configs it runs.

They are read as every dbb_hf command reads its configs
(:func:`dbb_hf.config.resolve_configs`): the stage sections are the pipeline's own
``MaskingConfig``, ``InpaintingConfig`` and ``PruningConfig`` (flags
``--masking_detector_id``, ``--inpainting_model_id``, ``--pruning_P``, ...), the Space's
fields are unprefixed (``--classifier``, ``--Psi``). Each flag is also an environment
variable ``DBB_SPACE_<FLAG>`` (a Space's "Variables"), which the flags override; lists are
comma-separated. ``--config FILE`` and ``--preset`` work as for the recipes.

``--tiny`` (or ``DBB_SPACE_TINY=1``) applies two presets under the environment and the
flags: dbb_hf's ``tiny`` (a tiny random GroundingDINO, SAM and Stable Diffusion inpainting
pipeline) and ``tiny.yaml`` beside ``app.py`` (an untrained toy classifier, its Psi and toy
example images, made by the ``space-tiny`` builder below). :func:`build_tiny` builds them.

``--run_dir DIR`` (or ``DBB_SPACE_RUN_DIR``) runs the Space on a finished dbb_hf run instead
(:mod:`.run_folder`): its ``config.yaml`` is a layer under the environment and the flags, and
the folder gives the classifier, Psi, the tokens and the examples. With the shipped miniature
priors this is offline and the edits are real ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from dbb_hf.config import environment_layer, preparse, resolve_configs, subset
from dbb_hf.data.toy import find_object as find_toy_object
from dbb_hf.inpainting import InpaintingConfig
from dbb_hf.masking import MaskingConfig
from dbb_hf.presets import builder, materialize
from dbb_hf.pruning import PruningConfig

from .run_folder import run_layers, write_examples

ENV_PREFIX = "DBB_SPACE_"
STAGES = {"masking": MaskingConfig, "inpainting": InpaintingConfig, "pruning": PruningConfig}
TINY_PRESETS = ("tiny", str(Path(__file__).resolve().parents[1] / "tiny.yaml"))
# Backends that need what one upload does not have: a mask column, a dataset of donor objects.
# The column backend works where the Space finds the object itself (find_object).
UNSUPPORTED_BACKENDS = {"masking": ("column",), "inpainting": ("compose",)}
# How the Space finds an upload's object for the column backend, per world.
OBJECT_FINDERS = {"toy": find_toy_object}


@dataclass
class SpaceConfig:
    tiny: bool = field(
        default=False,
        metadata={"help": "Build tiny random models in a temporary folder and use them (offline; outputs are noise)."},
    )
    tiny_dir: Optional[str] = field(
        default=None, metadata={"help": "Where --tiny writes its models (default: a new temporary folder)."}
    )
    run_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "A finished dbb_hf run folder (dbb-hf demo, a recipe): its config.yaml's masking, inpainting "
            "and pruning, its ERM classifier, learned tokens, Psi and test images (offline with the shipped priors)."
        },
    )
    find_object: Optional[str] = field(
        default=None,
        metadata={
            "help": "How the column masking backend gets an upload's object mask (an upload has no mask column): "
            "'toy' (the toy world's object is its one solid colour). Set by --run_dir for a toy run."
        },
    )
    classifier: str = field(
        default="",
        metadata={"help": "The ERM classifier: a save_classifier folder (dbb_hf.modeling) or hf-hub:<repo id>."},
    )
    class_names: Optional[list[str]] = field(
        default=None, metadata={"help": "Class names, in label order (default: the classifier's label_names)."}
    )
    object_names: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "What the detector looks for, and the {class_name} of the inpainting prompt: one for all "
            "classes or one per class (paper: 'bird' on Waterbirds, 'hair' on CelebA). Default: the class names."
        },
    )
    class_prompts: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Words standing in for each class's learned token when no tokens are given (default: none)."},
    )
    tokens: str = field(
        default="",
        metadata={"help": "Learned class tokens: a learn_tokens output folder, an embeddings file, or a Hub repo id."},
    )
    tokens_revision: str = field(default="main", metadata={"help": "Hub revision of tokens (a Hub repo id)."})
    Psi: Optional[list[float]] = field(
        default=None,
        metadata={
            "help": "Psi per class: the mean probability of class i over its training images (Eq. 3; "
            "dbb_hf.pruning.class_confidence). Required unless --tiny."
        },
    )
    max_image_side: int = field(default=768, metadata={"help": "Larger uploads are scaled down to this side first."})
    max_upload_bytes: int = field(
        default=10 * 1024 * 1024, metadata={"help": "Largest upload accepted, in bytes (default 10 MiB)."}
    )
    max_upload_pixels: int = field(
        default=25_000_000,
        metadata={"help": "Largest upload accepted, in pixels (width x height), read from the header before decoding."},
    )
    max_upload_side: int = field(default=8192, metadata={"help": "Longest side of an upload accepted, in pixels."})
    examples_dir: str = field(default="", metadata={"help": "A folder of example images shown under the input."})
    device: Optional[str] = field(default=None, metadata={"help": "Torch device (default: cuda if available)."})
    server_name: Optional[str] = field(
        default=None, metadata={"help": "Address to serve on (default: gradio's, GRADIO_SERVER_NAME or 127.0.0.1)."}
    )
    server_port: Optional[int] = field(
        default=None, metadata={"help": "Port to serve on (default: gradio's, GRADIO_SERVER_PORT or 7860)."}
    )

    def __post_init__(self):
        if self.tiny and self.run_dir:
            raise ValueError("--tiny and --run_dir are two sets of models: give one")
        if self.find_object is not None and self.find_object not in OBJECT_FINDERS:
            raise ValueError(f"find_object must be one of {list(OBJECT_FINDERS)}, got {self.find_object!r}")
        if not self.tiny and not self.classifier:
            raise ValueError(
                f"no classifier given: set {ENV_PREFIX}CLASSIFIER or --classifier (a save_classifier folder or "
                "hf-hub:<repo id>), or run with --tiny or --run_dir"
            )
        if not self.tiny and self.Psi is None:
            raise ValueError(
                f"no Psi given: set {ENV_PREFIX}PSI or --Psi to the mean training confidence of each class "
                "(dbb_hf.pruning.class_confidence), or run with --tiny or --run_dir"
            )
        if self.max_image_side < 16:
            raise ValueError(f"max_image_side must be at least 16, got {self.max_image_side}")
        for name in ("max_upload_bytes", "max_upload_pixels", "max_upload_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class Settings:
    """Everything the Space runs with: its own fields and one config per stage."""

    space: SpaceConfig
    masking: MaskingConfig
    inpainting: InpaintingConfig
    pruning: PruningConfig

    def __post_init__(self):
        for section, backends in UNSUPPORTED_BACKENDS.items():
            backend = getattr(self, section).backend
            if (section, backend) == ("masking", "column") and self.space.find_object:
                continue
            if backend in backends:
                raise ValueError(f"{section} backend {backend!r} needs a dataset, not one upload; the Space "
                                 f"cannot use it ({ENV_PREFIX}{section.upper()}_BACKEND, --{section}_backend)")


def parse_config(args: Sequence[str] | None = None, environ: typing.Mapping[str, str] = os.environ) -> Settings:
    """The Space's settings from the environment, with command-line flags taking precedence.

    Nothing is built here: with ``--tiny`` the models' fields hold placeholders until
    :func:`build_tiny`. With ``--run_dir`` the run folder's layers lie under the environment.
    """
    args = list(sys.argv[1:] if args is None else args)
    environment = environment_layer(ENV_PREFIX, STAGES, {"space": SpaceConfig}, environ)
    # --tiny and --run_dir decide which layers the rest is read over, so they are read first.
    given = environment.get("space", {})
    wanted, _ = preparse(
        subset(SpaceConfig, ["tiny", "run_dir"]), args,
        defaults={"tiny": given.get("tiny", False), "run_dir": given.get("run_dir")},
    )
    space, configs = resolve_configs(
        STAGES, [("space", SpaceConfig)], args, presets=TINY_PRESETS if wanted.tiny else (),
        layers=run_layers(wanted.run_dir) if wanted.run_dir else (),
        overrides=[("the environment", environment)], build=False,
    )
    return Settings(space, **configs)


def build_tiny(settings: Settings) -> Settings:
    """Build the models and examples the ``--tiny`` presets name into ``space.tiny_dir`` (a new
    temporary folder when unset); the settings that load them."""
    root = settings.space.tiny_dir or tempfile.mkdtemp(prefix="dbb-space-tiny-")
    built: dict = {}
    space = dataclasses.replace(materialize(settings.space, root, built), tiny_dir=str(root))
    return Settings(space, **{name: materialize(getattr(settings, name), root, built) for name in STAGES})


def with_run_examples(settings: Settings) -> Settings:
    """The settings with the run's test images as examples, unless an examples folder is given."""
    if settings.space.examples_dir:
        return settings
    examples = write_examples(settings.space.run_dir)
    return dataclasses.replace(settings, space=dataclasses.replace(settings.space, examples_dir=examples))


@builder("space-tiny")
def build_space_tiny(folder: Path) -> dict:
    """An untrained timm ``resnet10t`` for the toy benchmark's classes, its Psi on 32 toy training
    images, and the toy's test images as examples (``<id>_<class name>.png``)."""
    import torch

    from dbb_hf.data.toy import ToyConfig, load_toy
    from dbb_hf.modeling import ClassifierConfig, create_classifier, load_classifier, save_classifier
    from dbb_hf.pruning import compute_class_confidence

    toy = load_toy(ToyConfig(num_train=32, num_validation=4, num_test=4, image_size=64, seed=0))
    names = toy["train"].features["label"].names
    classifier_dir = folder / "classifier"
    if not (classifier_dir / "config.json").exists():
        torch.manual_seed(0)
        untrained = ClassifierConfig(model_name="resnet10t", pretrained=False, image_size=32)
        save_classifier(create_classifier(untrained, len(names)), str(classifier_dir), names)
    examples = folder / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    for row in toy["test"]:
        row["image"].save(examples / f"{row['example_id']}_{names[row['label']]}.png")
    Psi = compute_class_confidence(load_classifier(str(classifier_dir)), toy["train"], batch_size=32)
    return {"classifier": str(classifier_dir), "examples": str(examples), "Psi": Psi}
