import re

import pytest
import yaml

from cat_adapter.cli.main import main
from cat_adapter.config import build_config, config_from_dict, load_config_file
from cat_adapter.errors import CatAdapterError

REQ = dict(model="m", data="d", output="o", class_noun="teapot")


def test_defaults_are_the_papers():
    cfg = build_config(overrides=REQ)
    assert (cfg.optim.lr, cfg.optim.steps, cfg.optim.weight_decay) == (1e-4, 600, 0.01)
    assert (cfg.optim.adam_beta1, cfg.optim.adam_beta2, cfg.optim.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert cfg.preservation.cat_alpha == 1.0 and cfg.method.method == "cat"
    assert cfg.lora.target_modules is None  # the model family's default (SD: to_q, to_k, to_v, to_out.0)


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"cat-alpha": 0.5, "steps": 10, "optim": {"lr": 3e-4}, "target_modules": "to_q,to_v", **REQ}))
    cfg = build_config(load_config_file(f), {"steps": "20"})
    assert cfg.preservation.cat_alpha == 0.5 and cfg.optim.lr == 3e-4
    assert cfg.optim.steps == 20  # the flag wins over the file
    assert cfg.lora.target_modules == ["to_q", "to_v"]
    # The saved (sectioned) form rebuilds the same config.
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("content, needle", [
    ({"cat_alhpa": 1.0}, "cat_alhpa"),
    ({"method": {"lr": 1.0}}, "method.lr"),
    ({"steps": "many"}, "--steps"),
    ({"method": "dreamfusion"}, "--method"),
    ({"random_flip": "maybe"}, "--random-flip"),
])
def test_bad_config_file_names_the_key(tmp_path, content, needle):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({**REQ, **content}))
    with pytest.raises(CatAdapterError, match=needle.replace(".", r"\.")):
        build_config(load_config_file(f))


@pytest.mark.parametrize("override, needle", [
    ({"cat_alpha": -1}, "--cat-alpha"), ({"steps": 0}, "--steps"), ({"resolution": 30}, "--resolution"),
    ({"rank": 0}, "--rank"), ({"trigger": "two words"}, "--trigger"), ({"class_noun": None}, "--class-noun"),
    ({"adam_beta1": 1.5}, "--adam-beta1"), ({"weight_decay": -1}, "--weight-decay"), ({"seed": -1}, "--seed"),
    ({"seed": 2**40}, "--seed"), ({"lr": "inf"}, "--lr"), ({"cat_alpha": "inf"}, "--cat-alpha"),
    ({"adam_epsilon": 0}, "--adam-epsilon"), ({"validation_steps": 0}, "--validation-steps"), ({"steps": None}, "--steps"),
])
def test_bad_values_name_the_option(override, needle):
    with pytest.raises(CatAdapterError, match=needle):
        build_config(overrides={**REQ, **override})


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in ("--model", "--data", "--trigger", "--class-noun", "--method", "--cat-alpha", "--cat-mode", "--steps",
              "--resolution", "--seed", "--output", "--config", "--mixed-precision", "--gradient-checkpointing",
              "--gradient-accumulation-steps", "--batch-size", "--lr", "--lr-scheduler", "--lr-warmup-steps",
              "--max-grad-norm", "--rank", "--lora-alpha", "--preserve-prompt", "--preserve-pool",
              "--preserve-pool-size", "--save-every", "--checkpoint-every", "--resume", "--export-format",
              "--save-dtype", "--validation-prompt", "--caption-missing-trigger", "--allow-pickle"):
        assert f in text, f


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from cat_adapter.io import atomic_dir, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("content", [{"steps": "many"}, {"steps": 0}, {"cat_alpha": -1}])
def test_config_file_values_are_errors_naming_the_file(tmp_path, content):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({**REQ, **content}))
    source = f"--config {f}"
    with pytest.raises(CatAdapterError, match=f"^{re.escape(source)}: --"):
        build_config(load_config_file(f), file_source=source)
    # The same bad value given as a flag is the flag's error, not the file's.
    key = next(iter(content))
    with pytest.raises(CatAdapterError) as err:
        build_config(load_config_file(f), {key: content[key]}, file_source=source)
    assert not str(err.value).startswith(source)


def test_every_file_a_run_writes_has_the_users_mode(tiny_model, concept_dir, tmp_path):
    """Weights included: a ComfyUI server or container running as another user can read the LoRA (0644 under umask
    022; safetensors' own temporary file would otherwise leave it 0600)."""
    import os

    from helpers import train_overrides

    from cat_adapter.runners import train

    old = os.umask(0o022)
    try:
        out = train(build_config(overrides=train_overrides(tiny_model, concept_dir, tmp_path / "out", steps=2,
                                                           checkpoint_every=1, save_every=1, cpu=True,
                                                           export_format="kohya")), progress=False)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert any(name.endswith("pytorch_lora_weights.safetensors") for name in modes)
    assert {n: m for n, m in modes.items() if m != (0o755 if (out / n).is_dir() else 0o644)} == {}


def test_relative_paths_in_a_config_file_are_relative_to_the_file(tmp_path, monkeypatch):
    """One rule for every YAML file (config, plan, concepts): relative to the file's folder, wherever the command
    runs; words and aliases stay."""
    from cat_adapter.config import load_config_file

    folder = tmp_path / "project"
    (folder / "concept").mkdir(parents=True)
    (folder / "run.yaml").write_text("model: toy\ndata: concept\noutput: out\ncache_dir: cache\npreserve_pool: auto\n")
    monkeypatch.chdir(tmp_path)
    values = load_config_file(folder / "run.yaml")
    assert values["data"] == str(folder / "concept") and values["output"] == str(folder / "out")
    assert values["cache_dir"] == str(folder / "cache")
    assert values["model"] == "toy" and values["preserve_pool"] == "auto"
