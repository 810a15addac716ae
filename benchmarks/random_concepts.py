"""Preservation on concepts nobody tuned for (issue 28): random shapes-world concepts, measured in plain diffusers.

Draws ``--concepts`` (12) concepts from the world's attribute space with a fixed seed (``toy.concept.random_specs``),
leaving out every look and trigger that a plan, test or benchmark of this repository already uses, trains each
variant with identical settings and 3 seeds through the ``cat-adapter train`` CLI (250 steps, lr 1e-3, rank 4,
batch 2, 32 px), and measures every adapter the way a user would see it: ``StableDiffusionPipeline`` +
``load_lora_weights``, 30 steps, guidance 7.5, pixels read with ``cat_adapter.toy.analyze``. Per (concept, variant,
seed):

* control change: mean absolute pixel difference (0-255) between the adapted and the base model's image for the same
  prompt and sampling seed, over the control prompts = the four other shapes in two colours each and the concept's
  own class in two other colours (10 prompts) x ``--control-seeds`` (4) seeds; split into other-class and own-class
  prompts, with the share of images whose background flipped between light and dark;
* control look rate: share of those control images that show the concept's look (fill, pattern, outline);
* class rate ("a {class}") and trigger rate ("a {trigger} {class}"), ``--rate-images`` (12) each, beside the base
  model's class rate (a look the base draws by itself: solid colours without outline);
* base fidelity: toy-CLIP cosine between the base and the adapted image of "a {class}", same seed (mean).

Variants: lora, cat (alpha 1), cat_pool_before (the automatic pool until commit 9b66a8f), cat_pool (the automatic pool
now, the control prompts held out, pool weight 1), cat_pool_w3 (the same at pool weight 3, now the default) and the
one-seed probe cat_pool_k6 (6 pool prompts per step). Several concepts in one adapter: the concepts are dealt into 4 groups of 3 of three different
classes, each trained with ``--concepts`` at the CLI's default rank (4 per concept) for 750 steps, CAT alpha 1 and
4; measured per member: own look on its trigger, any other member's look on its trigger, its look on its bare class
prompt (16 images each).

    python benchmarks/random_concepts.py draw                          # the concepts and groups, as JSON
    OMP_NUM_THREADS=1 python benchmarks/random_concepts.py run runs/random_concepts --shard 1/2 &
    OMP_NUM_THREADS=1 python benchmarks/random_concepts.py run runs/random_concepts --shard 2/2
    python benchmarks/random_concepts.py run runs/random_concepts --only groups --group-variants cat_alpha4
    python benchmarks/random_concepts.py run runs/random_concepts --only single --variants cat_pool_w3
    python benchmarks/random_concepts.py run runs/random_concepts --only single --variants cat_pool_k6 --seeds 0
    python benchmarks/random_concepts.py report runs/random_concepts   # -> benchmarks/results/random_concepts.*
    python benchmarks/random_concepts.py report runs/random_concepts --seeds 0 --output benchmarks/results/random_concepts_seed0

``run`` is resumable (a job with ``measure.json`` is skipped); two processes with ``--shard 1/2`` and ``2/2`` split
the jobs. Time on the 2-core machine: lora, cat and cat_pool_before x 3 seeds with the 12 alpha-1 groups took 89 min
as two shards while other runs shared the cores; a job takes 20-40 s of training (LoRA to CAT with a pool) and
10-15 s of sampling at one thread, a group about 85 s, so the default run (180 jobs + 12 groups) needs about 90
min as two shards, the alpha-4 groups and the probe 10 min more each.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import math
import os
import random
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEED = 2026
SHARED = ["--steps", "250", "--lr", "1e-3", "--rank", "4", "--batch-size", "2", "--resolution", "32",
          "--validation-every", "0"]
CAT = ["--method", "cat", "--cat-alpha", "1", "--cat-mode", "fast"]   # fast: lean's gradients, quicker on a CPU
VARIANTS = {
    "lora": ["--method", "lora"],
    "cat": CAT,
    # --preserve-pool auto until commit 9b66a8f: other classes only, in the caption template's phrasing ("a photo of
    # red star": captions from .txt files do not use the template), as a file of the same prompts in the same order
    "cat_pool_before": [*CAT, "--preserve-pool", "{before_pool}"],
    # --preserve-pool auto now: every class with one attribute, in the captions' phrasing ("a red star", "a green
    # square"), the 10 control prompts held out; as a file of that prompt set (checked against the code's auto pool)
    "cat_pool": [*CAT, "--preserve-pool", "{auto_pool}", "--preserve-pool-weight", "1"],
    # the pool's strength: three times the weight (the default since, 3 seeds) and three times the prompts per step
    # (a probe on seed 0)
    "cat_pool_w3": [*CAT, "--preserve-pool", "{auto_pool}", "--preserve-pool-weight", "3"],
    "cat_pool_k6": [*CAT, "--preserve-pool", "{auto_pool}", "--preserve-pool-weight", "1", "--preserve-pool-size", "6"],
}
GROUP_VARIANTS = {"cat": CAT, "cat_alpha4": ["--method", "cat", "--cat-alpha", "4", "--cat-mode", "fast"],
                  "lora": ["--method", "lora"]}
TRAIN_SEEDS = (0, 1, 2)
SAMPLE_STEPS, GUIDANCE = 30, 7.5     # the toy pipeline's recommended sampling (cat-adapter toy info)
CONTROL_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")


# ------------------------------------------------------------------------------------------------ concepts
def used_concepts() -> tuple[set, set]:
    """Look keys and triggers of every concept spec in the repository's plans, tests and benchmarks."""
    import yaml

    from cat_adapter.toy.concept import look_key, validate_spec

    specs = []
    for plan in sorted((REPO / "benchmarks" / "plans").glob("*.yaml")):
        for c in (yaml.safe_load(plan.read_text()) or {}).get("concepts", []):
            if isinstance(c.get("spec"), dict):
                specs.append(c["spec"])
    for py in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").glob("*.py"),
                      *(REPO / "src").rglob("*.py")]):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Dict):
                try:
                    d = ast.literal_eval(node)
                except ValueError:
                    continue
                if isinstance(d, dict) and "class_noun" in d and "appearance" in d:
                    specs.append(d)
    keys, triggers = set(), set()
    for s in specs:
        try:
            v = validate_spec(dict(s))
        except Exception:   # a test's deliberately bad spec
            continue
        keys.add(look_key(v))
        triggers.add(v["trigger"].lower())
    return keys, triggers


