"""The Chosen One on a tiny model: iterations, records, resume after SIGKILL, plain-diffusers loading, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from helpers import KILLER


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from cat_adapter.testing.tiny_clip import build_tiny_dinov2

    return build_tiny_dinov2(tmp_path_factory.mktemp("dino") / "dinov2", image_size=16, patch_size=8)


def tco_options(model, embedder, output, **kw):
    base = dict(method="tco", model=str(model), trigger="sks", class_noun="circle", resolution=16, steps=3, lr=1e-3,
                tco_images=8, tco_cluster_size=3, tco_min_cluster=1, tco_max_iterations=2, tco_embedder=str(embedder),
                tco_sample_steps=2, output=str(output), seed=0)
    base.update(kw)
    return base


# helpers.KILLER SIGKILLs the run at the N-th training forward_backward (here: of the whole TCO run).


@pytest.fixture(scope="module")
def straight(tiny_model, dino, tmp_path_factory):
    from cat_adapter.runners import train

    out = tmp_path_factory.mktemp("tco") / "straight"
    train(build_config(overrides=tco_options(tiny_model, dino, out)), progress=False)
    return out


def test_tco_records_every_iteration_and_writes_a_lora_plus_tokens_adapter(straight):
    record = json.loads((straight / "tco.json").read_text())
    assert record["prompt"] == "a circle" and record["trigger_prompt"] == "a sks circle"
    its = record["iterations"]
    assert [it["iteration"] for it in its] == [0, 1] and all(it["trained"] for it in its)
    assert its[0]["prompt"] == "a circle" and its[1]["prompt"] == "a sks circle"  # from iteration 1: trigger + adapter
    for it in its:
        assert sum(it["cluster_sizes"]) == 8 and it["k"] == 8 // 3
        assert it["chosen"] in it["kept"] and it["chosen_size"] == it["cluster_sizes"][it["chosen"]]
        assert it["cohesion"][it["chosen"]] == min(it["cohesion"][c] for c in it["kept"])
        folder = straight / "iterations" / f"{it['iteration']:02d}"
        assert (folder / "done.json").is_file() and len(list((folder / "images").glob("*.png"))) == 8
        captions = sorted((folder / "concept").glob("*.txt"))
        assert len(captions) == it["chosen_size"] and captions[0].read_text().strip() == "a sks circle"
    assert record["converged"] is False and record["final_iteration"] == 1
    adapter = json.loads((straight / "adapter.json").read_text())
    assert sorted(adapter["kinds"]) == ["lora", "tokens"] and adapter["method"] == "tco"
    assert (straight / "iterations.png").is_file()
    # the output is the last iteration's adapter, and iteration 1 started from iteration 0's weights
    last = load_file(str(straight / "iterations" / "01" / "train" / "pytorch_lora_weights.safetensors"))
    out = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(out[k], last[k]) for k in last)
    first = load_file(str(straight / "iterations" / "00" / "train" / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in last)
    done = json.loads((straight / "done.json").read_text())
    assert done["steps"] == 6 and done["generation_seconds"] > 0


def test_tco_output_loads_in_plain_diffusers_with_the_trained_outputs(straight, tiny_model):
    """load_lora_weights + load_textual_inversion give the images cat-adapter's own loader gives."""
    from diffusers import StableDiffusionPipeline

    from cat_adapter.adapters import load_adapter
    from cat_adapter.models import ModelSpec, load_model
    from cat_adapter.sampling import generate

    adapter = json.loads((straight / "adapter.json").read_text())
    token = adapter["tokens"]["sks"]
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(straight))
    pipe.load_textual_inversion(str(straight / "learned_embeds.safetensors"))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = pipe(f"a {token} circle", latents=latents, num_inference_steps=3, guidance_scale=3.0, height=16, width=16,
                 output_type="np").images[0]
    model = load_model(ModelSpec(str(tiny_model)))
    load_adapter(straight).apply(model)
    ours = np.asarray(generate(model, ["a sks circle"], [0], steps=3, guidance_scale=3.0, height=16, width=16)[0],
                      dtype=np.float32) / 255
    assert np.abs(plain - ours).max() <= 1.5 / 255


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2, 5])  # in iteration 0's training; in iteration 1's training
def test_tco_killed_and_resumed_equals_the_uninterrupted_run(straight, tiny_model, dino, tmp_path, kill_at):
    out = tmp_path / "killed"
    opts = tco_options(tiny_model, dino, out, checkpoint_every=1)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(opts), str(kill_at)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "done.json").exists()
    from cat_adapter.runners import train

    train(build_config(overrides={**opts, "resume": True}), progress=False)
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(straight / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    ra, rb = (json.loads((p / "tco.json").read_text())["iterations"] for p in (out, straight))
    assert [r["chosen"] for r in ra] == [r["chosen"] for r in rb]
    assert [r["mean_pairwise_distance"] for r in ra] == [r["mean_pairwise_distance"] for r in rb]


def test_tco_stops_when_the_images_converge(tiny_model, dino, tmp_path):
    """Convergence 1.0: iteration 1's images are at most as spread as iteration 0's is met whenever the adapter
    narrowed them; the run then stops without training iteration 1 and keeps iteration 0's adapter."""
    from cat_adapter.runners import train

    out = tmp_path / "conv"
    train(build_config(overrides=tco_options(tiny_model, dino, out, tco_convergence=1.0, tco_max_iterations=3,
                                             lr=5e-2, steps=6)), progress=False)
    record = json.loads((out / "tco.json").read_text())
    last = record["iterations"][-1]
    if record["converged"]:
        assert not last["trained"] and last["relative_distance"] <= 1.0
        assert record["final_iteration"] == last["iteration"] - 1
        a = load_file(str(out / "pytorch_lora_weights.safetensors"))
        b = load_file(str(out / "iterations" / f"{last['iteration'] - 1:02d}" / "train" / "pytorch_lora_weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert all(r["relative_distance"] > 1.0 for r in record["iterations"][1:])
        assert len(record["iterations"]) == 3


def test_cluster_choice_is_the_most_cohesive_kept_cluster():
    from cat_adapter.methods.tco.cluster import choose_cluster, mean_pairwise_distance

    rng = np.random.default_rng(0)
    tight = rng.normal(0, 0.01, (6, 4)) + np.array([1, 0, 0, 0])
    loose = rng.normal(0, 0.3, (6, 4)) + np.array([0, 1, 0, 0])
    tiny = rng.normal(0, 0.001, (2, 4)) + np.array([0, 0, 1, 0])   # most cohesive, but too small
    emb = np.concatenate([loose, tight, tiny])
    c = choose_cluster(emb, cluster_size=4, min_cluster=2, seed=0)
    assert c.k == 3 and sorted(c.sizes) == [2, 6, 6]
    assert c.members == list(range(6, 12)) and not c.fallback
    pts = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(pts) == pytest.approx(5.0)


@pytest.mark.parametrize("kw, message", [
    (dict(class_noun=None), "--tco-prompt is required"),
    (dict(tco_images=2), "below --tco-cluster-size"),
    (dict(tco_prompt="a watercolor fox"), "does not name --class-noun"),
    (dict(data="somewhere"), "--data is not read by --method tco"),
    (dict(tco_convergence=1.5), "--tco-convergence"),
])
def test_tco_bad_options_are_one_line_errors(tiny_model, dino, tmp_path, kw, message):
    opts = tco_options(tiny_model, dino, tmp_path / "out", **kw)
    opts = {k: v for k, v in opts.items() if v is not None}
    with pytest.raises(CatAdapterError, match=message):
        build_config(overrides=opts)


def test_tco_prompts_put_the_trigger_before_the_class_noun():
    from cat_adapter.methods.tco.prompts import tco_prompts

    assert tco_prompts("a watercolor fox character", "zq", "fox") == ("a watercolor fox character",
                                                                      "a watercolor zq fox character")
    assert tco_prompts("a {class_noun}", "sks", "circle") == ("a circle", "a sks circle")
    assert tco_prompts("a photo of {trigger} in a hat", "sks", "dog") == ("a photo of in a hat", "a photo of sks in a hat")
