"""The command line: bad input gives one line naming the problem and leaves no weights; sample and demo run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cat_adapter.cli.main import main

WEIGHTS = "pytorch_lora_weights.safetensors"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def train_args(model, data, out, *extra):
    args = ["train", "--model", model, "--data", data, "--class-noun", "circle", "--output", out, "--steps", "2",
            "--resolution", "16", "--no-progress", *extra]
    return [str(a) for a in args]


def bad_cases(tmp_path, tiny_model, concept_dir):
    """(name, args, text the message must contain)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("a sks circle")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in Path(concept_dir).iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for f in Path(concept_dir).iterdir():
        (tiny / f.name).write_bytes(f.read_bytes())
    Image.new("RGB", (4, 30)).save(tiny / "small.png")
    not_pipe = tmp_path / "notpipe"
    not_pipe.mkdir()
    (not_pipe / "config.json").write_text("{}")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.yaml").write_text("{}")
    m, d, o = tiny_model, concept_dir, tmp_path / "out"
    return [
        ("empty folder", train_args(m, empty, o), "no images"),
        ("non-images", train_args(m, texts, o), "no images"),
        ("corrupt image", train_args(m, corrupt, o), "zz.png"),
        ("tiny image", train_args(m, tiny, o), "small.png"),
        ("missing model", train_args(tmp_path / "nope", d, o), "nope"),
        ("not a pipeline", train_args(not_pipe, d, o), "model_index.json"),
        ("negative alpha", train_args(m, d, o, "--cat-alpha", "-1"), "--cat-alpha"),
        ("zero steps", train_args(m, d, o, "--steps", "0"), "--steps"),
        ("output is a file", train_args(m, d, a_file), "is a file"),
        ("existing output", train_args(m, d, existing), "--overwrite"),
        ("pickled model file", train_args(tmp_path / "model.ckpt", d, o), "model.ckpt"),
        ("bad config key", train_args(m, d, o, "--config", tmp_path / "c.yaml"), "cat_alhpa"),
    ]


def test_bad_input_is_one_line_and_writes_no_weights(tmp_path, tiny_model, concept_dir, capsys):
    (tmp_path / "c.yaml").write_text("cat_alhpa: 1.0\n")
    (tmp_path / "model.ckpt").write_bytes(b"not a checkpoint")
    for name, args, needle in bad_cases(tmp_path, tiny_model, concept_dir):
        code, err = run_cli(args, capsys)
        assert code == 2, name
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert needle in err, (name, err)
        assert not list(tmp_path.rglob(WEIGHTS)), name
        assert not (tmp_path / "out").exists(), name


