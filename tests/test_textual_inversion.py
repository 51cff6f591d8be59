"""Stage 2 (causal tokens): textual inversion and the LoRA learner on tiny SD2 pipelines."""

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dbb_hf.data.toy import ToyConfig, load_toy
from dbb_hf.textual_inversion import (
    EMBEDS_NAME,
    LORA_WEIGHTS_NAME,
    LoraTokenConfig,
    TextualInversionConfig,
    learn_token,
    learn_token_lora,
    learn_tokens,
    load_lora_causal,
    load_tokens,
    placeholder_token,
    read_embeds,
    save_embeds,
    text_encoder_lora_unsupported,
    train_token,
)
from dbb_hf.tiny.diffusion import save_tiny_inpaint_pipeline, save_tiny_text2img_pipeline

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    # Same seed: the inpainting pipeline's tokenizer and text encoder equal the base model's.
    return {
        "base": save_tiny_text2img_pipeline(root / "text2img", seed=0),
        "inpaint": save_tiny_inpaint_pipeline(root / "inpaint", seed=0),
    }


@pytest.fixture(scope="module")
def toy():
    train = load_toy(ToyConfig(num_train=8, num_validation=4, num_test=4))["train"]
    return {label: train.filter(lambda row: row["label"] == label) for label in (0, 1)}


def tiny_config(models, cls=TextualInversionConfig, **overrides):
    # "bar" is a single token of the tiny tokenizer ("animal" is not).
    settings = dict(
        model_id=models["base"], initializer_token="bar", max_train_steps=3, resolution=32,
        train_batch_size=1, gradient_accumulation_steps=1, checkpointing_steps=2,
    )
    settings.update(overrides)
    return cls(**settings)


