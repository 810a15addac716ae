"""Compare plans: concepts x method variants x seeds, read from YAML and checked whole before anything runs.

```yaml
concepts:
  - {name: teapot, data: path/to/folder, trigger: sks, class_noun: teapot}
  - {name: star, spec: path/to/toy_spec.json}            # a concept spec of the model's world (toy), or a mapping
  - {name: fox, prompt: "a watercolor fox character", trigger: zq, class_noun: fox}   # tco only
  - {name: both, group: [teapot, star], steps: 1200, rank: 8}   # one adapter for both (lora, cat); steps, rank: optional
  - {name: mug, data: path/to/mug, trigger: zwx, class_noun: mug, variants: [cat]}   # only these variants (any concept)
variants:
  - {name: lora, method: lora}
  - {name: cat, method: cat, cat_alpha: [0.5, 1.0]}      # one variant per value
seeds: [0, 1, 2]
shared: {model: toy, steps: 600, lr: 1.0e-4, resolution: 32}
evaluation: {clip: toy, images_per_prompt: 3, sample_steps: 20}
reference: lora                                          # variant of the paired differences (default lora)
```
Variant and ``shared`` keys are training options by their ``OUT/config.yaml`` names. Layers: the method's defaults
<- ``shared`` (keys the method does not read are skipped for it) <- the variant's own keys (an option the method
does not read is an error there). Relative paths are relative to the plan file.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cat_adapter.errors import CatAdapterError
from cat_adapter.io import read_yaml

PLAN_KEYS = ("concepts", "variants", "seeds", "shared", "evaluation", "reference")
CONCEPT_KEYS = ("name", "data", "spec", "prompt", "group", "steps", "rank", "trigger", "class_noun", "caption_template", "preserve_pool",
                "prompts", "control_prompts", "variants")
# Set per job by the harness, never by a plan's variants or shared section.
JOB_KEYS = ("data", "trigger", "class_noun", "output", "seed", "resume", "overwrite")
# Evaluation options compare sets per job (from the concept, the job and shared); the plan's evaluation section
# takes every other option of ``evaluate`` (EvalOptions).
EVAL_JOB_KEYS = ("model", "adapter", "data", "output", "concept", "label", "trigger", "class_noun", "preserve_prompt",
                 "caption_template", "overwrite", "cpu", "allow_pickle", "single_file_config")


def eval_keys() -> tuple[str, ...]:
    import dataclasses

    from cat_adapter.evaluation.evaluate import EvalOptions

    return tuple(f.name for f in dataclasses.fields(EvalOptions) if f.name not in EVAL_JOB_KEYS)


def path_options(cls: type) -> dict[str, str]:
    """Option name -> path kind (``in``/``out``) of ``cls``'s fields: what a plan's relative paths are re-based for."""
    from cat_adapter.options import path_fields

    return path_fields(cls)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclass
class Concept:
    name: str
    kind: str                          # folder | spec | prompt | group
    trigger: str
    class_noun: str | None
    data: Path | None = None           # the concept folder (spec: written by the harness)
    spec: dict | None = None           # a concept spec of the model's world (plugins.World), validated
    prompt: str | None = None          # prompt-only concept (tco)
    caption_template: str | None = None
    preserve_pool: Path | None = None
    prompts: Path | None = None        # held-out {trigger} prompts for evaluation
    control_prompts: Path | None = None
    members: list[str] | None = None   # a group: the concepts one adapter trains on together
    steps: int | None = None           # a group's training steps (e.g. the members' steps x their number)
    rank: int | None = None            # a group's LoRA rank (e.g. the members' rank x their number)
    variants: list[str] | None = None  # the variants (or sweep names) this concept trains with; None: every one

    def to_dict(self) -> dict:
        # an unset ``variants`` or ``rank`` is left out, so plans written before the key keep their fingerprint
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()
                if not (k in ("variants", "rank") and v is None)}


@dataclass
class Variant:
    name: str
    method: str
    options: dict[str, Any]
    sweep: dict | None = None          # {"group": name in the plan, "key": option, "value": value} for list values

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "options": self.options, "sweep": self.sweep}


@dataclass
class Plan:
    source: str
    concepts: list[Concept]
    variants: list[Variant]
    seeds: list[int]
    shared: dict[str, Any]
    evaluation: dict[str, Any]
    reference: str = "lora"
    root: Path = field(default_factory=Path)

    def to_dict(self) -> dict:
        return {"concepts": [c.to_dict() for c in self.concepts], "variants": [v.to_dict() for v in self.variants],
                "seeds": self.seeds, "shared": self.shared, "evaluation": self.evaluation, "reference": self.reference}

    def concept(self, name: str) -> Concept:
        return next(c for c in self.concepts if c.name == name)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


@dataclass(frozen=True, order=True)
class Job:
    id: str
    concept: str
    variant: str | None = None         # None: the base model's evaluation
    seed: int | None = None

    @property
    def is_base(self) -> bool:
        return self.variant is None


def _err(source: str, key: str, message: str) -> CatAdapterError:
    return CatAdapterError(f"{source}: {key}: {message}")


def _path(root: Path, value: Any, source: str, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _err(source, key, f"must be a path (got {value!r})")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p)


def _resolve_option_path(root: Path, key: str, value: Any, kinds: dict[str, str]) -> Any:
    """Relative paths of path options are relative to the plan file (``options.rebase_path``, the one rule)."""
    from cat_adapter.options import rebase_path

    return rebase_path(root, key, value, kinds)


def _train_paths() -> dict[str, str]:
    from cat_adapter.config import TrainConfig

    return path_options(TrainConfig)


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan; every error is one line naming the plan file and the key."""
    path = Path(path)
    source = f"--plan {path}"
    raw = read_yaml(path, source)
    if not isinstance(raw, dict):
        raise CatAdapterError(f"{source}: expected a mapping with keys {', '.join(PLAN_KEYS)}")
    return plan_from_dict(raw, source=source, root=path.resolve().parent)


