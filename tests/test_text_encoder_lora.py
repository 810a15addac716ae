"""--train-text-encoder: LoRA on the text encoder too; CAT's frozen pass encodes y with the frozen encoder."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import KILLER, train_cli_error, train_overrides, unet_out
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, freeze, load_model, load_pipeline
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"


def te_out(encoder, ids):
    with torch.no_grad():
        return encoder(ids)[0]


def test_text_encoder_lora_loads_in_plain_diffusers_with_the_trained_outputs(tiny_model, tmp_path):
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle",
                                      train_text_encoder=True, lora_alpha=8.0))
    m = build_method(cfg, model)
    g = torch.Generator().manual_seed(0)
    for module in (model.denoiser, model.text.encoder):
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.data = 0.2 * torch.randn(p.shape, generator=g)
    ids = model.text.tokenize(["a photo of sks circle"])
    trained_te, trained_unet = te_out(model.text.encoder, ids), unet_out(model.denoiser)
    m.export(tmp_path / "lora")
    keys = load_file(str(tmp_path / "lora" / LORA)).keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = load_pipeline(str(tiny_model))
    base_te = te_out(pipe.text_encoder, ids)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    assert not torch.allclose(te_out(pipe.text_encoder, ids), base_te, atol=1e-5)
    torch.testing.assert_close(te_out(pipe.text_encoder, ids), trained_te, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unet_out(pipe.unet), trained_unet, rtol=1e-5, atol=1e-5)


def test_cat_frozen_pass_encodes_y_with_the_frozen_text_encoder(tiny_model, concept_dir, tmp_path, monkeypatch):
    """Record the conditioning of every denoiser call in one CAT step: the frozen pass must get y as the base text
    encoder encodes it, the adapted pass y as the adapted one does (they differ once the TE LoRA is non-zero)."""
    from cat_adapter.methods.terms import run_terms

    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "o", method="cat",
                                                 train_text_encoder=True, preserve_pool=None, cat_mode="fast"))
    m = build_method(cfg, model)
    for name, p in model.text.encoder.named_parameters():
        if "lora_B" in name:
            p.data = 0.3 * torch.ones_like(p)
    from cat_adapter.data.cache import StreamSampler, build_cache
    from cat_adapter.data.concept import load_concept

    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=False, device=torch.device("cpu"))
    assert not isinstance(cache.instance.plain, type(model.text.encode(["x"], device="cpu")))   # token ids now
    batch = StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=0).next()
    calls = []
    original = model.predict
    monkeypatch.setattr(model, "predict", lambda z, t, cond, **kw: calls.append(cond.hidden.detach().clone())
                        or original(z, t, cond, **kw))
    run_terms(m, batch, lambda loss: loss.backward())
    plain_ids = batch.prompts["plain"].ids
    adapted_y = te_out(model.text.encoder, plain_ids)
    with m.frozen():
        frozen_y = te_out(model.text.encoder, plain_ids)
    assert not torch.allclose(adapted_y, frozen_y, atol=1e-4)
    frozen_call, graded_call = calls[0], calls[1]        # fast mode: frozen targets first, then [y_T; y] graded
    torch.testing.assert_close(frozen_call, frozen_y)
    torch.testing.assert_close(graded_call[2:], adapted_y)


@pytest.mark.slow
def test_resume_with_text_encoder_lora_equals_uninterrupted_run(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=6, checkpoint_every=2, cpu=True,
                         method="cat", train_text_encoder=True, text_encoder_lr=5e-4)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    wa, wb = load_file(str(resumed / LORA)), load_file(str(straight / LORA))
    assert any(k.startswith("text_encoder.") for k in wa)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


@pytest.mark.parametrize("extra, needle", [(["--method", "ti", "--train-text-encoder"], "--train-text-encoder"),
                                           (["--train-text-encoder", "--export-format", "kohya"], "kohya"),
                                           (["--train-text-encoder", "--text-encoder-lr", "0"], "--text-encoder-lr")])
def test_bad_text_encoder_options(tiny_model, concept_dir, tmp_path, capsys, extra, needle):
    assert needle in train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", *extra)
