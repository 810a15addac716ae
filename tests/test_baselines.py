"""DreamBooth's class-image cache, Textual Inversion's tokens, the adapter loader and evaluation of each kind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import train_overrides
from PIL import Image

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.runners import train

DB = dict(method="dreambooth", lr=1e-3, num_class_images=3, class_sample_steps=2, steps=2)


def _stats(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def test_class_images_are_generated_once_and_reused_untouched(tiny_model, concept_dir, tmp_path):
    cls = tmp_path / "class"
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "a", class_data=str(cls), **DB)),
          progress=False)
    names = sorted(p.name for p in cls.iterdir())
    assert names == ["00000-seed0.png", "00001-seed1.png", "00002-seed2.png", "class_images.json"]
    manifest = json.loads((cls / "class_images.json").read_text())
    assert manifest["prompt"] == "a photo of circle" and manifest["seed_start"] == 0 and manifest["resolution"] == 16
    assert manifest["model"]["fingerprint"]
    before = _stats(cls)
    # Another training seed shares the cache: nothing rewritten, nothing touched.
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "b", class_data=str(cls), seed=5,
                                                 **DB)), progress=False)
    assert _stats(cls) == before
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert all("loss_prior" in x and "loss_identity" in x for x in log)


def test_class_cache_of_other_settings_is_an_error_until_regenerated(tiny_model, concept_dir, tmp_path):
    cls = tmp_path / "class"
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "a", class_data=str(cls), **DB)),
          progress=False)
    before = _stats(cls)
    other = dict(DB, class_prompt="a photo of a square")
    with pytest.raises(CatAdapterError, match="other settings.*prompt .*regenerate-class-images"):
        train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "b", class_data=str(cls),
                                                     **other)), progress=False)
    assert _stats(cls) == before  # never overwritten silently
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "c", class_data=str(cls),
                                                 regenerate_class_images=True, **other)), progress=False)
    assert json.loads((cls / "class_images.json").read_text())["prompt"] == "a photo of a square"


def test_killed_generation_resumes_with_the_missing_images_only(tiny_model, concept_dir, tmp_path):
    cls = tmp_path / "class"
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "a", class_data=str(cls), **DB)),
          progress=False)
    (cls / "00001-seed1.png").unlink()  # as a run killed before writing image 1 leaves it
    (cls / "notes.txt").write_text("not an image")  # ignored
    (cls / "thumbs").mkdir()
    kept = {n: v for n, v in _stats(cls).items() if n.endswith(".png")}
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "b", class_data=str(cls), **DB)),
          progress=False)
    after = _stats(cls)
    assert all(after[n] == v for n, v in kept.items()) and "00001-seed1.png" in after


def test_users_own_class_images_are_used_as_they_are(tiny_model, concept_dir, tmp_path):
    cls = tmp_path / "mine"
    cls.mkdir()
    for i in range(2):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(cls / f"own{i}.jpg")
    before = _stats(cls)
    train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "a", class_data=str(cls), **DB)),
          progress=False)
    assert _stats(cls) == before


def test_class_data_that_is_a_file_is_an_error_before_anything_is_written(tiny_model, concept_dir, tmp_path, capsys):
    f = tmp_path / "class.png"
    f.write_bytes(b"x")
    args = ["train", "--model", str(tiny_model), "--data", str(concept_dir), "--output", str(tmp_path / "o"),
            "--class-noun", "circle", "--resolution", "16", "--method", "dreambooth", "--class-data", str(f)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--class-data" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert main(args[:-2] + ["--num-class-images", "0"]) == 2
    assert "--num-class-images must be >= 1" in capsys.readouterr().err


@pytest.fixture
def sks_model(tiny_model, tmp_path):
    """The tiny pipeline whose tokenizer already has 'sks' as a token (as CLIP's real vocabulary has rare words)."""
    from cat_adapter.models import load_pipeline

    pipe = load_pipeline(str(tiny_model))
    assert pipe.tokenizer.add_tokens(["sks"]) == 1
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    pipe.save_pretrained(tmp_path / "sks_model", safe_serialization=True)
    return tmp_path / "sks_model"


def test_ti_trigger_the_tokenizer_knows_becomes_bracketed_and_sample_maps_it(sks_model, concept_dir, tmp_path, capsys):
    """add_tokens('sks') would return 0: the token is <sks>; adapter.json maps sks -> <sks>; cat-adapter sample with
    'a sks circle' equals plain diffusers load_textual_inversion with 'a <sks> circle' (same seeds)."""
    from safetensors.torch import load_file

    from cat_adapter.models import load_pipeline
    from cat_adapter.sampling import seeded_latents

    out = train(build_config(overrides=train_overrides(sks_model, concept_dir, tmp_path / "ti", method="ti", lr=5e-2,
                                                       steps=3, num_vectors=2)), progress=False)
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["tokens"] == {"sks": "<sks>"} and meta["kinds"] == ["tokens"]
    emb = load_file(str(out / "learned_embeds.safetensors"))
    assert list(emb) == ["<sks>"] and emb["<sks>"].shape == (2, 32)
    assert main(["sample", "--model", str(sks_model), "--adapter", str(out), "--prompt", "a sks circle",
                 "--num-images", "2", "--steps", "3", "--output", str(tmp_path / "s")]) == 0
    pipe = load_pipeline(str(sks_model))
    pipe.load_textual_inversion(str(out))

    class Shape:  # the latents cat-adapter sample draws: one generator per seed
        def latent_shape(self, h, w):
            return 4, h // 2, w // 2
    ref = pipe(["a <sks> circle"] * 2, latents=seeded_latents(Shape(), [0, 1], height=16, width=16),
               num_inference_steps=3, guidance_scale=7.5, height=16, width=16).images
    for i, img in enumerate(ref):
        mine = np.asarray(Image.open(tmp_path / "s" / f"00-seed{i}.png"), dtype=np.int16)
        assert np.abs(mine - np.asarray(img, dtype=np.int16)).max() <= 1


def test_initializer_of_several_tokens_is_averaged(tiny_model):
    from cat_adapter.models import ModelSpec, load_model

    model = load_model(ModelSpec(str(tiny_model)))
    emb = model.text.encoder.get_input_embeddings().weight.detach().clone()
    ids = model.text.tokenizer("circle", add_special_tokens=False).input_ids
    assert len(ids) > 1  # the tiny tokenizer is character level
    names, rows = model.text.add_tokens("zq", 1, "circle")
    torch.testing.assert_close(rows[0].detach()[0], emb[ids].mean(0))
    assert names == ["zq"]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One output of each kind (3 steps on the tiny model)."""
    from cat_adapter.testing.tiny import write_shape_concept

    root = tmp_path_factory.mktemp("kinds")
    concept = write_shape_concept(root / "concept", n=4, size=16)
    outs = {}
    for name, kw in {"lora": dict(method="lora"), "cat": dict(method="cat"), "dreambooth": dict(DB, steps=3),
                     "ti": dict(method="ti", lr=5e-2)}.items():
        outs[name] = train(build_config(overrides=train_overrides(tiny_model, concept, root / name, cpu=True,
                                                                  **{"steps": 3, "lr": 5e-3, **kw})), progress=False)
    outs["concept"] = concept
    return outs


@pytest.mark.parametrize("kind", ["lora", "cat", "dreambooth", "ti", "diffusers-file", "kohya-file", "embeds-file"])
def test_sample_takes_every_adapter_kind(tiny_model, trained, tmp_path, kind, capsys):
    from cat_adapter.adapters import load_adapter

    adapter = {"diffusers-file": trained["lora"] / "pytorch_lora_weights.safetensors",
               "embeds-file": trained["ti"] / "learned_embeds.safetensors"}.get(kind, trained.get(kind))
    if kind == "kohya-file":
        out = train(build_config(overrides=train_overrides(tiny_model, trained["concept"], tmp_path / "k", steps=2,
                                                           method="lora", export_format="kohya")), progress=False)
        adapter = out / "pytorch_lora_weights_kohya.safetensors"
    found = load_adapter(adapter)
    expected = {"diffusers-file": "diffusers LoRA file", "kohya-file": "kohya LoRA file",
                "embeds-file": "textual-inversion embeddings"}
    if kind in expected:
        assert found.recognised.startswith(expected[kind])
    for a in (str(adapter), "none"):
        assert main(["sample", "--model", str(tiny_model), "--adapter", a, "--prompt", "a sks circle",
                     "--num-images", "1", "--steps", "2", "--output", str(tmp_path / a.replace("/", "_"))]) == 0
    with_adapter = np.asarray(Image.open(tmp_path / str(adapter).replace("/", "_") / "00-seed0.png"), dtype=np.int16)
    base = np.asarray(Image.open(tmp_path / "none" / "00-seed0.png"), dtype=np.int16)
    assert np.abs(with_adapter - base).max() > 0


def test_evaluate_dreambooth_base_images_are_the_base_models(tiny_model, trained, tmp_path):
    from cat_adapter.testing.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip", image_size=16)
    common = ["--model", str(tiny_model), "--data", str(trained["concept"]), "--clip", str(clip), "--trigger", "sks",
              "--class-noun", "circle", "--images-per-prompt", "2", "--sample-steps", "2"]
    assert main(["evaluate", *common, "--adapter", str(trained["dreambooth"]), "--output", str(tmp_path / "db")]) == 0
    assert main(["evaluate", *common, "--adapter", "none", "--output", str(tmp_path / "none")]) == 0
    for f in sorted((tmp_path / "none" / "images" / "plain").glob("*.png")):
        base = np.asarray(Image.open(tmp_path / "db" / "images" / "base_plain" / ("b" + f.name[1:])), dtype=np.int16)
        adapted = np.asarray(Image.open(tmp_path / "db" / "images" / "plain" / f.name), dtype=np.int16)
        plain_none = np.asarray(Image.open(f), dtype=np.int16)
        assert np.array_equal(base, plain_none)          # the original U-Net, not "LoRA off"
        assert np.abs(adapted - plain_none).max() > 2     # the fine-tuned U-Net draws something else
    m = json.loads((tmp_path / "db" / "metrics.json").read_text())
    assert m["adapter_kinds"] == ["full"] and m["drift_plain"] > 0 and m["base_fidelity"] is not None


def test_evaluate_ti_generates_plain_images_once_and_marks_base_measures_na(tiny_model, trained, tmp_path):
    from cat_adapter.testing.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip", image_size=16)
    controls = tmp_path / "controls.txt"
    controls.write_text("a square\n")
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(trained["concept"]), "--clip", str(clip),
                 "--adapter", str(trained["ti"]), "--images-per-prompt", "2", "--sample-steps", "2",
                 "--control-prompts", str(controls), "--output", str(tmp_path / "ti")]) == 0
    m = json.loads((tmp_path / "ti" / "metrics.json").read_text())
    assert m["base_fidelity"] is None and m["leakage"] is None and "drift_plain" not in m
    assert set(m["not_applicable"]) == {"base_fidelity", "base_class_diversity", "leakage", "drift_plain"}
    assert not (tmp_path / "ti" / "images" / "base_plain").exists()
    assert m["identity_score"] is not None and m["trigger"] == "sks"  # read from adapter.json


def test_adapter_loader_errors(tiny_model, trained, tmp_path, capsys, caplog):
    from cat_adapter.adapters import load_adapter

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(CatAdapterError, match="nothing recognisable"):
        load_adapter(tmp_path / "empty")
    other = tmp_path / "other"
    shutil.copytree(trained["lora"], other)
    meta = json.loads((other / "adapter.json").read_text())
    (other / "adapter.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CatAdapterError, match="format version 99"):
        load_adapter(other)
    (other / "adapter.json").write_text(json.dumps({**meta, "family": "flux"}))
    args = ["sample", "--model", str(tiny_model), "--adapter", str(other), "--prompt", "x", "--num-images", "1",
            "--steps", "1", "--output", str(tmp_path / "s")]
    assert main(args) == 2 and "made for the flux family" in capsys.readouterr().err
    (other / "adapter.json").write_text(json.dumps({**meta, "base_model": {"model": "someone/else", "revision": "main"}}))
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert any("someone/else" in r.getMessage() and str(tiny_model) in r.getMessage() for r in caplog.records)


def test_an_embeddings_file_keeps_its_runs_token_mapping(sks_model, concept_dir, tmp_path):
    from cat_adapter.adapters import load_adapter

    out = train(build_config(overrides=train_overrides(sks_model, concept_dir, tmp_path / "ti", method="ti", lr=5e-2,
                                                       steps=2)), progress=False)
    found = load_adapter(out / "learned_embeds.safetensors")
    assert found.tokens == {"sks": "<sks>"} and found.concepts[0]["trigger"] == "sks"


def test_overwrite_keeps_the_default_class_image_cache(tiny_model, concept_dir, tmp_path):
    out = tmp_path / "db"
    kw = train_overrides(tiny_model, concept_dir, out, **DB)
    train(build_config(overrides=kw), progress=False)
    before = _stats(out / "class_images")
    train(build_config(overrides={**kw, "overwrite": True}), progress=False)
    assert _stats(out / "class_images") == before


def test_resume_refuses_a_changed_concept_folder(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "r", steps=4, checkpoint_every=2, cpu=True)
    train(build_config(overrides={**kw, "steps": 2}), progress=False)
    Image.new("RGB", (16, 16), (10, 200, 10)).save(concept_dir / "99.png")
    (concept_dir / "99.txt").write_text("a photo of sks circle")
    with pytest.raises(CatAdapterError, match="concept or class folder changed"):
        train(build_config(overrides={**kw, "resume": True}), progress=False)
