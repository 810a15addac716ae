"""Two CPU processes (accelerate launch over gloo): the global data stream, resume, set-up and NaN on one rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_overrides
from safetensors.torch import load_file

from cat_adapter.config import build_config
from cat_adapter.runners import train

pytestmark = pytest.mark.slow   # several processes: the full suite only

WORKER = Path(__file__).with_name("dist_worker.py")


def launch(kw: dict, *extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(29500 + os.getpid() % 1000), str(WORKER), json.dumps(kw), "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    from cat_adapter.testing.tiny import write_shape_concept

    root = tmp_path_factory.mktemp("dist")
    concept = write_shape_concept(root / "concept", n=4, size=16)
    kw = train_overrides(tiny_model, concept, root / "two", steps=4, batch_size=1, checkpoint_every=2,
                         random_flip=True, cpu=True)
    straight = launch(kw)
    assert straight.returncode == 0, straight.stderr[-3000:]
    half = launch({**kw, "output": str(root / "half"), "steps": 2})
    assert half.returncode == 0, half.stderr[-3000:]
    resumed = launch({**kw, "output": str(root / "half"), "steps": 4, "resume": True})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = train(build_config(overrides={**kw, "output": str(root / "one"), "batch_size": 2}), progress=False)
    return {"kw": kw, "two": root / "two", "resumed": root / "half", "one": one, "concept": concept}


def test_two_processes_see_one_process_with_the_double_batch(runs):
    """The global stream: 2 x batch 1 draws what 1 x batch 2 draws, so the runs agree up to all-reduce rounding."""
    a, b = weights(runs["two"]), weights(runs["one"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)  # Adam magnifies all-reduce rounding near 0; a wrong stream moves weights by ~1e-3


def test_two_process_resume_equals_the_straight_run(runs):
    """Every rank's data stream and RNG come back from the checkpoint (one stream state, one RNG file per rank)."""
    a, b = weights(runs["resumed"]), weights(runs["two"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = runs["resumed"] / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.glob("rng-rank*.safetensors")) == ["rng-rank0.safetensors", "rng-rank1.safetensors"]
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2


def test_only_the_main_process_writes_the_output_folder(runs):
    import yaml

    assert yaml.safe_load((runs["two"] / "config.yaml").read_text())["num_processes"] == 2   # the launch's world size
    assert yaml.safe_load((runs["one"] / "config.yaml").read_text())["num_processes"] == 1
    log = [json.loads(x) for x in (runs["two"] / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]  # no rank truncated or doubled it
    log = [json.loads(x) for x in (runs["resumed"] / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]


def test_non_finite_loss_on_one_rank_stops_every_rank(runs, tmp_path):
    kw = {**runs["kw"], "output": str(tmp_path / "nan"), "steps": 6}
    proc = launch(kw, json.dumps({"rank": 1, "call": 3}), timeout=180)  # a hang would time out
    assert proc.returncode != 0
    assert "rank 0: CatAdapterError: non-finite loss" in proc.stderr and "rank 1: CatAdapterError" in proc.stderr
    assert not (tmp_path / "nan" / "pytorch_lora_weights.safetensors").exists()
    log = [json.loads(x)["step"] for x in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]  # rank 0 did not step on rank 1's NaN gradients


def test_constrained_alpha_is_the_same_on_every_rank_and_matches_one_process(runs, tmp_path):
    """--cat-alpha auto: the dual update reads the term averaged over ranks, so two processes with batch 1 move
    alpha as one process with batch 2 does (and their weights agree up to all-reduce rounding)."""
    kw = {**runs["kw"], "output": str(tmp_path / "two"), "cat_alpha": "auto", "preservation_target": 1e-6,
          "cat_alpha_lr": 0.01, "checkpoint_every": 0}
    proc = launch(kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(build_config(overrides={**kw, "output": str(tmp_path / "one"), "batch_size": 2}), progress=False)
    alphas = [[json.loads(x)["cat_alpha"] for x in (p / "log.jsonl").read_text().splitlines()]
              for p in (tmp_path / "two", one)]
    assert alphas[0][0] == 1.0 and alphas[0][-1] != 1.0
    assert alphas[0] == pytest.approx(alphas[1], rel=1e-3)
    a, b = weights(tmp_path / "two"), weights(one)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)


def test_engines_that_shard_the_weights_are_refused_with_one_line():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from cat_adapter.errors import CatAdapterError
    from cat_adapter.training.loop import check_distributed_type

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(CatAdapterError, match=f"{kind.value} is not supported yet.*--multi_gpu"):
            check_distributed_type(SimpleNamespace(distributed_type=kind))
    for kind in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        check_distributed_type(SimpleNamespace(distributed_type=kind))
