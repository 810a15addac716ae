"""--optimizer: each trains, its state is checkpointed and resumed exactly, defaults per optimizer, missing extras."""

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import KILLER, train_cli_error, train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.runners import train

LORA = "pytorch_lora_weights.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("name, marker", [("prodigy", "d_max"), ("adafactor", "exp_avg_sq_row")])
def test_resume_with_optimizer_equals_uninterrupted_run(tiny_model, concept_dir, tmp_path, name, marker):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=6, checkpoint_every=2, cpu=True,
                         optimizer=name, lr=1e-3 if name == "adafactor" else 1.0, method="cat")
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "5"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = tmp_path / "killed" / "checkpoints" / "step-000004"
    saved = json.dumps(json.loads((ckpt / "state.json").read_text())) + str(load_file(str(ckpt / "optimizer.safetensors")).keys())
    assert marker in saved                                   # the checkpoint holds this optimizer's own state
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    adamw = train(build_config(overrides={**kw, "output": str(tmp_path / "adamw"), "optimizer": "adamw", "lr": 1e-3}),
                  progress=False)
    wa, wb, wc = (load_file(str(p / LORA)) for p in (resumed, straight, adamw))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    assert max((wb[k] - wc[k]).abs().max().item() for k in wb) > 1e-6     # really another optimizer


def test_learning_rate_defaults_per_optimizer(tiny_model, concept_dir, tmp_path):
    base = train_overrides(tiny_model, concept_dir, tmp_path / "o")
    base.pop("lr")
    assert build_config(overrides={**base, "optimizer": "prodigy"}).optim.lr == 1.0
    assert build_config(overrides={**base, "optimizer": "prodigy", "lr": 0.5}).optim.lr == 0.5
    assert build_config(overrides={**base, "optimizer": "adafactor"}).optim.lr == build_config(overrides=base).optim.lr


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_missing_optimizer_extra_names_it(tiny_model, concept_dir, tmp_path, capsys):
    err = train_cli_error(capsys, tiny_model, concept_dir, tmp_path / "out", "--optimizer", "adamw8bit")
    assert "pip install 'cat-adapter[bitsandbytes]'" in err
