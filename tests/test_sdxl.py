"""The SDXL family on a tiny StableDiffusionXLPipeline built from config: conditioning, every method, plain-diffusers
reloads (diffusers and kohya LoRA files, clip_l/clip_g embeddings), resume after SIGKILL, sample/evaluate/compare and
bad input."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (check_killed_run_resumes_to_the_straight_run, check_sample_evaluate_compare, randomize_lora,
                     train_cli_error, train_overrides)
from PIL import Image
from safetensors.torch import load_file

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.methods.base import build_method
from cat_adapter.models import ModelSpec, freeze, load_model
from cat_adapter.runners import train


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A random-weight SDXL pipeline folder: latents 4x8x8, images 16x16."""
    from cat_adapter.testing.tiny import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "model")


def plain_pipe(folder):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(folder), add_watermarker=False)


def unet_out(unet, seed=0):
    """The tiny SDXL U-Net on fixed inputs (text 77x64, pooled 32, time ids of a 16 px image)."""
    g = torch.Generator().manual_seed(seed)
    z, c, pooled = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g), torch.randn(2, 32, generator=g)
    ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 500]), c, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample


def test_conditioning_is_the_pipelines(sdxl):
    model = load_model(ModelSpec(str(sdxl)))
    assert model.family == "sdxl" and type(model).__name__ == "SDXLModel"
    prompts = ["a sks circle", "a dog on a beach"]
    cond = model.text.encode(prompts, device="cpu")
    embeds, _, pooled, _ = model.pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert cond.hidden.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)  # [penultimate 1; penultimate 2]
    torch.testing.assert_close(cond.hidden, embeds.detach(), rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, pooled.detach(), rtol=0, atol=0)
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad():
        default = model.predict(z, t, cond)
        same = model.predict(z, t, cond, micro=torch.tensor([[16, 16, 0, 0, 16, 16]] * 2))
        other = model.predict(z, t, cond, micro=torch.tensor([[40, 24, 4, 0, 16, 16]] * 2))
    torch.testing.assert_close(default, same, rtol=0, atol=0)   # no sizes: the image's own size, no crop
    assert (default - other).abs().max() > 1e-4                  # the time ids reach the U-Net


def test_each_row_carries_its_images_original_size_and_crop(sdxl, tmp_path):
    """time_ids = (original h, w, crop top, left, target h, w), from the data loader's placements."""
    from cat_adapter.data.cache import StreamSampler, build_cache
    from cat_adapter.data.concept import load_concept

    data = tmp_path / "wide"
    data.mkdir()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(data / "a.png")   # scaled to 32x16, centre-cropped to 16x16
    Image.new("RGB", (16, 16), (30, 200, 30)).save(data / "b.png")
    model = load_model(ModelSpec(str(sdxl)))
    items = load_concept(data, trigger="sks", class_noun="circle", caption_template="a {trigger} {class_noun}")
    cache = build_cache(model, items, resolution=16, random_flip=False, device="cpu")
    sampler = StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=0)
    seen = {tuple(row) for _ in range(6) for row in sampler.next().instance.micro.tolist()}
    assert seen == {(20, 40, 0, 8, 16, 16), (16, 16, 0, 0, 16, 16)}
    # --buckets: the target is the bucket (40x20 -> bucket 24x8: scaled to 24x12, cropped 2 px from the top)
    cache = build_cache(model, items, resolution=16, random_flip=False, device="cpu", buckets=[(16, 16), (24, 8)])
    sampler = StreamSampler(cache, batch_size=1, pool_size=0, objective=model.objective, seed=0)
    seen = {tuple(row) for _ in range(20) for row in sampler.next().instance.micro.tolist()}
    assert seen == {(20, 40, 2, 0, 8, 24), (16, 16, 0, 0, 16, 16)}


@pytest.mark.slow
def test_cat_changes_only_lora_and_alpha_zero_equals_lora(sdxl, concept_dir, tmp_path):
    common = train_overrides(sdxl, concept_dir, None, steps=3, cpu=True)
    cat = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat"}), progress=False)
    zero = train(build_config(overrides={**common, "output": str(tmp_path / "zero"), "method": "cat", "cat_alpha": 0.0,
                                         "cat_mode": "lean"}), progress=False)
    lora = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wz, wl = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (zero, lora))
    assert wz.keys() == wl.keys() and all(torch.equal(wz[k], wl[k]) for k in wz)
    log = [json.loads(x) for x in (zero / "log.jsonl").read_text().splitlines()]
    assert all(x["loss_preservation"] > 0 for x in log[1:])
    wc = load_file(str(cat / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(wc[k], wl[k]) for k in wc)  # the preservation term changed the update
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in wc.items())
    meta = json.loads((cat / "adapter.json").read_text())
    assert meta["family"] == "sdxl" and meta["kinds"] == ["lora"]
    # Plain diffusers: the base weights are untouched and the LoRA changes the U-Net.
    base, pipe = plain_pipe(sdxl), plain_pipe(sdxl)
    pipe.load_lora_weights(str(cat))
    assert (unet_out(pipe.unet) - unet_out(base.unet)).abs().max() > 0
    pipe.unet.disable_adapters()
    torch.testing.assert_close(unet_out(pipe.unet), unet_out(base.unet), rtol=0, atol=0)


@pytest.mark.parametrize("targets", [["to_q", "to_k", "to_v", "to_out.0"],
                                     ["conv1", "conv2", "conv_shortcut", "time_emb_proj", "proj_in", "to_q", "conv"]])