@pytest.mark.slow
def test_cli_runs_in_a_fresh_process(tmp_path, tiny_model, concept_dir):
    """The console script as a user runs it: train, then sample with the adapter and a LoRA scale."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = [sys.executable, "-m", "cat_adapter.cli.main"]
    out = tmp_path / "run"
    r = subprocess.run(exe + train_args(tiny_model, concept_dir, out, "--method", "cat", "--cat-mode", "fast"),
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / WEIGHTS).is_file()
    r = subprocess.run(exe + ["sample", "--model", str(tiny_model), "--lora", str(out), "--lora-scale", "0.5", "--prompt",
                              "a sks circle", "--prompt", "a circle", "--num-images", "2", "--steps", "2",
                              "--output", str(tmp_path / "samples")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert pngs == ["00-seed0.png", "00-seed1.png", "01-seed0.png", "01-seed1.png", "grid.png"]
    r = subprocess.run(exe + train_args(tiny_model, concept_dir, out), capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sample_lora_scale_changes_images(tmp_path, tiny_model, concept_dir, capsys):
    import numpy as np

    assert main(train_args(tiny_model, concept_dir, tmp_path / "a", "--lr", "0.01", "--steps", "3")) == 0
    arrays = {}
    for scale in ("0", "1"):
        folder = tmp_path / f"s{scale}"
        assert main(["sample", "--model", str(tiny_model), "--lora", str(tmp_path / "a"), "--lora-scale", scale,
                     "--prompt", "a sks circle", "--num-images", "1", "--steps", "3", "--output", str(folder)]) == 0
        arrays[scale] = np.asarray(Image.open(folder / "00-seed0.png"), dtype=np.int16)
    base = tmp_path / "base"
    assert main(["sample", "--model", str(tiny_model), "--prompt", "a sks circle", "--num-images", "1", "--steps", "3",
                 "--output", str(base)]) == 0
    base_arr = np.asarray(Image.open(base / "00-seed0.png"), dtype=np.int16)
    assert np.abs(arrays["0"] - base_arr).max() <= 1       # scale 0 is the base model
    assert np.abs(arrays["1"] - base_arr).max() > 1        # scale 1 is not


@pytest.mark.parametrize("args, needle", [
    (["sample", "--model", "MISSING", "--prompt", "x", "--output", "o", "--num-images", "0"], "--num-images"),
    (["sample", "--model", "./missing-folder", "--prompt", "x", "--output", "o"], "missing-folder"),
    (["sample", "--model", "m", "--prompt", "x", "--output", "o", "--lora", "l", "--lora-scale", "nan"], "--lora-scale"),
    (["sample", "--model", "m", "--prompt", "x", "--output", "full"], "--overwrite"),
])
def test_sample_bad_input(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "00-seed0.png").write_bytes(b"old")
    code, err = run_cli(args, capsys)
    assert code == 2 and needle in err and len(err.splitlines()) == 1




def test_sample_writes_its_parameters_into_each_png_and_samples_json(tiny_model, tmp_path):
    import json

    from PIL import Image

    from cat_adapter.cli.main import main

    out = tmp_path / "s"
    assert main(["sample", "--model", str(tiny_model), "--prompt", "a circle", "--prompt", "a square", "--num-images",
                 "2", "--seed", "5", "--steps", "2", "--guidance-scale", "3", "--negative-prompt", "blurry",
                 "--output", str(out)]) == 0
    records = json.loads((out / "samples.json").read_text())
    assert [(r["image"], r["prompt"], r["seed"]) for r in records] == [
        ("00-seed5.png", "a circle", 5), ("00-seed6.png", "a circle", 6), ("01-seed5.png", "a square", 5),
        ("01-seed6.png", "a square", 6)]
    text = Image.open(out / "01-seed6.png").text["parameters"]
    assert text.splitlines()[:2] == ["a square", "Negative prompt: blurry"]
    assert "Steps: 2, CFG scale: 3.0, Seed: 6, Size: 16x16" in text and "Adapter: none" in text


def test_an_unreadable_single_file_gets_the_hint_that_fits(tiny_model, tmp_path, capsys):
    from cat_adapter.cli.main import main

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(bytes(range(256)) * 20)
    for extra, hint in (([], "pass --single-file-config"),
                        (["--single-file-config", str(tiny_model)], "of the architecture of --single-file-config")):
        assert main(["sample", "--model", str(bad), "--prompt", "x", "--output", str(tmp_path / "s"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot load single-file checkpoint" in err[0] and hint in err[0]
        assert not (tmp_path / "s").exists()


def test_a_hub_id_that_cannot_be_loaded_is_one_whole_line(tmp_path, capsys):
    """Offline here (conftest sets HF_HUB_OFFLINE): one line, the library's reason whole (not cut with '...'), and
    huggingface_hub's own log lines are not passed on to a second handler (each would print twice)."""
    import logging

    from cat_adapter.cli.main import main

    assert main(["sample", "--model", "someorg/does-not-exist", "--prompt", "x", "--output", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load from the hub (" in err[0] and "...)" not in err[0]
    assert err[0].endswith("check the id, the network and HF_TOKEN, or pass a local diffusers folder")
    assert logging.getLogger("huggingface_hub").propagate is False
