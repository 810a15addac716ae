"""The SD3 / SD3.5 family on a tiny StableDiffusion3Pipeline built from config: conditioning as the pipeline builds
it (with and without T5), the transformer at the raw timestep, LoRA and CAT (alpha 0 = LoRA bit for bit, alpha > 0
lowers the drift on the trigger-free prompt), plain-diffusers reload, DreamBooth, resume after SIGKILL,
sample/evaluate/compare and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (check_killed_run_resumes_to_the_straight_run, check_sample_evaluate_compare, randomize_lora,
                     train_cli_error, train_overrides)
from safetensors.torch import load_file

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, freeze, load_model
from cat_adapter.runners import train


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """A random-weight SD3 pipeline folder: latents 16x8x8 (patch 2), images 16x16, T5 length 32."""
    from cat_adapter.testing.tiny import build_tiny_sd3_pipeline

    return build_tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "model")


def plain_pipe(folder, **kw):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(folder), **kw)


def transformer_out(pipe, cond=None, seed=0):
    """The tiny transformer's velocity on fixed inputs (2 latents of 16x8x8 at t 100 and 700)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 16, 8, 8, generator=g)
    hidden, pooled = (torch.randn(2, 77 + 32, 64, generator=g), torch.randn(2, 64, generator=g)) if cond is None else cond
    with torch.no_grad():
        return pipe.transformer(hidden_states=z, timestep=torch.tensor([100.0, 700.0]), encoder_hidden_states=hidden,
                                pooled_projections=pooled, return_dict=False)[0]


@pytest.mark.parametrize("with_t5", [True, False])
def test_conditioning_is_the_pipelines(tmp_path, with_t5):
    from cat_adapter.testing.tiny import build_tiny_sd3_pipeline

    folder = build_tiny_sd3_pipeline(tmp_path / "m", with_t5=with_t5)
    model = load_model(ModelSpec(str(folder)))
    length = 32 if with_t5 else 256   # the T5 tokenizer's limit; without T5 the pipeline's default of zeros
    assert model.family == "sd3" and model.text.max_sequence_length == length
    assert model.present_text_encoders == (["text_encoder", "text_encoder_2", "text_encoder_3"] if with_t5 else
                                           ["text_encoder", "text_encoder_2"])
    prompts = ["a sks circle", "a dog on a beach"]
    cond = model.text.encode(prompts, device="cpu")
    with torch.no_grad():
        embeds, _, pooled, _ = model.pipe.encode_prompt(prompts, prompt_2=None, prompt_3=None, device="cpu",
                                                        do_classifier_free_guidance=False, max_sequence_length=length)
    torch.testing.assert_close(cond.hidden, embeds, rtol=0, atol=0)   # [CLIP-L; CLIP-G | pad] + T5 (or zeros)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)   # both projections
    assert cond.hidden.shape == (2, 77 + length, 64)
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([100.0, 700.0])
    with torch.no_grad():
        ours = model.predict(z, t, cond)
        direct = model.pipe.transformer(hidden_states=z, timestep=t, encoder_hidden_states=cond.hidden,
                                        pooled_projections=cond.pooled, return_dict=False)[0]
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)   # the raw timestep, no packing
    assert model.latent_shape(16, 16) == (16, 8, 8) and model.size_multiple == 4 and model.default_resolution == 16


def test_objective_uses_the_models_shifted_training_sigmas(sd3):
    model = load_model(ModelSpec(str(sd3)))
    t = model.objective.sample_timesteps(4096, torch.Generator().manual_seed(0))
    sigma = t / 1000
    # uniform u through SD3's static shift 3: sigma = 3u / (1 + 2u), whose mean is above 0.5
    assert 0.6 < float(sigma.mean()) < 0.75 and float(sigma.min()) > 0


