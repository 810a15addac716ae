"""Every method through the same tests (peft's habit): what trains changes and nothing else does, the output
loads in plain diffusers with the trained outputs, resume after SIGKILL equals the straight run, bad options
are rejected."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import KILLER, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.models import load_pipeline
from cat_adapter.training import loop

CLASS = dict(num_class_images=2, class_sample_steps=2)
METHODS = {
    "lora": dict(method="lora"),
    "cat": dict(method="cat"),
    "dreambooth": dict(method="dreambooth", lr=1e-4, **CLASS),
    "ti": dict(method="ti", lr=5e-2),
    "lora_ti": dict(method="lora_ti", lr=5e-2),
    "lora+prior": dict(method="lora", prior_preservation=True, **CLASS),
    "cat+prior": dict(method="cat", prior_preservation=True, **CLASS),
    "dreambooth+cat": dict(method="dreambooth", lr=1e-4, cat_alpha=1.0, **CLASS),
    "dco": dict(method="dco", lr=2e-6),
}


# Methods with a runner of their own (no --data: they make their images) go through the same checks in their own
# file: The Chosen One's tensors, plain-diffusers reload and SIGKILL resume are in test_tco.py.
RUNNER_METHODS = {"tco": "test_tco.py"}


def test_the_table_covers_every_method_the_cli_offers():
    from cat_adapter.methods import method_names

    assert {c["method"] for c in METHODS.values()} | set(RUNNER_METHODS) == set(method_names())


def run(tiny_model, concept_dir, out, case, **kw):
    """Train ``case`` and keep the session (the trained model in memory) for inspection."""
    kept = {}
    real_finish = loop.finish

    def finish(s, t0):
        kept["s"] = s
        real_finish(s, t0)

    loop.finish = finish
    try:
        loop.train_loop(build_config(overrides=train_overrides(tiny_model, concept_dir, out, steps=3, cpu=True,
                                                          **{**METHODS[case], **kw})), progress=False)
    finally:
        loop.finish = real_finish
    return kept["s"]


def canonical(name: str) -> str:
    """A trained model's parameter name as the base model names it (peft and the token rows wrap modules)."""
    return name.replace(".base_layer.", ".").replace("token_embedding.base.", "token_embedding.")


def tensors(pipe) -> dict[str, torch.Tensor]:
    out = {}
    for comp in ("unet", "vae", "text_encoder"):
        for k, v in getattr(pipe, comp).state_dict().items():
            out[f"{comp}.{canonical(k)}"] = v
    return out


@pytest.mark.parametrize("case", list(METHODS))
def test_only_the_methods_tensors_change(tiny_model, concept_dir, tmp_path, case):
    s = run(tiny_model, concept_dir, tmp_path / "out", case)
    trained_ids = {id(p) for p in s.method.parameters()}
    base = tensors(load_pipeline(str(tiny_model)))
    names_trained = set()
    for comp in ("unet", "vae", "text_encoder"):
        for name, p in getattr(s.model.pipe, comp).named_parameters():
            if id(p) in trained_ids:
                names_trained.add(f"{comp}.{canonical(name)}")
    assert names_trained, "the method trains nothing"
    after = tensors(s.model.pipe)
    for name in names_trained:
        if name in base:  # a trained base weight (full fine-tune) moved
            assert (after[name].float() - base[name].float()).abs().max() > 1e-6, name
    lora_b = [n for n in names_trained if n not in base and "lora_B" in n]  # B starts at exactly 0
    if lora_b:
        assert all(after[n].abs().max() > 1e-6 for n in lora_b)
    for name, value in base.items():
        if name not in names_trained:
            assert torch.equal(after[name], value), f"{name} changed but is not trained by {case}"
    for part in s.method.parts:  # the new token rows moved from their initializer
        if part.kind == "tokens":
            assert part.drift() > 1e-6


def _unet_out(unet, text_hidden):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 500]), text_hidden.expand(2, -1, -1)).sample


@pytest.mark.parametrize("case", list(METHODS))
def test_output_loads_in_plain_diffusers_with_the_trained_outputs(tiny_model, concept_dir, tmp_path, case):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "out"
    s = run(tiny_model, concept_dir, out, case)
    meta = json.loads((out / "adapter.json").read_text())
    pipe = load_pipeline(str(tiny_model))
    ids = pipe.tokenizer(["a sks circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    kinds = meta["kinds"]
    if "lora" in kinds:
        pipe.load_lora_weights(str(out))
    if "full" in kinds:
        pipe.unet = UNet2DConditionModel.from_pretrained(str(out / "unet"))
    if "tokens" in kinds:
        pipe.load_textual_inversion(str(out))
        ids = pipe.tokenizer([pipe.maybe_convert_prompt("a sks circle", pipe.tokenizer)], padding="max_length",
                             max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        trained_text = s.model.text.encoder(ids)[0]
    torch.testing.assert_close(text, trained_text, rtol=1e-5, atol=1e-5)
    s.model.denoiser.eval()
    torch.testing.assert_close(_unet_out(pipe.unet, text), _unet_out(s.model.denoiser, trained_text),
                               rtol=1e-5, atol=1e-5)




def _weights(out):
    meta = json.loads((out / "adapter.json").read_text())
    files = []
    for role, name in meta["files"].items():
        p = out / name
        files += sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(METHODS))
def test_resume_after_sigkill_equals_the_straight_run(tiny_model, concept_dir, tmp_path, case):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=5, checkpoint_every=2, random_flip=True,
                         cpu=True, **METHODS[case])
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "4"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = loop.train_loop(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = loop.train_loop(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    a, b = _weights(resumed), _weights(straight)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), case


@pytest.mark.parametrize("case, extra, needle", [
    ("ti", dict(cat_alpha=1.0), "--cat-alpha > 0 does not apply to --method ti"),
    ("ti", dict(prior_preservation=True), "--prior-preservation does not apply to --method ti"),
    ("ti", dict(num_vectors=0), "--num-vectors must be >= 1"),
    ("ti", dict(rank=8), "--rank is not an option of --method ti"),
    ("dreambooth", dict(num_class_images=0), "--num-class-images must be >= 1"),
    ("dreambooth", dict(rank=8), "--rank is not an option of --method dreambooth"),
    ("lora", dict(num_vectors=2), "--num-vectors is not an option of --method lora"),
    ("cat", dict(rank=0), "--rank must be >= 1"),
])
def test_bad_options_are_rejected(tiny_model, concept_dir, tmp_path, case, extra, needle):
    with pytest.raises(CatAdapterError, match=needle.replace("+", r"\+")):
        build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "o", **{**METHODS[case], **extra}))
    assert not (tmp_path / "o").exists()


def test_defaults_are_per_method():
    def cfg(method):
        return build_config(overrides=dict(model="m", data="d", output="o", class_noun="c", method=method))

    assert cfg("cat").preservation.cat_alpha == 1.0 and cfg("lora").preservation.cat_alpha == 0.0
    assert cfg("dreambooth").prior.prior_preservation and not cfg("lora").prior.prior_preservation
    assert (cfg("dreambooth").optim.lr, cfg("ti").optim.lr, cfg("cat").optim.lr) == (5e-6, 2e-3, 1e-4)
    off = build_config(overrides=dict(model="m", data="d", output="o", class_noun="c", method="dreambooth",
                                      prior_preservation=False))
    assert not off.prior.prior_preservation
