"""--buckets: aspect-ratio buckets (kohya's max-area rule), one bucket per batch, class images paired by bucket,
buckets.json, the latent cache keyed by bucket, resume, and bad options."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from helpers import KILLER, train_cli_error, train_overrides
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.data.buckets import bucket_sizes, fit, nearest_bucket, place
from cat_adapter.data.cache import StreamSampler, build_cache
from cat_adapter.data.concept import load_concept
from cat_adapter.data.disk_cache import DiskCache
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"
# the tiny model's buckets at --resolution 16: step 4 (VAE factor 2 x U-Net downsampling 2), sides 8..32
TINY_BUCKETS = bucket_sizes(16, 4, 8, 32)
SHAPES = {"wide0.png": (32, 16), "wide1.png": (30, 14), "tall.png": (16, 32),
          "sq0.png": (16, 16), "sq1.png": (20, 20), "sq2.png": (17, 16)}
EXPECTED = {"wide0.png": (20, 12), "wide1.png": (20, 12), "tall.png": (12, 20),
            "sq0.png": (16, 16), "sq1.png": (16, 16), "sq2.png": (16, 16)}


def write_mixed_concept(folder):
    """Six images of three shapes, each caption naming its image (so a batch row tells which image it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h)) in enumerate(SHAPES.items()):
        img = Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 120))
        ImageDraw.Draw(img).ellipse((2, 2, w - 3, h - 3), fill=(255, 140, 0), outline=(0, 0, 0))
        img.save(folder / name)
        (folder / name).with_suffix(".txt").write_text(f"a photo of sks circle number {i}")
    return folder


@pytest.fixture
def mixed_dir(tmp_path):
    return write_mixed_concept(tmp_path / "mixed")


def test_bucket_sizes_follow_the_max_area_rule():
    sizes = bucket_sizes(512, 64, 256, 1024)
    # the 17 buckets kohya sd-scripts prints for SD 1.x at 512 (min 256, max 1024, steps 64)
    half = [(256, 1024), (256, 960), (256, 896), (256, 832), (320, 768), (320, 704), (384, 640), (448, 576)]
    assert set(sizes) == {*half, (512, 512), *[(h, w) for w, h in half]}
    for w, h in bucket_sizes(1024, 64, 512, 2048) + TINY_BUCKETS:
        assert w % 4 == 0 and h % 4 == 0
    assert all(w * h <= 1024 ** 2 and 512 <= min(w, h) and max(w, h) <= 2048 for w, h in bucket_sizes(1024, 64, 512, 2048))
    assert (1024, 1024) in bucket_sizes(1024, 64, 512, 2048)
    ratios = [w / h for w, h in sizes]
    assert ratios == sorted(ratios)


def test_images_keep_their_aspect_ratio():
    sd = bucket_sizes(512, 64, 256, 1024)
    assert nearest_bucket((600, 300), sd) == (704, 320)      # 2.2 is nearer 2 than 1.67 or 2.4
    assert nearest_bucket((300, 600), sd) == (320, 704)      # symmetric on a log scale
    assert nearest_bucket((1000, 1000), sd) == (512, 512)
    # 100x50 into 48x32: one scale for both sides (0.64 -> 64x32), the centre 48 columns kept
    p = place((100, 50), (48, 32))
    assert p.crop == (8, 0) and p.original == (100, 50)
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((0, 0, 49, 49), fill=(255, 255, 255))   # left half white
    out = fit(img, p)
    assert out.size == (48, 32)
    px = out.load()
    assert px[2, 16][0] > 200 and px[45, 16][0] < 50   # white left, black right: not stretched or flipped
    # without buckets, the same code is the old shorter-side resize and centre square crop
    assert place((40, 20), (16, 16)).crop == ((32 - 16) // 2, 0)


def test_each_batch_is_one_bucket_and_every_image_is_drawn(tiny_model, mixed_dir):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(mixed_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=True, device="cpu", buckets=TINY_BUCKETS)
    inst = cache.instance
    names = [it.image_path.name for it in items]
    assert {b: sorted(names[i] for i in inst.members[b]) for b in inst.buckets} == \
        {b: sorted(n for n, e in EXPECTED.items() if e == b) for b in set(EXPECTED.values())}
    for b in inst.buckets:   # latents are (flips, images, C, height / 2, width / 2)
        assert inst.latent_mean[b].shape == (2, len(inst.members[b]), 4, b[1] // 2, b[0] // 2)
    hidden = inst.prompts.hidden
    sampler = StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=0)
    seen, buckets = Counter(), Counter()
    for _ in range(300):
        batch = sampler.next()
        h, w = batch.instance.latents.shape[-2:]
        bucket = (w * 2, h * 2)
        assert bucket in inst.members and batch.instance.latents.shape[0] == 2
        buckets[bucket] += 1
        for row in batch.prompts["trigger"].hidden:
            i = next(k for k in range(len(items)) if torch.equal(row, hidden[k]))
            assert i in inst.members[bucket]    # the caption is the caption of an image of this bucket
            seen[names[i]] += 1
    # buckets drawn in proportion to their images (3 : 2 : 1), so every image about equally often (600 rows / 6)
    assert set(seen) == set(names) and all(60 <= n <= 140 for n in seen.values()), seen
    assert buckets[(16, 16)] > buckets[(20, 12)] > buckets[(12, 20)]
    # the stream state round-trips with one order per bucket
    state = sampler.state_dict()
    assert set(state["orders"]) == {f"instance {w}x{h}" for w, h in inst.buckets}
    nxt = sampler.next()
    again = StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=9)
    again.load_state_dict(state)
    assert torch.equal(again.next().instance.latents, nxt.instance.latents)


