"""The evaluation suite end to end on tiny models: evaluate, score, report, recomputation, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from eval_helpers import (IndependentClip, assert_one_line_error, read_pairs, recompute_scores, run_cli)
from helpers import train_overrides

from cat_adapter.evaluation.metrics import TEXT_REFERENCE_METRICS

TOL = 1e-5
EVAL_FLAGS = ["--images-per-prompt", "2", "--sample-steps", "2", "--seed", "0", "--batch-size", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """A concept, a tiny CLIP, prompt files and a LoRA trained for a few steps on the tiny model."""
    from cat_adapter.config import build_config
    from cat_adapter.testing.tiny_clip import build_tiny_clip
    from cat_adapter.testing.tiny import write_shape_concept
    from cat_adapter.runners import train

    root = tmp_path_factory.mktemp("eval")
    concept = write_shape_concept(root / "concept", n=3, size=16)
    clip = build_tiny_clip(root / "clip", dtype=torch.float16)  # fp16 files: the embedder must load float32
    (root / "heldout.txt").write_text("# held-out\na {trigger} circle in a box\n")
    (root / "control.txt").write_text("a square\na blue circle\n")
    lora = train(build_config(overrides=train_overrides(tiny_model, concept, root / "lora", lr=5e-3)), progress=False)
    return SimpleNamespace(root=root, model=tiny_model, concept=concept, clip=clip, lora=lora,
                           heldout=root / "heldout.txt", control=root / "control.txt")


def _evaluate(world, out: Path, lora, *extra) -> Path:
    from cat_adapter.cli.main import main

    rc = main(["evaluate", "--model", str(world.model), "--lora", str(lora), "--data", str(world.concept),
               "--clip", str(world.clip), "--output", str(out), *EVAL_FLAGS, *map(str, extra)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def eval_lora(world):
    return _evaluate(world, world.root / "eval_lora", world.lora, "--prompts", world.heldout,
                     "--control-prompts", world.control)


@pytest.fixture(scope="module")
def eval_base(world):
    return _evaluate(world, world.root / "eval_base", "none", "--trigger", "sks", "--class-noun", "circle")


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


def test_clip_loads_float32_from_fp16_files_and_batches(world):
    from cat_adapter.evaluation.clip import ClipEmbedder

    assert json.loads((world.clip / "config.json").read_text()).get("dtype") == "float16"
    images = [Image.open(p).convert("RGB") for p in sorted(world.concept.glob("*.png"))]
    images.append(images[0].resize((40, 24)))  # any size: the processor resizes and crops
    one = ClipEmbedder(str(world.clip), batch_size=1, device="cpu")
    many = ClipEmbedder(str(world.clip), batch_size=32, device="cpu")
    assert one.model.dtype == torch.float32
    e1, e2 = one.embed_images(images), many.embed_images(images)
    assert e1.shape == (len(images), 16)
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(e1, e2, atol=1e-5)
    t1, t2 = one.embed_texts(["a circle", "a much longer prompt here", ""]), many.embed_texts(
        ["a circle", "a much longer prompt here", ""])
    np.testing.assert_allclose(t1, t2, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def test_evaluate_writes_every_output(eval_lora, world):
    m = json.loads((eval_lora / "metrics.json").read_text())
    for key in ("prompt_score", "prompt_score_plain", "identity_score", "kps", "base_fidelity", "class_diversity",
                "base_class_diversity", "leakage"):
        assert isinstance(m[key], float), key
    for key in ("prompt_score", "identity_score", "kps", "base_fidelity", "leakage"):
        assert isinstance(m[key + "_mean"], float) and isinstance(m[key + "_median"], float)
    assert set(m["groups"]) == {"train", "heldout", "control"}
    assert m["groups"]["heldout"]["identity_score"] is None and m["groups"]["train"]["identity_score"] is not None
    assert m["groups"]["control"]["leakage"] == m["leakage"]
    # 2 unique captions + 1 held-out prompt, 2 seeds; 3 concept images x 2 seeds; 2 controls x 2 seeds
    assert m["counts"]["prompt_score"] == 6 and m["counts"]["kps"] == 6 and m["counts"]["base_fidelity"] == 6
    assert m["counts"]["identity_score"] == 6 and m["counts"]["leakage"] == 4
    assert m["counts"]["class_diversity"] == 3 and set(m["clamped"]) >= {"prompt_score", "kps"}
    assert m["clip"] == str(world.clip) and m["model"] == str(world.model) and m["adapter"] == str(world.lora)
    assert m["seeds"] == [0, 1] and m["package_version"] and m["label"] == "lora"
    assert m["trigger"] == "sks" and m["preserve_prompt"] == "remove"   # read from the adapter's config.yaml
    pairs = read_pairs(eval_lora)
    assert list(pairs[0])[:6] == ["metric", "prompt", "seed", "image", "reference", "cosine"]
    assert len(pairs) == m["pairs"]
    prompt_rows = [p for p in pairs if p["metric"] == "prompt_score"]
    assert all("sks" not in p["reference"] and "sks" in p["prompt"] for p in prompt_rows)  # text: trigger removed
    for p in pairs:
        assert (eval_lora / p["image"]).is_file()
        assert p["metric"] in ("prompt_score", "prompt_score_plain", "clip_t") or (eval_lora / p["reference"]).is_file()
    assert len(list((eval_lora / "images").rglob("*.png"))) == 6 + 6 + 6 + 4 + 4 + 3
    grid = Image.open(eval_lora / "grid.png")
    assert grid.width > 3 * 128  # base y | adapter y | adapter y_T
    with open(eval_lora / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert {r["group"] for r in manifest} == {"train", "heldout", "control"}


def test_pairs_csv_recomputes_metrics_json(eval_lora, world):
    """Every cosine again with transformers' CLIP and the folder's processor; every aggregate again from them."""
    clip = IndependentClip(world.clip)
    pairs = read_pairs(eval_lora)
    for p in pairs:
        a = clip.image(eval_lora / p["image"])
        b = clip.text(p["reference"]) if p["metric"] in TEXT_REFERENCE_METRICS else clip.image(eval_lora / p["reference"])
        assert abs(clip.cosine(a, b) - float(p["cosine"])) < TOL, p
    m = json.loads((eval_lora / "metrics.json").read_text())
    eps = m["hm_epsilon"]
    for where, scores in [("pooled", m)] + [(g, m["groups"][g]) for g in m["groups"]]:
        rows = pairs if where == "pooled" else [p for p in pairs if p["group"] == where]
        again = recompute_scores(rows, eps)
        for key, value in again.items():
            if value is None:
                assert scores[key] is None, (where, key)
            else:
                assert abs(value - scores[key]) < TOL, (where, key, value, scores[key])
        for metric in ("prompt_score", "kps", "identity_score"):
            assert scores["counts"][metric] == sum(1 for r in rows if r["metric"] == metric)
            assert scores["clamped"][metric] == sum(1 for r in rows if r["metric"] == metric
                                                    and float(r["cosine"]) <= eps)


def test_lora_none_differs_from_adapter_and_base_images_match(eval_lora, eval_base):
    """--lora none images differ from a trained adapter's; the adapter run's base images are the base model's."""
    m = json.loads((eval_base / "metrics.json").read_text())
    assert m["label"] == "base" and m["adapter"] is None and m["leakage"] is None
    assert abs(m["base_fidelity"] - 1.0) < 1e-9   # base vs itself
    diffs = [np.abs(_pixels(eval_lora / "images/trigger" / f.name) - _pixels(f)).max()
             for f in sorted((eval_base / "images/trigger").glob("*.png"))]
    assert max(diffs) > 0
    for f in sorted((eval_base / "images/plain").glob("*.png")):
        base_in_lora_run = eval_lora / "images/base_plain" / ("b" + f.name[1:])
        assert np.abs(_pixels(base_in_lora_run) - _pixels(f)).max() <= 1  # same seeds, adapter disabled


