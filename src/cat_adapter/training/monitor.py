"""The preservation monitor: how much of the base model a run keeps, measured while it trains.

At every ``--validation-every`` step (at step 0, before training, and at the end) it measures, on one fixed probe
batch drawn once from the run's seed (latents, noise and timesteps of the training images, their captions y_T and
their trigger-free y, the pool's prompts if any), without gradients and without touching the run's random state:

- ``class_drift``: the mean squared difference between the adapted and the base model's prediction on y (what CAT's
  preservation term penalises, but on a fixed probe, so the numbers of different steps and runs compare);
- ``pool_drift``: the same on the pool's prompts (``--preserve-pool``), when there is a pool;
- ``trigger_fit``: the mean squared error of the adapted prediction on y_T against the training target (the
  identity term, without gradients).

With ``--clip`` (or ``--dino``) and a ``--validation-prompt``, each validation grid also gives ``identity`` (the
mean cosine of the adapted trigger images and the concept's images) and ``base_fidelity`` (of each adapted class
image and the base model's from the same seed).

The base predictions are computed once, when the monitor is built (with the adapter switched off, or, for a full
fine-tune without a frozen copy, from the weights before the first step). Each row goes to ``OUT/validation.csv``
(rewritten whole, atomically) and is plotted to ``OUT/validation.png``, one panel per metric. A measurement costs
two forward passes of the probe batch (three with a pool).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from cat_adapter.diffusion import mse
from cat_adapter.options import opt

PROBE_ROWS = 8       # rows of the probe batch (images repeat when the concept has fewer)
PROBE_SEED = 7919    # added to --seed: the probe's own stream, apart from the training stream
COLUMNS = ("step", "class_drift", "pool_drift", "trigger_fit", "identity", "base_fidelity")


class Monitor:
    """The probe batch, the base model's predictions on it, and the rows measured so far."""

    def __init__(self, method, cache, *, seed: int, device, autocast=None, pool_size: int = 0):
        """``autocast``: a callable returning the run's autocast context (``accelerator.autocast``)."""
        from cat_adapter.data.cache import StreamSampler
        from cat_adapter.methods.terms import StepInputs

        self.method, self.autocast = method, autocast
        self.embedder, self.references = None, []   # the grids' image metrics (--clip / --dino)
        probe = StreamSampler(cache, batch_size=PROBE_ROWS, objective=method.objective, seed=seed + PROBE_SEED,
                              pool_size=pool_size)
        self.batch = probe.next().to(device)
        s = StepInputs(method, self.batch)
        self.z_t, self.target = s.z_t, s.target
        self.rows: list[dict] = []
        try:
            with method.frozen():
                self.base = self._predict(trigger=False)
        except RuntimeError:   # a full fine-tune without its frozen copy: the weights before the first step
            with torch.no_grad():
                self.base = self._predict(trigger=False)

    def _predict(self, *, trigger: bool) -> dict[str, torch.Tensor]:
        """Predictions on the probe for y (``plain``), each pool prompt (``pool<k>``) and, with ``trigger``, y_T."""
        from contextlib import nullcontext

        from cat_adapter.methods.terms import StepInputs

        model, inst = self.method.model, self.batch.instance
        s = StepInputs(self.method, self.batch)
        conds = {"plain": s.prompts("plain")}
        if "pool" in self.batch.prompts:
            pool = s.prompts("pool")
            conds.update({f"pool{k}": pool.expand_row(k, len(self.z_t)) for k in range(len(pool))})
        if trigger:
            conds["trigger"] = s.prompts("trigger")
        with model.ungraded(), (self.autocast() if self.autocast is not None else nullcontext()):
            return {name: model.predict(self.z_t, inst.timesteps, cond, micro=inst.micro).float()
                    for name, cond in conds.items()}

    @torch.no_grad()
    def measure(self, step: int) -> dict:
        """A row of the monitor at ``step``: its figures, appended to ``rows`` and returned."""
        modules = list(self.method.modules().values())
        states = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            preds = self._predict(trigger=True)
        finally:
            for m, st in zip(modules, states):
                m.train(st)
        pools = [k for k in preds if k.startswith("pool")]
        row = {"step": int(step), "class_drift": float(mse(preds["plain"], self.base["plain"])),
               "pool_drift": (sum(float(mse(preds[k], self.base[k])) for k in pools) / len(pools)) if pools else None,
               "trigger_fit": float(mse(preds["trigger"], self.target))}
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        return row

    def add_images(self, step: int, rows: list[list], embedder, references: list) -> dict:
        """The image metrics of a validation grid (rows: base y_T, adapted y_T, base y, adapted y): ``identity``, the
        mean cosine of the adapted y_T images and the concept's images, and ``base_fidelity``, the mean cosine of each
        adapted y image and the base's from the same seed; added to the row of ``step``."""
        import numpy as np

        adapted_t, base_y, adapted_y = rows[1], rows[2], rows[3]
        refs = embedder.embed_images(references)
        gen = embedder.embed_images(adapted_t)
        by, ay = embedder.embed_images(base_y), embedder.embed_images(adapted_y)
        figures = {"identity": float(np.mean(gen @ refs.T)), "base_fidelity": float(np.mean(np.sum(by * ay, axis=1)))}
        row = next((r for r in self.rows if r["step"] == step), None)
        if row is None:
            row = {"step": int(step)}
            self.rows = sorted(self.rows + [row], key=lambda r: r["step"])
        row.update(figures)
        return figures

    def load(self, path: Path, upto: int) -> None:
        """The rows of an earlier run's ``validation.csv`` up to step ``upto`` (a resumed run goes on from them)."""
        self.rows = [r for r in read_csv(path) if r["step"] <= upto] if path.is_file() else []

    def write(self, out: Path) -> None:
        """``OUT/validation.csv`` and ``OUT/validation.png`` from every row so far."""
        from cat_adapter.io import write_text_atomic

        write_text_atomic(out / "validation.csv", to_csv(self.rows))
        plot(self.rows, out / "validation.png")