@pytest.mark.slow
def test_cat_alpha_zero_equals_lora_and_alpha_one_lowers_the_drift(sd3, concept_dir, tmp_path):
    common = train_overrides(sd3, concept_dir, None, steps=6, lr=5e-3, cpu=True)
    cat = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat"}), progress=False)
    zero = train(build_config(overrides={**common, "output": str(tmp_path / "zero"), "method": "cat", "cat_alpha": 0.0,
                                         "cat_mode": "lean"}), progress=False)
    lora = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wz, wl, wc = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (zero, lora, cat))
    assert wz.keys() == wl.keys() and all(torch.equal(wz[k], wl[k]) for k in wz)
    assert any(not torch.equal(wc[k], wl[k]) for k in wc) and all(k.startswith("transformer.") for k in wc)
    meta = json.loads((cat / "adapter.json").read_text())
    assert meta["family"] == "sd3" and "attn.add_k_proj" in meta["details"]["lora"]["target_modules"]
    assert meta["conditioning"] == {"max_sequence_length": 32}
    # drift on the trigger-free prompt, in plain diffusers: the adapted prediction minus the base's
    base = plain_pipe(sd3)
    with torch.no_grad():
        embeds, _, pooled, _ = base.encode_prompt("a photo of a circle", prompt_2=None, prompt_3=None,
                                                  do_classifier_free_guidance=False, max_sequence_length=32)
    plain = (embeds.repeat(2, 1, 1), pooled.repeat(2, 1))
    ref = transformer_out(base, plain)
    drift = {}
    for name, out in (("lora", lora), ("cat", cat)):
        pipe = plain_pipe(sd3)
        pipe.load_lora_weights(str(out))
        drift[name] = float((transformer_out(pipe, plain) - ref).pow(2).mean())
    assert 0 < drift["cat"] < drift["lora"], drift


def test_saved_lora_loads_in_plain_diffusers_with_the_trained_outputs(sd3, tmp_path):
    model = load_model(ModelSpec(str(sd3)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(sd3), data="-", output="-", class_noun="circle", rank=4, lora_alpha=8.0))
    m = build_method(cfg, model)
    randomize_lora(model.denoiser)
    trained = transformer_out(model.pipe)
    m.export(tmp_path / "lora")
    fresh = plain_pipe(sd3)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(transformer_out(fresh), trained, rtol=1e-5, atol=1e-5)
    fresh.transformer.disable_adapters()
    assert (transformer_out(fresh) - trained).abs().max() > 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(sd3, concept_dir, tmp_path):
    kw = train_overrides(sd3, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         weighting_scheme="logit_normal", random_flip=True, cpu=True)
    check_killed_run_resumes_to_the_straight_run(kw, tmp_path)


@pytest.mark.slow
def test_sample_evaluate_and_compare_run_on_sd3(sd3, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(sd3, concept_dir, tmp_path / "cat", method="cat", steps=2,
                                                       lr=1e-2)), progress=False)
    check_sample_evaluate_compare(sd3, concept_dir, tmp_path, out)


def test_dreambooth_trains_the_transformer_and_reloads_in_plain_diffusers(sd3, concept_dir, tmp_path):
    from diffusers import SD3Transformer2DModel

    out = train(build_config(overrides=train_overrides(sd3, concept_dir, tmp_path / "db", method="dreambooth", steps=2,
                                                       num_class_images=2, class_sample_steps=2, cpu=True)),
                progress=False)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["family"] == "sd3" and meta["files"] == {"denoiser": "transformer"}
    pipe = plain_pipe(sd3)
    base = transformer_out(pipe)
    pipe.transformer = SD3Transformer2DModel.from_pretrained(str(out / "transformer"))
    assert (transformer_out(pipe) - base).abs().max() > 0
    assert main(["sample", "--model", str(sd3), "--adapter", str(out), "--prompt", "a sks circle", "--num-images", "1",
                 "--steps", "2", "--resolution", "16", "--output", str(tmp_path / "s")]) == 0


def test_bad_input(sd3, concept_dir, tmp_path, capsys):
    cases = [
        (["--guidance", "3.5"], "SD3 transformers take no guidance value"),
        (["--max-sequence-length", "64"], "--max-sequence-length 64: must be in [1, 32]"),
        (["--method", "ti"], "not built for the sd3 family"),
        (["--export-format", "kohya"], "--export-format kohya is not built for the sd3 family"),
        (["--train-text-encoder"], "--train-text-encoder"),
        (["--snr-gamma", "5"], "--snr-gamma is for DDPM models"),
        (["--resolution", "18"], "--resolution must be a positive multiple"),
    ]
    for i, (extra, needle) in enumerate(cases):
        line = train_cli_error(capsys, sd3, concept_dir, tmp_path / f"o{i}", "--trigger", "sks", *extra)
        assert needle in line, (extra, line)
