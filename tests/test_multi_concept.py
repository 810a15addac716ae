"""Several concepts in one adapter (--concepts): per-token y, the balanced sampler, adapter.json, bad files."""

import json
from collections import Counter

import pytest
import torch
import yaml
from helpers import train_cli_error

from cat_adapter.cli.main import main as cli_main
from cat_adapter.data.cache import StreamSampler, build_cache
from cat_adapter.data.concepts import concept_specs, load_concepts, per_token_plain, read_concepts_file
from cat_adapter.errors import CatAdapterError
from cat_adapter.models import ModelSpec, load_model
from cat_adapter.testing.tiny import write_shape_concept


def write_concepts(tmp_path, sizes=(2, 6), extra=None):
    """Concept folders 'a' (sks circle) and 'b' (zwx square) with ``sizes`` images, and a concepts file."""
    entries = []
    for (name, trigger, noun), n in zip((("a", "sks", "circle"), ("b", "zwx", "square")), sizes):
        write_shape_concept(tmp_path / name, n=n, size=16, trigger=trigger, class_noun=noun, seed=len(entries))
        for i in range(n):   # a caption per image, so a batch row tells which image it is
            (tmp_path / name / f"{i:02d}.txt").write_text(f"a photo of {trigger} {noun} number {i}")
        entries.append({"name": name, "data": name, "trigger": trigger, "class_noun": noun})
    entries += extra or []
    path = tmp_path / "concepts.yaml"
    path.write_text(yaml.safe_dump({"concepts": entries}))
    return path


def test_a_caption_naming_two_concepts_loses_both_triggers(tmp_path):
    path = write_concepts(tmp_path)
    (tmp_path / "a" / "00.txt").write_text("a photo of sks circle next to a zwx square")
    specs = read_concepts_file(path, default_template="a photo of {trigger} {class_noun}")
    assert per_token_plain("a photo of sks circle next to a zwx square", specs, "remove") == \
        "a photo of circle next to a square"
    assert per_token_plain("sks and zwx on a table", specs, "class") == "circle and square on a table"
    assert per_token_plain("sks and zwx", specs, "empty") == ""
    groups = load_concepts(specs, missing_trigger="error", preserve_prompt="remove")
    first = groups[0][0]
    assert first.plain == "a photo of circle next to a square" and first.concept == 0
    assert all(it.concept == 1 and "zwx" not in it.plain and "square" in it.plain for it in groups[1])
    assert groups[1][0].plain == "a photo of square number 0"
    # each caption must hold its own concept's trigger (another concept's is not enough)
    (tmp_path / "b" / "00.txt").write_text("a photo of sks circle")
    with pytest.raises(CatAdapterError, match="zwx"):
        load_concepts(specs, missing_trigger="error", preserve_prompt="remove")


@pytest.mark.parametrize("balance, share_a", [("uniform", 0.5), ("by-images", 0.25)])
def test_the_sampler_balances_concepts(tiny_model, tmp_path, balance, share_a):
    path = write_concepts(tmp_path, sizes=(2, 6))
    specs = read_concepts_file(path, default_template="a photo of {trigger} {class_noun}")
    items = [it for g in load_concepts(specs, missing_trigger="error", preserve_prompt="remove") for it in g]
    model = load_model(ModelSpec(str(tiny_model)))
    cache = build_cache(model, items, resolution=16, random_flip=False, device="cpu")
    sampler = StreamSampler(cache, batch_size=4, pool_size=0, objective=model.objective, seed=0, balance=balance)
    hidden = cache.instance.prompts.hidden
    concept, image = Counter(), Counter()
    for _ in range(200):
        for row in sampler.next().prompts["trigger"].hidden:
            i = next(k for k in range(len(items)) if torch.equal(row, hidden[k]))
            concept[items[i].concept] += 1
            image[i] += 1
    assert concept[0] / 800 == pytest.approx(share_a, abs=0.05)
    per_image_a = [image[i] for i in range(2)]
    per_image_b = [image[i] for i in range(2, 8)]
    # within a concept its images are drawn without replacement: equal counts up to one permutation
    assert max(per_image_a) - min(per_image_a) <= 1 and max(per_image_b) - min(per_image_b) <= 1
    state = sampler.state_dict()
    assert ("instance concept0" in state["orders"]) == (balance == "uniform")


