"""Constrained CAT (``--cat-alpha auto --preservation-target EPS``): alpha as a Lagrange multiplier.

Training minimises identity + alpha * preservation subject to preservation <= EPS. Alpha is the multiplier of
that constraint, updated by projected dual ascent once per optimizer step.
"""

from __future__ import annotations

import json
from pathlib import Path


class DualAlpha:
    """Constrained CAT (``--cat-alpha auto``): alpha is the Lagrange multiplier of  term <= target.

    Projected dual ascent on the normalised violation, once per optimizer step with the step's measured term
    (averaged over micro-batches and processes, so every rank holds the same alpha):
    alpha <- max(0, alpha + eta * (term - target) / target). Dividing by the target makes eta scale-free:
    a term twice its target raises alpha by eta.
    """

    def __init__(self, target: float, init: float, lr: float):
        self.target, self.lr, self.alpha = float(target), float(lr), float(init)

    def update(self, term: float) -> None:
        self.alpha = max(0.0, self.alpha + self.lr * (term - self.target) / self.target)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])



def plot_alpha(log_path: Path, target: float, path: Path) -> None:
    """Alpha and the preservation term (with its target) against the step, from a run's ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cat_adapter.io import atomic_path

    rows = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows if r.get("loss_preservation") is not None]
    term = [r["loss_preservation"] for r in rows if r.get("loss_preservation") is not None]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    a.plot([r["step"] for r in rows], [r["cat_alpha"] for r in rows], color="tab:blue")
    a.set_ylabel("alpha")
    a.set_title("Constrained CAT: alpha (dual variable) and the preservation term")
    b.semilogy(steps, term, color="tab:gray", lw=0.6, alpha=0.6, label="term (per step)")
    window = max(1, len(term) // 20)
    smooth = [sum(term[max(0, i - window + 1):i + 1]) / len(term[max(0, i - window + 1):i + 1]) for i in range(len(term))]
    b.semilogy(steps, smooth, color="tab:orange", label=f"term (mean of {window} steps)")
    b.axhline(target, color="black", ls="--", label=f"target {target:g}")
    b.set_xlabel("step")
    b.set_ylabel("preservation term")
    b.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