def plan_from_dict(raw: dict, *, source: str, root: Path) -> Plan:
    unknown = [k for k in raw if k not in PLAN_KEYS]
    if unknown:
        raise _err(source, str(unknown[0]), f"unknown key (plan keys: {', '.join(PLAN_KEYS)})")
    shared = raw.get("shared") or {}
    if not isinstance(shared, dict):
        raise _err(source, "shared", "must be a mapping of training options")
    if "model" not in shared:
        raise _err(source, "shared.model", "is required (the base model every variant trains, e.g. toy)")
    for k in shared:
        if k in JOB_KEYS:
            raise _err(source, f"shared.{k}", "is set per job by compare (concepts and seeds give it)")
    shared = {k: _resolve_option_path(root, k, v, _train_paths()) for k, v in shared.items()}
    evaluation = raw.get("evaluation") or {}
    if not isinstance(evaluation, dict):
        raise _err(source, "evaluation", "must be a mapping")
    keys = eval_keys()
    for k, v in evaluation.items():
        if k not in keys:
            raise _err(source, f"evaluation.{k}", f"unknown key (evaluation keys: {', '.join(keys)})")
    from cat_adapter.evaluation.evaluate import EvalOptions

    eval_paths = path_options(EvalOptions)
    evaluation = {k: _resolve_option_path(root, k, v, eval_paths) for k, v in evaluation.items()}
    for k in ("prompts", "control_prompts"):
        if k in evaluation and not Path(evaluation[k]).is_file():
            raise _err(source, f"evaluation.{k}", f"{evaluation[k]}: file not found")
    from cat_adapter.plugins import world_for

    concepts = _concepts(raw.get("concepts"), source, root, world_for(shared["model"]))
    variants = _variants(raw.get("variants"), source, root)
    names = {v.name for v in variants} | {v.sweep["group"] for v in variants if v.sweep}
    for i, c in enumerate(concepts):
        for name in c.variants or ():
            if name not in names:
                raise _err(source, f"concepts[{i}].variants", f"{name!r} is not a variant of this plan "
                           f"({', '.join(sorted(names))})")
    seeds = _seeds(raw.get("seeds", [0]), source)
    reference = raw.get("reference", "lora")
    if "reference" in raw and reference not in {v.name for v in variants}:
        raise _err(source, "reference", f"{reference!r} is not a variant name")
    plan = Plan(source, concepts, variants, seeds, shared, evaluation, reference, root)
    _check_configs(plan)
    return plan


