import numpy as np
import pytest
import torch
from PIL import Image

from cat_adapter.data.cache import StreamSampler, build_cache
from cat_adapter.data.concept import load_concept, open_image, resize_center_crop
from cat_adapter.errors import CatAdapterError
from cat_adapter.diffusion import DDPMObjective
from cat_adapter.models import Cond, ModelSpec, TokenIds, load_model


def test_modes_are_converted_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))       # fully transparent red -> white
    rgba.save(tmp_path / "a.png")
    Image.new("L", (10, 10), 100).save(tmp_path / "b.png")
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 255, 0] * 256)
    p.save(tmp_path / "c.png")
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(tmp_path / "d.png")  # 16-bit white
    assert open_image(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    assert open_image(tmp_path / "b.png").getpixel((0, 0)) == (100, 100, 100)
    assert open_image(tmp_path / "c.png").getpixel((0, 0)) == (0, 255, 0)
    assert open_image(tmp_path / "d.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = open_image(tmp_path / "r.jpg")
    assert out.size == (10, 20)
    r, g, b = out.getpixel((5, 2))
    assert r > 200 and b < 60  # the red half is on top after rotation


def test_resize_and_center_crop():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 30, 20))  # white centre band
    out = resize_center_crop(img, 16)
    assert out.size == (16, 16)
    assert out.getpixel((8, 8)) == (255, 255, 255)


def test_captions_template_and_missing_trigger(tmp_path):
    for i in range(3):
        Image.new("RGB", (12, 12)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "0.txt").write_text("a sks teapot on a table")
    items = load_concept(tmp_path, trigger="sks", class_noun="teapot")
    assert [it.caption for it in items] == ["a sks teapot on a table", "a photo of sks teapot", "a photo of sks teapot"]
    assert [it.plain for it in items] == ["a teapot on a table", "a photo of teapot", "a photo of teapot"]
    (tmp_path / "1.txt").write_text("a teapot")
    with pytest.raises(CatAdapterError, match="1.txt"):
        load_concept(tmp_path, trigger="sks", class_noun="teapot")
    items = load_concept(tmp_path, trigger="sks", class_noun="teapot", missing_trigger="prepend")
    assert items[1].caption == "sks, a teapot" and items[1].plain == "a teapot"


def test_cache_holds_both_flips_and_sampler_is_seeded(tiny_model, concept_dir):
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=True, device="cpu", pool_prompts=["a square", "a star"])
    n = len(items)
    inst = cache.instance
    assert list(inst.latent_mean) == [(16, 16)] and inst.members[(16, 16)] == list(range(n))  # one bucket, in order
    assert inst.latent_mean[(16, 16)].shape == (2, n, 4, 8, 8)
    # The flipped copy is the encoding of the flipped image, not a flip of the latent.
    assert not torch.allclose(inst.latent_mean[(16, 16)][0], inst.latent_mean[(16, 16)][1])
    assert len(inst.prompts) == n and len(cache.pool) == 2
    assert not torch.equal(inst.prompts.hidden, inst.plain.hidden)
    objective = DDPMObjective(model.pipe.scheduler.config)

    def sampler(seed, **kw):
        return StreamSampler(cache, batch_size=kw.pop("batch_size", 3), pool_size=1, objective=objective, seed=seed, **kw)

    def draws(seed):
        s = sampler(seed)
        return [s.next() for _ in range(3)]

    a, b, c = draws(0), draws(0), draws(1)
    assert all(torch.equal(x.instance.noise, y.instance.noise) and torch.equal(x.instance.latents, y.instance.latents)
               for x, y in zip(a, b))
    assert not torch.equal(a[0].instance.noise, c[0].instance.noise)
    assert len(a[0].prompts["pool"]) == 1
    # Sampler state round-trips (resume).
    s = sampler(0)
    s.next()
    state = s.state_dict()
    nxt = s.next()
    s2 = sampler(5)
    s2.load_state_dict(state)
    assert torch.equal(s2.next().instance.latents, nxt.instance.latents)


def test_global_stream_is_sliced_by_rank(tiny_model, concept_dir):
    """Two processes with batch b draw exactly one process's batch 2b, split in halves; their stream states agree."""
    model = load_model(ModelSpec(str(tiny_model)))
    items = load_concept(concept_dir, trigger="sks", class_noun="circle")
    cache = build_cache(model, items, resolution=16, random_flip=True, device="cpu")
    objective = DDPMObjective(model.pipe.scheduler.config)
    one = StreamSampler(cache, batch_size=4, pool_size=0, objective=objective, seed=7)
    ranks = [StreamSampler(cache, batch_size=2, pool_size=0, objective=objective, seed=7, num_processes=2,
                           process_index=r) for r in range(2)]
    for _ in range(3):
        whole, halves = one.next(), [r.next() for r in ranks]
        for field in ("latents", "noise", "timesteps"):
            joined = torch.cat([getattr(h.instance, field) for h in halves])
            assert torch.equal(joined, getattr(whole.instance, field)), field
        assert torch.equal(torch.cat([h.prompts["trigger"].hidden for h in halves]), whole.prompts["trigger"].hidden)
    assert torch.equal(ranks[0].state_dict()["generator"], ranks[1].state_dict()["generator"])


def test_batch_to_keeps_integer_tensors_integer():
    from cat_adapter.data.batch import Batch, Noised

    b = Batch(Noised(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.tensor([1, 999])),
              {"trigger": TokenIds(torch.tensor([[1, 2, 3]])), "plain": Cond(torch.zeros(2, 3, 8))})
    moved = b.to("cpu", torch.float16)
    assert moved.instance.timesteps.dtype == torch.long and moved.prompts["trigger"].ids.dtype == torch.long
    assert moved.instance.latents.dtype == torch.float16 and moved.prompts["plain"].hidden.dtype == torch.float16


def test_orphan_caption_is_named_in_a_warning(tmp_path, caplog):
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a sks circle")
    (tmp_path / "b.txt").write_text("a sks circle, typo'd image name")
    with caplog.at_level("WARNING", logger="cat_adapter"):
        items = load_concept(tmp_path, trigger="sks", class_noun="circle")
    assert [it.caption for it in items] == ["a sks circle"]
    assert any("b.txt" in r.getMessage() and "no image" in r.getMessage() for r in caplog.records)
    assert not any("a.txt" in r.getMessage() for r in caplog.records)


def test_images_smaller_than_the_resolution_are_named_in_a_warning(tmp_path, caplog):
    from cat_adapter.data.concept import load_concept
    from cat_adapter.testing.tiny import write_shape_concept
    from cat_adapter.training.loop import warn_small_images

    items = load_concept(write_shape_concept(tmp_path / "c", n=2, size=16), trigger="sks", class_noun="circle")
    with caplog.at_level("WARNING"):
        assert warn_small_images(items, 32) == ["00.png (16x16)", "01.png (16x16)"]
    assert "2 of 2 training images are smaller than --resolution 32 and will be upscaled" in caplog.text
    assert warn_small_images(items, 16) == [] and warn_small_images(items, 16, buckets=True) == []
