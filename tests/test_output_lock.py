"""An output folder belongs to one run for its whole life: a second process on it exits 2 with one line naming the
holder, a lock whose process is gone is taken over, and the folder holds one run's files only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cat_adapter.errors import CatAdapterError
from cat_adapter.io import lock_path, output_lock


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "cat-adapter train"):
        with pytest.raises(CatAdapterError, match=rf"--output {out}: in use by another run \(cat-adapter train, pid "
                                                  rf"{os.getpid()} on .*, since \d{{4}}-"):
            with output_lock(out, "cat-adapter sample"):
                pass
    with output_lock(out, "cat-adapter sample"):   # released at the end of the first
        assert json.loads(lock_path(out).read_text())["command"] == "cat-adapter sample"
    assert not lock_path(out).exists()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    import socket

    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0,
                                          "command": "cat-adapter train"}))
    with caplog.at_level("WARNING"), output_lock(out, "cat-adapter train"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert "took over the lock" in caplog.text


@pytest.mark.slow
def test_two_runs_started_together_on_one_folder_one_proceeds(tiny_model, concept_dir, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "cat_adapter.cli.main", "train", "--model", str(tiny_model),
                               "--data", str(concept_dir), "--class-noun", "circle", "--resolution", "16",
                               "--steps", "30", "--seed", str(seed), "--cpu", "--no-progress", "--output", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(seed for seed, (code, _) in zip((1, 2), results) if code == 0)
    loser_err = next(err for code, err in results if code == 2).strip().splitlines()
    assert "in use by another run (cat-adapter train, pid" in loser_err[-1]
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["seed"] == winner
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    assert steps == list(range(1, 31))   # one run's log, not two interleaved
    assert not lock_path(out).exists()
