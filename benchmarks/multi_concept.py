"""Several concepts in one adapter on the toy world: the acceptance figures from a finished compare folder of
``benchmarks/plans/multi_concept.yaml``.

For each group and variant (lora, cat), per seed: each trigger's own
concept rate (the confusion diagonal: share of its trigger images with its own look), the largest share of
another concept's look (off-diagonal), each member's class-prompt concept rate, and the single-concept adapter's
rate with the same steps per concept (same variant and seed). A group's kind is read from its members' class nouns
in the folder's plan.json (not from its name). Targets:
- a group of concepts of different classes, under CAT: own rate >= 0.25 and >= 0.8 x the single-concept CAT rate;
  off-diagonal <= 0.10; class rate <= 0.05;
- a group of concepts of one class, under CAT: own rate >= 0.5 x the single-concept CAT rate; looks mix no more
  often than under LoRA.
The targets are checked on the rates pooled over seeds (3 seeds x 21 images = 63 per prompt, as the issue reads
them), and, for reference, on every seed alone.

    python benchmarks/multi_concept.py runs/multi_concept4    # -> benchmarks/results/multi_concept.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def group_kinds(folder: Path) -> dict[str, str]:
    """``{group: "classes" | "one class" | "mixed"}`` from the members' class nouns in the folder's plan.json."""
    concepts = {c["name"]: c for c in json.loads((folder / "plan.json").read_text())["plan"]["concepts"]}
    kinds = {}
    for name, c in concepts.items():
        if c["kind"] == "group":
            nouns = [concepts[m]["class_noun"] for m in c["members"]]
            kinds[name] = ("one class" if len(set(nouns)) == 1 else
                           "classes" if len(set(nouns)) == len(nouns) else "mixed")
    return kinds


def load(folder: Path) -> tuple[dict, dict]:
    groups, singles = {}, {}
    for done in sorted((folder / "jobs").glob("*/done.json")):
        d = json.loads(done.read_text())
        if d.get("seed") is None:
            continue
        m = json.loads((done.parent / d["metrics"]).read_text())
        key = (d["concept"], d["variant"], d["seed"])
        (groups if d.get("concept_kind") == "group" else singles)[key] = m
    return groups, singles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "multi_concept")
    a = p.parse_args()
    groups, singles = load(a.folder)
    kinds = group_kinds(a.folder)
    rows, out = [], {"group_kinds": kinds}
    lines = ["| group | variant | seed | member | own rate (single) | own / single | largest other look | class rate |",
             "|---|---|---|---|---|---|---|---|"]
    for (group, variant, seed), m in sorted(groups.items()):
        names = m["concepts"]
        matrix = m["confusion"]["matrix"]
        for i, name in enumerate(names):
            own = matrix[i][i]
            single = singles.get((name, variant.split(" [")[0], seed), {}).get("concept_rate_trigger")
            other = max((matrix[i][j] for j in range(len(names)) if j != i and matrix[i][j] is not None), default=None)
            cls = m["per_concept"][name].get("concept_rate_class")
            ratio = own / single if single else None
            rows.append({"group": group, "variant": variant, "seed": seed, "member": name, "own": own,
                         "single": single, "ratio": ratio, "other": other, "class_rate": cls})
            lines.append(f"| {group} | {variant} | {seed} | {name} | {own:.3f} ({'-' if single is None else f'{single:.3f}'}) | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} | {other:.3f} | {cls:.3f} |")

    def checks_of(rs: list[dict], label: str) -> dict[str, bool]:
        """The issue's targets over rows (per seed, or pooled over seeds); ``ratio`` is own / single."""
        def sel(group, variant):
            return [r for r in rs if r["group"] == group and r["variant"] == variant]

        c = {}
        for group, kind in kinds.items():
            cat, lora = sel(group, "cat"), sel(group, "lora")
            if not cat:
                continue
            if kind == "classes":
                c[f"{label} {group}: own >= 0.25"] = all(r["own"] >= 0.25 for r in cat)
                c[f"{label} {group}: own >= 0.8 x single"] = all(r["ratio"] is not None and r["ratio"] >= 0.8
                                                                for r in cat)
                c[f"{label} {group}: other look <= 0.10"] = all(r["other"] <= 0.10 for r in cat)
                c[f"{label} {group}: class rate <= 0.05"] = all(r["class_rate"] <= 0.05 for r in cat)
            elif kind == "one class":
                c[f"{label} {group}: own >= 0.5 x single"] = all(r["ratio"] is not None and r["ratio"] >= 0.5
                                                                for r in cat)
                if lora:
                    mix_cat = statistics.fmean(r["other"] for r in cat)
                    mix_lora = statistics.fmean(r["other"] for r in lora)
                    c[f"{label} {group}: mixing (mean other look) cat <= lora ({mix_cat:.4f} vs {mix_lora:.4f})"] = \
                        mix_cat <= mix_lora
                    out.setdefault("mixing", {})[group] = {"cat": mix_cat, "lora": mix_lora}
        return c

    means = []
    lines += ["", "Means over seeds:", "", "| group | variant | member | own rate | single-concept rate | ratio of means | "
              "largest other look | class rate |", "|---|---|---|---|---|---|---|---|"]
    for group, variant, member in dict.fromkeys((r["group"], r["variant"], r["member"]) for r in rows):
        rs = [r for r in rows if (r["group"], r["variant"], r["member"]) == (group, variant, member)]
        own, other, cls = (statistics.fmean(r[k] for r in rs) for k in ("own", "other", "class_rate"))
        single = statistics.fmean(r["single"] for r in rs) if all(r["single"] is not None for r in rs) else None
        means.append({"group": group, "variant": variant, "member": member, "own": own, "single": single,
                      "other": other, "class_rate": cls})
        lines.append(f"| {group} | {variant} | {member} | {own:.3f} | {'-' if single is None else f'{single:.3f}'} | "
                     f"{'-' if not single else f'{own / single:.2f}'} | {other:.3f} | {cls:.3f} |")
    pooled = [{**m, "ratio": m["own"] / m["single"] if m["single"] else None} for m in means]
    checks = {**checks_of(pooled, "pooled over seeds (the issue's >= 63 images per prompt):"),
              **checks_of(rows, "every seed alone:")}
    out.update(rows=rows, means=means, checks=checks)
    lines += ["", "Checks (the acceptance reads the pooled rates: 3 seeds x 21 images per prompt; each seed alone is "
              "stricter and shown for reference):", "", *[f"- {k} {'holds' if v else 'FAILS'}" for k, v in checks.items()]]
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(out, indent=1))
    a.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {a.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