def test_training_with_a_concepts_file_lists_every_concept(tiny_model, tmp_path):
    path = write_concepts(tmp_path)
    out = tmp_path / "out"
    code = cli_main(["train", "--model", str(tiny_model), "--concepts", str(path), "--resolution", "16",
                     "--steps", "3", "--lr", "1e-3", "--cpu", "--output", str(out), "--validation-prompt",
                     "a sks circle and a zwx square", "--validation-images", "1", "--validation-steps", "2"])
    assert code == 0
    record = json.loads((out / "adapter.json").read_text())
    assert [(c["name"], c["trigger"], c["class_noun"]) for c in record["concepts"]] == \
        [("a", "sks", "circle"), ("b", "zwx", "square")]
    prompts = json.loads((out / "prompts.json").read_text())
    assert Counter(p["concept"] for p in prompts) == {"a": 2, "b": 6}
    assert all("sks" not in p["plain"] and "zwx" not in p["plain"] for p in prompts)
    saved = yaml.safe_load((out / "concepts.yaml").read_text())["concepts"]
    assert saved[0]["data"] == str((tmp_path / "a").resolve())
    assert (out / "validation.png").is_file()


def test_one_concept_is_the_same_code(tmp_path):
    from cat_adapter.config import build_config

    cfg = build_config(overrides=dict(model="toy", data=str(tmp_path / "x"), output="o", trigger="sks",
                                      class_noun="circle"))
    (spec,) = concept_specs(cfg.data)
    assert (spec.name, spec.trigger, spec.class_noun) == ("x", "sks", "circle")


@pytest.mark.parametrize("extra, needle", [
    ([{"name": "c", "data": "c", "trigger": "sks", "class_noun": "star"}], "share the trigger"),
    ([{"name": "c", "data": "c", "trigger": "sks dog", "class_noun": "dog"}], "contains trigger 'sks'"),
    ([{"name": "c", "data": "a", "trigger": "qlo", "class_noun": "circle"}], "listed twice"),
    ([{"name": "a", "data": "c", "trigger": "qlo", "class_noun": "circle"}], "named 'a'"),
    ([{"name": "c", "data": "c", "trigger": "qlo", "colour": "red"}], "unknown key 'colour'"),
    ([{"name": "c", "data": "c"}], "'trigger' is required"),
])
def test_bad_concepts_files(tiny_model, tmp_path, capsys, extra, needle):
    (tmp_path / "c").mkdir()
    path = write_concepts(tmp_path, extra=extra)
    line = train_cli_error(capsys, tiny_model, None, tmp_path / "out", "--concepts", str(path), "--resolution", "16",
                           class_noun=None)
    assert needle in line


@pytest.mark.parametrize("extra, needle", [
    (["--data", "DATA"], "--data cannot be combined with --concepts"),
    (["--method", "dreambooth"], "--concepts is offered for --method lora and cat"),
    (["--concept-balance", "random"], "--concept-balance"),
])
def test_bad_concepts_options(tiny_model, tmp_path, capsys, extra, needle):
    path = write_concepts(tmp_path)
    extra = [str(tmp_path / "a") if x == "DATA" else x for x in extra]
    line = train_cli_error(capsys, tiny_model, None, tmp_path / "out", "--concepts", str(path), "--resolution", "16",
                           *extra, class_noun=None)
    assert needle in line


def test_a_missing_concepts_file_is_one_line(tiny_model, tmp_path, capsys):
    line = train_cli_error(capsys, tiny_model, None, tmp_path / "out", "--concepts", str(tmp_path / "nope.yaml"),
                           class_noun=None)
    assert "file not found" in line
