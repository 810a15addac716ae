"""Run by ``accelerate launch`` in the 2-process tests: one training run from a JSON config, world size checked."""

import json
import os
import sys

from accelerate import PartialState

from cat_adapter.config import build_config
from cat_adapter.runners import train

try:  # cat-adapter <= 9fbf7e2 (to show its bugs): CAT was a class of its own
    from cat_adapter.methods.cat.method import CATMethod as Method
except ImportError:
    from cat_adapter.methods.base import Method

state = PartialState(cpu=True)
expected = int(sys.argv[2])
if state.num_processes != expected:  # accelerate launch --cpu silently runs one process
    sys.exit(f"world size {state.num_processes}, expected {expected}")
poison = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
if poison:  # {"rank": r, "call": k}: a NaN loss on one rank only
    calls, original = [0], Method.forward_backward

    def forward_backward(self, batch, backward):
        calls[0] += 1
        if state.process_index == poison["rank"] and calls[0] == poison["call"]:
            getattr(batch, "instance", batch).noise[:] = float("nan")
        return original(self, batch, backward)

    Method.forward_backward = forward_backward
try:
    train(build_config(overrides=json.loads(sys.argv[1])), progress=False)
except Exception as exc:  # the CLI's one-line error, per rank
    print(f"rank {state.process_index}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    os._exit(3)
