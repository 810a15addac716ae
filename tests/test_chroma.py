"""The Chroma family on a tiny ChromaPipeline built from config: T5 with its attention mask and the transformer's
text mask as the pipeline builds them, LoRA and CAT (alpha 0 = LoRA bit for bit, alpha > 0 lowers the drift on the
trigger-free prompt), plain-diffusers reload, DreamBooth, resume after SIGKILL, sample/evaluate/compare and bad
input."""

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
def chroma(tmp_path_factory):
    """A random-weight Chroma pipeline folder: latents 4x8x8 (packed 2x2), images 16x16, T5 length 32."""
    from cat_adapter.testing.tiny import build_tiny_chroma_pipeline

    return build_tiny_chroma_pipeline(tmp_path_factory.mktemp("chroma") / "model")


def plain_pipe(folder):
    from diffusers import ChromaPipeline

    return ChromaPipeline.from_pretrained(str(folder))


def transformer_out(pipe, embeds, mask, seed=0):
    """The tiny transformer's velocity on 2 packed latents of 4x8x8 at t 0.1 and 0.7, with the pipeline's mask."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 16, 16, generator=g)
    img_ids = type(pipe)._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)
    full = pipe._prepare_attention_mask(2, 16, torch.float32, mask)
    with torch.no_grad():
        return pipe.transformer(hidden_states=z, timestep=torch.tensor([0.1, 0.7]), encoder_hidden_states=embeds,
                                txt_ids=torch.zeros(embeds.shape[1], 3), img_ids=img_ids, attention_mask=full,
                                return_dict=False)[0]


def pipeline_embeds(pipe, prompts):
    with torch.no_grad():
        return pipe._get_t5_prompt_embeds(list(prompts), max_sequence_length=32, device="cpu")


def test_conditioning_and_prediction_are_the_pipelines(chroma):
    model = load_model(ModelSpec(str(chroma)))
    assert model.family == "chroma" and model.text.max_sequence_length == 32 and not model.has_guidance
    prompts = ["a sks circle", "a dog on a beach"]
    cond = model.text.encode(prompts, device="cpu")
    embeds, mask = pipeline_embeds(model.pipe, prompts)
    torch.testing.assert_close(cond.hidden, embeds, rtol=0, atol=0)          # T5 with its attention mask
    torch.testing.assert_close(cond.extra["mask"], mask, rtol=0, atol=0)     # prompt + first pad visible
    assert mask.sum(1).tolist() != [32, 32]
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100.0, 700.0])
    pipe = type(model.pipe)
    with torch.no_grad():
        ours = model.predict(z, t, cond)
        direct = model.pipe.transformer(
            hidden_states=pipe._pack_latents(z, 2, 4, 8, 8), timestep=t / 1000, encoder_hidden_states=embeds,
            txt_ids=torch.zeros(32, 3), img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
            attention_mask=model.pipe._prepare_attention_mask(2, 16, torch.float32, mask), return_dict=False)[0]
    torch.testing.assert_close(ours, pipe._unpack_latents(direct, 16, 16, 2), rtol=0, atol=0)


@pytest.mark.slow
def test_cat_alpha_zero_equals_lora_and_alpha_one_lowers_the_drift(chroma, concept_dir, tmp_path):
    common = train_overrides(chroma, concept_dir, None, steps=6, lr=5e-3, cpu=True)
    cat = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat"}), progress=False)
    zero = train(build_config(overrides={**common, "output": str(tmp_path / "zero"), "method": "cat", "cat_alpha": 0.0,
                                         "cat_mode": "lean"}), progress=False)
    lora = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wz, wl, wc = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (zero, lora, cat))
    assert wz.keys() == wl.keys() and all(torch.equal(wz[k], wl[k]) for k in wz)
    assert any(not torch.equal(wc[k], wl[k]) for k in wc) and all(k.startswith("transformer.") for k in wc)
    assert json.loads((cat / "adapter.json").read_text())["family"] == "chroma"
    base = plain_pipe(chroma)
    embeds, mask = pipeline_embeds(base, ["a photo of circle on a dark background"] * 2)
    ref = transformer_out(base, embeds, mask)
    drift = {}
    for name, out in (("lora", lora), ("cat", cat)):
        pipe = plain_pipe(chroma)
        pipe.load_lora_weights(str(out))
        drift[name] = float((transformer_out(pipe, embeds, mask) - ref).pow(2).mean())
    assert 0 < drift["cat"] < drift["lora"], drift


def test_saved_lora_loads_in_plain_diffusers_with_the_trained_outputs(chroma, tmp_path):
    model = load_model(ModelSpec(str(chroma)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(chroma), data="-", output="-", class_noun="circle", rank=4,
                                      lora_alpha=8.0))
    m = build_method(cfg, model)
    randomize_lora(model.denoiser)
    embeds, mask = pipeline_embeds(model.pipe, ["a sks circle", "a dog"])
    trained = transformer_out(model.pipe, embeds, mask)
    m.export(tmp_path / "lora")
    fresh = plain_pipe(chroma)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(transformer_out(fresh, embeds, mask), trained, rtol=1e-5, atol=1e-5)
    fresh.transformer.disable_adapters()
    assert (transformer_out(fresh, embeds, mask) - trained).abs().max() > 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(chroma, concept_dir, tmp_path):
    kw = train_overrides(chroma, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         weighting_scheme="logit_normal", random_flip=True, cpu=True)
    check_killed_run_resumes_to_the_straight_run(kw, tmp_path)


@pytest.mark.slow
def test_sample_evaluate_and_compare_run_on_chroma(chroma, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(chroma, concept_dir, tmp_path / "cat", method="cat", steps=2,
                                                       lr=1e-2)), progress=False)
    check_sample_evaluate_compare(chroma, concept_dir, tmp_path, out)


def test_dreambooth_trains_the_transformer_and_reloads_in_plain_diffusers(chroma, concept_dir, tmp_path):
    from diffusers import ChromaTransformer2DModel

    out = train(build_config(overrides=train_overrides(chroma, concept_dir, tmp_path / "db", method="dreambooth",
                                                       steps=2, num_class_images=2, class_sample_steps=2, cpu=True)),
                progress=False)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["family"] == "chroma" and meta["files"] == {"denoiser": "transformer"}
    pipe = plain_pipe(chroma)
    embeds, mask = pipeline_embeds(pipe, ["a sks circle", "a dog"])
    base = transformer_out(pipe, embeds, mask)
    pipe.transformer = ChromaTransformer2DModel.from_pretrained(str(out / "transformer"))
    assert (transformer_out(pipe, embeds, mask) - base).abs().max() > 0
    assert main(["sample", "--model", str(chroma), "--adapter", str(out), "--prompt", "a sks circle", "--num-images",
                 "1", "--steps", "2", "--resolution", "16", "--output", str(tmp_path / "s")]) == 0


def test_bad_input(chroma, concept_dir, tmp_path, capsys):
    cases = [
        (["--guidance", "3.5"], "Chroma transformers take no guidance value"),
        (["--max-sequence-length", "64"], "--max-sequence-length 64: must be in [1, 32]"),
        (["--method", "ti"], "not built for the chroma family"),
        (["--export-format", "kohya"], "--export-format kohya is not built for the chroma family"),
        (["--train-text-encoder"], "--train-text-encoder"),
        (["--snr-gamma", "5"], "--snr-gamma is for DDPM models"),
    ]
    for i, (extra, needle) in enumerate(cases):
        line = train_cli_error(capsys, chroma, concept_dir, tmp_path / f"o{i}", "--trigger", "sks", "--resolution",
                               "16", *extra)
        assert needle in line, (extra, line)


def test_an_adapter_of_another_family_is_refused_through_adapter_json(chroma, concept_dir, tmp_path, capsys):
    from cat_adapter.testing.tiny import build_tiny_sd3_pipeline

    out = train(build_config(overrides=train_overrides(chroma, concept_dir, tmp_path / "l", method="lora", steps=1)),
                progress=False)
    sd3 = build_tiny_sd3_pipeline(tmp_path / "sd3")
    assert main(["sample", "--model", str(sd3), "--adapter", str(out), "--prompt", "a sks circle", "--steps", "1",
                 "--resolution", "16", "--output", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for the chroma family, but --model is a sd3 model" in err[0]
    assert not (tmp_path / "s").exists()