@pytest.fixture(scope="module")
def trained(models, toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti") / "horizontal"
    result = train_token(toy[0], "horizontal_bar", tiny_config(models), out)
    return result


def inpaint_pipe(models):
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline.from_pretrained(models["inpaint"])


def encode(pipe, prompt):
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_training_moves_only_the_placeholder_row(models, trained):
    from transformers import CLIPTextModel, CLIPTokenizer

    base_encoder = CLIPTextModel.from_pretrained(models["base"], subfolder="text_encoder")
    base_rows = base_encoder.get_input_embeddings().weight.detach()
    bar = CLIPTokenizer.from_pretrained(models["base"], subfolder="tokenizer").encode("bar", add_special_tokens=False)
    rows = trained.text_encoder.get_input_embeddings().weight.detach()
    token_id = trained.tokenizer.convert_tokens_to_ids(trained.token)

    assert trained.token == "<dbb-horizontal_bar>"
    assert (trained.start_step, trained.global_step) == (0, 3)
    assert rows.shape[0] == base_rows.shape[0] + 1 and token_id == base_rows.shape[0]
    assert torch.equal(rows[:-1], base_rows)  # the original vocabulary is restored every step
    assert not torch.allclose(rows[token_id], base_rows[bar[0]])  # the token left its initializer
    saved, info = read_embeds(trained.path)
    assert list(saved) == [trained.token] and saved[trained.token].shape == (1, 32)
    assert torch.equal(saved[trained.token][0], rows[token_id])
    assert info[trained.token]["global_step"] == 3 and info[trained.token]["initializer_token"] == "bar"
    checkpoint = os.path.join(os.path.dirname(trained.path), "checkpoint-2")
    assert sorted(os.listdir(checkpoint)) == [EMBEDS_NAME, "training_state.safetensors"]


def test_learned_embeds_load_into_inpainting_pipeline(models, trained):
    pipe = inpaint_pipe(models)
    before = encode(pipe, "A photo of a bar horizontal_bar.")
    # The file is in the layout diffusers' own loader reads.
    pipe.load_textual_inversion(trained.path)
    token_id = pipe.tokenizer.convert_tokens_to_ids(trained.token)
    assert token_id != pipe.tokenizer.unk_token_id
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.equal(row, load_file(trained.path)[trained.token][0])
    assert not torch.allclose(encode(pipe, f"A photo of a {trained.token} horizontal_bar."), before)

    fresh = inpaint_pipe(models)
    assert load_tokens(fresh, os.path.dirname(trained.path)) == [trained.token]
    assert load_tokens(inpaint_pipe(models), {"<renamed>": trained.path}) == ["<renamed>"]


def test_load_tokens_refuses_bad_files(models, trained, tmp_path):
    pipe = inpaint_pipe(models)
    vocabulary = len(pipe.tokenizer)

    wrong_dim = tmp_path / "wrong_dim.safetensors"
    save_file({"<other-model>": torch.randn(1, 16)}, str(wrong_dim))
    with pytest.raises(ValueError, match="dimension 16.*expects 32"):
        load_tokens(pipe, wrong_dim)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_tokens(pipe, corrupt)
    with pytest.raises(FileNotFoundError):
        load_tokens(pipe, tmp_path / "missing")

    # A token still equal to its initializer learned nothing: loading it is an error too.
    untrained = tmp_path / "untrained.safetensors"
    bar_id = pipe.tokenizer.encode("bar", add_special_tokens=False)[0]
    bar = pipe.text_encoder.get_input_embeddings().weight[bar_id : bar_id + 1].detach()
    info = {"<untrained>": {"initializer_token": "bar", "prompt_name": "bar", "prompt_template": "{token} {class_name}"}}
    save_embeds(str(untrained), {"<untrained>": bar}, info)
    with pytest.raises(ValueError, match="no effect"):
        load_tokens(pipe, untrained)
    # Nothing that failed stays behind in the pipeline.
    assert len(pipe.tokenizer) == vocabulary
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == vocabulary
    assert load_tokens(pipe, trained.path) == [trained.token]


def test_resume_reproduces_the_uninterrupted_run(models, toy, trained, tmp_path):
    interrupted = tmp_path / "interrupted"
    # The fixture's 3-step run checkpointed at step 2: resume a copy from there (as after a
    # crash at step 2) and compare with the uninterrupted run.
    shutil.copytree(os.path.dirname(trained.path), interrupted)
    os.remove(interrupted / EMBEDS_NAME)
    resumed = train_token(toy[0], "horizontal_bar", tiny_config(models, checkpointing_steps=1), interrupted)

    assert (resumed.start_step, resumed.global_step) == (2, 3)
    torch.testing.assert_close(read_embeds(resumed.path)[0], read_embeds(trained.path)[0], rtol=1e-5, atol=1e-6)
    # Only the newest checkpoint keeps the optimizer state needed to resume.
    assert os.listdir(interrupted / "checkpoint-2") == [EMBEDS_NAME]
    assert sorted(os.listdir(interrupted / "checkpoint-3")) == [EMBEDS_NAME, "training_state.safetensors"]

    with pytest.raises(ValueError, match="another config"):
        train_token(toy[0], "horizontal_bar", tiny_config(models, max_train_steps=5, learning_rate=1e-3), interrupted)


def test_multi_vector_token(models, toy, tmp_path):
    config = tiny_config(models, num_vectors=2, max_train_steps=1, gradient_accumulation_steps=2)
    path = learn_token(toy[1], "vertical bar", config, tmp_path, prompt_name="bar")
    vectors, info = read_embeds(path)
    token = placeholder_token("vertical bar", config)
    assert token == "<dbb-vertical_bar>" and vectors[token].shape == (2, 32)
    assert info[token]["prompt_name"] == "bar" and info[token]["global_step"] == 1  # 2 micro-batches, 1 step

    pipe = inpaint_pipe(models)
    assert load_tokens(pipe, path) == [token]
    ids = pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors[token])
    assert pipe.maybe_convert_prompt(f"a {token} bar", pipe.tokenizer) == f"a {token} {token}_1 bar"


def test_learn_tokens_one_per_class_and_skips_finished_classes(models, toy, tmp_path):
    config = tiny_config(models, max_train_steps=1)
    tokens = learn_tokens({0: toy[0], 1: toy[1]}, ["horizontal_bar", "vertical_bar"], config, tmp_path)
    assert tokens == {0: "<dbb-horizontal_bar>", 1: "<dbb-vertical_bar>"}
    per_class = [tmp_path / name / EMBEDS_NAME for name in ("horizontal_bar", "vertical_bar")]
    stamps = [os.stat(p).st_mtime_ns for p in per_class]
    combined, info = read_embeds(tmp_path)
    assert list(combined) == [tokens[0], tokens[1]] and info[tokens[1]]["class_index"] == 1

    # A rerun finds both classes done and trains nothing (images are not even needed).
    assert learn_tokens({0: [], 1: []}, ["horizontal_bar", "vertical_bar"], config, tmp_path) == tokens
    assert [os.stat(p).st_mtime_ns for p in per_class] == stamps
    assert load_tokens(inpaint_pipe(models), tmp_path) == [tokens[0], tokens[1]]


