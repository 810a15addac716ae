"""--quantize-base int8 on the CPU (torchao weight-only int8, quantized while the pipeline is read): LoRA trains in
float32 on top, CAT's frozen pass is the same quantized base, CAT at alpha 0 is LoRA bit for bit, the saved LoRA is
a plain one that loads onto the unquantized base and onto a quantized one, the mode is recorded and resume keeps it,
and every combination that cannot work is refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import check_killed_run_resumes_to_the_straight_run, train_cli_error, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.models import ModelSpec, dtype_kwarg, load_model
from cat_adapter.runners import train

pytest.importorskip("torchao")   # the [test] extra installs it (the [quantization] extra for users)


def int8_kw(model, concept, out, **kw):
    return train_overrides(model, concept, out, quantize_base="int8", cpu=True, **kw)


def quantized_linears(module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear)
               and "Int8" in type(m.weight).__name__ and "lora_" not in str(type(m)))


def unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 500]), c).sample


def test_the_base_is_quantized_while_loading_and_lora_trains_in_float32(tiny_model, concept_dir, tmp_path):
    model = load_model(ModelSpec(str(tiny_model), quantize="int8"))
    assert quantized_linears(model.denoiser) > 10 and quantized_linears(model.pipe.text_encoder) == 0
    assert model.quantization == {"denoiser": "int8", "text_encoders": False}
    out = train(build_config(overrides=int8_kw(tiny_model, concept_dir, tmp_path / "out", method="cat", steps=3,
                                               lr=5e-2)), progress=False)
    weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert weights and all(v.dtype == torch.float32 for v in weights.values())
    assert all(".lora_" in k for k in weights)          # a plain LoRA: no quantized tensor in the file
    record = json.loads((out / "adapter.json").read_text())
    assert record["base_quantization"] == {"denoiser": "int8", "text_encoders": False}
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["quantize_base"] == "int8"


def test_the_lora_loads_in_plain_diffusers_onto_the_unquantized_and_a_quantized_base(tiny_model, concept_dir,
                                                                                      tmp_path):
    import diffusers
    from torchao.quantization import Int8WeightOnlyConfig

    out = train(build_config(overrides=int8_kw(tiny_model, concept_dir, tmp_path / "out", method="cat", steps=3,
                                               lr=5e-2)), progress=False)
    kw = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_model), **kw)
    before = unet_out(plain.unet)
    plain.load_lora_weights(str(out))
    after = unet_out(plain.unet)
    assert (after - before).abs().max() > 1e-4         # the float32 base with the LoRA: other outputs
    quant = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_model), quantization_config=diffusers.PipelineQuantizationConfig(
            quant_mapping={"unet": diffusers.TorchAoConfig(Int8WeightOnlyConfig())}), **dtype_kwarg(torch.float32), **kw)
    quant.load_lora_weights(str(out))
    # the same adapter on the int8 base: the LoRA's change, up to the base's rounding
    assert (unet_out(quant.unet) - after).abs().max() < 0.05 * after.abs().max()


def test_alpha_zero_is_lora_bit_for_bit_and_cat_moves_other_weights(tiny_model, concept_dir, tmp_path):
    runs = {name: train(build_config(overrides=int8_kw(tiny_model, concept_dir, tmp_path / name, steps=3, lr=5e-2,
                                                       **o)), progress=False)
            for name, o in {"lora": dict(method="lora"), "cat0": dict(method="cat", cat_alpha=0.0),
                            "cat1": dict(method="cat", cat_alpha=1.0)}.items()}
    w = {n: load_file(str(o / "pytorch_lora_weights.safetensors")) for n, o in runs.items()}
    assert all(torch.equal(w["lora"][k], w["cat0"][k]) for k in w["lora"])
    assert max((w["lora"][k] - w["cat1"][k]).abs().max().item() for k in w["lora"]) > 0


def test_the_frozen_pass_is_the_quantized_base_itself(tiny_model):
    """No second copy: inside ``Method.frozen()`` the adapted model predicts exactly what the quantized base does
    (and not what the float32 base does)."""
    from helpers import randomize_lora

    from cat_adapter.methods.base import build_method
    from cat_adapter.models import freeze

    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle", method="cat",
                                      quantize_base="int8"))
    model = load_model(ModelSpec(str(tiny_model), quantize="int8"))
    freeze(*model.frozen_components())
    base_q = unet_out(model.denoiser)
    method = build_method(cfg, model)
    assert all(part.kind == "lora" for part in method.parts)   # nothing holds a frozen copy
    randomize_lora(model.denoiser)
    assert (unet_out(model.denoiser) - base_q).abs().max() > 1e-3
    with method.frozen():
        assert torch.equal(unet_out(model.denoiser), base_q)
    float_base = unet_out(load_model(ModelSpec(str(tiny_model))).denoiser)
    assert not torch.equal(float_base, base_q)     # the int8 base is another model than the float32 one


def test_flux_quantizes_its_t5_with_quantize_text_encoders(concept_dir, tmp_path):
    from cat_adapter.testing.tiny import build_tiny_flux_pipeline

    flux = build_tiny_flux_pipeline(tmp_path / "flux")
    model = load_model(ModelSpec(str(flux), quantize="int8", quantize_text_encoders=True))
    assert quantized_linears(model.denoiser) > 5 and quantized_linears(model.pipe.text_encoder_2) > 0
    assert quantized_linears(model.pipe.text_encoder) == 0          # CLIP stays as it is
    out = train(build_config(overrides=train_overrides(flux, concept_dir, tmp_path / "out", method="cat", steps=2,
                                                       quantize_base="int8", quantize_text_encoders=True, cpu=True)),
                progress=False)
    assert json.loads((out / "adapter.json").read_text())["base_quantization"] == {"denoiser": "int8",
                                                                                  "text_encoders": True}


@pytest.mark.parametrize("builder, encoder", [("build_tiny_sd3_pipeline", "text_encoder_3"),
                                              ("build_tiny_zimage_pipeline", "text_encoder"),
                                              ("build_tiny_chroma_pipeline", "text_encoder")])
def test_the_2026_families_quantize_their_denoiser_and_llm_or_t5(concept_dir, tmp_path, builder, encoder):
    """SD3 and Chroma (T5) and Z-Image (Qwen3): the denoiser and the large encoder in int8, LoRA trains on top in float32."""
    from cat_adapter.testing import tiny

    folder = getattr(tiny, builder)(tmp_path / "m")
    model = load_model(ModelSpec(str(folder), quantize="int8", quantize_text_encoders=True))
    assert quantized_linears(model.denoiser) > 5 and quantized_linears(getattr(model.pipe, encoder)) > 0
    out = train(build_config(overrides=train_overrides(folder, concept_dir, tmp_path / "out", method="cat", steps=2,
                                                       quantize_base="int8", quantize_text_encoders=True, cpu=True)),
                progress=False)
    weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert weights and all(v.dtype == torch.float32 for v in weights.values())
    assert json.loads((out / "adapter.json").read_text())["base_quantization"] == {"denoiser": "int8",
                                                                                  "text_encoders": True}


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_straight_run_on_the_int8_base(tiny_model, concept_dir, tmp_path):
    check_killed_run_resumes_to_the_straight_run(
        int8_kw(tiny_model, concept_dir, tmp_path / "killed", method="cat", steps=5, checkpoint_every=2), tmp_path)


@pytest.mark.parametrize("flags, needle", [
    (["--method", "dreambooth", "--quantize-base", "int8"], "--quantize-base int8 cannot be used with --method "
                                                             "dreambooth"),
    (["--quantize-base", "fp8"], "--quantize-base fp8 needs a CUDA GPU"),
    (["--quantize-text-encoders", "--quantize-base", "int8"], "--quantize-text-encoders: the sd family has no large "
                                                              "text encoder"),
    (["--quantize-base", "nf4"], "--quantize-base nf4 needs"),   # bitsandbytes, then a CUDA GPU
])
def test_what_cannot_work_is_refused_in_one_line(tiny_model, concept_dir, tmp_path, capsys, flags, needle):
    err = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", *flags, "--cpu")
    assert needle in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resume_keeps_the_mode(tiny_model, concept_dir, tmp_path):
    from cat_adapter.errors import CatAdapterError

    kw = int8_kw(tiny_model, concept_dir, tmp_path / "out", steps=2, checkpoint_every=2)
    train(build_config(overrides=kw), progress=False)
    with pytest.raises(CatAdapterError, match="--quantize-base"):
        train(build_config(overrides={**kw, "quantize_base": "none", "resume": True, "steps": 3}), progress=False)


def test_the_modes_are_the_options_choices():
    from cat_adapter.config import ModelConfig
    from cat_adapter.models.quantize import MODES

    field = next(f for f in __import__("dataclasses").fields(ModelConfig) if f.name == "quantize_base")
    assert tuple(field.metadata["choices"]) == MODES
