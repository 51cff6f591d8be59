"""The second causal learner's adapters: LoRA (peft) on the text-encoder and/or UNet
attention, trained with the token and saved in the layout ``pipe.load_lora_weights`` reads."""

from __future__ import annotations

import os

import torch
from safetensors import safe_open

from .config import LoraTokenConfig
from .embeddings import load_tokens

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora_adapters(unet, text_encoder, config: LoraTokenConfig) -> list[torch.nn.Parameter]:
    """Inject LoRA adapters named "default" with peft itself.

    peft's injection works for both models whatever transformers' own PEFT integration
    accepts (transformers 5 refuses ``text_encoder.add_adapter`` with peft < 0.22).
    """
    from peft import LoraConfig, inject_adapter_in_model

    for used, model, targets in (
        (config.lora_unet, unet, UNET_LORA_TARGETS),
        (config.lora_text_encoder, text_encoder, TEXT_ENCODER_LORA_TARGETS),
    ):
        if used:
            adapter = LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian", target_modules=targets
            )
            inject_adapter_in_model(adapter, model, adapter_name="default")
    return [p for model in (unet, text_encoder) for name, p in model.named_parameters() if "lora_" in name]


def lora_state_dicts(unet, text_encoder, config: LoraTokenConfig) -> dict[str, dict]:
    """peft state dicts of the adapters (embedding layers excluded: the token is saved apart)."""
    from peft.utils import get_peft_model_state_dict

    # save_embedding_layers=False: peft's "auto" would compare the resized vocabulary with
    # the base model's config, which means a Hub request.
    adapted = (("unet", unet, config.lora_unet), ("text_encoder", text_encoder, config.lora_text_encoder))
    return {
        name: get_peft_model_state_dict(model, save_embedding_layers=False) for name, model, used in adapted if used
    }


def save_lora_folder(folder: str, unet, text_encoder, config: LoraTokenConfig) -> str:
    """Write the adapters as ``pytorch_lora_weights.safetensors``, readable by ``pipe.load_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    state = lora_state_dicts(unet, text_encoder, config)
    kwargs = {}
    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if name in state:
            kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state[name])
            # Without the adapter config the loader assumes lora_alpha == rank.
            kwargs[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, **kwargs)
    return os.path.join(folder, LORA_WEIGHTS_NAME)


def text_encoder_lora_unsupported() -> str | None:
    """Why diffusers cannot load text-encoder LoRA here, or None when it can.

    diffusers loads it through transformers' PEFT integration, which refuses peft versions
    older than its ``MIN_PEFT_VERSION`` (0.22 for transformers 5).
    """
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    required = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    installed = version("peft")
    if required is not None and Version(installed) < Version(required):
        return f"transformers' PEFT integration needs peft>={required}, installed peft=={installed}"
    return None


def load_lora_causal(pipe, folder: str | os.PathLike, adapter_name: str = "dbb-causal") -> list[str]:
    """Load a ``learn_token_lora`` output (token + LoRA adapters) into ``pipe`` and verify both."""
    folder = os.fspath(folder)
    weights = os.path.join(folder, LORA_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no LoRA weights at {weights}")
    with safe_open(weights, framework="pt") as handle:
        components = {key.split(".", 1)[0] for key in handle.keys()}
    # Checked before anything loads, so a refusal never leaves a half-loaded pipeline.
    reason = text_encoder_lora_unsupported() if "text_encoder" in components else None
    if reason:
        raise RuntimeError(f"{weights} holds text-encoder LoRA, which cannot be loaded here: {reason}")
    tokens = load_tokens(pipe, folder)
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS_NAME, adapter_name=adapter_name)
    loaded = pipe.get_list_adapters()
    missing = [c for c in components if adapter_name not in loaded.get(c, [])]
    if missing:
        raise ValueError(f"the LoRA adapters of {folder} did not load into {missing} (loaded: {loaded})")
    return tokens


def restore_lora_state(unet, text_encoder, state: dict[str, dict]) -> None:
    """Put the adapters' weights of a checkpoint (:func:`lora_state_dicts`) back."""
    from peft import set_peft_model_state_dict

    for name, model in (("unet", unet), ("text_encoder", text_encoder)):
        if name in state:
            set_peft_model_state_dict(model, state[name])
