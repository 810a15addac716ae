"""Every model family through the same tests (the family table): the loaded object keeps the ModelFamily contract,
CAT at alpha 0 is LoRA bit for bit and at alpha > 0 trains other weights, the LoRA file loads in the family's plain
diffusers pipeline and changes its output by what training saw, and what a family does not support is refused with
one line before anything is written. Family-specific behaviour has its own file (test_sdxl.py, test_flux.py).

Adding a family: one row in FAMILIES (docs/architecture.md, "How to add a model family").
"""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import train_cli_error, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.models import ModelFamily, ModelSpec, families, load_model
from cat_adapter.models.base import FEATURES
from cat_adapter.runners import train

# name -> (builder "module:function" writing a tiny pipeline folder, the plain diffusers pipeline class, its kwargs)
FAMILIES = {
    "sd": ("cat_adapter.testing.tiny:build_tiny_pipeline", "StableDiffusionPipeline",
           dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)),
    "sdxl": ("cat_adapter.testing.tiny:build_tiny_sdxl_pipeline", "StableDiffusionXLPipeline",
             dict(add_watermarker=False)),
    "flux": ("cat_adapter.testing.tiny:build_tiny_flux_pipeline", "FluxPipeline", {}),
    "sd3": ("cat_adapter.testing.tiny:build_tiny_sd3_pipeline", "StableDiffusion3Pipeline", {}),
    "zimage": ("cat_adapter.testing.tiny:build_tiny_zimage_pipeline", "ZImagePipeline", {}),
    "chroma": ("cat_adapter.testing.tiny:build_tiny_chroma_pipeline", "ChromaPipeline", {}),
}
# the option that asks for each feature, and the words its refusal must contain
REFUSALS = {"text_encoder_lora": (["--train-text-encoder"], "--train-text-encoder"),
            "kohya_export": (["--export-format", "kohya"], "--export-format kohya"),
            "tokens": (["--method", "ti"], "--method ti")}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    module, fn = FAMILIES[request.param][0].split(":")
    folder = getattr(importlib.import_module(module), fn)(tmp_path_factory.mktemp(request.param) / "model")
    return request.param, folder


def test_the_table_covers_every_registered_family():
    from cat_adapter.testing.tiny import BUILDERS

    assert set(FAMILIES) == set(families()) == set(BUILDERS)


def test_a_tiny_family_pipeline_and_concept_from_the_command_line(tmp_path, capsys):
    from cat_adapter.testing.tiny import main

    assert main(["chroma", str(tmp_path / "m"), "--concept", str(tmp_path / "c")]) == 0
    assert load_model(ModelSpec(str(tmp_path / "m"))).family == "chroma"
    assert len(list((tmp_path / "c").glob("*.png"))) == 4
    with pytest.raises(SystemExit):   # an existing folder is not overwritten
        main(["chroma", str(tmp_path / "m")])


def test_an_unsupported_pipeline_names_the_supported_ones(tmp_path, capsys):
    import json

    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(Exception) as err:
        load_model(ModelSpec(str(folder)))
    assert "QwenImagePipeline" in str(err.value) and all(
        c in str(err.value) for f in families().values() for c in f.pipeline_classes)


def test_the_loaded_model_keeps_the_contract(family):
    name, folder = family
    model = load_model(ModelSpec(str(folder)))
    assert isinstance(model, ModelFamily) and model.family == name
    assert set(model.features) <= set(FEATURES)
    assert model.default_resolution % model.size_multiple == 0 and model.default_guidance > 0
    with model.ungraded():
        cond = model.text.encode(["a sks circle"], device="cpu")
        z = torch.randn(1, *model.latent_shape(16, 16), generator=torch.Generator().manual_seed(0))
        out = model.predict(z, torch.tensor([500]), cond)
    assert out.shape == z.shape
    # cat-adapter memory's view of the family, from the configs alone, is the loaded model's
    from cat_adapter.memory import read_configs

    assert isinstance(model, families()[name].model_class)
    _, configs = read_configs(str(folder))
    tokens, width, pooled = type(model).text_shape(configs, getattr(model.text, "max_sequence_length", None))
    assert tuple(cond.hidden.shape[1:]) == (tokens, width)
    assert (cond.pooled is None and pooled is None) or cond.pooled.shape[-1] == pooled


def test_alpha_zero_is_lora_and_alpha_one_differs(family, concept_dir, tmp_path):
    _, folder = family
    kw = dict(steps=2, lr=1e-2, resolution=16, cpu=True)
    outs = {m: train(build_config(overrides=train_overrides(folder, concept_dir, tmp_path / m, **kw, **o)),
                     progress=False)
            for m, o in {"lora": dict(method="lora"), "cat0": dict(method="cat", cat_alpha=0.0),
                         "cat1": dict(method="cat", cat_alpha=1.0)}.items()}
    w = {m: load_file(str(out / "pytorch_lora_weights.safetensors")) for m, out in outs.items()}
    assert w["lora"].keys() == w["cat0"].keys()
    assert all(torch.equal(w["lora"][k], w["cat0"][k]) for k in w["lora"])
    assert max((w["lora"][k] - w["cat1"][k]).abs().max().item() for k in w["lora"]) > 0


def test_the_lora_loads_in_the_plain_pipeline_with_the_trained_outputs(family, concept_dir, tmp_path):
    name, folder = family
    import diffusers

    out = train(build_config(overrides=train_overrides(folder, concept_dir, tmp_path / "out", method="cat", steps=2,
                                                       lr=5e-2, resolution=16, cpu=True)), progress=False)
    pipe = getattr(diffusers, FAMILIES[name][1]).from_pretrained(str(folder), **FAMILIES[name][2])
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe(prompt="a photo of sks circle", num_inference_steps=2, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image()
    pipe.load_lora_weights(str(out))
    after = image()
    assert abs(after - before).max() > 0    # the adapter changes the plain pipeline's output
    from cat_adapter.adapters import load_adapter

    ours = load_model(ModelSpec(str(folder)))   # cat-adapter's loader (sample, evaluate) gives the same images
    load_adapter(out).apply(ours)
    mine = ours.pipe(prompt="a photo of sks circle", num_inference_steps=2, height=16, width=16, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert abs(mine - after).max() == 0


@pytest.mark.parametrize("feature", FEATURES)
def test_what_a_family_does_not_support_is_refused_in_one_line(family, concept_dir, tmp_path, capsys, feature):
    name, folder = family
    model_cls = type(load_model(ModelSpec(str(folder))))
    if feature in model_cls.features:
        pytest.skip(f"{name} supports {feature}")
    flags, words = REFUSALS[feature]
    err = train_cli_error(capsys, folder, concept_dir, tmp_path / "out", *flags, "--resolution", "16")
    assert words in err and name in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