def draw(n: int) -> tuple[list[dict], list[list[str]]]:
    """The concepts, and groups of 3 of three different classes (dealt from a seeded shuffle)."""
    from cat_adapter.toy.concept import random_specs

    keys, triggers = used_concepts()
    specs = random_specs(n, SEED, exclude=keys, exclude_triggers=triggers)
    rng = random.Random(f"groups-{SEED}")
    for _ in range(1000):
        order = list(range(n))
        rng.shuffle(order)
        groups = [order[i:i + 3] for i in range(0, n - n % 3, 3)]
        if all(len({specs[i]["class_noun"] for i in g}) == 3 for g in groups):
            return specs, [[specs[i]["name"] for i in g] for g in groups]
    raise SystemExit("no grouping into three different classes found")


def control_prompts(spec: dict, look: dict) -> list[tuple[str, str]]:
    """(kind, prompt): the four other shapes in two colours each, and the own class in two other colours."""
    from cat_adapter.data.auto_pool import _articles
    from cat_adapter.toy.world import SHAPES

    rng = random.Random(f"controls-{spec['name']}")
    avoid = {look["fill"], look["outline"], look.get("pattern_color")}
    colours = [c for c in CONTROL_COLOURS if c not in avoid]
    out = []
    for shape in SHAPES:
        for c in rng.sample(colours, 2):
            out.append(("own" if shape == spec["class_noun"] else "other", _articles(f"a {c} {shape}")))
    return out


def before_pool(spec: dict, data: Path) -> list[str]:
    """What ``--preserve-pool auto`` built until commit 9b66a8f for a toy concept with .txt captions: the other classes
    x the world's attributes in the default caption template's phrasing ("a photo of red circle")."""
    from cat_adapter.data.auto_pool import _articles
    from cat_adapter.toy.plugin import ShapesWorld
    from cat_adapter.toy.world import SHAPES

    world = ShapesWorld()
    return list(dict.fromkeys(_articles("a photo of " + a.format(noun=n)) for n in SHAPES if n != spec["class_noun"]
                              for a in world.attributes()))


