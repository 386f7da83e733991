"""The distillation trainer and the pruning callback in two CPU processes (DDP over gloo), against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import WORKER_THREADS

WORKER = Path(__file__).parent / "scripts" / "distill_worker.py"
CALLBACK_WORKER = Path(__file__).parent / "scripts" / "callback_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": str(WORKER_THREADS), "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_distillation_matches_one_process_with_accumulation(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _run([*launcher, str(WORKER), str(tmp_path)], tmp_path)
    _run([sys.executable, str(WORKER), str(tmp_path)], tmp_path)
    infos = [json.loads((tmp_path / f"info_2_{rank}.json").read_text()) for rank in (0, 1)]
    for info in infos:
        assert info["backend"] == "gloo" and info["world_size"] == 2
        assert info["student_wrapped"] == "DistributedDataParallel"
        # The teacher is placed, not wrapped: a plain module outside the student, frozen.
        assert info["teacher_type"] == "LlamaForCausalLM"
        assert not info["teacher_is_submodule"] and not info["teacher_requires_grad"]
    rank0, rank1 = (torch.load(tmp_path / f"student_2_{rank}.pt") for rank in (0, 1))
    single = torch.load(tmp_path / "student_1_0.pt")
    assert torch.equal(rank0, rank1)
    # Tokens are counted over both processes, so 2 x batch 2 is the same step as batch 2 x accumulation 2.
    torch.testing.assert_close(rank0, single, rtol=0, atol=2e-6)


def test_two_process_callback_takes_one_decision_equal_to_one_process_on_all_samples(tmp_path):
    """Each rank keeps the samples it trains on; every rank measures on all of them (gathered), its share of the
    batches, sums reduced: both ranks prune the same blocks, those `Pruner.select` picks in one process."""
    from conftest import build_tiny_model

    from optimum_blockprune import Pruner
    from optimum_blockprune.estimation.calibration import CalibrationData

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _run([*launcher, str(CALLBACK_WORKER), str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"callback_2_{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["removed_blocks"] == ranks[1]["removed_blocks"]
    assert (
        ranks[0]["measured_on"]
        == ranks[1]["measured_on"]
        == ranks[0]["own_samples"] + ranks[1]["own_samples"]
    )
    assert ranks[0]["own_samples"] != ranks[1]["own_samples"] and all(
        r["num_hidden_layers"] == 4 for r in ranks
    )
    sys.path.insert(0, str(CALLBACK_WORKER.parent))
    from callback_worker import CONFIG

    reference = Pruner(build_tiny_model("llama")).select(
        CONFIG, CalibrationData(ranks[0]["measured_on"], "all")
    )
    assert list(reference.removed_blocks) == ranks[0]["removed_blocks"]