def test_pair_images_share_seed_and_batched_equals_single(world, tmp_path):
    """y and y_T of a row use one seed; an image depends on its prompt and seed only, not on its batch."""
    from cat_adapter.adapters import load_adapter
    from cat_adapter.evaluation.generate import EvalPrompt, Job, plan_evaluation, render_jobs
    from cat_adapter.models import ModelSpec, load_model

    plan = plan_evaluation([EvalPrompt("train", "a sks circle", "a circle", "a circle")],
                           [(world.concept / "00.png", "a sks circle")], ["a square"], [3, 4], out_dir=tmp_path,
                           has_adapter=True)
    seed_of = {tmp_path / j.path: j.seed for j in plan.jobs}
    for r in plan.rows:
        assert len({seed_of[p] for p in (r.image_trigger, r.image_plain, r.base_image) if p is not None}) == 1
        assert all(seed_of[p] == r.seed for p in (r.image_plain, r.base_image))
    model = load_model(ModelSpec(str(world.model)))
    adapter = load_adapter(world.lora).apply(model)
    jobs = [Job(f"{k}.png", p, s, a) for k, (p, s, a) in enumerate(
        [("a sks circle", 0, True), ("a circle", 1, True), ("a circle", 0, False), ("a square", 2, True),
         ("a circle", 0, True), ("a sks circle", 0, True)])]
    render_jobs(model, jobs, tmp_path / "b8", adapter=adapter, steps=2, guidance_scale=7.5, batch_size=8)
    render_jobs(model, jobs, tmp_path / "b1", adapter=adapter, steps=2, guidance_scale=7.5, batch_size=1)
    for j in jobs:  # tolerance: 1/255 per pixel (float reduction order may differ between batch sizes)
        assert np.abs(_pixels(tmp_path / "b8" / j.path) - _pixels(tmp_path / "b1" / j.path)).max() <= 1
    # the same prompt and seed at another batch position gives the same image
    assert np.abs(_pixels(tmp_path / "b8/0.png") - _pixels(tmp_path / "b8/5.png")).max() <= 1
    # the adapter is on for adapter jobs and off for base jobs (same prompt, same seed)
    assert np.abs(_pixels(tmp_path / "b8/2.png") - _pixels(tmp_path / "b8/4.png")).max() > 0


