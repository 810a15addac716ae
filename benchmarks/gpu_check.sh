#!/usr/bin/env bash
# One prepared check on a CUDA machine: versions, GPU training smoke runs (fp16 / bf16, fast / lean,
# gradient checkpointing), the method and training tests on CUDA, and the CAT cost benchmark.
# Wheels missing on that machine (diffusers) may be carried in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/src:$PWD/tests HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, peft, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
python3 - <<'PY' 2>&1 | grep -v Warning | tee "$OUT/smoke.log"
import json, tempfile, torch
from pathlib import Path
from safetensors.torch import load_file
from cat_adapter.config import build_config
from cat_adapter.models import load_pipeline
from cat_adapter.testing.tiny import build_tiny_pipeline, write_shape_concept
from cat_adapter.runners import train
d = Path(tempfile.mkdtemp())
model = build_tiny_pipeline(d / "model", sample_size=16)
data = write_shape_concept(d / "data", n=4, size=32)
for mp in ("fp16", "bf16", "no"):
    for mode in ("fast", "lean"):
        out = train(build_config(overrides=dict(model=str(model), data=str(data), output=str(d / f"{mp}-{mode}"), class_noun="circle",
                    resolution=32, steps=20, lr=1e-3, mixed_precision=mp, cat_mode=mode, gradient_checkpointing=True,
                    validation_prompt="a photo of sks circle", validation_every=10, validation_steps=4)), progress=False)
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        w = load_file(str(out / "pytorch_lora_weights.safetensors"))
        pipe = load_pipeline(str(model)).to("cuda")
        pipe.load_lora_weights(str(out))
        img = pipe("a photo of sks circle", num_inference_steps=4, output_type="np").images
        print(f"{mp:4s} {mode}: final loss {log[-1]['loss']:.4f} identity {log[-1]['loss_identity']:.4f} "
              f"preservation {log[-1]['loss_preservation']:.2e}, weights {sorted({str(v.dtype) for v in w.values()})}, "
              f"finite {all(torch.isfinite(v).all().item() for v in w.values())}, image finite {bool(abs(img).max() < 10)}")
PY
# 8-bit AdamW (bitsandbytes) runs on CUDA only: one short run, then SIGKILL-free resume check by two halves
python3 -m pip install -q "bitsandbytes>=0.43" 2>&1 | tail -1
python3 - <<'PY' 2>&1 | grep -v Warning | tee "$OUT/adamw8bit.log"
import tempfile, torch
from pathlib import Path
from safetensors.torch import load_file
from cat_adapter.config import build_config
from cat_adapter.testing.tiny import build_tiny_pipeline, write_shape_concept
from cat_adapter.runners import train
d = Path(tempfile.mkdtemp())
model = build_tiny_pipeline(d / "model", sample_size=16)
data = write_shape_concept(d / "data", n=4, size=32)
kw = dict(model=str(model), data=str(data), class_noun="circle", resolution=32, lr=1e-3, optimizer="adamw8bit",
          checkpoint_every=5, validation_every=0)
straight = train(build_config(overrides={**kw, "output": str(d / "straight"), "steps": 10}), progress=False)
half = train(build_config(overrides={**kw, "output": str(d / "half"), "steps": 5}), progress=False)
resumed = train(build_config(overrides={**kw, "output": str(d / "half"), "steps": 10, "resume": True}), progress=False)
a, b = (load_file(str(p / "pytorch_lora_weights.safetensors")) for p in (straight, resumed))
print("adamw8bit: trained, finite", all(torch.isfinite(v).all().item() for v in a.values()),
      "resume max diff", max((a[k] - b[k]).abs().max().item() for k in a))
PY
python3 -m pytest -q -p no:cacheprovider tests/test_methods.py tests/test_training.py 2>&1 | tail -15 | tee "$OUT/pytest.log"
python3 benchmarks/cat_cost.py --device cuda --output "$OUT/cat_cost-cuda.json" 2>&1 | tail -12
