"""Regression tests for the bugs of 9fbf7e2 (issue 9, point 7; ../shared/REVIEW.md section 3). The 2-process
ones (7.2 stream per rank on resume, 7.3 NaN on one rank, 7.4 main-only set-up, 7.5 the global stream) are in
test_distributed.py, 7.7 (toggles never unfreeze, frozen pass without dropout) in test_methods.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import train_overrides
from safetensors.torch import load_file

from cat_adapter.cli.main import main
from cat_adapter.config import build_config
from cat_adapter.errors import CatAdapterError
from cat_adapter.runners import train


def test_resume_with_more_steps_under_a_steps_dependent_schedule_is_refused(tiny_model, concept_dir, tmp_path):
    """7.1: cosine, 4 then 8 steps ran one step at lr 0. Now a one-line error naming both options."""
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "c", steps=4, checkpoint_every=2, lr_scheduler="cosine",
                         cpu=True)
    train(build_config(overrides=kw), progress=False)
    with pytest.raises(CatAdapterError, match=r"--steps 8 .*--lr-scheduler cosine depends on --steps") as e:
        train(build_config(overrides={**kw, "steps": 8, "resume": True}), progress=False)
    assert "\n" not in str(e.value)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert lrs[-1] > 0 and len(lrs) == 4  # the finished run is untouched


def test_checkpoint_holds_the_grad_scaler_state(tmp_path):
    """7.2: an fp16 resume restarted at the default loss scale. The scaler state is saved and read back."""
    from cat_adapter.training.checkpoint import load_checkpoint, rng_state, save_checkpoint

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    path = save_checkpoint(tmp_path, 3, trained={"lora.x": p.detach()}, optimizer=opt, lr_scheduler=sched,
                           stream_state={"generator": torch.Generator().get_state(), "orders": {}},
                           rng_states=[rng_state()], scaler_state=scaler)
    assert load_checkpoint(path)["grad_scaler"] == scaler


def test_ranks_and_runs_get_distinct_model_seeds():
    """7.5: seed + rank made rank 1 of seed 0 replay rank 0 of seed 1 (same dropout masks)."""
    from cat_adapter.training.loop import seed_model_randomness

    def draw(seed, rank):
        torch.manual_seed(seed)
        seed_model_randomness(seed, rank)
        return torch.rand(4)

    assert not torch.equal(draw(0, 1), draw(1, 0))
    assert not torch.equal(draw(0, 1), draw(0, 0))
    assert torch.equal(draw(3, 0), (torch.manual_seed(3), torch.rand(4))[1])  # rank 0 keeps the run's own stream


@pytest.mark.slow
def test_validation_during_training_does_not_change_the_weights(tiny_model_ddpm, concept_dir, tmp_path):
    """7.6: validation consumed the global RNG (an ancestral sampler's noise), which shifted the dropout masks:
    a run with grids ended with other weights than one without."""
    kw = train_overrides(tiny_model_ddpm, concept_dir, tmp_path / "a", steps=4, lora_dropout=0.2, cpu=True)
    a = train(build_config(overrides={**kw, "validation_prompt": "a sks circle", "validation_every": 1,
                                      "validation_steps": 2}), progress=False)
    b = train(build_config(overrides={**kw, "output": str(tmp_path / "b")}), progress=False)
    wa, wb = load_file(str(a / "pytorch_lora_weights.safetensors")), load_file(str(b / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list((a / "validation").glob("*.png"))) == 4   # steps 1-3 and the final grid (step 4)


def test_an_image_depends_on_its_seed_alone_with_an_ancestral_sampler(tiny_model_ddpm, tmp_path):
    """7.6: generation passed no generator, so with a stochastic sampler paired images shared only their
    initial noise and an image depended on its batch. Now each image has its own generator."""
    from PIL import Image

    common = ["sample", "--model", str(tiny_model_ddpm), "--prompt", "a circle", "--steps", "3"]
    assert main([*common, "--seed", "5", "--num-images", "2", "--batch-size", "2", "--output", str(tmp_path / "b")]) == 0
    assert main([*common, "--seed", "6", "--num-images", "1", "--output", str(tmp_path / "one")]) == 0
    together = np.asarray(Image.open(tmp_path / "b" / "00-seed6.png"), dtype=np.int16)
    alone = np.asarray(Image.open(tmp_path / "one" / "00-seed6.png"), dtype=np.int16)
    assert np.abs(together - alone).max() <= 1


def test_generation_leaves_the_global_rng_alone(tiny_model_ddpm):
    from cat_adapter.models import ModelSpec, load_model
    from cat_adapter.sampling import generate

    model = load_model(ModelSpec(str(tiny_model_ddpm)))
    state = torch.get_rng_state()
    generate(model, ["a circle"], [1], steps=2, height=16, width=16)
    assert torch.equal(torch.get_rng_state(), state)


def test_checkpoint_with_missing_keys_fails(tiny_model, concept_dir, tmp_path):
    """7.8: load_peft_state ignored missing keys, so a partial checkpoint resumed silently."""
    from safetensors.torch import save_file

    kw = train_overrides(tiny_model, concept_dir, tmp_path / "m", steps=4, checkpoint_every=2, cpu=True)
    proc_out = train(build_config(overrides={**kw, "steps": 2}), progress=False)
    ckpt = proc_out / "checkpoints" / "step-000002"
    f = next(p for p in (ckpt / "trained.safetensors", ckpt / "adapter.safetensors") if p.is_file())  # (9fbf7e2's name)
    state = load_file(str(f))
    save_file({k: v for k, v in list(state.items())[1:]}, str(f))
    with pytest.raises(CatAdapterError, match="does not match this run .*missing"):
        train(build_config(overrides={**kw, "resume": True}), progress=False)


def test_train_summary_names_the_files_the_method_wrote(tiny_model, concept_dir, tmp_path, capsys):
    """7.9: the CLI printed pytorch_lora_weights.safetensors whatever the method wrote."""
    args = ["train", "--model", str(tiny_model), "--data", str(concept_dir), "--output", str(tmp_path / "ti"),
            "--class-noun", "circle", "--resolution", "16", "--steps", "2", "--method", "ti", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "learned_embeds.safetensors" in out and "pytorch_lora_weights" not in out