def own_pool(spec: dict, data: Path) -> list[str]:
    """The prompt set ``--preserve-pool auto --preserve-pool-exclude CONTROLS`` builds now for the concept (its own
    class and the others with one attribute, in its captions' phrasing, the control prompts left out), in the order
    the benchmark ran it (other classes first, then the own class); checked against the code's pool."""
    from dataclasses import replace

    from cat_adapter.data.auto_pool import _articles, auto_pool, subject_template
    from cat_adapter.data.concepts import ConceptSpec
    from cat_adapter.toy.concept import concept_look
    from cat_adapter.toy.plugin import ShapesWorld
    from cat_adapter.toy.world import SHAPES

    world = ShapesWorld()
    held = {p for _, p in control_prompts(spec, concept_look(spec))}
    others = [_articles("a " + a.format(noun=n)) for n in SHAPES if n != spec["class_noun"] for a in world.attributes()]
    own = [_articles("a " + a.format(noun=spec["class_noun"])) for a in world.attributes()]
    pool = [p for p in dict.fromkeys(others + own) if p not in held]
    c = ConceptSpec(spec["name"], str(data), spec["trigger"], spec["class_noun"], "a photo of {trigger} {class_noun}")
    code = auto_pool([replace(c, caption_template=subject_template(c))], world=world,
                     exclude=sorted(held))
    if set(code) != set(pool):
        raise SystemExit(f"{spec['name']}: the code's auto pool differs from the benchmark's ({len(code)} vs {len(pool)})")
    return pool


# ------------------------------------------------------------------------------------------------ sampling
class Sampler:
    """The shipped toy pipeline in plain diffusers, with or without a LoRA file."""

    def __init__(self):
        import torch
        from diffusers import StableDiffusionPipeline

        from cat_adapter.toy.assets import toy_pipeline

        self.torch = torch
        self.pipe = StableDiffusionPipeline.from_pretrained(str(toy_pipeline()), safety_checker=None)
        self.pipe.set_progress_bar_config(disable=True)

    def images(self, prompts_seeds: list[tuple[str, int]], adapter: Path | None = None, chunk: int = 48) -> np.ndarray:
        if adapter is not None:
            self.pipe.load_lora_weights(str(adapter))
        try:
            out = []
            for i in range(0, len(prompts_seeds), chunk):
                part = prompts_seeds[i:i + chunk]
                gens = [self.torch.Generator().manual_seed(s) for _, s in part]
                res = self.pipe([p for p, _ in part], generator=gens, num_inference_steps=SAMPLE_STEPS,
                                guidance_scale=GUIDANCE, output_type="np")
                out.append(np.round(res.images * 255).astype(np.uint8))
            return np.concatenate(out)
        finally:
            if adapter is not None:
                self.pipe.unload_lora_weights()


def rates(arrays: np.ndarray, look: dict) -> list[bool]:
    from PIL import Image

    from cat_adapter.toy.analyze import matches_look

    return [matches_look(Image.fromarray(a), look) for a in arrays]


class Clip:
    def __init__(self):
        from cat_adapter.evaluation.embedders import load_image_embedder

        self.model = load_image_embedder("toy", device="cpu", option="--clip")

    def cos(self, a: np.ndarray, b: np.ndarray) -> list[float]:
        from PIL import Image

        ea = self.model.embed_images([Image.fromarray(x) for x in a])
        eb = self.model.embed_images([Image.fromarray(x) for x in b])
        return [float(x) for x in (ea * eb).sum(1)]


# ------------------------------------------------------------------------------------------------ jobs
@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_concept(root: Path, spec: dict) -> Path:
    from cat_adapter.toy.concept import write_concept

    folder = root / "concepts" / spec["name"]
    with locked(root / "concepts" / f".{spec['name']}.lock"):
        if not (folder / "concept.json").is_file():
            write_concept(spec, folder)
    return folder


def control_set(spec: dict, seeds: int) -> list[tuple[str, str, int]]:
    from cat_adapter.toy.concept import concept_look

    return [(k, p, s) for k, p in control_prompts(spec, concept_look(spec)) for s in range(seeds)]


def base_images(root: Path, spec: dict, sampler: Sampler, a) -> dict[str, np.ndarray]:
    """The base model's control and class-prompt images of a concept, computed once (``concepts/NAME.base.npz``)."""
    path = root / "concepts" / f"{spec['name']}.base.npz"
    with locked(root / "concepts" / f".{spec['name']}.base.lock"):
        if not path.is_file():
            ctrl = sampler.images([(p, s) for _, p, s in control_set(spec, a.control_seeds)])
            cls = sampler.images([(f"a {spec['class_noun']}", s) for s in range(a.rate_images)])
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, control=ctrl, cls=cls)
            os.replace(tmp, path)
    with np.load(path) as z:
        return {"control": z["control"], "cls": z["cls"]}


