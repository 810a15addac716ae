"""CAT under bf16 on the toy world (issue 12, point 4).

1. The preservation term's rounding error: on the shipped toy U-Net, LoRA B set to random values of scale s (small
   1e-3 .. moderate 1e-1; A as initialised), the term ||eps_frozen(y) - eps_adapted(y)||^2 of one fixed batch
   computed by the trainer's own code (``Method.forward_backward``, lean mode) in float32 and under CPU bf16
   autocast with the frozen model's weights in bf16 (what ``--mixed-precision bf16`` runs). Reported: both terms and
   the relative error |bf16 - fp32| / fp32, median over 8 batches.
2. With ``--runs DIR`` (a finished compare folder of ``benchmarks/plans/bf16.yaml``): drift_plain, base fidelity and
   concept rate of fp32 and bf16 runs, paired by (concept, seed): the ratio drift_bf16 / drift_fp32 with a 95%
   interval (the decision: a remedy is needed if CAT's ratio exceeds 1.25), and the differences of the others.

    python benchmarks/bf16_cat.py --runs runs/bf16      # -> benchmarks/results/bf16_cat.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cat_adapter.evaluation.metrics import mean_ci95

SCALES = (1e-3, 1e-2, 1e-1)


def term_errors(batches: int = 8) -> list[dict]:
    import torch

    from cat_adapter.config import build_config
    from cat_adapter.data.batch import Batch, Noised
    from cat_adapter.methods.base import build_method
    from cat_adapter.models import ModelSpec, freeze, load_model

    prompts = ["a circle", "a red square on a blue background", "a star"]
    out = []
    models = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_model(ModelSpec("toy"), dtype=dtype)
        freeze(*model.frozen_components())
        cfg = build_config(overrides=dict(model="toy", data="-", output="-", class_noun="circle", method="cat",
                                          cat_mode="lean"))
        models[name] = (model, build_method(cfg, model))
    cond = models["fp32"][0].text.encode(prompts, device="cpu")
    shape = models["fp32"][0].latent_shape(32, 32)
    for scale in SCALES:
        g = torch.Generator().manual_seed(0)
        lora = {}
        for n, p in models["fp32"][0].denoiser.named_parameters():
            if "lora_B" in n:
                lora[n] = scale * torch.randn(p.shape, generator=g)
        for model, _ in models.values():
            for n, p in model.denoiser.named_parameters():
                if n in lora:
                    p.data.copy_(lora[n])
                elif "lora_A" in n:
                    p.data.copy_(dict(models["fp32"][0].denoiser.named_parameters())[n].data)
        rows = []
        for b in range(batches):
            gb = torch.Generator().manual_seed(100 + b)
            n = len(prompts)
            inst = Noised(torch.randn(n, *shape, generator=gb), torch.randn(n, *shape, generator=gb),
                          torch.randint(0, 1000, (n,), generator=gb))
            batch = Batch(inst, {"trigger": cond, "plain": cond})
            terms = {}
            for name, (model, method) in models.items():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    terms[name] = method.forward_backward(batch, lambda loss: None).terms["loss_preservation"]
            rows.append(terms)
        fp32 = statistics.median(r["fp32"] for r in rows)
        bf16 = statistics.median(r["bf16"] for r in rows)
        rel = statistics.median(abs(r["bf16"] - r["fp32"]) / r["fp32"] for r in rows)
        out.append({"lora_b_scale": scale, "term_fp32": fp32, "term_bf16": bf16, "relative_error": rel})
        print(f"B ~ {scale:g}: term fp32 {fp32:.3e}, bf16 {bf16:.3e}, relative error {rel:.2f}", flush=True)
    return out


def paired(folder: Path) -> dict:
    jobs = {}
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("seed") is None:
            continue
        m = json.loads((done.parent / d["metrics"]).read_text())
        log = [json.loads(ln) for ln in (done.parent / "train" / "log.jsonl").read_text().splitlines() if ln.strip()]
        jobs[(d["concept"], d["variant"], int(d["seed"]))] = {
            **{k: m.get(k) for k in ("drift_plain", "base_fidelity", "concept_rate_trigger", "identity_score")},
            "step_s": statistics.fmean(r["seconds"] for r in log)}
    keys = sorted({(c, s) for c, _, s in jobs})
    out = {}
    for method in ("cat", "lora"):
        ratio, d_fid, d_rate, d_id, n = [], [], [], [], 0
        for c, s in keys:
            a, b = jobs.get((c, method, s)), jobs.get((c, f"{method}_bf16", s))
            if not (a and b):
                continue
            n += 1
            ratio.append(b["drift_plain"] / a["drift_plain"])
            d_fid.append(b["base_fidelity"] - a["base_fidelity"])
            d_rate.append(b["concept_rate_trigger"] - a["concept_rate_trigger"])
            d_id.append(b["identity_score"] - a["identity_score"])
        fp32 = [jobs[(c, method, s)] for c, s in keys if (c, method, s) in jobs]
        bf16 = [jobs[(c, f"{method}_bf16", s)] for c, s in keys if (c, f"{method}_bf16", s) in jobs]
        out[method] = {"pairs": n, "drift_ratio_bf16_over_fp32": mean_ci95(ratio),
                       "drift_fp32": mean_ci95([j["drift_plain"] for j in fp32]),
                       "drift_bf16": mean_ci95([j["drift_plain"] for j in bf16]),
                       "d_base_fidelity": mean_ci95(d_fid), "d_concept_rate": mean_ci95(d_rate),
                       "d_identity": mean_ci95(d_id),
                       "step_s_fp32": mean_ci95([j["step_s"] for j in fp32]),
                       "step_s_bf16": mean_ci95([j["step_s"] for j in bf16])}
    if "cat" in out and "lora" in out:
        out["cat_bf16_below_lora_bf16"] = all(
            jobs[(c, "cat_bf16", s)]["drift_plain"] < jobs[(c, "lora_bf16", s)]["drift_plain"]
            for c, s in keys if (c, "cat_bf16", s) in jobs and (c, "lora_bf16", s) in jobs)
    return out


def fmt(x, digits=3):
    mean, half = x
    return "-" if mean is None else f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=None)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "bf16_cat")
    a = p.parse_args()
    result = {"term_error": term_errors()}
    lines = ["| LoRA B scale | term fp32 | term bf16 | relative error (median of 8 batches) |", "|---|---|---|---|"]
    lines += [f"| {r['lora_b_scale']:g} | {r['term_fp32']:.3e} | {r['term_bf16']:.3e} | {r['relative_error']:.2f} |"
              for r in result["term_error"]]
    if a.runs:
        result["runs"] = str(a.runs)
        result["paired"] = pr = paired(a.runs)
        lines += ["", "| method | pairs | drift fp32 | drift bf16 | drift bf16 / fp32 (paired) | Δ base fidelity | "
                  "Δ concept rate | Δ identity | step s fp32 / bf16 |", "|---|---|---|---|---|---|---|---|---|"]
        for m in ("cat", "lora"):
            r = pr[m]
            lines.append(f"| {m} | {r['pairs']} | {fmt(r['drift_fp32'], 5)} | {fmt(r['drift_bf16'], 5)} | "
                         f"{fmt(r['drift_ratio_bf16_over_fp32'], 2)} | {fmt(r['d_base_fidelity'])} | "
                         f"{fmt(r['d_concept_rate'])} | {fmt(r['d_identity'])} | "
                         f"{fmt(r['step_s_fp32'], 3)} / {fmt(r['step_s_bf16'], 3)} |")
        ratio = pr["cat"]["drift_ratio_bf16_over_fp32"][0]
        verdict = "no remedy needed" if ratio is not None and ratio <= 1.25 else "REMEDY NEEDED"
        lines += ["", f"Decision (CAT's paired drift ratio <= 1.25): {ratio:.2f} -> {verdict}."]
        result["remedy_needed"] = not (ratio is not None and ratio <= 1.25)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