def test_evaluate_loads_fp16_model_files_in_float32(world, tmp_path, monkeypatch):
    """evaluate runs the U-Net, VAE, text encoder and CLIP in float32 whatever dtype the files hold."""
    import cat_adapter.models.sd as models
    from cat_adapter.evaluation import clip as clip_mod

    models.load_pipeline(str(world.model)).to(torch.float16).save_pretrained(tmp_path / "fp16", safe_serialization=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "fp16/unet/diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    seen = []
    real_load, real_embed = models.load_pipeline, clip_mod.ClipEmbedder.embed_images

    def spy_load(*a, **kw):
        pipe = real_load(*a, **kw)
        seen.extend([pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype])
        return pipe

    def spy_embed(self, images):
        seen.append(self.model.dtype)
        return real_embed(self, images)

    monkeypatch.setattr(models, "load_pipeline", spy_load)
    monkeypatch.setattr(clip_mod.ClipEmbedder, "embed_images", spy_embed)
    out = _evaluate(SimpleNamespace(**{**vars(world), "model": tmp_path / "fp16"}), tmp_path / "ev", world.lora,
                    "--images-per-prompt", "1", "--sample-steps", "1")
    assert (out / "metrics.json").is_file()
    assert len(seen) >= 4 and set(seen) == {torch.float32}


# ---------------------------------------------------------------------------------------------
# score: images made elsewhere
# ---------------------------------------------------------------------------------------------


def _images(world, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, p in enumerate(sorted(world.concept.glob("*.png"))):
        img = Image.open(p).convert("RGB")
        img = img.resize((40, 24)) if i == 0 else img  # any size
        img.save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def test_score_known_answers(world, tmp_path, capsys, caplog):
    a, b, c = _images(world, tmp_path / "m" / "imgs")
    rows = [  # reference = image_trigger: Identity 1; image_plain = image_trigger: KPS 0
        ["train", "a photo of sks circle", "a photo of circle", "0", f"imgs/{a}", f"imgs/{a}", f"imgs/{b}", f"imgs/{a}"],
        ["heldout", "a sks circle", "a circle", "1", f"imgs/{c}", f"imgs/{c}", "", ""],
        ["control", "", "a square", "0", "", f"imgs/{b}", f"imgs/{b}", ""],
    ]
    manifest = tmp_path / "m" / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "prompt_trigger", "prompt_plain", "seed", "image_trigger", "image_plain", "base_image",
                    "reference"])
        w.writerows(rows)
    rc, out, err = run_cli(["score", "--manifest", manifest, "--clip", world.clip, "--output", tmp_path / "s",
                            "--label", "other-tool", "--hm-epsilon", "0.999"], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert abs(m["identity_score"] - 1.0) < 1e-6
    assert abs(m["kps"]) < 1e-6 and abs(m["groups"]["heldout"]["kps"]) < 1e-6
    assert abs(m["leakage"]) < 1e-6                       # control: base image = adapted image
    # two different images: cos < 0.999 is clamped to epsilon, counted, warned about; the mean is the raw cosine
    assert m["counts"]["base_fidelity"] == 1 and m["clamped"]["base_fidelity"] == 1
    assert m["base_fidelity"] == pytest.approx(0.999) and m["base_fidelity_mean"] < 0.999
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("base_fidelity: 1 of 1 cosines were <= 0.999 and were clamped") for w in warned)
    assert m["class_diversity"] is None and any("class_diversity" in n for n in m["notes"])  # one seed per prompt
    assert m["label"] == "other-tool" and m["model"] is None
    pairs = read_pairs(tmp_path / "s")
    assert {p["image"] for p in pairs} >= {f"../m/imgs/{a}"}  # relative to the output folder
    assert (tmp_path / "s" / "grid.png").is_file() and (tmp_path / "s" / "pairs.csv").is_file()


