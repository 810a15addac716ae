"""What an int8 base does to CAT on the toy world (the quantized-base issue, point 4).

Reads a finished compare folder of ``benchmarks/plans/quantized_cat.yaml`` (LoRA and CAT on the float32 toy base
and on the int8 base, 3 concepts x 3 seeds) and pairs the variants by (concept, seed). Every evaluation there loads
the float32 base, so ``drift_plain`` is the change an adapter makes to the noise prediction on trigger-free prompts
measured against the **unquantized** model. The floor is the int8 base's own drift from the float32 base (no
adapter), measured here on the same prompts with the evaluation's draws (``evaluation.drift.prediction_drift``'s
z_t and t). Targets: CAT on int8 keeps drift within 1.5x of CAT on float32 and below 0.6x of LoRA on int8.

    python benchmarks/quantized_cat.py runs/quantized_cat     # -> benchmarks/results/quantized_cat.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cat_adapter.evaluation.metrics import mean_ci95

KEYS = ("drift_plain", "base_fidelity", "class_diversity", "identity_score", "kps", "leakage", "concept_rate_trigger",
        "concept_rate_class", "concept_rate_control")


def load_jobs(folder: Path) -> dict[tuple[str, str, int], dict]:
    jobs = {}
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("variant") == "base" or d.get("seed") is None:
            continue
        m = json.loads((done.parent / d["metrics"]).read_text())
        jobs[(d["concept"], d["variant"], int(d["seed"]))] = {"step_s": d.get("step_s"),
                                                              "prompts": m.get("drift_plain_per_prompt") or {},
                                                              **{k: m.get(k) for k in KEYS}}
    return jobs


@torch.no_grad()
def floor(prompts: list[str], *, samples: int = 8, seed: int = 0) -> dict[str, float]:
    """Per prompt: mean squared difference of the int8 and the float32 toy base's predictions (same z_t, t, prompt)."""
    from cat_adapter.models import ModelSpec, load_model

    fp, q = load_model(ModelSpec("toy")), load_model(ModelSpec("toy", quantize="int8"))
    g = torch.Generator().manual_seed(seed)
    res = fp.default_resolution
    z = torch.randn(samples, *fp.latent_shape(res, res), generator=g)
    t = torch.randint(0, fp.objective.num_train_timesteps, (samples,), generator=g)
    out = {}
    for prompt in dict.fromkeys(prompts):
        a = fp.predict(z, t, fp.text.encode([prompt], device="cpu").repeat(samples)).float()
        b = q.predict(z, t, q.text.encode([prompt], device="cpu").repeat(samples)).float()
        out[prompt] = torch.mean((a - b) ** 2).item()
    return out


def fmt(mean, half, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "quantized_cat")
    a = p.parse_args()
    jobs = load_jobs(a.folder)
    pairs = sorted({(c, s) for c, _, s in jobs})
    variants = ["lora", "cat", "lora_int8", "cat_int8"]
    rows = {v: {k: mean_ci95([jobs[(c, v, s)][k] for c, s in pairs if (c, v, s) in jobs
                              and jobs[(c, v, s)][k] is not None]) for k in KEYS} for v in variants}

    def ratios(num: str, den: str) -> list[float]:
        return [jobs[(c, num, s)]["drift_plain"] / jobs[(c, den, s)]["drift_plain"] for c, s in pairs
                if (c, num, s) in jobs and (c, den, s) in jobs]

    def diffs(num: str, den: str, key: str) -> list[float]:
        return [jobs[(c, num, s)][key] - jobs[(c, den, s)][key] for c, s in pairs
                if (c, num, s) in jobs and (c, den, s) in jobs and jobs[(c, num, s)][key] is not None
                and jobs[(c, den, s)][key] is not None]

    paired = {"cat_int8/cat drift": mean_ci95(ratios("cat_int8", "cat")),
              "cat_int8/lora_int8 drift": mean_ci95(ratios("cat_int8", "lora_int8")),
              "cat/lora drift": mean_ci95(ratios("cat", "lora")),
              "lora_int8/lora drift": mean_ci95(ratios("lora_int8", "lora")),
              **{f"cat_int8-cat {k}": mean_ci95(diffs("cat_int8", "cat", k))
                 for k in ("base_fidelity", "identity_score", "concept_rate_trigger", "concept_rate_class")}}
    prompts = sorted({p for j in jobs.values() for p in j["prompts"]})
    fl = floor(prompts)
    floor_mean = sum(fl.values()) / len(fl) if fl else None
    targets = {"cat_int8 <= 1.5x cat": paired["cat_int8/cat drift"][0] is not None
               and paired["cat_int8/cat drift"][0] <= 1.5,
               "cat_int8 < 0.6x lora_int8": paired["cat_int8/lora_int8 drift"][0] is not None
               and paired["cat_int8/lora_int8 drift"][0] < 0.6}
    lines = ["| variant | drift_plain (vs float32 base) | base fidelity | class diversity | identity | KPS | "
             "concept rate trigger / class / control |", "|---|---|---|---|---|---|---|"]
    for v, r in rows.items():
        lines.append(f"| {v} | {fmt(*r['drift_plain'], 5)} | {fmt(*r['base_fidelity'])} | "
                     f"{fmt(*r['class_diversity'])} | {fmt(*r['identity_score'])} | {fmt(*r['kps'])} | "
                     f"{fmt(*r['concept_rate_trigger'], 2)} / {fmt(*r['concept_rate_class'], 2)} / "
                     f"{fmt(*r['concept_rate_control'], 2)} |")
    lines += ["", "| paired over (concept, seed) | mean ± 95% interval |", "|---|---|"]
    lines += [f"| {k} | {fmt(*v, 4)} |" for k, v in paired.items()]
    lines += ["", f"Floor: the int8 base's own drift from the float32 base on the same {len(fl)} prompts: "
              f"{floor_mean:.6f}" if floor_mean is not None else "Floor: no prompts", "",
              "Targets: " + ", ".join(f"{k}: {'holds' if ok else 'FAILS'}" for k, ok in targets.items())]
    text = "\n".join(lines)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps({"folder": str(a.folder), "pairs": [list(x) for x in pairs],
                                                         "variants": rows, "paired": paired, "floor": fl,
                                                         "floor_mean": floor_mean, "targets": targets}, indent=1))
    a.output.with_suffix(".md").write_text(f"Mean ± 95% interval over {len(pairs)} (concept, seed) pairs "
                                           f"({a.folder}).\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