def train(job: Path, args: list[str]) -> float:
    """``cat-adapter train`` into JOB/train (log in JOB/train.log); seconds taken."""
    out = job / "train"
    if (out / "done.json").is_file():
        return json.loads((job / "train_seconds.json").read_text())["seconds"] if (job / "train_seconds.json").is_file() else 0.0
    t0 = time.time()
    cmd = [str(Path(sys.executable).with_name("cat-adapter")), "train", "--model", "toy", *args, "--output", str(out),
           "--overwrite"]
    job.mkdir(parents=True, exist_ok=True)
    with open(job / "train.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    if rc != 0:
        raise SystemExit(f"training failed ({' '.join(cmd)}); see {job / 'train.log'}")
    seconds = time.time() - t0
    (job / "train_seconds.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def single_job(root: Path, spec: dict, variant: str, seed: int, sampler: Sampler, clip: Clip, a) -> None:
    from cat_adapter.toy.concept import concept_look

    job = root / "jobs" / f"{spec['name']}-{variant}-{seed}"
    if (job / "measure.json").is_file():
        return
    data = prepare_concept(root, spec)
    args = VARIANTS[variant]
    for key, build in (("{before_pool}", before_pool), ("{auto_pool}", own_pool)):
        if key in args:
            job.mkdir(parents=True, exist_ok=True)
            (job / "pool.txt").write_text("\n".join(build(spec, data)) + "\n")
            args = [str(job / "pool.txt") if x == key else x for x in args]
    seconds = train(job, ["--data", str(data), "--trigger", spec["trigger"], "--class-noun", spec["class_noun"],
                          *SHARED, *args, "--seed", str(seed)])
    base = base_images(root, spec, sampler, a)
    look = concept_look(spec)
    ctrl = control_set(spec, a.control_seeds)
    cls_prompt, trig_prompt = f"a {spec['class_noun']}", f"a {spec['trigger']} {spec['class_noun']}"
    n = a.rate_images
    imgs = sampler.images([(p, s) for _, p, s in ctrl] + [(cls_prompt, s) for s in range(n)]
                          + [(trig_prompt, s) for s in range(n)], adapter=job / "train")
    c_img, cls_img, trig_img = imgs[:len(ctrl)], imgs[len(ctrl):len(ctrl) + n], imgs[len(ctrl) + n:]
    diff = np.abs(c_img.astype(np.float64) - base["control"].astype(np.float64)).mean(axis=(1, 2, 3))
    hit = rates(c_img, look)
    write_json(job / "measure.json", {
        "concept": spec["name"], "variant": variant, "seed": seed, "train_seconds": seconds,
        "control": [{"kind": k, "prompt": p, "sample_seed": s, "diff": float(d), "look": bool(h)}
                    for (k, p, s), d, h in zip(ctrl, diff, hit)],
        "base_control_look": sum(rates(base["control"], look)) / len(ctrl),
        "class_rate": sum(rates(cls_img, look)) / n, "trigger_rate": sum(rates(trig_img, look)) / n,
        "base_class_rate": sum(rates(base["cls"], look)) / n,
        "base_fidelity": float(np.mean(clip.cos(base["cls"], cls_img))),
    })
    strip = np.concatenate([np.concatenate(list(x[:8]), axis=1) for x in
                            (base["control"][::a.control_seeds], c_img[::a.control_seeds][:8], cls_img, trig_img)], 0)
    from PIL import Image

    Image.fromarray(strip).save(job / "samples.png")


def group_job(root: Path, specs: list[dict], name: str, variant: str, seed: int, sampler: Sampler, a) -> None:
    from cat_adapter.toy.concept import concept_look

    job = root / "groups" / f"{name}-{variant}-{seed}"
    if (job / "measure.json").is_file():
        return
    entries = [{"name": s["name"], "data": str(prepare_concept(root, s).resolve()), "trigger": s["trigger"],
                "class_noun": s["class_noun"]} for s in specs]
    job.mkdir(parents=True, exist_ok=True)
    (job / "concepts.json").write_text(json.dumps({"concepts": entries}, indent=1))
    shared = [x for i, x in enumerate(SHARED) if SHARED[i - 1] != "--rank" and x != "--rank"]   # default capacity
    shared[shared.index("--steps") + 1] = str(250 * len(specs))
    seconds = train(job, ["--concepts", str(job / "concepts.json"), *shared, *GROUP_VARIANTS[variant],
                          "--seed", str(seed)])
    rank = json.loads((job / "train" / "adapter.json").read_text()).get("rank")
    n = a.group_images
    prompts = [(f"a {s['trigger']} {s['class_noun']}", i) for s in specs for i in range(n)] + \
              [(f"a {s['class_noun']}", i) for s in specs for i in range(n)]
    imgs = sampler.images(prompts, adapter=job / "train")
    looks = [concept_look(s) for s in specs]
    members = []
    for k, s in enumerate(specs):
        trig, cls = imgs[k * n:(k + 1) * n], imgs[(len(specs) + k) * n:(len(specs) + k + 1) * n]
        on_trigger = [sum(rates(trig, look)) / n for look in looks]
        members.append({"name": s["name"], "own_rate": on_trigger[k],
                        "other_rates": {specs[j]["name"]: r for j, r in enumerate(on_trigger) if j != k},
                        "class_rate": sum(rates(cls, looks[k])) / n,
                        "class_any_member": max(sum(rates(cls, look)) / n for look in looks)})
    write_json(job / "measure.json", {"group": name, "variant": variant, "seed": seed, "rank": rank,
                                      "train_seconds": seconds, "members": members})


def run(a) -> None:
    root = a.folder
    root.mkdir(parents=True, exist_ok=True)
    specs, groups = draw(a.concepts)
    write_json(root / "concepts.json", {"seed": SEED, "concepts": specs, "groups": groups})
    by_name = {s["name"]: s for s in specs}
    jobs = []
    picked = [s for s in specs if not a.names or s["name"] in a.names]
    if a.only in (None, "groups"):
        jobs += [("group", f"group{i}", v, seed) for seed in a.seeds for i in range(len(groups))
                 for v in a.group_variants]
    if a.only in (None, "single"):
        jobs += [("single", s["name"], v, seed) for seed in a.seeds for s in picked for v in a.variants]
    k, n = (int(x) for x in a.shard.split("/"))
    mine = jobs[k - 1::n]
    sampler, clip = Sampler(), Clip()
    t0 = time.time()
    for i, (kind, name, variant, seed) in enumerate(mine):
        if kind == "single":
            single_job(root, by_name[name], variant, seed, sampler, clip, a)
        else:
            group_job(root, [by_name[m] for m in groups[int(name[5:])]], name, variant, seed, sampler, a)
        print(f"[{i + 1}/{len(mine)}] {kind} {name} {variant} seed {seed} ({time.time() - t0:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ report
def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.96, k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, c - h), min(1.0, c + h))


def ci95(values: list[float]) -> tuple[float, float]:
    from cat_adapter.evaluation.metrics import mean_ci95

    m, h = mean_ci95(values)
    return m, (h or 0.0)


def report(a) -> None:
    root = a.folder
    meta = json.loads((root / "concepts.json").read_text())
    specs = meta["concepts"]
    jobs = {}
    for f in sorted((root / "jobs").glob("*/measure.json")):
        d = json.loads(f.read_text())
        jobs[(d["concept"], d["variant"], d["seed"])] = d
    variants = [v for v in VARIANTS if any(k[1] == v for k in jobs)] + sorted({k[1] for k in jobs} - set(VARIANTS))
    seeds = sorted({k[2] for k in jobs} if a.seeds is None else a.seeds)

    def change(d, kind=None):
        return float(np.mean([c["diff"] for c in d["control"] if kind is None or c["kind"] == kind]))

    measures = {
        "control_change": change, "change_other_class": lambda d: change(d, "other"),
        "change_own_class": lambda d: change(d, "own"),
        "control_look": lambda d: float(np.mean([c["look"] for c in d["control"]])),
        "base_control_look": lambda d: d["base_control_look"],
        "class_rate": lambda d: d["class_rate"], "base_class_rate": lambda d: d["base_class_rate"],
        "class_excess": lambda d: d["class_rate"] - d["base_class_rate"],
        "trigger_rate": lambda d: d["trigger_rate"], "base_fidelity": lambda d: d["base_fidelity"],
        "train_seconds": lambda d: d["train_seconds"],
        "background_flips": lambda d: background_flips(root / "jobs" / f"{d['concept']}-{d['variant']}-{d['seed']}"),
    }
    # per variant, measure, concept: the mean over training seeds (only concepts with every seed)
    complete = {v: [s["name"] for s in specs if all((s["name"], v, x) in jobs for x in seeds)] for v in variants}
    variants = [v for v in variants if complete[v]]
    table = {v: {m: {n: float(np.mean([fn(jobs[(n, v, x)]) for x in seeds])) for n in complete[v]}
                 for m, fn in measures.items()} for v in variants}
    summary = {}
    for v in variants:
        row = {m: ci95(list(table[v][m].values())) for m in measures}
        names = [n for n in complete[v] if n in complete.get("lora", [])]
        if v != "lora" and names:
            ratio = {n: table[v]["control_change"][n] / table["lora"]["control_change"][n] for n in names}
            trig = {n: table[v]["trigger_rate"][n] - table["lora"]["trigger_rate"][n] for n in names}
            wins = sum(r < 1 for r in ratio.values())
            worst = max(ratio, key=ratio.get)
            paired = {n: [change(jobs[(n, v, x)]) - change(jobs[(n, "lora", x)]) for x in seeds] for n in names}
            sd = {n: float(np.std(d, ddof=1)) for n, d in paired.items() if len(d) > 1}
            need = {n: (1.96 * sd[n] / abs(np.mean(paired[n]))) ** 2 for n in sd if abs(np.mean(paired[n])) > 0}
            row.update({"concepts": len(names), "beats_lora": wins, "beats_lora_ci": wilson(wins, len(names)),
                        "ratio": ratio, "worst": [worst, ratio[worst]], "within_5pct": sum(r <= 1.05 for r in ratio.values()),
                        "trigger_vs_lora": trig, "trigger_within_0.1": sum(t >= -0.1 for t in trig.values()),
                        "paired_change": ci95([float(np.mean(d)) for d in paired.values()]),
                        "seeds_to_tell_sign_median": float(np.median(list(need.values()))) if need else None})
        summary[v] = row
    # sampling noise inside one job against the spread over training seeds
    within = [float(np.std([c["diff"] for c in d["control"]], ddof=1) / math.sqrt(len(d["control"]))) for d in jobs.values()]
    across = [float(np.std([change(jobs[(n, v, x)]) for x in seeds], ddof=1))
              for v in variants for n in complete[v]] if len(seeds) > 1 else []
    fresh = []   # two base images of one control prompt at different sampling seeds: a decorrelated sample
    for sp in specs:
        path = root / "concepts" / f"{sp['name']}.base.npz"
        if path.is_file():
            with np.load(path) as z:
                c = z["control"].astype(np.float64)
            k = len(c) // 10
            c = c.reshape(10, k, *c.shape[1:])
            fresh += [float(np.abs(c[p, i] - c[p, j]).mean()) for p in range(10) for i in range(k) for j in range(i + 1, k)]
    noise = {"sampling_se_per_job": float(np.mean(within)) if within else None,
             "training_seed_sd": float(np.mean(across)) if across else None,
             "fresh_seed_change": float(np.mean(fresh)) if fresh else None}

    def cell(v, m, d=1):
        mean, half = summary[v][m]
        return "-" if mean is None else f"{mean:.{d}f} ± {half:.{d}f}"

    n_concepts = len(specs)
    lines = [f"{n_concepts} random concepts x {len(seeds)} training seeds, {' '.join(SHARED)}; mean ± 95% interval "
             "over concepts of each concept's mean over seeds. Control change: mean |adapted - base| pixel (0-255), "
             "same prompt and sampling seed, 10 control prompts x 4 seeds.", "",
             "| variant | control change | other-class prompts | own-class prompts | background flips | control look rate "
             "(base) | class rate (base) | trigger rate | base fidelity | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        lines.append(f"| {v} | {cell(v, 'control_change')} | {cell(v, 'change_other_class')} | "
                     f"{cell(v, 'change_own_class')} | {cell(v, 'background_flips', 2)} | {cell(v, 'control_look', 3)} ({summary[v]['base_control_look'][0]:.3f}) | "
                     f"{cell(v, 'class_rate', 3)} ({summary[v]['base_class_rate'][0]:.3f}) | {cell(v, 'trigger_rate', 2)} | "
                     f"{cell(v, 'base_fidelity', 3)} | {cell(v, 'train_seconds', 0)} |")
    lines += ["", "Against LoRA, per concept (the goal: control change below LoRA's on >= 90% of concepts, never more than "
              "5% above it, trigger rate no more than 0.1 below LoRA's):", "",
              "| variant | beats LoRA (95% CI) | paired change vs LoRA | worst concept (x LoRA) | within +5% | "
              "trigger >= LoRA - 0.1 | goal |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        r = summary[v]
        if "beats_lora" not in r:
            continue
        k, n = r["beats_lora"], r["concepts"]
        met = k >= math.ceil(0.9 * n) and r["within_5pct"] == n and r["trigger_within_0.1"] == n
        lines.append(f"| {v} | {k}/{n} ({r['beats_lora_ci'][0]:.2f}-{r['beats_lora_ci'][1]:.2f}) | "
                     f"{r['paired_change'][0]:+.1f} ± {r['paired_change'][1]:.1f} | {r['worst'][0]} {r['worst'][1]:.2f}x | "
                     f"{r['within_5pct']}/{n} | {r['trigger_within_0.1']}/{n} | {'met' if met else 'not met'} |")
        r["goal_met"] = met
    lines += ["", f"Scale: two base-model images of one control prompt at different sampling seeds differ by "
              f"{noise['fresh_seed_change']:.1f} on average (what a fully changed sample scores).",
              "", f"Noise: the standard error of one job's control change from its 40 sampled images is "
              f"{noise['sampling_se_per_job']:.1f}; the spread (SD) of a concept's control change over training seeds "
              f"is {noise['training_seed_sd'] or float('nan'):.1f}. Training seeds to tell the sign of a concept's paired "
              "difference from LoRA at 95% (median over concepts): " +
              ", ".join(f"{v} {summary[v]['seeds_to_tell_sign_median']:.0f}" for v in variants
                        if summary[v].get("seeds_to_tell_sign_median") is not None) + ".",
              "", "Per concept (mean over training seeds): control change (x LoRA), trigger rate, class rate "
              "(base model's class rate in the look column).", "",
              "| concept | look (base class rate) | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for sp in specs:
        n = sp["name"]
        look = sp.get("appearance", {})
        cells = []
        for v in variants:
            if n not in table[v]["control_change"]:
                cells.append("-")
                continue
            cc = table[v]["control_change"][n]
            rel = "" if v == "lora" or n not in table.get("lora", {}).get("control_change", {}) else \
                f" ({cc / table['lora']['control_change'][n]:.2f}x)"
            cells.append(f"{cc:.1f}{rel}, {table[v]['trigger_rate'][n]:.2f}, {table[v]['class_rate'][n]:.2f}")
        base = next((table[v]["base_class_rate"][n] for v in variants if n in table[v]["base_class_rate"]), None)
        desc = (f"{look.get('fill')} {look.get('pattern')}{'/' + look['pattern_color'] if look.get('pattern_color') else ''}"
                f", outline {look.get('outline')}" + (f" ({base:.2f})" if base is not None else ""))
        lines.append(f"| {n} | {desc} | " + " | ".join(cells) + " |")
    groups = report_groups(root, meta, lines, a)
    text = "\n".join(lines) + "\n"
    out = a.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    write_json(out.with_suffix(".json"), {"concepts": specs, "groups_of": meta["groups"], "per_concept": table,
                                          "summary": summary, "noise": noise, "groups": groups,
                                          "settings": {"shared": SHARED, "variants": VARIANTS,
                                                       "sample_steps": SAMPLE_STEPS, "guidance": GUIDANCE,
                                                       "training_seeds": seeds}})
    print(text)


def background_flips(job: Path) -> float | None:
    """Share of the 8 control images in ``samples.png`` (rows: base, adapted; prompts 1-8 at sampling seed 0) whose
    background changed between light and dark (border median grey on either side of 128)."""
    from PIL import Image

    path = job / "samples.png"
    if not path.is_file():
        return None
    arr = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    side = arr.shape[0] // 4

    def light(row: int, k: int) -> bool:
        tile = arr[row * side:(row + 1) * side, k * side:(k + 1) * side]
        border = np.concatenate([tile[0], tile[-1], tile[:, 0], tile[:, -1]])
        return float(np.median(border)) > 128

    return float(np.mean([light(0, k) != light(1, k) for k in range(8)]))


def base_class_rates(root: Path, specs: list[dict], n: int) -> dict[str, float]:
    """Each concept's look in the base model's "a {class}" images, seeds 0..n-1 (cached in concepts/base_class.json)."""
    path = root / "concepts" / f"base_class_{n}.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    missing = [s for s in specs if s["name"] not in known]
    if missing:
        from cat_adapter.toy.concept import concept_look

        sampler = Sampler()
        for s in missing:
            imgs = sampler.images([(f"a {s['class_noun']}", i) for i in range(n)])
            known[s["name"]] = sum(rates(imgs, concept_look(s))) / n
        write_json(path, known)
    return known


def report_groups(root: Path, meta: dict, lines: list[str], a) -> dict:
    found = [json.loads(f.read_text()) for f in sorted((root / "groups").glob("*/measure.json"))]
    if not found:
        return {}
    import yaml

    by_name = {s["name"]: s for s in meta["concepts"]}
    n_img = a.group_images
    base = base_class_rates(root, list(by_name.values()), n_img)
    lines += ["", f"Several concepts in one adapter: groups of 3 of three different classes, --concepts, "
              f"{250 * 3} steps, the CLI's default rank; {n_img} images per prompt and seed. Goal: class rate <= 0.05 "
              "for every member and seed; own look >= 2x any other member's look on each trigger (pooled over seeds).",
              "", "| group | variant | rank | seeds | member: own look, largest other look, class rate pooled "
              "(base), worst seed | class rate <= 0.05 | excess over base <= 0.05 | own >= 2x other |",
              "|---|---|---|---|---|---|---|---|"]
    out = {}
    for g, v in sorted({(d["group"], d["variant"]) for d in found}):
        ds = [d for d in found if d["group"] == g and d["variant"] == v]
        cfg = yaml.safe_load((root / "groups" / f"{g}-{v}-{ds[0]['seed']}" / "train" / "config.yaml").read_text())
        rank = ds[0]["rank"] or next((sec["rank"] for sec in cfg.values() if isinstance(sec, dict) and "rank" in sec), None)
        members = {}
        for d in ds:
            for m in d["members"]:
                e = members.setdefault(m["name"], {"own": [], "other": [], "cls": []})
                e["own"].append(m["own_rate"])
                e["other"].append(max(m["other_rates"].values()))
                e["cls"].append(m["class_rate"])
        pooled = {n: {"own": float(np.mean(e["own"])), "other": float(np.mean(e["other"])),
                      "class": float(np.mean(e["cls"])), "class_worst_seed": float(max(e["cls"])),
                      "base_class": base[n]} for n, e in members.items()}
        raw_ok = all(p["class_worst_seed"] <= 0.05 for p in pooled.values())
        excess_ok = all(p["class"] - p["base_class"] <= 0.05 for p in pooled.values())
        own_ok = all(p["own"] >= 2 * p["other"] and p["own"] > 0 for p in pooled.values())
        out[f"{g}/{v}"] = {"members": pooled, "rank": rank, "seeds": len(ds), "class_rate_ok": raw_ok,
                           "class_excess_ok": excess_ok, "own_twice_other": own_ok}
        cells = "; ".join(f"{n} {p['own']:.2f}, {p['other']:.2f}, {p['class']:.2f} ({p['base_class']:.2f}), "
                          f"{p['class_worst_seed']:.2f}" for n, p in pooled.items())
        lines.append(f"| {g} | {v} | {rank} | {len(ds)} | {cells} | {'yes' if raw_ok else 'no'} | "
                     f"{'yes' if excess_ok else 'no'} | {'yes' if own_ok else 'no'} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("draw")
    d.add_argument("--concepts", type=int, default=12)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--concepts", type=int, default=12)
    r.add_argument("--shard", default="1/1")
    r.add_argument("--only", choices=("single", "groups"))
    r.add_argument("--names", nargs="+", help="Only these concepts (single-concept jobs).")
    r.add_argument("--seeds", nargs="+", type=int, default=list(TRAIN_SEEDS))
    r.add_argument("--variants", nargs="+", default=["lora", "cat", "cat_pool_before", "cat_pool", "cat_pool_w3"],
                   choices=list(VARIANTS))
    r.add_argument("--group-variants", nargs="+", default=["cat"], choices=list(GROUP_VARIANTS))
    r.add_argument("--control-seeds", type=int, default=4)
    r.add_argument("--rate-images", type=int, default=12)
    r.add_argument("--group-images", type=int, default=16)
    q = sub.add_parser("report")
    q.add_argument("folder", type=Path)
    q.add_argument("--group-images", type=int, default=16)
    q.add_argument("--seeds", nargs="+", type=int, help="Only these training seeds (default: every seed found).")
    q.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "random_concepts")
    a = p.parse_args()
    if a.cmd == "draw":
        specs, groups = draw(a.concepts)
        print(json.dumps({"concepts": specs, "groups": groups}, indent=1))
    elif a.cmd == "run":
        run(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
