"""benchmarks/gpu_scale.py's CPU smoke run: the real-size GPU benchmark's code path on tiny configs of each family."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow   # a benchmark's smoke run: the full suite only

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_scale.py"


def test_gpu_scale_smoke_run_writes_each_cell(tmp_path):
    cells = ["sd15-512px-b1-gcoff", "sdxl-1024px-b1-gcon", "flux-1024px-b1-gcon", "sdxl-1024px-b1-gcon-int8",
             "zimage-1024px-b1-gcon", "chroma-1024px-b1-gcon-int8"]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--output", str(tmp_path), "--cells", *cells],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in cells:
        cell = json.loads((tmp_path / f"{name}.json").read_text())
        assert cell["tiny"] and set(cell["variants"]) == {"lora", "cat_fast", "cat_lean"}
        assert all(v["mean_s"] > 0 and v["time_vs_lora"] > 0 for v in cell["variants"].values())
        assert name in proc.stdout
    assert json.loads((tmp_path / "sdxl-1024px-b1-gcon-int8.json").read_text())["quantize_base"] == "int8"
    assert "flux-1024px-b1-gcon-nf4" not in proc.stdout   # not asked for
    summary = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == cells
    # the full GPU run without CUDA: a one-line refusal
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path / "gpu")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr


def test_each_cell_has_the_memory_estimate_beside_it():
    """The GPU run records cat-adapter memory's estimate per cell (here a small resolution of the built-in SD 1.5)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_scale", SCRIPT)
    gpu_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_scale)
    est = gpu_scale.estimate_cell("sd15", 64, 1, False, "int8")
    assert set(est) == {"lora", "cat_fast", "cat_lean"}
    # the int8 U-Net (860M linear-heavy parameters at about a byte each) dominates a 64 px step
    assert 700 < est["lora"]["training_mib"] < 1700 and est["cat_fast"]["above_model_mib"] > est["lora"]["above_model_mib"]