def test_class_images_are_paired_by_bucket(tiny_model, mixed_dir, tmp_path, caplog):
    """Class images go to the instance bucket nearest their shape; one the class images leave empty gets crops."""
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(mixed_dir, trigger="sks", class_noun="circle")
    folder = tmp_path / "class"
    folder.mkdir()
    for name, size in {"c_sq.png": (24, 24), "c_wide.png": (40, 20), "c_sq2.png": (16, 16)}.items():
        Image.new("RGB", size, (90, 90, 200)).save(folder / name)
    class_images = [(p, "a photo of circle") for p in sorted(folder.glob("*.png"))]
    cache = build_cache(model, items, resolution=16, random_flip=False, device="cpu", buckets=TINY_BUCKETS,
                        class_images=class_images)
    prior, names = cache.prior, [p.name for p, _ in class_images]
    assert {b: sorted(names[i] for i in prior.members[b]) for b in prior.buckets} == {
        (16, 16): ["c_sq.png", "c_sq2.png"], (20, 12): ["c_wide.png"],
        (12, 20): ["c_sq.png", "c_sq2.png", "c_wide.png"]}      # no tall class image: all three cropped to 12x20
    assert "12x20" in caplog.text
    sampler = StreamSampler(cache, batch_size=2, pool_size=0, objective=model.objective, seed=0)
    for _ in range(30):
        b = sampler.next()
        assert b.prior.latents.shape == b.instance.latents.shape


@pytest.mark.slow
def test_training_with_buckets_writes_buckets_json_and_resumes_exactly(tiny_model, mixed_dir, tmp_path):
    kw = train_overrides(tiny_model, mixed_dir, tmp_path / "killed", steps=6, checkpoint_every=2, cpu=True,
                         method="cat", buckets=True, batch_size=2, random_flip=True)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    square = train(build_config(overrides={**kw, "output": str(tmp_path / "square"), "buckets": False}),
                   progress=False)
    assert json.loads((straight / "buckets.json").read_text()) == {n: list(b) for n, b in EXPECTED.items()}
    assert not (square / "buckets.json").exists()
    wa, wb, wc = (load_file(str(p / LORA)) for p in (resumed, straight, square))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert max((wb[k] - wc[k]).abs().max().item() for k in wb) > 1e-6   # buckets changed what was trained on


def test_dreambooth_with_buckets_writes_class_buckets(tiny_model, mixed_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(
        tiny_model, mixed_dir, tmp_path / "db", method="dreambooth", buckets=True, num_class_images=2,
        class_sample_steps=2, steps=2, cpu=True)), progress=False)
    record = json.loads((out / "class_buckets.json").read_text())
    # generated class images are squares: in the square bucket, and cropped to the two others
    assert len(record) == 2 and all(sorted(map(tuple, v)) == [(12, 20), (16, 16), (20, 12)] for v in record.values())


def test_the_latent_cache_is_keyed_by_bucket(tiny_model, mixed_dir, tmp_path):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(mixed_dir, trigger="sks", class_noun="circle")
    build_cache(model, items, resolution=16, random_flip=False, device="cpu", buckets=TINY_BUCKETS,
                disk=DiskCache(tmp_path / "c", model.identity))
    again = DiskCache(tmp_path / "c", model.identity)
    cached = build_cache(model, items, resolution=16, random_flip=False, device="cpu", buckets=TINY_BUCKETS, disk=again)
    assert again.hits == 3 * len(items) and again.misses == 0            # latents and both prompt sets
    fresh = build_cache(model, items, resolution=16, random_flip=False, device="cpu", buckets=TINY_BUCKETS)
    assert all(torch.equal(cached.instance.latent_mean[b], fresh.instance.latent_mean[b]) for b in fresh.instance.buckets)
    square = DiskCache(tmp_path / "c", model.identity)
    build_cache(model, items, resolution=16, random_flip=False, device="cpu", disk=square)
    # the three square images sit in the 16x16 bucket either way: the same entry; the others are new
    assert square.misses == 3


@pytest.mark.parametrize("extra, needle", [
    (["--bucket-step", "8"], "needs --buckets"),
    (["--buckets", "--bucket-step", "12"], "--bucket-step"),
    (["--buckets", "--bucket-min-side", "24"], "--bucket-min-side"),
    (["--buckets", "--bucket-max-side", "0"], "--bucket-max-side"),
])
def test_bad_bucket_options(tiny_model, mixed_dir, tmp_path, capsys, extra, needle):
    line = train_cli_error(capsys, tiny_model, mixed_dir, tmp_path / "out", "--resolution", "16", *extra)
    assert needle in line


def test_a_bucket_step_the_model_cannot_take_is_refused(tiny_model, mixed_dir, tmp_path):
    """The tiny model takes any multiple of 8 (its multiple is 4), so an SD-like multiple of 64 is stood in."""
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.training.loop import training_buckets

    class Model:
        size_multiple = 64

    cfg = build_config(overrides=train_overrides(tiny_model, mixed_dir, tmp_path / "o", buckets=True, bucket_step=32,
                                                 resolution=512))
    with pytest.raises(CatAdapterError, match="--bucket-step 32: must be a multiple of 64"):
        training_buckets(cfg, Model())
