"""End-to-end training on a tiny model: artefacts, diffusers loading, resume after SIGKILL, precision."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import KILLER, train_overrides, unet_out
from safetensors.torch import load_file

from cat_adapter.config import build_config, load_config_file
from cat_adapter.errors import CatAdapterError
from cat_adapter.methods.base import Method, build_method
from cat_adapter.models import ModelSpec, freeze, load_model, load_pipeline
from cat_adapter.runners import train


def test_train_writes_self_describing_artefacts(tiny_model, concept_dir, tmp_path):
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "out", steps=3,
                                                       save_every=2, validation_prompt="a sks circle",
                                                       validation_steps=2, validation_every=2)), progress=False)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all({"step", "loss", "loss_identity", "loss_preservation", "lr"} <= set(x) for x in lines)
    assert all(abs(x["loss"] - (x["loss_identity"] + x["loss_preservation"])) < 1e-5 for x in lines)  # alpha 1
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["package_version"] and cfg["lora"]["lora_alpha"] == 4.0  # resolved, not None
    assert "tokens" not in cfg  # only the sections the method reads
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["kinds"] == ["lora"] and meta["family"] == "sd" and meta["format_version"] == 1
    assert meta["files"] == {"lora": "pytorch_lora_weights.safetensors"} and meta["base_model"]["fingerprint"]
    assert meta["concepts"] == [{"name": "concept", "trigger": "sks", "class_noun": "circle", "preserve_prompt": "remove",
                                 "caption_template": "a photo of {trigger} {class_noun}"}]
    assert json.loads((out / "done.json").read_text())["files"] == ["pytorch_lora_weights.safetensors"]
    assert (out / "validation" / "step-000003.png").is_file() and (out / "step-2" / "validation.png").is_file()
    assert (out / "validation.png").is_file() and (out / "validation.csv").is_file()   # the monitor's curves
    # The snapshot and the final weights both load into plain diffusers and change the U-Net.
    for folder in (out / "step-2", out):
        pipe = load_pipeline(str(tiny_model))
        before = unet_out(pipe.unet)
        pipe.load_lora_weights(str(folder))
        assert not torch.allclose(unet_out(pipe.unet), before)


@pytest.mark.parametrize("targets", [["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "proj_in", "to_q"]])
def test_saved_lora_loads_in_diffusers_with_equal_outputs(tiny_model, tmp_path, targets):
    """lora_alpha != rank: the scale survives only through the saved adapter metadata. Attention and
    conv targets mixed: one key style in the file, or diffusers drops part of the adapter."""
    model = load_model(ModelSpec(str(tiny_model)))
    freeze(*model.frozen_components())
    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle", rank=4,
                                      lora_alpha=8.0, target_modules=targets))
    m = build_method(cfg, model)
    g = torch.Generator().manual_seed(0)
    for name, p in model.denoiser.named_parameters():
        if "lora_" in name:
            p.data = 0.2 * torch.randn(p.shape, generator=g)
    trained = unet_out(model.denoiser)
    m.export(tmp_path / "lora", export_format="kohya")
    for weight in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"):
        fresh = load_pipeline(str(tiny_model))
        fresh.load_lora_weights(str(tmp_path / "lora"), weight_name=weight)
        torch.testing.assert_close(unet_out(fresh.unet), trained, rtol=1e-5, atol=1e-6, msg=weight)
    kohya = load_file(str(tmp_path / "lora" / "pytorch_lora_weights_kohya.safetensors"))
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}


def test_alpha_zero_cat_equals_lora_bit_for_bit(tiny_model, concept_dir, tmp_path):
    # On the CPU (the terms): CUDA kernels are not bitwise deterministic run to run.
    common = train_overrides(tiny_model, concept_dir, None, steps=3, preserve_pool=None, cpu=True)
    a = train(build_config(overrides={**common, "output": str(tmp_path / "cat"), "method": "cat", "cat_alpha": 0.0,
                                      "cat_mode": "lean"}), progress=False)
    b = train(build_config(overrides={**common, "output": str(tmp_path / "lora"), "method": "lora"}), progress=False)
    wa, wb = load_file(str(a / "pytorch_lora_weights.safetensors")), load_file(str(b / "pytorch_lora_weights.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    assert all(x["loss_preservation"] > 0 for x in log[1:])  # the preservation pass was really run




@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, concept_dir, tmp_path):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "killed", steps=8, checkpoint_every=3, lora_dropout=0.1,
                         random_flip=True, lr_scheduler="cosine", lr_warmup_steps=2, cpu=True)  # 1e-6 is a CPU bound
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(kw), "6"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    out = tmp_path / "killed"
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]
    with pytest.raises(CatAdapterError, match="--resume"):
        train(build_config(overrides=kw), progress=False)  # same command without --resume refuses
    resumed = train(build_config(overrides={**kw, "resume": True}), progress=False)
    straight = train(build_config(overrides={**kw, "output": str(tmp_path / "straight")}), progress=False)
    wa = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= 1e-6, diff
    steps = [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_model, concept_dir, tmp_path, monkeypatch):
    calls, original = [0], Method.forward_backward

    def poisoned(self, batch, backward):
        calls[0] += 1
        if calls[0] == 4:
            batch.instance.noise[:] = float("nan")
        return original(self, batch, backward)

    monkeypatch.setattr(Method, "forward_backward", poisoned)
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "nan", steps=6, checkpoint_every=2)
    with pytest.raises(CatAdapterError, match=r"non-finite loss .* step 4.*step-000002"):
        train(build_config(overrides=kw), progress=False)
    out = tmp_path / "nan"
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    ckpt = load_file(str(out / "checkpoints" / "step-000002" / "trained.safetensors"))
    assert all(torch.isfinite(v).all() for v in ckpt.values())


def test_bf16_mixed_precision_keeps_lora_in_float32(tiny_model, concept_dir, tmp_path, monkeypatch):
    seen = {}
    original = Method.parameters

    def spy(self):
        params = original(self)
        seen["dtypes"] = {p.dtype for p in params}
        seen["frozen"] = self.model.denoiser.conv_in.weight.dtype
        return params

    monkeypatch.setattr(Method, "parameters", spy)
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "bf16", steps=2,
                                                       mixed_precision="bf16", save_dtype="float16",
                                                       gradient_accumulation_steps=2, batch_size=2,
                                                       gradient_checkpointing=True)), progress=False)
    assert seen["dtypes"] == {torch.float32} and seen["frozen"] == torch.bfloat16
    w = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert {v.dtype for v in w.values()} == {torch.float16}
    load_pipeline(str(tiny_model)).load_lora_weights(str(out))  # loads through plain diffusers


def test_preservation_pool(tiny_model, concept_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("# other classes\na photo of square\na photo of star\n\na photo of blue circle\n")
    out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "pool", steps=2,
                                                       preserve_pool=str(pool), preserve_pool_size=2)), progress=False)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    pool.write_text("a photo of square\na photo of sks square\n")
    with pytest.raises(CatAdapterError, match=r"pool.txt: prompt 2 .* contains the trigger"):
        train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "pool2",
                                                     preserve_pool=str(pool))), progress=False)


def test_single_file_checkpoint_errors_are_one_line(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "model.safetensors"
    save_file({"not.a.unet": torch.zeros(2)}, str(f))
    with pytest.raises(CatAdapterError, match="model.safetensors: cannot load single-file checkpoint") as e:
        load_pipeline(str(f))
    assert "\n" not in str(e.value)
    with pytest.raises(CatAdapterError, match="--allow-pickle"):
        load_pipeline(str(tmp_path / "model.ckpt")) if (tmp_path / "model.ckpt").write_bytes(b"x") else None


def test_unknown_target_module_is_an_error(tiny_model):
    model = load_model(ModelSpec(str(tiny_model)))
    cfg = build_config(overrides=dict(model=str(tiny_model), data="-", output="-", class_noun="circle", method="lora",
                                      target_modules=["to_q", "nonexistent"]))
    with pytest.raises(CatAdapterError, match="no U-Net module named nonexistent"):
        build_method(cfg, model)


def test_resume_a_finished_run_with_more_steps(tiny_model, concept_dir, tmp_path, monkeypatch):
    kw = train_overrides(tiny_model, concept_dir, tmp_path / "a", steps=4, checkpoint_every=2, cpu=True)
    train(build_config(overrides=kw), progress=False)
    assert (tmp_path / "a" / "checkpoints" / "step-000004").is_dir()  # the last step is checkpointed
    with pytest.raises(CatAdapterError, match="--steps 3 is below"):
        train(build_config(overrides={**kw, "steps": 3, "resume": True}), progress=False)
    monkeypatch.chdir(tmp_path)  # config.yaml holds absolute paths: it re-runs from any folder
    longer = train(build_config(overrides={**kw, "steps": 6, "resume": True}), progress=False)
    saved = yaml.safe_load((longer / "config.yaml").read_text())
    assert saved["optim"]["steps"] == 6 and saved["run"]["resume"] is False
    straight = train(build_config(load_config_file(longer / "config.yaml"), {"output": str(tmp_path / "b")}),
                     progress=False)
    wa = load_file(str(longer / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # 4 + 2 steps == 6 steps (constant LR)


def test_the_run_says_what_it_does_and_done_json_holds_true_times(tiny_model, concept_dir, tmp_path, capsys):
    import json

    from cat_adapter.cli.main import main

    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_model), "--data", str(concept_dir), "--class-noun", "circle", "--steps",
                 "8", "--validation-prompt", "a photo of sks circle", "--validation-every", "4", "--validation-steps",
                 "2", "--cpu", "--no-progress", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cat on a sd model: 4 images (4 captioned by .txt files, 0 by the caption template) of sks circle; 8 steps" \
           in printed and "for the remaining 3 steps" in printed
    done = json.loads((out / "done.json").read_text())
    assert done["validation_seconds"] > 0 and done["steps_seconds"] > 0
    assert done["seconds"] >= done["validation_seconds"] + done["steps_seconds"]
