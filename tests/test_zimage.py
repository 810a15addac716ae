"""The Z-Image family on a tiny ZImagePipeline built from config: a Qwen3 text encoder behind a byte-level BPE
tokenizer and a chat template (the trigger and y inside the template as the pipeline encodes them), the transformer's
list inputs and negated output, LoRA and CAT (alpha 0 = LoRA bit for bit, alpha > 0 lowers the drift on the
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
from cat_adapter.data.prompts import plain_prompt
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, freeze, load_model
from cat_adapter.runners import train


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    """A random-weight Z-Image pipeline folder: latents 16x8x8 (patch 2), images 16x16, 64 text tokens."""
    from cat_adapter.testing.tiny import build_tiny_zimage_pipeline

    return build_tiny_zimage_pipeline(tmp_path_factory.mktemp("zimage") / "model")


def plain_pipe(folder):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(str(folder))


def pipeline_rows(pipe, prompts, length=64):
    with torch.no_grad():
        return pipe._encode_prompt(list(prompts), device="cpu", max_sequence_length=length)


def transformer_out(pipe, rows, seed=0):
    """The tiny transformer's output (the pipeline's sign: z_0 - eps) for 2 latents at sigma 0.1 and 0.7."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 16, 1, 8, 8, generator=g)
    with torch.no_grad():
        out = pipe.transformer(list(z.unbind(0)), torch.tensor([0.9, 0.3]), list(rows), return_dict=False)[0]
    return torch.stack(out)


def test_conditioning_and_prediction_are_the_pipelines(zimage):
    model = load_model(ModelSpec(str(zimage)))
    assert model.family == "zimage" and model.text.max_sequence_length == 64
    prompts = ["a photo of sks circle", "a dog on a beach, long caption"]
    cond = model.text.encode(prompts, device="cpu")
    ours, theirs = model.text.rows(cond), pipeline_rows(model.pipe, prompts)
    assert [r.shape[0] for r in ours] == [r.shape[0] for r in theirs] and ours[0].shape[0] != ours[1].shape[0]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)   # second-to-last states of the unpadded tokens
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([100.0, 700.0])
    with torch.no_grad():
        pred = model.predict(z, t, cond)
        direct = model.pipe.transformer(list(z.unsqueeze(2).unbind(0)), (1000 - t) / 1000, theirs, return_dict=False)[0]
    torch.testing.assert_close(pred, -torch.stack(direct).squeeze(2), rtol=0, atol=0)   # the pipeline's negation
    assert model.latent_shape(16, 16) == (16, 8, 8) and model.size_multiple == 4


@pytest.mark.parametrize("mode", ["remove", "class", "empty"])
def test_trigger_and_y_inside_the_chat_template(zimage, concept_dir, tmp_path, monkeypatch, mode):
    """The run encodes each caption y_T and its y (built on the caption, before the template) exactly as the
    pipeline encodes those strings; the trigger is bytes of the user turn."""
    from cat_adapter.models.zimage import ChatLLMText

    seen: dict[str, torch.Tensor] = {}
    original = ChatLLMText.encode

    def encode(self, prompts, *, device, chunk=16):
        cond = original(self, prompts, device=device, chunk=chunk)
        seen.update({p: r for p, r in zip(prompts, self.rows(cond))})
        return cond

    monkeypatch.setattr(ChatLLMText, "encode", encode)
    train(build_config(overrides=train_overrides(zimage, concept_dir, tmp_path / "o", method="cat", steps=1,
                                                 preserve_prompt=mode)), progress=False)
    captions = [f.read_text() for f in sorted(concept_dir.glob("*.txt"))]
    ys = {plain_prompt(c, "sks", mode, "circle") for c in captions}
    assert set(captions) <= set(seen) and ys <= set(seen)
    pipe = plain_pipe(zimage)
    for p in [*captions, *ys]:
        torch.testing.assert_close(seen[p], pipeline_rows(pipe, [p])[0], rtol=0, atol=0)
    text = load_model(ModelSpec(str(zimage))).text
    templated = text.templated(captions[0])
    assert templated.startswith("<|im_start|>user\n") and templated.endswith("<|im_start|>assistant\n")
    tokens = text.tokenizer.convert_ids_to_tokens(text.tokenizer(templated).input_ids)
    user = tokens[tokens.index("<|im_start|>") + 1:tokens.index("<|im_end|>")]
    assert "ĠsksĠcircle" in "".join(user) and all(len(t) == 1 for t in user)   # byte-level BPE, in the user turn


