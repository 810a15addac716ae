#!/usr/bin/env bash
# The quantized-base issue's GPU check (one prepared script, sized for under 5 minutes on one H100/H200):
# benchmarks/gpu_scale.py's cells, Fig. 5's and the quantized ones (SDXL int8, Flux.1-dev-sized int8 and NF4 at
# 1024 px batch 1), each beside cat-adapter memory's estimate, then a 20-step CAT smoke run per --quantize-base mode
# on the tiny pipeline through the trainer (quantized while loading, the LoRA loaded back in plain diffusers onto the
# unquantized base). Results land in $OUT (default /tmp/gpu-quantized).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-quantized}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src:$PWD/tests HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q "torchao>=0.10" "bitsandbytes>=0.45" 2>&1 | tail -1
python3 -c "import torch, diffusers, peft, torchao, bitsandbytes; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'torchao', torchao.__version__, 'bitsandbytes', bitsandbytes.__version__, torch.cuda.get_device_name())"
timeout 420 python3 benchmarks/gpu_scale.py --output "$OUT/gpu_scale" --steps 3 --warmup 1 2>&1 | grep -v -i warn | tee "$OUT/gpu_scale.log"
python3 - <<'PY' 2>&1 | grep -v -i warn | tee "$OUT/smoke.log"
import json, tempfile, torch
from pathlib import Path
from cat_adapter.config import build_config
from cat_adapter.models import load_pipeline
from cat_adapter.testing.tiny import build_tiny_pipeline, write_shape_concept
from cat_adapter.runners import train
d = Path(tempfile.mkdtemp())
model = build_tiny_pipeline(d / "model", sample_size=16)
data = write_shape_concept(d / "data", n=4, size=32)
for mode in ("int8", "fp8", "nf4"):
    try:
        out = train(build_config(overrides=dict(model=str(model), data=str(data), output=str(d / mode), class_noun="circle",
                    resolution=32, steps=20, lr=1e-3, mixed_precision="bf16", quantize_base=mode)), progress=False)
    except Exception as exc:
        print(f"{mode}: failed: {type(exc).__name__}: {exc}")
        continue
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    pipe = load_pipeline(str(model)).to("cuda")
    pipe.load_lora_weights(str(out))
    img = pipe("a photo of sks circle", num_inference_steps=4, output_type="np").images
    print(f"{mode}: final loss {log[-1]['loss']:.4f} preservation {log[-1]['loss_preservation']:.2e} "
          f"peak {max(r.get('memory_mb') or 0 for r in log):.0f} MB, base {json.loads((out / 'adapter.json').read_text()).get('base_quantization')}, "
          f"plain-diffusers image finite {bool(abs(img).max() < 10)}")
PY
