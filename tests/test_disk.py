"""Failures found before the expensive part: a read-only output, class-data or cache folder is one line before any
model loads; too little free space for what the run will write is one line before training; a disk that fills up
mid-run is one line naming the step whose weights were lost and the checkpoint kept, never a traceback. Mounts are
real tmpfs mounts (root); elsewhere these tests skip."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from helpers import train_overrides

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.runners import train


@pytest.fixture
def mount(tmp_path):
    made = []

    def make(options: str):
        where = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        made.append(where)
        return where

    yield make
    for where in made:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_a_read_only_output_is_refused_before_any_model_loads(mount, tiny_model, concept_dir, capsys):
    ro = mount("ro,size=1m")
    for argv in (["train", "--model", "/nonexistent/model", "--data", str(concept_dir), "--class-noun", "circle"],
                 ["sample", "--model", "/nonexistent/model", "--prompt", "a circle"],
                 ["evaluate", "--model", "/nonexistent/model", "--adapter", "none", "--data", str(concept_dir),
                  "--trigger", "sks"]):
        assert main([*argv, "--output", str(ro / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        # the model path is wrong too: the output is checked first, before anything is loaded
        assert len(err) == 1 and f"--output {ro / 'out'}: cannot write in {ro} (Read-only file system)" in err[0]


def test_a_read_only_cache_dir_is_refused_before_any_model_loads(mount, tiny_model, concept_dir, tmp_path):
    ro = mount("ro,size=1m")
    with pytest.raises(CatAdapterError, match=f"--cache-dir {ro}/cache: cannot write"):
        train(build_config(overrides=train_overrides("/nonexistent/model", concept_dir, tmp_path / "out",
                                                     cache_dir=str(ro / "cache"))), progress=False)


def test_too_little_space_is_refused_before_training(mount, tiny_model, concept_dir):
    small = mount("size=64k")
    with pytest.raises(CatAdapterError, match=r"this run writes about .* MB \(weights, snapshots and checkpoints\) and "
                                              r"its disk has .* MB free"):
        train(build_config(overrides=train_overrides(tiny_model, concept_dir, small / "out", steps=40,
                                                     checkpoint_every=1, cpu=True)), progress=False)
    assert not (small / "out").exists()   # nothing written: the folder the run had made is gone again


def test_a_disk_that_fills_up_mid_run_is_one_line_and_keeps_the_checkpoint(mount, tiny_model, concept_dir,
                                                                           monkeypatch):
    from cat_adapter.training import loop

    disk = mount("size=4m")
    real_checkpoint = loop.checkpoint

    def checkpoint(s, done):   # after the first checkpoint, something else fills the disk
        real_checkpoint(s, done)
        if done == 2:
            (disk / "filler").write_bytes(b"\0" * (3 * 2**20))
            free = __import__("shutil").disk_usage(disk).free
            (disk / "filler2").write_bytes(b"\0" * max(0, free - 4096))

    monkeypatch.setattr(loop, "checkpoint", checkpoint)
    with pytest.raises(CatAdapterError) as caught:
        train(build_config(overrides=train_overrides(tiny_model, concept_dir, disk / "out", steps=6,
                                                     checkpoint_every=2, cpu=True)), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message
    assert "could not be written there; last complete checkpoint: " in message and "step 2" in message
    assert (disk / "out" / "checkpoints" / "step-000002" / "state.json").is_file()
    assert not list((disk / "out").rglob("*.tmp"))   # no half-written artefact