@pytest.mark.slow
def test_cat_alpha_zero_equals_lora_and_alpha_one_lowers_the_drift(zimage, concept_dir, tmp_path):
    common = train_overrides(zimage, concept_dir, None, steps=6, lr=5e-3, cpu=True)
    cat = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat"}), progress=False)
    zero = train(build_config(overrides={**common, "output": str(tmp_path / "zero"), "method": "cat", "cat_alpha": 0.0,
                                         "cat_mode": "lean"}), progress=False)
    lora = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wz, wl, wc = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (zero, lora, cat))
    assert wz.keys() == wl.keys() and all(torch.equal(wz[k], wl[k]) for k in wz)
    assert any(not torch.equal(wc[k], wl[k]) for k in wc) and all(k.startswith("transformer.") for k in wc)
    meta = json.loads((cat / "adapter.json").read_text())
    assert meta["family"] == "zimage" and "feed_forward.w2" in meta["details"]["lora"]["target_modules"]
    base = plain_pipe(zimage)
    plain = pipeline_rows(base, ["a photo of circle on a dark background"]) * 2
    ref = transformer_out(base, plain)
    drift = {}
    for name, out in (("lora", lora), ("cat", cat)):
        pipe = plain_pipe(zimage)
        pipe.load_lora_weights(str(out))
        drift[name] = float((transformer_out(pipe, plain) - ref).pow(2).mean())
    assert 0 < drift["cat"] < drift["lora"], drift


def test_saved_lora_loads_in_plain_diffusers_with_the_trained_outputs(zimage, tmp_path):
    model = load_model(ModelSpec(str(zimage)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(zimage), data="-", output="-", class_noun="circle", rank=4,
                                      lora_alpha=8.0))
    m = build_method(cfg, model)
    randomize_lora(model.denoiser)
    rows = pipeline_rows(model.pipe, ["a sks circle", "a dog"])
    trained = transformer_out(model.pipe, rows)
    m.export(tmp_path / "lora")
    fresh = plain_pipe(zimage)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(transformer_out(fresh, rows), trained, rtol=1e-5, atol=1e-5)
    fresh.transformer.disable_adapters()
    assert (transformer_out(fresh, rows) - trained).abs().max() > 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(zimage, concept_dir, tmp_path):
    kw = train_overrides(zimage, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         weighting_scheme="logit_normal", random_flip=True, cpu=True)
    check_killed_run_resumes_to_the_straight_run(kw, tmp_path)


@pytest.mark.slow
def test_sample_evaluate_and_compare_run_on_zimage(zimage, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(zimage, concept_dir, tmp_path / "cat", method="cat", steps=2,
                                                       lr=1e-2)), progress=False)
    check_sample_evaluate_compare(zimage, concept_dir, tmp_path, out)


def test_dreambooth_trains_the_transformer_and_reloads_in_plain_diffusers(zimage, concept_dir, tmp_path):
    from diffusers import ZImageTransformer2DModel

    out = train(build_config(overrides=train_overrides(zimage, concept_dir, tmp_path / "db", method="dreambooth",
                                                       steps=2, num_class_images=2, class_sample_steps=2, cpu=True)),
                progress=False)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["family"] == "zimage" and meta["files"] == {"denoiser": "transformer"}
    pipe = plain_pipe(zimage)
    rows = pipeline_rows(pipe, ["a sks circle", "a dog"])
    base = transformer_out(pipe, rows)
    pipe.transformer = ZImageTransformer2DModel.from_pretrained(str(out / "transformer"))
    assert (transformer_out(pipe, rows) - base).abs().max() > 0
    assert main(["sample", "--model", str(zimage), "--adapter", str(out), "--prompt", "a sks circle", "--num-images",
                 "1", "--steps", "2", "--resolution", "16", "--output", str(tmp_path / "s")]) == 0


def test_the_runs_text_length_is_recorded_and_restored_with_the_adapter(zimage, concept_dir, tmp_path):
    from cat_adapter.adapters import load_adapter

    out = train(build_config(overrides=train_overrides(zimage, concept_dir, tmp_path / "l", method="lora", steps=1,
                                                       max_sequence_length=48)), progress=False)
    assert json.loads((out / "adapter.json").read_text())["conditioning"] == {"max_sequence_length": 48}
    model = load_model(ModelSpec(str(zimage)))
    load_adapter(out).apply(model)
    assert model.text.max_sequence_length == 48
    assert model.text.encode(["a sks circle"], device="cpu").hidden.shape == (1, 48, 16)


def test_bad_input(zimage, concept_dir, tmp_path, capsys):
    cases = [
        (["--guidance", "3.5"], "Z-Image transformers take no guidance value"),
        (["--max-sequence-length", "100"], "--max-sequence-length 100: must be in [1, 64]"),
        (["--method", "ti"], "not built for the zimage family"),
        (["--export-format", "kohya"], "--export-format kohya is not built for the zimage family"),
        (["--train-text-encoder"], "--train-text-encoder"),
        (["--snr-gamma", "5"], "--snr-gamma is for DDPM models"),
    ]
    for i, (extra, needle) in enumerate(cases):
        line = train_cli_error(capsys, zimage, concept_dir, tmp_path / f"o{i}", "--trigger", "sks", "--resolution",
                               "16", *extra)
        assert needle in line, (extra, line)
