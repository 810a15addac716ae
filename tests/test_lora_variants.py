"""--use-dora and --init-lora-weights: variants peft trains and plain diffusers loads, with the base untouched."""

import pytest
import torch
from helpers import train_cli_error, train_overrides, unet_out

from cat_adapter.config import build_config
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, freeze, load_model, load_pipeline
from cat_adapter.runners import train


def test_dora_trains_and_loads_in_plain_diffusers_with_the_trained_outputs(tiny_model, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "dora", steps=3,
                                                       use_dora=True, method="cat", cpu=True)), progress=False)
    from safetensors.torch import load_file

    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert any("lora_magnitude_vector" in k for k in keys)       # the magnitudes were trained and saved
    # the trained U-Net, rebuilt through our own loader, against plain diffusers
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "x", use_dora=True))
    m = build_method(cfg, model)
    m.load_state_dict({f"lora.{k}": v for k, v in _peft_state(out).items()})
    trained = unet_out(model.denoiser)
    base = unet_out(load_pipeline(str(tiny_model)).unet)
    pipe = load_pipeline(str(tiny_model))
    pipe.load_lora_weights(str(out))
    got = unet_out(pipe.unet)
    assert not torch.allclose(got, base, atol=1e-6)
    torch.testing.assert_close(got, trained, rtol=1e-5, atol=1e-5)


def _peft_state(out):
    """The saved diffusers-format LoRA, back to peft's own key names (what Method.load_state_dict takes)."""
    from safetensors.torch import load_file

    sd = load_file(str(out / "pytorch_lora_weights.safetensors"))
    return {k.removeprefix("unet."): v for k, v in sd.items()}


@pytest.mark.parametrize("init", ["gaussian", "true", "orthogonal"])
def test_every_offered_init_starts_at_the_base_model(tiny_model, init):
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    before = unet_out(model.denoiser)
    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle",
                                      init_lora_weights=init))
    build_method(cfg, model)
    after = unet_out(model.denoiser)
    if init == "orthogonal":   # B A = 0 from orthogonal rows: exact in theory, to rounding in floats
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    else:                      # B = 0
        assert torch.equal(after, before)
    a = [p for n, p in model.denoiser.named_parameters() if "lora_A" in n]
    assert a and all(p.abs().sum() > 0 for p in a)


@pytest.mark.parametrize("extra, needle", [(["--use-dora", "--export-format", "kohya"], "--use-dora"),
                                           (["--init-lora-weights", "pissa"], "--init-lora-weights"),
                                           (["--init-lora-weights", "orthogonal", "--rank", "3"], "even"),
                                           (["--lora-type", "lokr", "--use-dora"], "--lora-type lokr"),
                                           (["--lora-type", "lokr", "--train-text-encoder"], "--lora-type lokr")])
def test_bad_lora_variants(tiny_model, concept_dir, tmp_path, capsys, extra, needle):
    assert needle in train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", *extra)


def test_lokr_starts_at_the_base_and_loads_in_plain_diffusers(tiny_model, tmp_path):
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    before = unet_out(model.denoiser)
    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle",
                                      lora_type="lokr", rank=4, lora_alpha=8.0))
    m = build_method(cfg, model)
    assert torch.equal(unet_out(model.denoiser), before)                  # one factor starts at 0
    g = torch.Generator().manual_seed(0)
    for name, p in model.denoiser.named_parameters():
        if "lokr_" in name:
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    trained = unet_out(model.denoiser)
    m.export(tmp_path / "lokr")
    pipe = load_pipeline(str(tiny_model))
    pipe.unet.load_lora_adapter(str(tmp_path / "lokr"), weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    got = unet_out(pipe.unet)
    assert not torch.allclose(got, before, atol=1e-5)
    torch.testing.assert_close(got, trained, rtol=1e-5, atol=1e-5)


def test_lokr_trains_with_cat_and_our_loader_reads_it(tiny_model, concept_dir, tmp_path):
    from cat_adapter.adapters import load_adapter

    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "lokr", steps=3,
                                                       lora_type="lokr", method="cat", cpu=True)), progress=False)
    model = load_model(ModelSpec(str(tiny_model)))
    base = unet_out(model.denoiser)
    load_adapter(out).apply(model)
    pipe = load_pipeline(str(tiny_model))
    pipe.unet.load_lora_adapter(str(out), weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    assert not torch.allclose(unet_out(model.denoiser), base, atol=1e-6)
    torch.testing.assert_close(unet_out(model.denoiser), unet_out(pipe.unet), rtol=1e-5, atol=1e-6)