@pytest.mark.slow
def test_score_jsonl_manifest_matches_evaluate_scores(eval_lora, world, tmp_path, capsys):
    """evaluate's manifest.csv re-scored as JSONL by `score` (in a subprocess) gives the same metrics."""
    with open(eval_lora / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shutil.copytree(eval_lora / "images", tmp_path / "images")
    lines = [json.dumps({k: (v if v != "" else None) for k, v in r.items()}) for r in rows]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cat_adapter.cli.main", "score", "--manifest",
                           str(tmp_path / "manifest.jsonl"), "--clip", str(world.clip), "--output",
                           str(tmp_path / "rescored")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    a = json.loads((eval_lora / "metrics.json").read_text())
    b = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    for key in ("prompt_score", "identity_score", "kps", "base_fidelity", "class_diversity", "leakage"):
        assert abs(a[key] - b[key]) < TOL, key
    assert a["counts"] == b["counts"]


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def test_report_table_and_pooled_interval(eval_lora, eval_base, tmp_path, capsys):
    from cat_adapter.evaluation.metrics import t_quantile_975

    runs = []
    for k, kps in enumerate((0.10, 0.14, 0.15)):  # three runs of one method (e.g. three concepts)
        d = tmp_path / f"cat-{k}"
        d.mkdir()
        m = json.loads((eval_lora / "metrics.json").read_text())
        m.update(label="cat", kps=kps)
        if k == 2:
            m["leakage"] = None  # a run that measured no leakage (no control prompts)
        (d / "metrics.json").write_text(json.dumps(m))
        runs.append(d)
    rc, out, err = run_cli(["report", eval_base, eval_lora, *runs, "--output", tmp_path / "R"], capsys)
    assert rc == 0, err
    with open(tmp_path / "R" / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["base", "lora", "cat"]
    cols = ["label", "prompt_score", "identity_score", "kps", "base_fidelity", "class_diversity",
            "base_class_diversity", "leakage", "kps_heldout", "base_fidelity_heldout"]
    assert list(table[0])[:len(cols)] == cols
    assert "kps_ci95" in table[0] and "leakage_ci95" in table[0]
    cat = table[2]
    xs = [0.10, 0.14, 0.15]
    sd = float(np.std(xs, ddof=1))
    assert abs(float(cat["kps"]) - np.mean(xs)) < 1e-12
    assert abs(float(cat["kps_ci95"]) - t_quantile_975(2) * sd / np.sqrt(3)) < 1e-12
    assert table[0]["kps_ci95"] == "" and table[0]["leakage"] == ""  # one run; base measured no leakage
    assert cat["leakage_n"] == "2" and table[1]["leakage_n"] == "1" and table[0]["leakage_n"] == "0"
    assert "kps_n" not in cat  # every run measured kps
    md = (tmp_path / "R" / "table.md").read_text()
    assert "| cat |" in md and "±" in md
    cat_line = next(line for line in md.splitlines() if line.startswith("| cat |"))
    assert cat_line.count("(n=2)") == 1 and "(n=" not in next(l for l in md.splitlines() if l.startswith("| lora |"))
    assert Image.open(tmp_path / "R" / "scores.png").format == "PNG"


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _bad_evaluate_cases(world, tmp: Path) -> list[tuple[list, str]]:
    (tmp / "empty").mkdir()
    (tmp / "notclip").mkdir()
    (tmp / "notclip" / "config.json").write_text('{"model_type": "bert"}')
    base = ["--model", world.model, "--data", world.concept, "--clip", world.clip, *EVAL_FLAGS]
    lora = ["--lora", world.lora]
    return [
        ([*base, *lora, "--data", tmp / "missing"], "no such folder"),
        ([*base, *lora, "--data", tmp / "empty"], "no images"),
        ([*base, *lora, "--images-per-prompt", "0"], "--images-per-prompt must be >= 1"),
        ([*base, *lora, "--clip", tmp / "notclip"], "not a CLIP model folder"),
        ([*base, *lora, "--clip", tmp / "empty"], "not a CLIP model folder"),
        ([*base, "--lora", tmp / "missing-lora"], "no such folder"),
        ([*base, "--lora", tmp / "empty"], "nothing recognisable here"),
        ([*base, "--lora", "none"], "--trigger is required"),
        ([*base, *lora, "--control-prompts", world.heldout], "must be trigger-free"),
    ]


def test_evaluate_bad_inputs(world, tmp_path, capsys):
    for argv, needle in _bad_evaluate_cases(world, tmp_path):
        out = tmp_path / "eval-out"
        rc, _, err = run_cli(["evaluate", *argv, "--output", out], capsys)
        assert_one_line_error(rc, err, needle)
        assert not out.exists() and not list(tmp_path.glob(".eval-out.*"))


def test_score_and_report_bad_inputs(world, eval_lora, tmp_path, capsys):
    (tmp_path / "ok.png").write_bytes((world.concept / "00.png").read_bytes())
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    head = "prompt_trigger,prompt_plain,seed,image_trigger,image_plain\n"
    (tmp_path / "missing.csv").write_text(head + "a sks circle,a circle,0,ok.png,gone.png\n")
    (tmp_path / "corrupt.csv").write_text(head + "a sks circle,a circle,0,ok.png,corrupt.png\n")
    (tmp_path / "seed.csv").write_text(head + "a sks circle,a circle,x,ok.png,ok.png\n")
    (tmp_path / "empty.csv").write_text(head)
    cases = [
        (["score", "--manifest", tmp_path / "missing.csv", "--clip", world.clip], "image_plain gone.png not found"),
        (["score", "--manifest", tmp_path / "corrupt.csv", "--clip", world.clip], "cannot read image"),  # mid-run
        (["score", "--manifest", tmp_path / "seed.csv", "--clip", world.clip], "not an integer"),
        (["score", "--manifest", tmp_path / "empty.csv", "--clip", world.clip], "no rows"),
        (["score", "--manifest", tmp_path / "nope.csv", "--clip", world.clip], "file not found"),
        (["score", "--manifest", eval_lora / "manifest.csv", "--clip", tmp_path], "not a CLIP model folder"),
        (["score", "--manifest", eval_lora / "manifest.csv", "--clip", "nobody/no-such-clip"], "cannot read its config"),
        (["report", tmp_path / "ok.png", eval_lora], "no such evaluation folder"),
        (["report", tmp_path], "no metrics.json"),
    ]
    for argv, needle in cases:
        out = tmp_path / "out"
        rc, _, err = run_cli([*argv, "--output", out], capsys)
        assert_one_line_error(rc, err, needle)
        assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_existing_output_needs_overwrite(world, eval_lora, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run_cli(["report", eval_lora, "--output", out], capsys)
    assert_one_line_error(rc, err, "--overwrite")
    rc, _, err = run_cli(["report", eval_lora, "--output", out, "--overwrite"], capsys)
    assert_one_line_error(rc, err, "not a report folder")
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a report: an evaluation folder given as a report's output survives.
    other = tmp_path / "eval_copy"
    shutil.copytree(eval_lora, other)
    rc, _, err = run_cli(["report", eval_lora, "--output", other, "--overwrite"], capsys)
    assert_one_line_error(rc, err, "not a report folder")
    assert (other / "metrics.json").is_file() and (other / "pairs.csv").is_file()


# ---------------------------------------------------------------------------------------------
# DreamBench's metrics: dino_identity, clip_i, clip_t
# ---------------------------------------------------------------------------------------------


def test_dreambench_metrics_known_answers_and_recomputable(world, tmp_path, capsys):
    from cat_adapter.testing.tiny import build_tiny_vit

    dino = build_tiny_vit(tmp_path / "dino")
    a, b, c = _images(world, tmp_path / "m" / "imgs")
    header = ["group", "prompt_trigger", "prompt_plain", "seed", "image_trigger", "image_plain", "reference"]
    for name, ref in (("same", a), ("other", b)):   # reference = the trigger image, then another image
        manifest = tmp_path / "m" / f"{name}.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerow(["train", "a photo of sks circle", "a photo of circle", "0", f"imgs/{a}", f"imgs/{c}",
                        f"imgs/{ref}"])
        rc, out, err = run_cli(["score", "--manifest", manifest, "--clip", world.clip, "--dino", dino, "--output",
                                tmp_path / name], capsys)
        assert rc == 0, err
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())
    other = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert same["dino_identity"] == pytest.approx(1.0, abs=1e-5) and same["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert other["dino_identity"] < 0.999 and other["clip_i"] < 0.999
    assert same["dino"] == str(dino) and -1 <= same["clip_t"] <= 1
    for folder, m in ((tmp_path / "same", same), (tmp_path / "other", other)):   # every aggregate from pairs.csv
        pairs = read_pairs(folder)
        for metric in ("dino_identity", "clip_i", "clip_t"):
            values = [float(p["cosine"]) for p in pairs if p["metric"] == metric]
            assert len(values) == 1 and m[metric] == pytest.approx(sum(values) / len(values), abs=1e-12)
        # clip_i and clip_t are the identity and prompt pairs' CLIP cosines, aggregated by a plain mean
        by = {p["metric"]: float(p["cosine"]) for p in pairs}
        assert by["clip_i"] == by["identity_score"] and by["clip_t"] == by["prompt_score"]


def test_dino_must_be_a_vit(world, tmp_path, capsys):
    a, _, _ = _images(world, tmp_path / "m" / "imgs")
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.write_text("group,prompt_trigger,prompt_plain,seed,image_trigger,image_plain,reference\n"
                        f"train,a sks circle,a circle,0,imgs/{a},imgs/{a},imgs/{a}\n")
    rc, out, err = run_cli(["score", "--manifest", manifest, "--clip", world.clip, "--dino", world.clip, "--output",
                            tmp_path / "s"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "a clip model, not a ViT" in err
    assert not (tmp_path / "s").exists()


def test_evaluate_reports_dreambench_metrics_with_dino(world, tmp_path, capsys):
    from cat_adapter.evaluation.report import table_columns
    from cat_adapter.testing.tiny import build_tiny_vit

    out = _evaluate(world, tmp_path / "e", world.lora, "--dino", build_tiny_vit(tmp_path / "dino"))
    m = json.loads((out / "metrics.json").read_text())
    assert 0 < m["dino_identity"] <= 1 and m["counts"]["dino_identity"] == m["counts"]["identity_score"]
    assert m["clip_i"] == pytest.approx(m["identity_score_mean"], abs=1e-9)
    assert {"dino_identity", "clip_i", "clip_t"} <= set(table_columns([m]))
