"""compare --dreambench: a local DreamBench dataset folder (subject folders + prompts_and_classes.txt) becomes the
plan's concepts, each evaluated on the prompts of its kind; bad folders are one line, nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from cat_adapter.cli.main import main
from cat_adapter.compare.dreambench import read_dreambench
from cat_adapter.testing.tiny import write_shape_concept

PROMPTS = """Classes
subject_name,class
backpack,backpack
dog,dog

Prompts
Object Prompts
prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} in the snow'.format(unique_token, class_token),
]

Live Subject Prompts
prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} swimming'.format(unique_token, class_token),
]
"""


def fake_dreambench(root, prompts=PROMPTS, subjects=("backpack", "dog")):
    for i, s in enumerate(subjects):
        write_shape_concept(root / s, n=2, size=16, captions=False, seed=i)
    if prompts is not None:
        (root / "prompts_and_classes.txt").write_text(prompts)
    return root


def test_the_dataset_is_read_as_subjects_classes_and_two_prompt_lists(tmp_path):
    classes, prompts = read_dreambench(fake_dreambench(tmp_path / "ds"))
    assert classes == {"backpack": "backpack", "dog": "dog"}
    assert prompts["object"] == ["a {0} {1} in the jungle", "a {0} {1} in the snow"]
    assert len(prompts["live"]) == 3


@pytest.mark.slow
def test_compare_dreambench_runs_every_subject_on_its_kinds_prompts(tiny_model, tmp_path):
    from cat_adapter.testing.tiny import build_tiny_vit
    from cat_adapter.testing.tiny_clip import build_tiny_clip

    ds = fake_dreambench(tmp_path / "ds")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "variants": [{"name": "lora", "method": "lora"}], "seeds": [0],
        "shared": {"model": str(tiny_model), "resolution": 16, "steps": 2, "validation_every": 0},
        "evaluation": {"clip": str(build_tiny_clip(tmp_path / "clip")), "dino": str(build_tiny_vit(tmp_path / "dino")),
                       "images_per_prompt": 1, "sample_steps": 2}}))
    out = tmp_path / "out"
    assert main(["compare", "--plan", str(plan), "--dreambench", str(ds), "--output", str(out), "--cpu"]) == 0
    assert (out / "dreambench" / "dog.txt").read_text().splitlines() == [
        "a {trigger} dog in the jungle", "a {trigger} dog wearing a red hat", "a {trigger} dog swimming"]
    concepts = {c["name"]: c for c in json.loads((out / "plan.json").read_text())["plan"]["concepts"]}
    assert set(concepts) == {"backpack", "dog"} and concepts["dog"]["class_noun"] == "dog"
    for job in ("dog", "backpack"):
        folder = next((out / "jobs").glob(f"{job}__lora__*"))
        metrics = json.loads((folder / json.loads((folder / "done.json").read_text())["metrics"]).read_text())
        assert metrics["dino_identity"] is not None and metrics["clip_t"] is not None
        held = metrics["counts"]["clip_t"]
        assert held >= (3 if job == "dog" else 2)   # its kind's prompts (plus the training captions)
    assert "dino_identity" in (out / "report" / "table1.md").read_text()
    # a rerun of the same folder is the same plan
    assert main(["compare", "--plan", str(plan), "--dreambench", str(ds), "--output", str(out), "--cpu"]) == 0


@pytest.mark.parametrize("case, needle", [
    ("no_prompts", "no prompts_and_classes.txt"), ("unknown_class", "subject folder cat has no class"),
    ("plan_concepts", "leave the key out"), ("no_lists", "Live Subject Prompts")])
def test_bad_dreambench_input_is_one_line_and_writes_nothing(tiny_model, tmp_path, capsys, case, needle):
    ds = tmp_path / "ds"
    if case == "no_prompts":
        fake_dreambench(ds, prompts=None)
    elif case == "unknown_class":
        fake_dreambench(ds, subjects=("backpack", "dog", "cat"))
    elif case == "no_lists":
        fake_dreambench(ds, prompts="Classes\nsubject_name,class\nbackpack,backpack\ndog,dog\n")
    else:
        fake_dreambench(ds)
    body = {"variants": [{"name": "lora", "method": "lora"}], "shared": {"model": str(tiny_model)}}
    if case == "plan_concepts":
        body["concepts"] = [{"name": "x", "data": str(ds / "dog"), "trigger": "sks", "class_noun": "dog"}]
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    assert main(["compare", "--plan", str(plan), "--dreambench", str(ds), "--output", str(out), "--cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