def test_diffusers_and_kohya_files_load_in_plain_diffusers_with_the_trained_outputs(sdxl, tmp_path, targets):
    """lora_alpha != rank; attention, resnet, sampler convs: sd-scripts' SGM names that diffusers converts back."""
    model = load_model(ModelSpec(str(sdxl)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(sdxl), data="-", output="-", class_noun="circle", rank=4, lora_alpha=8.0,
                                      target_modules=targets))
    m = build_method(cfg, model)
    randomize_lora(model.denoiser)
    trained = unet_out(model.denoiser)
    m.export(tmp_path / "lora", export_format="kohya")
    for weight in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"):
        fresh = plain_pipe(sdxl)
        fresh.load_lora_weights(str(tmp_path / "lora"), weight_name=weight)
        torch.testing.assert_close(unet_out(fresh.unet), trained, rtol=1e-5, atol=1e-5, msg=weight)
    kohya = load_file(str(tmp_path / "lora" / "pytorch_lora_weights_kohya.safetensors"))
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in kohya), sorted(kohya)[:3]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}


def test_dreambooth_and_ti_train_and_reload_in_plain_diffusers(sdxl, concept_dir, tmp_path):
    db = train(build_config(overrides=train_overrides(sdxl, concept_dir, tmp_path / "db", method="dreambooth", steps=2,
                                                      num_class_images=2, class_sample_steps=2, cpu=True)),
               progress=False)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(db / "unet"))
    assert (unet_out(unet) - unet_out(plain_pipe(sdxl).unet)).abs().max() > 0
    assert json.loads((db / "adapter.json").read_text())["family"] == "sdxl"

    ti = train(build_config(overrides=train_overrides(sdxl, concept_dir, tmp_path / "ti", method="ti", steps=3, lr=5e-2,
                                                      num_vectors=2, cpu=True)), progress=False)
    state = load_file(str(ti / "learned_embeds.safetensors"))
    assert set(state) == {"clip_l", "clip_g"} and state["clip_l"].shape == (2, 32) and state["clip_g"].shape == (2, 32)
    token = json.loads((ti / "adapter.json").read_text())["tokens"]["sks"]
    pipe = plain_pipe(sdxl)
    before, _, pooled_before, _ = pipe.encode_prompt(f"a {token} circle", device="cpu", do_classifier_free_guidance=False)
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for enc, key in ((pipe.text_encoder, "clip_l"), (pipe.text_encoder_2, "clip_g")):
        torch.testing.assert_close(enc.get_input_embeddings().weight[-2:], state[key], rtol=0, atol=0)
    after, _, pooled_after, _ = pipe.encode_prompt(f"a {token} circle", device="cpu", do_classifier_free_guidance=False)
    assert (after - before).abs().max() > 0 and (pooled_after - pooled_before).abs().max() > 0
    # cat-adapter's own loader reads the file the same way: the trained prompt embedding
    model = load_model(ModelSpec(str(sdxl)))
    from cat_adapter.adapters import load_adapter

    load_adapter(ti).apply(model)
    ours = model.text.encode(["a sks circle"], device="cpu")
    torch.testing.assert_close(ours.hidden, after.detach(), rtol=0, atol=0)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(sdxl, concept_dir, tmp_path):
    kw = train_overrides(sdxl, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         random_flip=True, cpu=True)
    check_killed_run_resumes_to_the_straight_run(kw, tmp_path)


@pytest.mark.slow
def test_sample_evaluate_and_compare_run_on_sdxl(sdxl, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(sdxl, concept_dir, tmp_path / "cat", method="cat", steps=2)),
                progress=False)
    check_sample_evaluate_compare(sdxl, concept_dir, tmp_path, out)


def test_bad_input(sdxl, tiny_model, concept_dir, tmp_path, capsys):
    # an SDXL adapter on an SD 1.x base, through adapter.json
    out = train(build_config(overrides=train_overrides(sdxl, concept_dir, tmp_path / "x", method="lora", steps=1)),
                progress=False)
    code = main(["sample", "--model", str(tiny_model), "--adapter", str(out), "--prompt", "a sks circle",
                 "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "made for the sdxl family" in err[0] and not (tmp_path / "s").exists()
    # a pipeline class no family loads
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    line = train_cli_error(capsys, other, concept_dir, tmp_path / "o", "--trigger", "sks")
    assert "KandinskyPipeline" in line and "StableDiffusionXLPipeline" in line
    # text-encoder LoRA is not built for SDXL yet
    line = train_cli_error(capsys, sdxl, concept_dir, tmp_path / "t", "--trigger", "sks", "--train-text-encoder",
                           "--resolution", "16")
    assert "--train-text-encoder" in line and "sdxl" in line


def test_an_sdxl_embeddings_file_alone_is_recognised(sdxl, concept_dir, tmp_path, capsys):
    """The file beside its adapter.json keeps the run's token; copied elsewhere, its stem is the token (A1111)."""
    import shutil

    from cat_adapter.adapters import load_adapter

    ti = train(build_config(overrides=train_overrides(sdxl, concept_dir, tmp_path / "ti", method="ti", steps=1)),
               progress=False)
    found = load_adapter(ti / "learned_embeds.safetensors")
    assert found.family == "sdxl" and found.tokens == {"sks": "sks"}
    shutil.copy(ti / "learned_embeds.safetensors", tmp_path / "qwz.safetensors")
    alone = load_adapter(tmp_path / "qwz.safetensors")
    assert alone.family == "sdxl" and alone.tokens == {"qwz": "qwz"} and alone.recognised.startswith("SDXL")
    assert main(["sample", "--model", str(sdxl), "--adapter", str(tmp_path / "qwz.safetensors"), "--prompt",
                 "a qwz circle", "--num-images", "1", "--steps", "2", "--output", str(tmp_path / "s")]) == 0