def to_csv(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if c == "step" or any(r.get(c) is not None for r in rows)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (r[c] if c == "step" else f"{r[c]:.6g}") for c in cols])
    return buf.getvalue()


def read_csv(path: Path) -> list[dict]:
    """The rows of a ``validation.csv`` (numbers as floats, the step as an int, missing cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (int(v) if k == "step" else (float(v) if v != "" else None)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def plot(rows: list[dict], path: Path) -> Path:
    """One panel per metric over steps (log scale where the values are positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cat_adapter.io import atomic_path

    metrics = [c for c in COLUMNS[1:] if any(r.get(c) is not None for r in rows)]
    titles = {"class_drift": "class drift (adapted vs base on y; lower keeps more)",
              "pool_drift": "pool drift (adapted vs base on the pool's prompts)",
              "trigger_fit": "trigger fit (error on y_T; lower learned more)",
              "identity": "identity (trigger images vs the concept's)",
              "base_fidelity": "base fidelity (class images vs the base's)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        pts = [(r["step"], r[m]) for r in rows if r.get(m) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        if all(v > 0 for _, v in pts) and len(pts) > 1 and max(v for _, v in pts) / min(v for _, v in pts) > 20:
            ax.set_yscale("log")
        ax.set_title(titles[m], fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ picking a snapshot
@dataclass
class PickOptions:
    """What ``cat-adapter pick`` takes."""
    output: str = opt(positional=True, path="in", help="A training run's folder (with --save-every snapshots "
                      "OUT/step-N and the monitor's validation.csv).")
    max_class_drift: float | None = opt(None, "Only snapshots whose class_drift is at most this are eligible "
                                        "(default: half way between the lowest and the highest class_drift of the "
                                        "snapshots).")


def pick(o: PickOptions) -> dict:
    """The snapshot with the best (lowest) trigger_fit among those whose class_drift is at most the bound; the
    final weights (OUT) count as the snapshot of the last step. Writes ``OUT/pick.json``; returns its content."""
    import json

    from cat_adapter.errors import CatAdapterError
    from cat_adapter.io import write_json_atomic

    out = Path(o.output).expanduser()
    if not out.is_dir():
        raise CatAdapterError(f"pick {o.output}: no such folder")
    monitor_file = out / "validation.csv"
    if not monitor_file.is_file():
        raise CatAdapterError(f"pick {o.output}: no validation.csv (the preservation monitor); train with "
                              "--validation-every N (and --save-every N) to have something to pick from")
    rows = {r["step"]: r for r in read_csv(monitor_file)}
    snapshots = []
    for folder in sorted(out.glob("step-*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1):
        if folder.name[5:].isdigit() and (folder / "adapter.json").is_file():
            snapshots.append((int(folder.name[5:]), folder))
    done = out / "done.json"
    if done.is_file() and (out / "adapter.json").is_file():
        snapshots.append((int(json.loads(done.read_text())["steps"]), out))
    measured = [(step, path) for step, path in snapshots if step in rows]
    if not snapshots:
        raise CatAdapterError(f"pick {o.output}: no snapshots (OUT/step-N from --save-every N, or a finished run's "
                              "weights); train with --save-every N")
    if not measured:
        raise CatAdapterError(f"pick {o.output}: the monitor measured none of the snapshot steps "
                              f"({', '.join(str(s) for s, _ in snapshots)}); --save-every should be a multiple of "
                              "--validation-every")
    drifts = [rows[s]["class_drift"] for s, _ in measured]
    bound = o.max_class_drift if o.max_class_drift is not None else (min(drifts) + max(drifts)) / 2
    candidates = [{"step": s, "path": str(p), "class_drift": rows[s]["class_drift"], "trigger_fit": rows[s]["trigger_fit"],
                   "eligible": rows[s]["class_drift"] <= bound} for s, p in measured]
    eligible = [c for c in candidates if c["eligible"]]
    if not eligible:
        raise CatAdapterError(f"--max-class-drift {bound:g}: no snapshot's class_drift is that low (lowest "
                              f"{min(drifts):.4g}); raise it")
    chosen = min(eligible, key=lambda c: (c["trigger_fit"], c["step"]))
    record = {"rule": "lowest trigger_fit among snapshots with class_drift <= bound", "bound": bound,
              "bound_from": "--max-class-drift" if o.max_class_drift is not None else
              "half way between the snapshots' lowest and highest class_drift",
              "chosen": {"step": chosen["step"], "path": chosen["path"]}, "candidates": candidates}
    write_json_atomic(out / "pick.json", record)
    return record
