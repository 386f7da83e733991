"""Runs launched by tests/test_scale.py in their own processes.

scale_worker.py parallel OUT      # under torch.distributed.run (2 processes, gloo) or alone: Fisher rows,
                                  # measured removals, residual statistics and a SLEB ranking to OUT/<world>_<rank>.npz
scale_worker.py resumable OUT     # a slow Fisher pass checkpointing into OUT/checkpoint (the test kills it)
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import build_tiny_model  # noqa: E402

from optimum_blockprune.estimation.calibration import CalibrationData  # noqa: E402


def varied_lengths_data(num_samples: int = 13, seed: int = 0) -> CalibrationData:
    """Token ids of very different lengths (3..40), so batches pad and token budgets regroup them."""
    generator = np.random.default_rng(seed)
    samples = [
        [int(t) for t in generator.integers(3, 120, size=int(generator.integers(3, 41)))]
        for _ in range(num_samples)
    ]
    return CalibrationData(samples=samples, source="random token ids")


def parallel(output_dir: str) -> None:
    from optimum_blockprune import BlockRemovalConfig, Pruner
    from optimum_blockprune.estimation.fisher import estimate_fisher
    from optimum_blockprune.estimation.parallel import current_processes
    from optimum_blockprune.estimation.statistics import collect_residual_statistics
    from optimum_blockprune.evaluation import removal_losses

    processes = current_processes()
    model = build_tiny_model("llama")
    data = varied_lengths_data()
    fisher = estimate_fisher(model, data, fisher="model", batch_size=2, show_progress=False)
    losses = removal_losses(
        model, data, [(), (1,), (2, 4), (0, 3, 5)], metric="kl", batch_size=2, reuse_prefix=True
    )
    statistics = collect_residual_statistics(model, data, batch_size=2)
    states, scores = [], []
    # SLEB's greedy measurements; the default energy (measured pairs, corrected); auto's held-out scores
    for method, selection in (("sleb", "ground"), ("cbo", "ground"), ("cbo", "auto")):
        config = BlockRemovalConfig(
            num_blocks_to_remove=2,
            method=method,
            selection=selection,
            batch_size=2,
            num_states=3,
            num_calibration_samples=9,
            num_selection_samples=4,
        )
        chosen = Pruner(model).select(config, data)
        states += [state.removed_blocks for state in chosen.ranking] + [chosen.state.removed_blocks]
        scores += [state.score for state in chosen.ranking if state.score is not None]
    np.savez(
        os.path.join(output_dir, f"{processes.num_processes}_{processes.process_index}.npz"),
        gradients=fisher.gradients,
        hessian=fisher.hessian,
        loss=np.array([fisher.metadata["mean_calibration_loss"], fisher.metadata["num_tokens"]]),
        sums=losses.sums,
        tokens=losses.tokens,
        cosine=statistics.cosine,
        states=np.array(states),
        scores=np.array(scores),
        process=np.array([processes.process_index, processes.num_processes]),
    )


def resumable(output_dir: str) -> None:
    from optimum_blockprune.estimation.fisher import estimate_fisher

    model = build_tiny_model("llama")
    delay = float(os.environ.get("SLOW_FORWARD_S", "0"))
    if delay:  # slow enough that the test can kill the process between checkpoints
        model.model.layers[0].register_forward_pre_hook(lambda *_: time.sleep(delay))
    fisher = estimate_fisher(
        model,
        varied_lengths_data(),
        fisher="model",
        batch_size=2,
        show_progress=False,
        checkpoint_dir=os.path.join(output_dir, "checkpoint"),
        checkpoint_every=2,
    )
    np.save(os.path.join(output_dir, "resumed_gradients.npy"), fisher.gradients)
    with open(os.path.join(output_dir, "resumed_info.json"), "w") as handle:
        json.dump(
            {"num_tokens": fisher.metadata["num_tokens"], "loss": fisher.metadata["mean_calibration_loss"]},
            handle,
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"parallel": parallel, "resumable": resumable}[sys.argv[1]](sys.argv[2])
