"""--report-to: TensorBoard event files with every loss term, lr, alpha, time and memory, and the validation grids."""

import importlib.util
import json

import pytest
from helpers import train_cli_error, train_overrides

from cat_adapter.config import build_config
from cat_adapter.runners import train


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_the_log_and_the_grids(tiny_model, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(
        tiny_model, concept_dir, tmp_path / "run", steps=4, cpu=True, method="cat", report_to="tensorboard",
        validation_prompt="a sks circle", validation_every=2, validation_images=1, validation_steps=2)),
        progress=False)
    acc = _events(out / "logs")
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "loss_identity", "loss_preservation", "lr", "cat_alpha", "seconds", "memory_mb"} <= tags
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    logged = [e.value for e in acc.Scalars("loss_preservation")]
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert logged == pytest.approx([x["loss_preservation"] for x in log], rel=1e-6)   # the same numbers as log.jsonl
    assert all(x["cat_alpha"] == 1.0 for x in log)
    assert [e.step for e in acc.Images("validation")] == [2, 4]     # the grid at step 2 and the final one


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_tracker_package_names_the_extra(tiny_model, concept_dir, tmp_path, capsys):
    err = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--report-to", "wandb")
    assert "pip install 'cat-adapter[wandb]'" in err
