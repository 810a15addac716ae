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


@pytest.mark.parametrize("given, expected", [({}, 8), ({"rank": 4}, 4), ({"rank": 6}, 6)])
def test_several_concepts_default_to_the_singles_rank_together(tmp_path, given, expected):
    from cat_adapter.config import build_config
    from cat_adapter.training.guard import _capacity

    path = write_concepts(tmp_path)
    cfg = build_config(overrides=dict(model="toy", concepts=str(path), output="o", **given))
    assert cfg.lora.rank == expected               # an explicit --rank wins, also when it is the single default
    specs = concept_specs(cfg.data)
    assert f"LoRA rank {expected} for 2 concepts" in _capacity(cfg, specs)
    one = build_config(overrides=dict(model="toy", data=str(tmp_path / "a"), output="o", trigger="sks",
                                      class_noun="circle"))
    assert one.lora.rank == 4 and _capacity(one, concept_specs(one.data)) == ""


@pytest.mark.parametrize("extra, needle", [
    ([{"name": "c", "data": "c", "trigger": "sks", "class_noun": "star"}], "share the trigger"),
    ([{"name": "c", "data": "c", "trigger": "sks dog", "class_noun": "cat"}], "contains trigger 'sks'"),
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


# ---------------------------------------------------------------------------------------------- evaluation

SPECS = [{"name": "sks_circle", "class_noun": "circle", "trigger": "sks", "num_images": 3,
          "appearance": {"fill": "blue", "pattern": "stripes", "pattern_color": "yellow", "outline": "black"}},
         {"name": "qlo_triangle", "class_noun": "triangle", "trigger": "qlo", "num_images": 3,
          "appearance": {"fill": "red", "pattern": "solid", "outline": "blue"}}]


@pytest.fixture(scope="module")
def toy_pair(tmp_path_factory):
    """Two toy concepts, a 2-concept CAT adapter on the toy model (a few steps) and its evaluation."""
    from cat_adapter.toy.concept import validate_spec, write_concept

    root = tmp_path_factory.mktemp("toy_pair")
    entries = []
    for spec in SPECS:
        write_concept(validate_spec(spec), root / spec["name"])
        entries.append({"name": spec["name"], "data": spec["name"], "trigger": spec["trigger"],
                        "class_noun": spec["class_noun"], "caption_template": "a {trigger} {class_noun}"})
    (root / "concepts.yaml").write_text(yaml.safe_dump({"concepts": entries}))
    adapter = root / "adapter"
    assert cli_main(["train", "--model", "toy", "--concepts", str(root / "concepts.yaml"), "--resolution", "32",
                     "--steps", "4", "--lr", "1e-3", "--cpu", "--output", str(adapter)]) == 0
    common = ["--model", "toy", "--clip", "toy", "--images-per-prompt", "1", "--sample-steps", "3",
              "--guidance-scale", "2", "--drift-samples", "1", "--cpu"]
    assert cli_main(["evaluate", "--adapter", str(adapter), "--output", str(root / "eval"), *common]) == 0
    return root, common


def test_multi_concept_evaluation_writes_each_concept_and_the_confusion(toy_pair):
    root, _ = toy_pair
    ev = root / "eval"
    m = json.loads((ev / "metrics.json").read_text())
    assert m["concepts"] == ["sks_circle", "qlo_triangle"] and m["confusion"]["kind"] == "concept_rate"
    # each concept's look is read back from its reference images' pixels
    assert m["looks"]["sks_circle"] == {"fill": "blue", "pattern": "stripes", "outline": "black"}
    assert m["looks"]["qlo_triangle"] == {"fill": "red", "pattern": "solid", "outline": "blue"}
    for name in m["concepts"]:
        sub = json.loads((ev / name / "metrics.json").read_text())
        assert sub["trigger"] == {"sks_circle": "sks", "qlo_triangle": "qlo"}[name]
        assert sub["concept_rate_class"] is not None and m["per_concept"][name]["kps"] == sub["kps"]
    rows = (ev / "confusion.csv").read_text().splitlines()
    assert rows[0] == "trigger_of,sks_circle,qlo_triangle" and len(rows) == 3
    assert (ev / "confusion.png").stat().st_size > 3000


def test_rate_matrix_counts_each_concepts_look(tmp_path):
    """Trigger images of concept b: two with a's look, two with b's: row b reads 0.5 and 0.5."""
    from cat_adapter.evaluation.confusion import look_of, rate_matrix
    from cat_adapter.toy.concept import concept_scenes, validate_spec
    from cat_adapter.toy.plugin import ShapesWorld
    from cat_adapter.toy.world import render

    paths = {}
    for spec in SPECS:
        scenes = concept_scenes(validate_spec(spec))
        paths[spec["name"]] = []
        for i, s in enumerate(scenes):
            p = tmp_path / f"{spec['name']}{i}.png"
            render(s).save(p)
            paths[spec["name"]].append(p)
    world = ShapesWorld()
    looks = {n: look_of(ps, world) for n, ps in paths.items()}
    b_images = paths["qlo_triangle"][:2] + paths["sks_circle"][:2]
    matrix = rate_matrix({"sks_circle": paths["sks_circle"], "qlo_triangle": b_images}, looks, world)
    assert matrix.tolist() == [[1.0, 0.0], [0.5, 0.5]]


def test_evaluate_one_concept_of_several_and_bad_choices(toy_pair, tmp_path, capsys):
    from eval_helpers import assert_one_line_error, run_cli

    root, common = toy_pair
    adapter = root / "adapter"
    rc, _, _ = run_cli(["evaluate", "--adapter", adapter, "--concept", "qlo_triangle", "--data", root / "qlo_triangle",
                        "--output", tmp_path / "one", *common], capsys)
    assert rc == 0
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["trigger"] == "qlo"
    rc, _, err = run_cli(["evaluate", "--adapter", adapter, "--concept", "nope", "--data", root / "qlo_triangle",
                          "--output", tmp_path / "x", *common], capsys)
    assert_one_line_error(rc, err, "--concept 'nope'", "sks_circle")
    rc, _, err = run_cli(["evaluate", "--adapter", adapter, "--data", root / "qlo_triangle",
                          "--output", tmp_path / "y", *common], capsys)
    assert_one_line_error(rc, err, "--data names one concept's folder")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------------------------- compare groups

GROUP_PLAN = """
concepts:
  - {name: sks_circle, spec: {class_noun: circle, trigger: sks, num_images: 3, appearance: {fill: blue, pattern: stripes, pattern_color: yellow, outline: black}}}
  - {name: qlo_triangle, variants: [cat], spec: {class_noun: triangle, trigger: qlo, num_images: 3, appearance: {fill: red, pattern: solid, outline: blue}}}
  - {name: pair, group: [sks_circle, qlo_triangle], steps: 4, rank: 8}
variants:
  - {name: lora, method: lora}
  - {name: cat, method: cat, preserve_pool: concept, preserve_pool_size: 1}
  - {name: ti, method: ti, steps: 2}
seeds: [0]
shared: {model: toy, caption_template: "a {trigger} {class_noun}", resolution: 32, steps: 3, lr: 1.0e-3, validation_every: 0}
evaluation: {clip: toy, images_per_prompt: 1, sample_steps: 2, guidance_scale: 2.0, drift_samples: 1}
"""


@pytest.mark.slow
def test_a_compare_group_trains_one_adapter_beside_the_single_concepts(tmp_path, monkeypatch):
    from cat_adapter.compare.plan import jobs, load_plan

    monkeypatch.chdir(tmp_path)   # a relative --output: the group's concepts file must still find the folders
    (tmp_path / "plan.yaml").write_text(GROUP_PLAN)
    plan = load_plan(tmp_path / "plan.yaml")
    ids = [j.id for j in jobs(plan)]
    assert "pair__lora__seed0" in ids and "pair__cat__seed0" in ids
    assert "pair__ti__seed0" not in ids and "pair__base" not in ids      # TI takes one concept; no group base
    assert "qlo_triangle__cat__seed0" in ids and "qlo_triangle__base" in ids      # variants: [cat] on it
    assert "qlo_triangle__lora__seed0" not in ids and "qlo_triangle__ti__seed0" not in ids
    assert "sks_circle__lora__seed0" in ids and "sks_circle__ti__seed0" in ids
    out = tmp_path / "out"
    assert cli_main(["compare", "--plan", "plan.yaml", "--output", "out", "--cpu"]) == 0
    job = out / "jobs" / "pair__cat__seed0"
    record = json.loads((job / "done.json").read_text())
    assert record["members"] == ["sks_circle", "qlo_triangle"] and record["concept_kind"] == "group"
    assert json.loads((job / "train" / "done.json").read_text())["steps"] == 4      # the group's own steps
    assert yaml.safe_load((job / "train" / "config.yaml").read_text())["lora"]["rank"] == 8  # and rank
    assert yaml.safe_load((out / "jobs" / "sks_circle__cat__seed0" / "train" / "config.yaml").read_text())["lora"]["rank"] == 4
    adapter = json.loads((job / "train" / "adapter.json").read_text())
    assert [c["trigger"] for c in adapter["concepts"]] == ["sks", "qlo"]
    concepts = yaml.safe_load((job / "concepts.yaml").read_text())["concepts"]
    assert all(c["preserve_pool"].endswith("pool.txt") for c in concepts)    # 'concept' pool: each member's own
    assert (job / "eval" / "confusion.csv").is_file() and (job / "eval" / "qlo_triangle" / "metrics.json").is_file()
    table = (out / "report" / "table1.md").read_text()
    assert "| lora [pair] |" in table and "| cat [pair] |" in table and "| cat |" in table
    assert "## cat [pair]" in (out / "report" / "groups.md").read_text()
    assert "| cat [pair] |" in (out / "report" / "paired.md").read_text()   # paired with lora [pair]


@pytest.mark.parametrize("entry, needle", [
    ("{name: g, group: [sks_circle, nope]}", "'nope' is not a concept"),
    ("{name: g, group: [sks_circle]}", "two or more"),
    ("{name: g, group: [sks_circle, qlo_triangle], trigger: abc}", "member concepts"),
    ("{name: g, group: [sks_circle, qlo_triangle], steps: 0}", "positive integer"),
    ("{name: g, group: [sks_circle, qlo_triangle], rank: 2.5}", "positive integer"),
    ("{name: other, spec: {class_noun: circle, trigger: abc}, rank: 8}", "is for groups"),
    ("{name: g, group: [sks_circle, qlo_triangle], variants: [cat, nope]}", "'nope' is not a variant of this plan"),
    ("{name: g, group: [sks_circle, qlo_triangle], variants: cat}", "must list variant names"),
])
def test_bad_groups(tmp_path, entry, needle):
    from cat_adapter.compare.plan import load_plan

    text = GROUP_PLAN.replace("{name: pair, group: [sks_circle, qlo_triangle], steps: 4, rank: 8}", entry)
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(CatAdapterError, match=needle):
        load_plan(tmp_path / "plan.yaml")


@pytest.mark.parametrize("builder", ["build_tiny_sd3_pipeline", "build_tiny_zimage_pipeline",
                                     "build_tiny_chroma_pipeline"])
def test_several_concepts_train_on_the_2026_families(tmp_path, builder):
    """Per-token y is built on prompt strings, so it holds under every family's text side (two CLIP + T5, a chat
    template around a language model, masked T5)."""
    from cat_adapter.testing import tiny

    model = getattr(tiny, builder)(tmp_path / "model")
    path = write_concepts(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["train", "--model", str(model), "--concepts", str(path), "--resolution", "16", "--steps", "2",
                     "--cpu", "--output", str(out)]) == 0
    prompts = json.loads((out / "prompts.json").read_text())
    assert Counter(p["concept"] for p in prompts) == {"a": 2, "b": 6}
    assert all("sks" not in p["plain"] and "zwx" not in p["plain"] for p in prompts)
    assert [c["trigger"] for c in json.loads((out / "adapter.json").read_text())["concepts"]] == ["sks", "zwx"]
