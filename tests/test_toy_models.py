"""The shipped shapes-world models: plain loading, hashes, tokenizer, a re-run build prefix, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cat_adapter.toy.assets import ASSETS, build_record

def test_shipped_folders_load_with_plain_libraries_in_float32():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    pipe = StableDiffusionPipeline.from_pretrained(str(ASSETS / "pipeline"))
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.float32}
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    clip = CLIPModel.from_pretrained(str(ASSETS / "clip"))
    assert {p.dtype for p in clip.parameters()} == {torch.float32}
    processor = CLIPProcessor.from_pretrained(str(ASSETS / "clip"))
    assert processor.image_processor.crop_size["height"] == 32
    # One tokenizer for the pipeline and the CLIP; the pipeline's text encoder has the CLIP text tower's shape
    # (it is the stage-2 tower; the shipped CLIP is the judge, trained further).
    text = "a red striped star with a black outline"
    assert pipe.tokenizer(text).input_ids == processor.tokenizer(text).input_ids
    assert pipe.text_encoder.config.hidden_size == clip.config.text_config.hidden_size
    out = pipe(text, num_inference_steps=2, guidance_scale=7.5, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


def test_shipped_weights_are_what_the_build_recorded():
    from cat_adapter.toy.build import weight_hashes

    rec = build_record()
    shipped = {**{f"pipeline/{k}": v for k, v in weight_hashes(ASSETS / "pipeline").items()},
               **{f"clip/{k}": v for k, v in weight_hashes(ASSETS / "clip").items()}}
    assert shipped == rec["weights"] and len(shipped) == 4
    sizes = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert sizes <= 30 * 2 ** 20
    # The VAE's scaling factor is the one the build measured, not SD's 0.18215.
    vae_cfg = json.loads((ASSETS / "pipeline" / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(rec["stages"]["vae"]["scaling_factor"])


def test_tokenizer_splits_any_trigger_into_known_pieces():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(ASSETS / "pipeline" / "tokenizer"))
    assert tok.model_max_length == 32
    seen = {}
    for trigger in ("sks", "qzxv", "zwj", "ohwx", "k9x", "ñøß", "teapot", "日本", "a1b2"):
        ids = tok(f"a {trigger} circle").input_ids
        inner = ids[1:-1]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in inner, trigger      # unk is <|endoftext|>: never inside a prompt
        # Nothing is lost (CLIP's pre-tokenizer splits digits apart, so compare without spaces).
        assert tok.decode(inner).replace(" ", "") == f"a{trigger}circle"
        key = tuple(tok(trigger).input_ids)
        assert key not in seen, (trigger, seen.get(key))
        seen[key] = trigger
    # World words are single tokens; an unseen trigger is several.
    assert len(tok.tokenize("circle")) == 1 and len(tok.tokenize("qzxv")) > 1


def test_tokenizer_stage_reproduces_the_shipped_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from cat_adapter.toy.build import train_tokenizer

    train_tokenizer(tmp_path / "tok", build_record()["recipe"])
    mine = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    shipped = CLIPTokenizer.from_pretrained(str(ASSETS / "pipeline" / "tokenizer"))
    assert mine.get_vocab() == shipped.get_vocab()
    text = "an orange dotted heart with a black outline on a dark background"
    assert mine(text).input_ids == shipped(text).input_ids


def test_build_redo_reruns_a_changed_stage_and_its_dependants(tmp_path):
    from cat_adapter.errors import CatAdapterError
    from cat_adapter.toy.build import RECIPE, build

    recipe = json.loads(json.dumps(RECIPE))
    recipe["tokenizer"]["captions"] = 2000
    out = tmp_path / "b"
    build(out, recipe=recipe, stages=("tokenizer",), log=lambda m: None)
    state = out / "state"
    first = json.loads((state / "done-tokenizer.json").read_text())
    (state / "clip-train").mkdir()          # a started stage that reads the tokenizer
    (state / "vae-train").mkdir()           # one that does not
    recipe["tokenizer"]["vocab_size"] = 300
    with pytest.raises(CatAdapterError, match="--redo"):
        build(out, recipe=recipe, resume=True, stages=("tokenizer",), log=lambda m: None)
    build(out, recipe=recipe, resume=True, stages=("tokenizer",), redo=("tokenizer",), log=lambda m: None)
    again = json.loads((state / "done-tokenizer.json").read_text())
    assert again["merges"] < first["merges"]  # fewer merges fit
    assert not (state / "clip-train").exists() and (state / "vae-train").exists()
    assert json.loads((state / "invocations.jsonl").read_text().splitlines()[-1])["redo"] == ["tokenizer", "clip",
                                                                                              "judge", "unet"]
    with pytest.raises(CatAdapterError, match="--resume"):
        build(tmp_path / "new", recipe=recipe, redo=("tokenizer",), log=lambda m: None)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["clip", "vae", "unet"])
def test_build_prefix_gives_the_recorded_losses(tmp_path, stage):
    """Re-run the first steps of a stage from scratch (earlier stages taken from the shipped models).

    The judge stage is not re-run here: it continues the stage-2 CLIP, of which only the text tower ships."""
    from cat_adapter.toy.build import build

    rec = build_record()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "tokenizer").symlink_to(ASSETS / "pipeline" / "tokenizer")
    (inputs / "text_encoder").symlink_to(ASSETS / "pipeline" / "text_encoder")  # the U-Net's (stage-2) text tower
    (inputs / "vae").symlink_to(ASSETS / "pipeline" / "vae")
    got = build(tmp_path / "out", recipe=rec["recipe"], stop_after=3, stages=(stage,), inputs=inputs, log=lambda m: None)
    want = rec["stages"][stage]["first_losses"][:3]
    assert got[stage] == pytest.approx(want, rel=2e-4, abs=1e-5)


@pytest.mark.slow
def test_toy_info_prints_the_documented_keys():
    out = subprocess.run([sys.executable, "-m", "cat_adapter.cli.main", "toy", "info"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    for key in ("pipeline", "clip", "shapes", "palette", "backgrounds", "resolution", "steps", "guidance_scale"):
        assert info[key] is not None, key
    assert info["palette"]["orange"] == [250, 140, 0] and "heart" in info["shapes"]


@pytest.mark.slow
def test_demo_smoke_run_writes_the_table(tmp_path):
    import csv

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cat_adapter.cli.main", "demo", "--output", str(out), "--steps", "2",
                           "--images-per-prompt", "1", "--sample-steps", "2", "--cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out / "compare" / "report"  # the demo is a plan run by cat-adapter compare
    rows = list(csv.DictReader(open(report / "table1.csv")))
    assert [r["variant"] for r in rows] == ["base", "lora", "cat", "cat_pool"]
    for col in ("prompt_score", "identity_score", "kps", "leakage", "concept_rate_trigger", "concept_rate_class",
                "concept_rate_control"):
        assert all(r[col] != "" for r in rows), col
    for name in ("table1.md", "paired.md", "profile.csv", "grid_trigger.png", "grid_class.png"):
        assert (report / name).is_file()
    import yaml

    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert [v["name"] for v in plan["variants"]] == ["lora", "cat", "cat_pool"]
    assert {plan["shared"][k] for k in ("steps",)} == {2}
    meta = json.loads((out / "demo.json").read_text())
    assert not set(meta["pool_prompts"]) & set(meta["control_prompts"])
    assert "| cat_pool |" in proc.stdout
    # A second run replaces the demo folder (the main job can be re-run); a foreign folder is refused with one line.
    again = subprocess.run(proc.args[:-1] + ["--seeds", "3", "--cpu"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (out / "compare" / "jobs").iterdir()) == [
        "sks_circle__base", "sks_circle__cat__seed3", "sks_circle__cat_pool__seed3", "sks_circle__lora__seed3"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep")
    bad = subprocess.run([sys.executable, "-m", "cat_adapter.cli.main", "demo", "--output", str(foreign)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and (foreign / "x.txt").exists()


def test_the_shipped_clip_reads_the_world_zero_shot():
    """The judge (toy/judge.py) with the shipped toy CLIP reads fresh procedural images' attributes far above
    chance (1/5 shapes, 1/8 colours, 1/3 patterns, 1/9 outlines): the CLIP the toy evaluation scores with sees
    the world."""
    from cat_adapter.plugins import resolve_alias
    from cat_adapter.toy.judge import clip_zero_shot

    acc = clip_zero_shot(resolve_alias("toy", "clip", "--clip"), n=40, seed=1)
    assert acc["shape"] >= 0.9 and acc["fill"] >= 0.8 and acc["pattern"] >= 0.7 and acc["outline"] >= 0.7, acc
