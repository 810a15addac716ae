"""``cat-adapter memory``: the estimate builds every component from its config on the meta device (exact parameter
counts, no weights read), counts what autograd keeps during one real training step of each method, and reacts to
the options the way the trainer's memory does (quantization, checkpointing, batch, CAT's executors)."""

from __future__ import annotations

import json

import pytest
import torch

from cat_adapter.memory import (GIB, MemoryOptions, _build, _Live, counting, estimate, read_configs, weight_bytes)
from cat_adapter.testing.tiny import build_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "model")


def test_parameter_counts_equal_the_loaded_model(tiny_model):
    """The meta build of each component has exactly the parameters of the model the trainer loads."""
    from diffusers import StableDiffusionPipeline

    index, configs = read_configs(str(tiny_model))
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None)
    for name in ("unet", "text_encoder", "vae"):
        meta = _build(index, name, configs[name], torch.float32)
        assert all(p.is_meta for p in meta.parameters())
        assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in getattr(pipe, name).parameters())


@pytest.mark.parametrize("name,component,params", [
    ("sd15", "unet", 859_520_964), ("sdxl", "unet", 2_567_463_684), ("flux-dev", "transformer", 11_901_408_320),
    ("flux-dev", "text_encoder_2", 4_762_310_656)])
def test_builtin_configs_have_the_published_sizes(name, component, params):
    index, configs = read_configs(name)
    module = _build(index, component, configs[component], torch.bfloat16)
    assert sum(p.numel() for p in module.parameters()) == params


def test_the_meta_count_equals_the_count_of_real_tensors():
    """The hook counts each saved storage once while autograd holds it: on the meta device (no data), the same
    figure as a count of the real tensors' storages on the CPU."""
    torch.manual_seed(0)

    def run(device):
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).to(device)
        net[0].weight.requires_grad_(False)
        x = torch.empty(4, 16, device=device).normal_() if device == "cpu" else torch.empty(4, 16, device=device)
        return net, x

    net, x = run("meta")
    live = _Live()
    with counting(live, {p.untyped_storage()._cdata for p in net.parameters()}):
        net(x).sum().backward()
    assert live.now == 0   # everything freed after backward

    net, x = run("cpu")
    held: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    assert live.peak == sum(held.values()) > 0


@pytest.mark.slow
def test_estimate_reacts_like_training_memory(tiny_sdxl):
    base = estimate(MemoryOptions(model=str(tiny_sdxl), mixed_precision="no"))
    v = base.variants
    # lean runs the preservation pass after the data term's backward: no more activations than LoRA; fast runs the
    # trigger and preservation rows in one pass: more
    assert v["cat_lean"]["activations"] == v["lora"]["activations"]
    assert v["cat_fast"]["activations"] > 1.5 * v["lora"]["activations"]
    assert v["lora"]["adapter_state"] == 16 * v["lora"]["adapter_params"] > 0
    double = estimate(MemoryOptions(model=str(tiny_sdxl), mixed_precision="no", batch_size=2))
    assert double.variants["lora"]["activations"] > 1.8 * v["lora"]["activations"]
    ckpt = estimate(MemoryOptions(model=str(tiny_sdxl), mixed_precision="no", gradient_checkpointing=True))
    assert ckpt.variants["lora"]["activations"] < v["lora"]["activations"]
    bf16 = estimate(MemoryOptions(model=str(tiny_sdxl)))
    assert bf16.components["unet"]["bytes"] * 2 == base.components["unet"]["bytes"]
    assert bf16.variants["lora"]["activations"] < v["lora"]["activations"]
    # quantization: the denoiser shrinks, the text encoders only with --quantize-text-encoders
    int8 = estimate(MemoryOptions(model=str(tiny_sdxl), quantize_base="int8"))
    nf4 = estimate(MemoryOptions(model=str(tiny_sdxl), quantize_base="nf4", quantize_text_encoders=True))
    assert nf4.components["unet"]["bytes"] < int8.components["unet"]["bytes"] < bf16.components["unet"]["bytes"]
    assert int8.components["text_encoder_2"]["bytes"] == bf16.components["text_encoder_2"]["bytes"]
    assert nf4.components["text_encoder_2"]["bytes"] < bf16.components["text_encoder_2"]["bytes"]
    assert nf4.components["text_encoder"]["bytes"] == bf16.components["text_encoder"]["bytes"]   # small CLIP: kept
    for e in (base, int8, nf4):
        for x in e.variants.values():
            assert x["peak"] == max(x["training"], x["startup"])


def test_weight_bytes_of_a_linear_layer_per_mode():
    with torch.device("meta"):
        lin = torch.nn.Linear(128, 64)
    assert weight_bytes(lin, "none", torch.bfloat16) == (128 * 64 + 64) * 2
    assert weight_bytes(lin, "int8", torch.bfloat16) == 128 * 64 + 64 * 2 + 64 * 2        # weights, row scales, bias
    assert weight_bytes(lin, "nf4", torch.bfloat16) == 128 * 64 // 2 + 128 * 64 // 64 * 4 * 2 + 64 * 2


@pytest.mark.slow
def test_cli_prints_a_table_and_json(tiny_model, capsys):
    from cat_adapter.cli.main import main

    assert main(["memory", "--model", str(tiny_model), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| LoRA", "| CAT fast", "| CAT lean"))]
    assert len(rows) == 3
    assert main(["memory", "--model", str(tiny_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "sd" and set(data["variants"]) == {"lora", "cat_fast", "cat_lean"}
    assert all(v["peak"] < GIB for v in data["variants"].values())


@pytest.mark.parametrize("args,message", [
    (["--model", "no/such-folder-xyz"], "--model"),
    (["--model", "sdxl", "--quantize-text-encoders"], "--quantize-text-encoders quantizes in the --quantize-base"),
    (["--model", "sd15", "--quantize-base", "int8", "--quantize-text-encoders"], "no large text encoder"),
    (["--model", "sd15", "--resolution", "500"], "--resolution 500"),
    (["--model", "sd15", "--batch-size", "0"], "--batch-size 0")])
def test_bad_input_is_one_line(args, message, capsys, monkeypatch):
    from cat_adapter.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["memory", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