def _concepts(raw: Any, source: str, root: Path, world=None) -> list[Concept]:
    """The plan's concepts; ``spec`` concepts are read by ``world``, the world of ``shared.model``."""
    if not isinstance(raw, list) or not raw:
        raise _err(source, "concepts", "must be a non-empty list")
    out: list[Concept] = []
    for i, c in enumerate(raw):
        where = f"concepts[{i}]"
        if not isinstance(c, dict):
            raise _err(source, where, "must be a mapping")
        for k in c:
            if k not in CONCEPT_KEYS:
                raise _err(source, f"{where}.{k}", f"unknown key (concept keys: {', '.join(CONCEPT_KEYS)})")
        kinds = [k for k in ("data", "spec", "prompt", "group") if k in c]
        if len(kinds) != 1:
            raise _err(source, where, "needs exactly one of data (a concept folder), spec (a toy concept spec), "
                       "prompt (tco) or group (names of concepts one adapter learns together)")
        kind = {"data": "folder", "spec": "spec", "prompt": "prompt", "group": "group"}[kinds[0]]
        spec = None
        if kind == "spec":
            if world is None:
                raise _err(source, f"{where}.spec", "concept specs are written by a model's world (shared.model: toy); "
                           "for this model give the concept's data folder")
            where_spec = f"{source}: {where}.spec"
            spec = world.load_spec(c["spec"] if isinstance(c["spec"], dict)
                                   else _path(root, c["spec"], source, f"{where}.spec"), where_spec)
        name = c.get("name") or (spec or {}).get("name")
        if not isinstance(name, str) or not NAME.match(name) or "__" in name:
            raise _err(source, f"{where}.name", f"must be a name of letters, digits and _.=+- (got {name!r})")
        if any(x.name == name for x in out):
            raise _err(source, f"{where}.name", f"{name!r} is used twice")
        trigger = c.get("trigger") or (spec or {}).get("trigger") or "sks"
        class_noun = c.get("class_noun") or (spec or {}).get("class_noun")
        concept = Concept(name, kind, str(trigger), class_noun, spec=spec,
                          caption_template=c.get("caption_template"), prompt=c.get("prompt"))
        if "variants" in c:
            if not isinstance(c["variants"], list) or not c["variants"] or \
                    not all(isinstance(v, str) for v in c["variants"]):
                raise _err(source, f"{where}.variants", f"must list variant names (got {c['variants']!r})")
            concept.variants = list(c["variants"])
        if kind == "folder":
            concept.data = _path(root, c["data"], source, f"{where}.data")
            if not concept.data.is_dir():
                raise _err(source, f"{where}.data", f"{concept.data}: concept folder does not exist")
        for k in ("steps", "rank"):
            if k in c and kind != "group":
                raise _err(source, f"{where}.{k}", f"is for groups (one concept's {k} is a variant or shared option)")
        if kind == "group":
            concept.members = c["group"]
            for k in ("steps", "rank"):
                if k in c:
                    if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
                        raise _err(source, f"{where}.{k}", f"must be a positive integer (got {c[k]!r})")
                    setattr(concept, k, c[k])
            for k in ("trigger", "class_noun", "caption_template", "preserve_pool", "prompts", "control_prompts"):
                if k in c:
                    raise _err(source, f"{where}.{k}", "belongs to the group's member concepts, not to the group")
        if kind == "prompt" and (not isinstance(c["prompt"], str) or not c["prompt"].strip()):
            raise _err(source, f"{where}.prompt", "must be a non-empty prompt")
        for k in ("preserve_pool", "prompts", "control_prompts"):
            if k in c:
                p = _path(root, c[k], source, f"{where}.{k}")
                if not p.is_file():
                    raise _err(source, f"{where}.{k}", f"{p}: file not found")
                setattr(concept, k, p)
        out.append(concept)
    for i, concept in enumerate(out):
        if concept.kind != "group":
            continue
        members, where = concept.members, f"concepts[{i}].group"
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
            raise _err(source, where, f"must list two or more concept names (got {members!r})")
        for m in members:
            member = next((x for x in out if x.name == m), None)
            if member is None or member.kind not in ("folder", "spec"):
                raise _err(source, where, f"{m!r} is not a concept of this plan with data or a spec")
        if len(set(members)) != len(members):
            raise _err(source, where, "names a concept twice")
    return out