def test_class_initializer_tokens_start_each_class_from_its_word(models, toy, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    # A learning rate too small to move a row visibly: each token stays at the word it started from.
    config = tiny_config(models, max_train_steps=1, learning_rate=1e-12, scale_lr=False,
                         class_initializer_tokens=["vertical_bar=vertical"])
    tokens = learn_tokens({0: toy[0], 1: toy[1]}, ["horizontal_bar", "vertical_bar"], config, tmp_path)
    saved, info = read_embeds(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(models["base"], subfolder="tokenizer")
    rows = CLIPTextModel.from_pretrained(models["base"], subfolder="text_encoder").get_input_embeddings().weight
    for index, word in ((0, "bar"), (1, "vertical")):
        assert info[tokens[index]]["initializer_token"] == word
        word_row = rows[tokenizer.encode(word, add_special_tokens=False)[0]].detach()
        assert torch.allclose(saved[tokens[index]][0], word_row, atol=1e-6)

    with pytest.raises(ValueError, match="not of the form class=word"):
        tiny_config(models, class_initializer_tokens=["vertical_bar"])
    with pytest.raises(ValueError, match="twice"):
        tiny_config(models, class_initializer_tokens=["a=bar", "a=vertical"])
    # A class the dataset does not have is named before anything trains.
    with pytest.raises(ValueError, match=r"\['vertical'\], which are not classes"):
        learn_tokens({0: toy[0]}, ["horizontal_bar", "vertical_bar"],
                     tiny_config(models, class_initializer_tokens=["vertical=bar"]), tmp_path / "unknown")
    assert not (tmp_path / "unknown").exists()


def test_lora_learner_changes_the_pipeline_output(models, toy, tmp_path):
    from diffusers import StableDiffusionPipeline

    config = tiny_config(models, LoraTokenConfig, max_train_steps=1, lora_learning_rate=1e-2, lora_alpha=8.0)
    folder = learn_token_lora(toy[0], "horizontal_bar", config, tmp_path)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) == [EMBEDS_NAME, LORA_WEIGHTS_NAME]
    assert all(k.startswith("unet.") for k in load_file(os.path.join(folder, LORA_WEIGHTS_NAME)))

    def generate(pipe):
        return pipe("A photo of a <dbb-horizontal_bar> horizontal_bar", num_inference_steps=2, height=32, width=32,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images

    token_only = StableDiffusionPipeline.from_pretrained(models["base"])
    load_tokens(token_only, folder)
    with_lora = StableDiffusionPipeline.from_pretrained(models["base"])
    assert load_lora_causal(with_lora, folder) == ["<dbb-horizontal_bar>"]
    assert with_lora.get_list_adapters() == {"unet": ["dbb-causal"]}
    assert with_lora.unet.peft_config["dbb-causal"].lora_alpha == 8  # alpha != rank survives the round trip
    difference = np.abs(generate(with_lora) - generate(token_only)).max()
    assert difference > 1e-3, difference


def test_text_encoder_lora_saves_and_loads_or_refuses_cleanly(models, toy, tmp_path):
    from diffusers import StableDiffusionPipeline

    config = tiny_config(models, LoraTokenConfig, max_train_steps=1, lora_unet=False, lora_text_encoder=True)
    folder = learn_token_lora(toy[0], "horizontal_bar", config, tmp_path)
    keys = load_file(os.path.join(folder, LORA_WEIGHTS_NAME))
    assert keys and all(k.startswith("text_encoder.") for k in keys)

    pipe = StableDiffusionPipeline.from_pretrained(models["base"])
    reason = text_encoder_lora_unsupported()
    if reason is None:
        assert load_lora_causal(pipe, folder) == ["<dbb-horizontal_bar>"]
        assert pipe.get_list_adapters() == {"text_encoder": ["dbb-causal"]}
    else:
        vocabulary = len(pipe.tokenizer)
        with pytest.raises(RuntimeError, match="cannot be loaded here"):
            load_lora_causal(pipe, folder)
        assert len(pipe.tokenizer) == vocabulary  # refused before loading anything


def test_config_and_input_errors(models, toy, tmp_path):
    with pytest.raises(ValueError, match="no \\{token\\}"):
        TextualInversionConfig(prompt_templates=["a photo of a {class_name}"])
    with pytest.raises(ValueError, match="only use"):
        TextualInversionConfig(prompt_templates=["a {token} of {colour}"])
    with pytest.raises(ValueError, match="mixed_precision"):
        TextualInversionConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="lora_text_encoder or lora_unet"):
        LoraTokenConfig(lora_unet=False, lora_text_encoder=False)
    with pytest.raises(ValueError, match="no images"):
        learn_token([], "horizontal_bar", tiny_config(models), tmp_path)
    with pytest.raises(ValueError, match="'image' column"):
        learn_token(toy[0].remove_columns("image"), "horizontal_bar", tiny_config(models), tmp_path)
    # The release's initializer "animal" is several tokens in the tiny vocabulary.
    with pytest.raises(ValueError, match="single token"):
        learn_token(toy[0], "horizontal_bar", tiny_config(models, initializer_token="animal"), tmp_path)


def test_bf16_mixed_precision_trains_the_fp32_token(models, toy, tmp_path):
    from accelerate.state import AcceleratorState

    # Accelerate keeps one precision per process; reset it around this test.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        config = tiny_config(models, max_train_steps=1, mixed_precision="bf16")
        result = train_token(toy[0], "horizontal_bar", config, tmp_path)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.global_step == 1
    assert result.text_encoder.get_input_embeddings().weight.dtype == torch.float32
    assert load_tokens(inpaint_pipe(models), result.path) == [result.token]


def _mean_loss(learned, parts, config, images, samples: int) -> float:
    """The Eq. 1 loss of the learned token on the first ``samples`` training samples (their
    seeded noise and timesteps), with the frozen VAE and UNet of ``parts`` in float32."""
    from dbb_hf.textual_inversion import CausalTokenDataset
    from dbb_hf.textual_inversion.train import _diffusion_loss

    prompts = [t.format(token=learned.token, class_name="horizontal_bar") for t in config.prompt_templates]
    dataset = CausalTokenDataset(images, learned.tokenizer, prompts, config.resolution, config.seed,
                                 start=0, length=samples)
    losses = []
    with torch.no_grad():
        for index in range(samples):
            batch = torch.utils.data.default_collate([dataset[index]])
            losses.append(float(_diffusion_loss(batch, vae=parts["vae"], unet=parts["unet"],
                                                text_encoder=learned.text_encoder,
                                                noise_scheduler=parts["noise_scheduler"], weight_dtype=torch.float32,
                                                seed=config.seed)))
    return float(np.mean(losses))


def test_bf16_textual_inversion_keeps_fp32_token_rows_and_lowers_the_loss(models, toy, tmp_path):
    from accelerate.state import AcceleratorState

    from dbb_hf.textual_inversion import load_components
    from dbb_hf.textual_inversion.data import as_pil_list

    images = as_pil_list(toy[0].select(range(2)))
    steps = 24
    config = tiny_config(models, max_train_steps=steps, checkpointing_steps=steps, mixed_precision="bf16",
                         learning_rate=5e-3, prompt_templates=["a photo of a {token}"])
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        learned = train_token(images, "horizontal_bar", config, tmp_path / "bf16")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    encoder = learned.text_encoder
    weight = encoder.get_input_embeddings().weight
    # The table with the token stays float32; the frozen encoder, UNet and VAE are bf16.
    assert weight.dtype == torch.float32
    assert {p.dtype for n, p in encoder.named_parameters() if "token_embedding" not in n} == {torch.bfloat16}
    token_id = learned.tokenizer.convert_tokens_to_ids(learned.token)
    initializer_id = learned.tokenizer.convert_tokens_to_ids("bar</w>")
    trained_row = weight[token_id].detach().clone()
    assert not torch.equal(trained_row, weight[initializer_id])
    # The loss is measured with the frozen parts in float32: the token moves the tiny model's
    # loss by about 1e-4, below bf16's resolution at 1.1 (0.008), where the comparison is
    # rounding (it flipped on CPUs with AVX-512 BF16 / AMX kernels).
    parts = load_components(config, frozen_dtype=torch.float32)
    after = _mean_loss(learned, parts, config, images, steps)
    with torch.no_grad():
        weight[token_id] = weight[initializer_id]  # back to the initial token
    before = _mean_loss(learned, parts, config, images, steps)
    assert after < before, (before, after)
    assert torch.equal(read_embeds(learned.path)[0][learned.token][0], trained_row)


def test_fp16_textual_inversion_scales_the_loss_and_saves_the_scaler(models, toy, tmp_path):
    from accelerate.state import AcceleratorState

    from dbb_hf.state_files import load_state_file
    from dbb_hf.textual_inversion.train import TRAINING_STATE_NAME

    config = tiny_config(models, max_train_steps=2, checkpointing_steps=1, mixed_precision="fp16")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        learned = train_token(toy[0], "horizontal_bar", config, tmp_path / "fp16")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert learned.global_step == 2
    assert learned.text_encoder.get_input_embeddings().weight.dtype == torch.float32
    state = load_state_file(tmp_path / "fp16" / "checkpoint-2" / TRAINING_STATE_NAME)
    assert state["scaler"]["scale"] > 0  # the stage's own GradScaler, resumed with the checkpoint
    assert torch.isfinite(read_embeds(learned.path)[0][learned.token]).all()


def test_inpainting_masks_are_full_or_boxes_inside_the_image():
    from dbb_hf.textual_inversion import inpainting_mask

    rng = np.random.default_rng(0)
    masks = [inpainting_mask(rng, 32, 0.25) for _ in range(400)]
    full = sum(bool(m.all()) for m in masks)
    assert 60 <= full <= 140  # ~25 % of 400
    for m in masks:
        assert m.shape == (1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
        rows, cols = m[0].any(1).nonzero(), m[0].any(0).nonzero()
        height, width = len(rows), len(cols)
        assert height >= 8 and width >= 8 and m.sum() == height * width  # one box, sides >= a quarter
    # Without full masks, a box covers everything only when both sides are drawn at 32 (1 in 625).
    assert sum(bool(inpainting_mask(rng, 32, 0.0).all()) for _ in range(100)) <= 2
    assert all(bool(inpainting_mask(rng, 32, 1.0).all()) for _ in range(10))


def test_template_masks_are_the_hair_region_cropped_and_flipped_with_the_face(models):
    from PIL import Image

    from dbb_hf.masking_template import FACE_ELLIPSE, HairTemplate, hair_template, jittered_template
    from dbb_hf.textual_inversion import CausalTokenDataset, inpainting_mask, load_components
    from dbb_hf.textual_inversion.data import MASK_STREAM, sample_seed

    tokenizer = load_components(tiny_config(models, model_id=models["inpaint"]))["tokenizer"]
    face = Image.new("RGB", (178, 218))  # a CelebA crop's size: TI takes its centre square

    def dataset(region, images=(face,)):
        return CausalTokenDataset(list(images), tokenizer, ["a bar"], 32, seed=0, start=0, length=64,
                                  full_mask_probability=0.25, mask_region=region)

    template = dataset("template")
    masks = [template[i]["mask"] for i in range(64)]
    # The default template on the same crop and resize, for comparison: jitter moves it a little.
    square = Image.fromarray(hair_template(218, 178).astype(np.uint8) * 255).crop((0, 20, 178, 198))
    expected = torch.from_numpy(np.asarray(square.resize((32, 32), Image.Resampling.NEAREST)) > 127).float()
    for mask in masks:
        assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert 0.1 < mask.mean() < 0.75 and not mask.all()  # never the whole image
        overlap = (mask[0] * expected).sum() / expected.sum()
        assert overlap > 0.6  # the hair region, moved and scaled by at most a few percent
    assert len({m.numpy().tobytes() for m in masks}) > 32  # jittered per sample
    # Reproducible per sample, and the box masks are those of before (same stream).
    assert torch.equal(dataset("template")[5]["mask"], masks[5])
    assert torch.equal(dataset("box")[5]["mask"], inpainting_mask(
        np.random.default_rng(sample_seed(0, 5, MASK_STREAM)), 32, 0.25))
    # Known answer: the sample's jittered template in the face's coordinates, cropped and resized
    # with it, and mirrored exactly when the face is (a face whose left half is bright shows which).
    left = np.zeros((218, 178, 3), np.uint8)
    left[:, :89] = 255
    sided = dataset("template", [Image.fromarray(left)])
    flips = []
    for i in range(16):
        item = sided[i]
        hair = jittered_template(218, 178, np.random.default_rng(sample_seed(0, i, MASK_STREAM)))
        hair = Image.fromarray(hair.astype(np.uint8) * 255).crop((0, 20, 178, 198))
        hair = np.asarray(hair.resize((32, 32), Image.Resampling.NEAREST)) > 127
        flips.append(bool(item["pixel_values"][0, 0, 0] < 0))  # the bright half went right
        if flips[-1]:
            hair = hair[:, ::-1]
        assert torch.equal(item["mask"][0], torch.from_numpy(hair.copy()).float())
    assert 0 < sum(flips) < 16
    # Another alignment's template (the run's masking config's) is the one jittered.
    narrow = HairTemplate(head=(0.5, 0.5, 0.3, 0.45), face=FACE_ELLIPSE, neck_width=0.0)
    custom = CausalTokenDataset([face], tokenizer, ["a bar"], 32, seed=0, start=0, length=4,
                                full_mask_probability=0.25, mask_region="template", hair_template=narrow)
    hair = jittered_template(218, 178, np.random.default_rng(sample_seed(0, 3, MASK_STREAM)), template=narrow)
    hair = Image.fromarray(hair.astype(np.uint8) * 255).crop((0, 20, 178, 198))
    hair = np.asarray(hair.resize((32, 32), Image.Resampling.NEAREST)) > 127
    mask = custom[3]["mask"][0]
    if not torch.equal(mask, torch.from_numpy(hair.copy()).float()):  # sample 3 may be flipped
        assert torch.equal(mask, torch.from_numpy(hair[:, ::-1].copy()).float())
    assert not torch.equal(mask, template[3]["mask"][0])
    with pytest.raises(ValueError, match=r"mask_region must be one of \('box', 'template'\), got 'hair'"):
        TextualInversionConfig(mask_region="hair")


def test_inpainting_unet_sees_noisy_latents_mask_and_masked_image(models, toy):
    from dbb_hf.textual_inversion import CausalTokenDataset, load_components
    from dbb_hf.textual_inversion.train import _diffusion_loss

    config = tiny_config(models, model_id=models["inpaint"])
    parts = load_components(config)
    dataset = CausalTokenDataset(
        [toy[0][0]["image"].convert("RGB")] * 2, parts["tokenizer"], ["a bar"], 32, seed=0, start=0, length=2,
        full_mask_probability=0.0,
    )
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    seen = {}
    unet = parts["unet"]
    forward = unet.forward

    def recording(sample, *args, **kwargs):
        seen["sample"] = sample
        return forward(sample, *args, **kwargs)

    unet.forward = recording
    kwargs = dict(vae=parts["vae"], unet=unet, text_encoder=parts["text_encoder"],
                  noise_scheduler=parts["noise_scheduler"], weight_dtype=torch.float32, seed=0)
    loss = _diffusion_loss(batch, **kwargs)
    sample = seen["sample"]
    assert sample.shape == (2, 9, 16, 16)  # 2x VAE: 32 px -> 16x16 latents
    expected_mask = torch.nn.functional.interpolate(batch["mask"], size=(16, 16))
    assert torch.equal(sample[:, 4:5], expected_mask) and 0 < expected_mask.mean() < 1
    # The masked image is what the UNet sees: hiding everything changes its input and the loss.
    full = dict(batch, mask=torch.ones_like(batch["mask"]))
    assert not torch.allclose(_diffusion_loss(full, **kwargs), loss)
    assert not torch.equal(seen["sample"][:, 5:], sample[:, 5:])
    assert torch.equal(_diffusion_loss(batch, **kwargs), loss)  # seeded per sample: repeatable


def test_token_on_an_inpainting_unet_trains_resumes_exactly_and_loads(models, toy, tmp_path):
    config = tiny_config(models, model_id=models["inpaint"], max_train_steps=3, checkpointing_steps=2)
    full = train_token(toy[1], "vertical_bar", config, tmp_path / "full")
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full", interrupted)
    os.remove(interrupted / EMBEDS_NAME)
    resumed = train_token(toy[1], "vertical_bar", config, interrupted)
    assert (resumed.start_step, resumed.global_step) == (2, 3)
    vectors = read_embeds(full.path)[0]
    torch.testing.assert_close(read_embeds(resumed.path)[0], vectors, rtol=1e-5, atol=1e-6)
    # A fresh run gives the same token (deterministic), and the token was trained.
    again = train_token(toy[1], "vertical_bar", config, tmp_path / "again")
    assert torch.equal(read_embeds(again.path)[0][full.token], vectors[full.token])
    assert load_tokens(inpaint_pipe(models), full.path) == [full.token]
