"""--cache-dir: latents and prompt embeddings reused across runs, and never a stale entry."""

import json
import os

import torch
from helpers import train_overrides
from PIL import Image
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.data.cache import build_cache
from cat_adapter.data.concept import load_concept
from cat_adapter.data.disk_cache import DiskCache
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"


def test_second_run_reads_the_cache_and_trains_the_same(tiny_model, concept_dir, tmp_path):
    common = train_overrides(tiny_model, concept_dir, None, steps=3, cpu=True, method="cat",
                             cache_dir=str(tmp_path / "cache"))
    first = train(build_config(overrides={**common, "output": str(tmp_path / "a")}), progress=False)
    second = train(build_config(overrides={**common, "output": str(tmp_path / "b")}), progress=False)
    plain = train(build_config(overrides={**common, "output": str(tmp_path / "c"), "cache_dir": None}), progress=False)
    s1, s2 = (json.loads((p / "done.json").read_text())["cache"] for p in (first, second))
    n_images = len(list(concept_dir.glob("*.png")))
    assert s1["hits"] == 0 and s1["misses"] >= n_images          # the first run wrote every entry
    assert s2["misses"] == 0 and s2["hits"] == s1["misses"]       # the second read them all
    wa, wb, wc = (load_file(str(p / LORA)) for p in (first, second, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)             # cached values are the ones the first run used
    assert all(torch.equal(wa[k], wc[k]) for k in wa)             # ... and those of a run without a cache


def test_a_rewritten_image_with_the_same_size_and_mtime_is_not_stale(tiny_model, concept_dir, tmp_path):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    disk = DiskCache(tmp_path / "cache", model.identity)
    cpu = torch.device("cpu")
    before = build_cache(model, items, resolution=16, random_flip=True, device=cpu, disk=disk)
    target = items[0].image_path
    stat = target.stat()
    img = Image.open(target).convert("RGB")
    img = Image.fromarray(255 - __import__("numpy").asarray(img))   # other pixels, same size
    img.save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))        # and the old mtime back
    disk2 = DiskCache(tmp_path / "cache", model.identity)
    after = build_cache(model, items, resolution=16, random_flip=True, device=cpu, disk=disk2)
    assert disk2.misses == 1 and disk2.hits == len(items) - 1 + (2 * len(items))   # one image re-encoded; prompts hit
    assert not torch.equal(after.instance.latent_mean[(16, 16)][:, 0], before.instance.latent_mean[(16, 16)][:, 0])
    assert torch.equal(after.instance.latent_mean[(16, 16)][:, 1:], before.instance.latent_mean[(16, 16)][:, 1:])
    # another resolution, flip setting or model is another entry, never a hit
    disk3 = DiskCache(tmp_path / "cache", {**model.identity, "fingerprint": "another-model"})
    build_cache(model, items, resolution=16, random_flip=True, device=cpu, disk=disk3)
    disk4 = DiskCache(tmp_path / "cache", model.identity)
    build_cache(model, items, resolution=16, random_flip=False, device=cpu, disk=disk4)
    assert disk3.hits == 0 and disk4.misses == len(items)