def _variants(raw: Any, source: str, root: Path) -> list[Variant]:
    from cat_adapter.config import field_index
    from cat_adapter.methods.registry import method_names

    if not isinstance(raw, list) or not raw:
        raise _err(source, "variants", "must be a non-empty list of methods ({name: ..., method: ...})")
    index = field_index()
    out: list[Variant] = []
    for i, v in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise _err(source, where, "must be a mapping with name and method")
        method = v.get("method")
        if method not in method_names():
            raise _err(source, f"{where}.method", f"must be one of {', '.join(method_names())} (got {method!r})")
        name = v.get("name", method)
        if not isinstance(name, str) or not NAME.match(name) or "__" in name:
            raise _err(source, f"{where}.name", f"must be a name of letters, digits and _.=+- (got {name!r})")
        options = {k: val for k, val in v.items() if k not in ("name", "method")}
        for k in options:
            if k not in index:
                raise _err(source, f"{where}.{k}", "unknown option (see cat-adapter train --help)")
            if k in JOB_KEYS:
                raise _err(source, f"{where}.{k}", "is set per job by compare (concepts and seeds give it)")
        # A list value expands into one variant per value, unless the option itself is a list (target_modules).
        sweep_keys = [k for k, val in options.items() if isinstance(val, list)
                      and not (_is_list_option(index[k][2]) and not any(isinstance(x, list) for x in val))]
        for k in sweep_keys:
            if not options[k]:
                raise _err(source, f"{where}.{k}", "an empty list expands into no variant")
        combos = list(itertools.product(*(options[k] for k in sweep_keys))) if sweep_keys else [()]
        for combo in combos:
            opts = {k: _resolve_option_path(root, k, val, _train_paths()) for k, val in options.items()}
            opts.update(dict(zip(sweep_keys, combo)))
            vname = name + "".join(f"-{k}={val}" for k, val in zip(sweep_keys, combo))
            sweep = ({"group": name, "key": sweep_keys[0], "value": combo[0]} if len(sweep_keys) == 1 else None)
            if any(x.name == vname for x in out):
                raise _err(source, f"{where}.name", f"variant {vname!r} is defined twice")
            out.append(Variant(vname, method, opts, sweep))
    return out


def _seeds(raw: Any, source: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                       for s in raw):
        raise _err(source, "seeds", f"must be a non-empty list of non-negative integers (got {raw!r})")
    if len(set(raw)) != len(raw):
        dup = next(s for s in raw if raw.count(s) > 1)
        raise _err(source, "seeds", f"seed {dup} is listed twice; each (concept, variant, seed) is one job")
    return list(raw)


def reads(method: str, option: str) -> bool:
    """Whether ``method`` reads ``option`` (options of method sections it does not have are not read)."""
    from cat_adapter.config import field_index
    from cat_adapter.methods.registry import get_spec, sections

    section = field_index()[option][0]
    spec = get_spec(method)
    if option == "data" and not spec.needs_data:
        return False
    return section not in sections() or section in spec.sections


def trains(concept: Concept, variant: Variant) -> bool:
    """Whether the plan has a (concept, variant) job: a group trains with the methods that take several concepts;
    a concept with ``variants:`` trains only with those (a variant counts by its name or its sweep's name)."""
    from cat_adapter.methods.registry import get_spec

    if concept.variants is not None and variant.name not in concept.variants and \
            (variant.sweep or {}).get("group") not in concept.variants:
        return False
    return concept.kind != "group" or get_spec(variant.method).multi_concept


