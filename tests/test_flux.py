"""The Flux family on a tiny FluxPipeline built from config: flow-matching objective, conditioning, LoRA and CAT,
plain-diffusers reload, resume after SIGKILL, sample/evaluate/compare and bad input."""

from __future__ import annotations

import json
import math

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
def flux(tmp_path_factory):
    """A random-weight Flux pipeline folder with a guidance embedding (dev-like): latents 4x8x8, images 16x16."""
    from cat_adapter.testing.tiny import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "model")


def plain_pipe(folder):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(str(folder))


def transformer_out(pipe, seed=0):
    """The tiny transformer's velocity on fixed packed inputs (2 images of 4x8x8 latents, 32 T5 tokens)."""
    g = torch.Generator().manual_seed(seed)
    z, text, pooled = torch.randn(2, 16, 16, generator=g), torch.randn(2, 32, 32, generator=g), torch.randn(2, 32, generator=g)
    img_ids = type(pipe)._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)
    with torch.no_grad():
        return pipe.transformer(hidden_states=z, timestep=torch.tensor([0.1, 0.7]), guidance=torch.tensor([3.5, 3.5]),
                                pooled_projections=pooled, encoder_hidden_states=text, txt_ids=torch.zeros(32, 3),
                                img_ids=img_ids, return_dict=False)[0]


def test_flow_matching_objective_is_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    from cat_adapter.diffusion import FlowMatchObjective

    sched = FlowMatchEulerDiscreteScheduler()
    for scheme in ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"):
        obj = FlowMatchObjective(sched.config, weighting_scheme=scheme)
        t = obj.sample_timesteps(64, torch.Generator().manual_seed(3))
        u = compute_density_for_timestep_sampling(scheme, 64, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(t, sched.timesteps[(u * 1000).long()], rtol=0, atol=0)  # the stream's generator
        sigma = t / 1000
        w = obj.loss_weights(t)
        if scheme in ("sigma_sqrt", "cosmap"):
            torch.testing.assert_close(w, compute_loss_weighting_for_sd3(scheme, sigma))
        else:
            assert w is None
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([1000.0, 500.0, 10.0])
    z = obj.noisy(x, eps, t)
    torch.testing.assert_close(z[0], eps[0])                       # sigma 1: pure noise
    torch.testing.assert_close(z[1], 0.5 * x[1] + 0.5 * eps[1])
    torch.testing.assert_close(obj.target(x, eps, t), eps - x)     # the velocity
    assert math.isclose(float(FlowMatchObjective(sched.config, weighting_scheme="cosmap").loss_weights(
        torch.tensor([500.0]))), 2 / (math.pi * 0.5), rel_tol=1e-6)


def test_conditioning_and_packing_are_the_pipelines(flux):
    model = load_model(ModelSpec(str(flux)))
    assert model.family == "flux" and model.has_guidance and model.text.max_sequence_length == 32
    prompts = ["a sks circle", "a dog on a beach"]
    cond = model.text.encode(prompts, device="cpu")
    with torch.no_grad():
        embeds, pooled, text_ids = model.pipe.encode_prompt(prompts, prompt_2=None, device="cpu", max_sequence_length=32)
    torch.testing.assert_close(cond.hidden, embeds, rtol=0, atol=0)   # T5 sequence
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)   # CLIP pooled
    # predict = pack, the transformer at t / 1000 with guidance and ids, unpack
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0])
    pipe = type(model.pipe)
    with torch.no_grad():
        ours = model.predict(z, t, cond)
        direct = model.pipe.transformer(
            hidden_states=pipe._pack_latents(z, 2, 4, 8, 8), timestep=t / 1000, guidance=torch.tensor([3.5, 3.5]),
            pooled_projections=cond.pooled, encoder_hidden_states=cond.hidden, txt_ids=text_ids,
            img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32), return_dict=False)[0]
    torch.testing.assert_close(ours, pipe._unpack_latents(direct, 16, 16, 2), rtol=0, atol=0)
    assert ours.shape == z.shape


