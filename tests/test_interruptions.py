"""Interruptions speak: Ctrl-C and SIGTERM end with one line naming the last complete checkpoint and the exact
resume command (or that there is none); --resume refuses a folder without a run, says a finished run is finished,
and refuses more steps without a checkpoint; a checkpoint folder is an adapter sample and evaluate take."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import train_overrides

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.runners import train


def start(tiny_model, concept_dir, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "cat_adapter.cli.main", "train", "--model", str(tiny_model),
                             "--data", str(concept_dir), "--class-noun", "circle", "--resolution", "16", "--cpu",
                             "--no-progress", "--output", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell starts background jobs with SIGINT ignored, and children inherit that: give the
                            # run the default disposition, as a terminal's foreground process has (Ctrl-C reaches it)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, words", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                              (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_a_signal_names_the_checkpoint_and_the_command_that_resumes(tiny_model, concept_dir, tmp_path, sig, code,
                                                                    words):
    out = tmp_path / "out"
    proc = start(tiny_model, concept_dir, out, "--steps", "400", "--checkpoint-every", "2")
    wait_for(out / "checkpoints" / "step-000002" / "state.json", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    last = proc.stderr.read().strip().splitlines()[-1]
    assert last.startswith(f"cat-adapter train: {words}; last complete checkpoint: ") and "resume with: " in last
    command = shlex.split(last.split("resume with: ")[1])
    assert command[:3] == ["cat-adapter", "train", "--config"] and command[-1] == "--resume"
    assert main([*command[1:], "--steps", str(json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
                                               + 2), "--no-progress"]) == 0
    assert (out / "done.json").is_file()


@pytest.mark.slow
def test_a_signal_before_any_checkpoint_says_there_is_none(tiny_model, concept_dir, tmp_path):
    out = tmp_path / "out"
    proc = start(tiny_model, concept_dir, out, "--steps", "400")
    wait_for(out / "log.jsonl", proc)
    while not (out / "log.jsonl").read_text().strip():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    last = proc.stderr.read().strip().splitlines()[-1]
    assert "no checkpoint was written" in last and "--overwrite" in last


def test_resume_refuses_a_folder_without_a_run(tiny_model, concept_dir, tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        with pytest.raises(CatAdapterError, match="there is no run to continue"):
            train(build_config(overrides=train_overrides(tiny_model, concept_dir, folder, resume=True, cpu=True)),
                  progress=False)
    assert not (tmp_path / "missing").exists()


def test_resume_of_a_finished_run(tiny_model, concept_dir, tmp_path, capsys):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "out", steps=2, cpu=True)
    out = train(build_config(overrides=kw), progress=False)
    log = (out / "log.jsonl").read_text()
    assert train(build_config(overrides={**kw, "resume": True}), progress=False) == out   # same steps: finished
    assert "the run is finished (2 steps); nothing to resume" in capsys.readouterr().out
    assert (out / "log.jsonl").read_text() == log                                       # nothing retrained
    with pytest.raises(CatAdapterError, match="without a checkpoint to continue from"):
        train(build_config(overrides={**kw, "resume": True, "steps": 4}), progress=False)
    assert (out / "log.jsonl").read_text() == log


def test_a_checkpoint_folder_is_an_adapter(tiny_model, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "out", steps=4,
                                                       checkpoint_every=2, cpu=True, lr=5e-2)), progress=False)
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "adapter.json").is_file() and (ckpt / "pytorch_lora_weights.safetensors").is_file()
    assert main(["sample", "--model", str(tiny_model), "--adapter", str(ckpt), "--prompt", "a photo of sks circle",
                 "--num-images", "1", "--steps", "2", "--cpu", "--output", str(tmp_path / "s")]) == 0
    from cat_adapter.adapters import load_adapter, saved_run_config

    assert load_adapter(ckpt).concepts[0]["trigger"] == "sks"
    assert saved_run_config(ckpt)["run"]["checkpoint_every"] == 2
