"""The preservation monitor: class drift, trigger fit (and pool drift) on a fixed probe at every --validation-every
step, in validation.csv, log.jsonl and validation.png; deterministic, resumable, and invisible to training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import KILLER, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.runners import train
from cat_adapter.training.monitor import read_csv


def run(model, data, out, **kw):
    return train(build_config(overrides=train_overrides(model, data, out, cpu=True, **kw)), progress=False)


@pytest.mark.slow
def test_cat_keeps_class_drift_below_lora_whose_drift_grows(tiny_model, concept_dir, tmp_path):
    """Aggressive training (lr 5e-3, 40 steps): LoRA's class drift grows over the run; CAT's ends below it."""
    rows = {}
    for method in ("lora", "cat"):
        out = run(tiny_model, concept_dir, tmp_path / method, method=method, steps=40, lr=5e-3, validation_every=10)
        rows[method] = read_csv(out / "validation.csv")
        assert [r["step"] for r in rows[method]] == [0, 10, 20, 30, 40]
        assert rows[method][0]["class_drift"] == 0   # the adapter starts as the identity
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        measured = {x["step"]: x["class_drift"] for x in log if "class_drift" in x}
        assert measured == {r["step"]: pytest.approx(r["class_drift"], rel=1e-5) for r in rows[method][1:]}
        assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((out / "done.json").read_text())["monitor_seconds"] > 0
    lora, cat = rows["lora"], rows["cat"]
    assert lora[-1]["class_drift"] > lora[1]["class_drift"] > 0            # LoRA drifts further as it trains
    assert cat[-1]["class_drift"] < 0.5 * lora[-1]["class_drift"]          # CAT keeps the base
    assert lora[-1]["trigger_fit"] < lora[0]["trigger_fit"]                # and both learn the concept
    assert cat[-1]["trigger_fit"] < cat[0]["trigger_fit"]


def test_the_monitor_does_not_change_training(tiny_model, concept_dir, tmp_path):
    a = run(tiny_model, concept_dir, tmp_path / "on", method="cat", steps=4, validation_every=2)
    b = run(tiny_model, concept_dir, tmp_path / "off", method="cat", steps=4, validation_every=0)
    wa, wb = (load_file(str(o / "pytorch_lora_weights.safetensors")) for o in (a, b))
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert not (b / "validation.csv").exists()


def test_pool_drift_is_measured_with_a_pool(tiny_model, concept_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("a photo of a dog\na red car\n")
    out = run(tiny_model, concept_dir, tmp_path / "o", method="cat", steps=2, validation_every=2,
              preserve_pool=str(pool), preserve_pool_size=2)
    rows = read_csv(out / "validation.csv")
    assert list(rows[0]) == ["step", "class_drift", "pool_drift", "trigger_fit"]
    assert rows[0]["pool_drift"] == 0 and rows[-1]["pool_drift"] > 0


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_monitor_rows(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", method="cat", steps=6, checkpoint_every=2,
                         validation_every=2, cpu=True)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "4"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [r["step"] for r in read_csv(tmp_path / "killed" / "validation.csv")] == [0, 2]
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    assert (resumed / "validation.csv").read_text() == (straight / "validation.csv").read_text()
    assert [r["step"] for r in read_csv(resumed / "validation.csv")] == [0, 2, 4, 6]


@pytest.mark.slow
def test_pick_ranks_the_snapshots_and_sample_takes_the_choice(tiny_model, concept_dir, tmp_path, capsys):
    from cat_adapter.cli.main import main

    out = run(tiny_model, concept_dir, tmp_path / "run", method="lora", steps=6, lr=5e-3, save_every=2,
              validation_every=3)   # snapshots at 2 and 4 are measured too (not multiples of 3)
    assert main(["pick", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    record = json.loads((out / "pick.json").read_text())
    steps = [c["step"] for c in record["candidates"]]
    assert steps == [2, 4, 6] and record["candidates"][-1]["path"] == str(out)
    rows = {r["step"]: r for r in read_csv(out / "validation.csv")}
    drifts = [rows[s]["class_drift"] for s in steps]
    assert record["bound"] == pytest.approx((min(drifts) + max(drifts)) / 2)
    eligible = [c for c in record["candidates"] if c["class_drift"] <= record["bound"]]
    best = min(eligible, key=lambda c: c["trigger_fit"])
    assert record["chosen"] == {"step": best["step"], "path": best["path"]} and printed[-1] == best["path"]
    # an explicit bound above every drift picks the best fit overall
    assert main(["pick", str(out), "--max-class-drift", "1e9"]) == 0
    record = json.loads((out / "pick.json").read_text())
    assert record["chosen"]["step"] == min(record["candidates"], key=lambda c: c["trigger_fit"])["step"]
    capsys.readouterr()
    assert main(["sample", "--model", str(tiny_model), "--adapter", record["chosen"]["path"], "--prompt", "a sks circle",
                 "--steps", "2", "--resolution", "16", "--output", str(tmp_path / "s")]) == 0


@pytest.mark.parametrize("setup, needle", [
    ("no_monitor", "no validation.csv"), ("no_snapshots", "no snapshots"), ("bound", "no snapshot's class_drift"),
    ("missing", "no such folder")])
def test_pick_refuses_in_one_line_and_writes_nothing(tiny_model, concept_dir, tmp_path, capsys, setup, needle):
    from cat_adapter.cli.main import main

    out, extra = tmp_path / "run", []
    if setup == "no_monitor":
        run(tiny_model, concept_dir, out, method="lora", steps=2, save_every=1, validation_every=0)
    elif setup in ("no_snapshots", "bound"):
        run(tiny_model, concept_dir, out, method="lora", steps=2, lr=5e-3, save_every=1, validation_every=1)
        if setup == "no_snapshots":
            for p in (out / "adapter.json", out / "step-1" / "adapter.json"):
                p.unlink()
        else:
            extra = ["--max-class-drift", "-1"]
    assert main(["pick", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (out / "pick.json").exists()


@pytest.mark.slow
def test_image_metrics_on_the_validation_grids_with_clip(tiny_model, concept_dir, tmp_path):
    from cat_adapter.testing.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    out = run(tiny_model, concept_dir, tmp_path / "o", method="cat", steps=4, validation_every=2, clip=str(clip),
              validation_prompt="a photo of sks circle", validation_steps=2, validation_images=2)
    rows = read_csv(out / "validation.csv")
    assert list(rows[0]) == ["step", "class_drift", "trigger_fit", "identity", "base_fidelity"]
    assert rows[0]["identity"] is None                      # step 0 has no grid
    for r in rows[1:]:                                      # steps 2 and 4: a grid each
        assert -1 <= r["identity"] <= 1 and 0 < r["base_fidelity"] <= 1 + 1e-6
    assert [r["step"] for r in rows] == [0, 2, 4]