def train_options(plan: Plan, concept: Concept, variant: Variant, seed: int, output: Path, *,
                  data: Path | None = None, pool: Path | None = None, concepts_file: Path | None = None
                  ) -> dict[str, Any]:
    """The training options of one job: shared (what the method reads) <- the variant's own <- the job's.
    ``data`` and ``pool``: the concept folder and preservation pool as the harness laid them out (spec concepts
    are written from their spec by the model's world); ``preserve_pool: concept`` names the concept's pool. A group's job trains on
    ``concepts_file`` (its members, each with its own pool when the variant asks for the concept's)."""
    opts = {k: v for k, v in plan.shared.items() if reads(variant.method, k)}
    opts.update(variant.options, method=variant.method)
    if concept.kind == "group":
        if opts.get("preserve_pool") == "concept":
            del opts["preserve_pool"]   # each member's pool is in the concepts file
        opts.pop("caption_template", None)  # the members' (or shared) template is in the concepts file
        if concept.steps:
            opts["steps"] = concept.steps
        if concept.rank and reads(variant.method, "rank"):
            opts["rank"] = concept.rank
        opts.update(concepts=str(concepts_file or "group-concepts.yaml"), seed=seed, output=str(output))
        return opts
    if opts.get("preserve_pool") == "concept":
        pool = pool or concept.preserve_pool
        if pool is None and concept.kind != "spec":
            raise _err(plan.source, f"variants.{variant.name}.preserve_pool",
                       f"'concept' needs a preserve_pool in concept {concept.name}")
        opts["preserve_pool"] = str(pool or "spec-concept-pool.txt")
    opts.update(trigger=concept.trigger, seed=seed, output=str(output))
    if concept.class_noun:
        opts["class_noun"] = concept.class_noun
    if concept.caption_template and reads(variant.method, "caption_template"):
        opts["caption_template"] = concept.caption_template
    from cat_adapter.methods.registry import get_spec, method_names

    spec = get_spec(variant.method)
    if not spec.needs_data:   # it makes its own images: a prompt-only concept's prompt is its option
        if concept.prompt and spec.prompt_option and spec.prompt_option not in variant.options:
            opts[spec.prompt_option] = concept.prompt
    elif concept.kind == "prompt":
        makers = [m for m in method_names() if get_spec(m).prompt_option]
        raise _err(plan.source, f"concepts.{concept.name}", f"has only a prompt, so only {' or '.join(makers)} can "
                   f"train on it (variant {variant.name} is {variant.method}); give it data or a spec")
    else:
        opts["data"] = str(data or concept.data or "spec-concept-folder")
    return opts


def _check_configs(plan: Plan) -> None:
    """Every (concept, variant) builds a valid training config: bad options fail before any job runs."""
    from cat_adapter.config import build_config

    for concept in plan.concepts:
        for variant in plan.variants:
            if not trains(concept, variant):
                continue
            opts = train_options(plan, concept, variant, plan.seeds[0], Path("/nonexistent/out"))
            try:
                build_config(overrides=opts)
            except CatAdapterError as exc:
                raise CatAdapterError(f"{plan.source}: variant {variant.name} on concept {concept.name}: {exc}") from None


def jobs(plan: Plan) -> list[Job]:
    """Every job, sorted by id: one base evaluation per concept with references, and (concept, variant, seed)."""
    out = [Job(f"{c.name}__base", c.name) for c in plan.concepts if c.kind not in ("prompt", "group")]
    out += [Job(f"{c.name}__{v.name}__seed{s}", c.name, v.name, s)
            for c in plan.concepts for v in plan.variants for s in plan.seeds if trains(c, v)]
    return sorted(out)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise CatAdapterError(f"--shard {text}: give I/N with 1 <= I <= N (1-based), e.g. --shard 1/2")
    return int(m.group(1)), int(m.group(2))


def shard(all_jobs: list[Job], which: tuple[int, int] | None) -> list[Job]:
    """Jobs I, I+N, ... of the sorted list (1-based I)."""
    if which is None:
        return list(all_jobs)
    i, n = which
    return all_jobs[i - 1::n]


def fingerprint(plan: Plan) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_list_option(typ) -> bool:
    """A list-valued option (``list[str]``, or ``list[str] | None``)."""
    from typing import get_args, get_origin

    return get_origin(typ) is list or any(get_origin(a) is list for a in get_args(typ))