def test_cat_alpha_zero_equals_lora_and_changes_only_lora(flux, concept_dir, tmp_path):
    common = train_overrides(flux, concept_dir, None, steps=3, cpu=True, weighting_scheme="logit_normal")
    cat = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat"}), progress=False)
    zero = train(build_config(overrides={**common, "output": str(tmp_path / "zero"), "method": "cat", "cat_alpha": 0.0,
                                         "cat_mode": "lean"}), progress=False)
    lora = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wz, wl, wc = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (zero, lora, cat))
    assert wz.keys() == wl.keys() and all(torch.equal(wz[k], wl[k]) for k in wz)
    assert all(x["loss_preservation"] > 0 for x in map(json.loads, (zero / "log.jsonl").read_text().splitlines()[1:]))
    assert any(not torch.equal(wc[k], wl[k]) for k in wc)
    assert all(k.startswith("transformer.") for k in wc)
    meta = json.loads((cat / "adapter.json").read_text())
    assert meta["family"] == "flux" and "attn.add_k_proj" in meta["details"]["lora"]["target_modules"]
    base, pipe = plain_pipe(flux), plain_pipe(flux)
    pipe.load_lora_weights(str(cat))
    assert (transformer_out(pipe) - transformer_out(base)).abs().max() > 0
    pipe.transformer.disable_adapters()
    torch.testing.assert_close(transformer_out(pipe), transformer_out(base), rtol=0, atol=0)  # base untouched


def test_saved_lora_loads_in_plain_diffusers_with_the_trained_outputs(flux, tmp_path):
    model = load_model(ModelSpec(str(flux)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(flux), data="-", output="-", class_noun="circle", rank=4, lora_alpha=8.0))
    m = build_method(cfg, model)
    randomize_lora(model.denoiser)
    trained = transformer_out(model.pipe)
    m.export(tmp_path / "lora")
    fresh = plain_pipe(flux)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(transformer_out(fresh), trained, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(flux, concept_dir, tmp_path):
    kw = train_overrides(flux, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         weighting_scheme="cosmap", random_flip=True, cpu=True)
    check_killed_run_resumes_to_the_straight_run(kw, tmp_path)


@pytest.mark.slow
def test_sample_evaluate_and_compare_run_on_flux(flux, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(flux, concept_dir, tmp_path / "cat", method="cat", steps=2,
                                                       lr=1e-2)),
                progress=False)
    check_sample_evaluate_compare(flux, concept_dir, tmp_path, out)


def test_bad_input(flux, tiny_model, concept_dir, tmp_path, capsys):
    from cat_adapter.testing.tiny import build_tiny_flux_pipeline

    schnell = build_tiny_flux_pipeline(tmp_path / "schnell", guidance_embeds=False)
    cases = [
        (schnell, ["--guidance", "3.5"], "no guidance embedding"),
        (flux, ["--max-sequence-length", "64"], "--max-sequence-length 64: must be in [1, 32]"),
        (flux, ["--method", "ti"], "not built for the flux family"),
        (flux, ["--export-format", "kohya"], "--export-format kohya is not built for the flux family"),
        (flux, ["--snr-gamma", "5"], "--snr-gamma is for DDPM models"),
        (tiny_model, ["--weighting-scheme", "logit_normal"], "is for flow-matching models"),
        (tiny_model, ["--guidance", "3.5"], "--guidance is a Flux option"),
    ]
    for i, (model, extra, needle) in enumerate(cases):
        line = train_cli_error(capsys, model, concept_dir, tmp_path / f"o{i}", "--trigger", "sks", "--resolution", "16",
                               *extra)
        assert needle in line, (extra, line)


def test_dreambooth_trains_the_transformer_and_reloads_in_plain_diffusers(flux, concept_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    out = train(build_config(overrides=train_overrides(flux, concept_dir, tmp_path / "db", method="dreambooth", steps=2,
                                                       num_class_images=2, class_sample_steps=2, cpu=True)),
                progress=False)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["family"] == "flux" and meta["files"] == {"denoiser": "transformer"}
    pipe = plain_pipe(flux)
    base = transformer_out(pipe)
    pipe.transformer = FluxTransformer2DModel.from_pretrained(str(out / "transformer"))
    assert (transformer_out(pipe) - base).abs().max() > 0
    assert main(["sample", "--model", str(flux), "--adapter", str(out), "--prompt", "a sks circle", "--num-images", "1",
                 "--steps", "2", "--resolution", "16", "--output", str(tmp_path / "s")]) == 0


def test_the_runs_t5_length_is_recorded_and_restored_with_the_adapter(flux, concept_dir, tmp_path):
    from cat_adapter.adapters import load_adapter

    out = train(build_config(overrides=train_overrides(flux, concept_dir, tmp_path / "l", method="lora", steps=1,
                                                       max_sequence_length=16, guidance=1.0)), progress=False)
    assert json.loads((out / "adapter.json").read_text())["conditioning"] == {"max_sequence_length": 16}
    model = load_model(ModelSpec(str(flux)))
    assert model.text.max_sequence_length == 32
    load_adapter(out).apply(model)
    assert model.text.max_sequence_length == 16
    assert model.text.encode(["a sks circle"], device="cpu").hidden.shape == (1, 16, 32)
