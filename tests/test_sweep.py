"""The compression sweep: each M's pick as `select` would make it, shared measurements, the pruned architecture
timed for real, the budget choice, and the model left as it was."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TEXTS, batch_of, build_tiny_model

from optimum_blockprune import BlockRemovalConfig, ConfigurationError, Pruner, get_adapter
from optimum_blockprune.estimation.calibration import prepare_calibration_data
from optimum_blockprune.surgery import pruned_copy
from optimum_blockprune.sweep import SpeedSettings, SweepPoint, knee_of, largest_within_budget, measure_speed

CONFIG = BlockRemovalConfig(num_calibration_samples=8, max_length=24, batch_size=4, show_progress=False)
FAST_SPEED = SpeedSettings(prompt_length=8, new_tokens=3, repeats=1)
DATA = TEXTS * 3
#: a small sweep on the command line: 6 scoring and 4 held-out samples of 24 tokens
SMALL_RUN = [
    "--num-calibration-samples",
    "6",
    "--num-eval-samples",
    "4",
    "--max-length",
    "24",
    "--no-show-progress",
]


@pytest.mark.parametrize("method", ["cbo", "sleb"])
def test_sweep_picks_equal_separate_selects_and_share_measurements(tokenizer, method):
    config = BlockRemovalConfig(method=method, **{k: v for k, v in CONFIG.to_dict().items() if k != "method"})
    model = build_tiny_model("llama")
    reference = model(**batch_of(tokenizer, TEXTS[:2])).logits.detach()
    pruner = Pruner(model, tokenizer)
    sweep = pruner.sweep(config, DATA, [1, 2, 3], num_eval_samples=6, speed=False)
    scoring = prepare_calibration_data(DATA, tokenizer, **config.calibration_options(8 + 6)).subset(range(8))
    separate = 0
    for point in sweep.points:
        alone = Pruner(build_tiny_model("llama"), tokenizer)
        selection = alone.select(
            BlockRemovalConfig(**{**config.to_dict(), "num_blocks_to_remove": point.num_blocks}), scoring
        )
        assert selection.removed_blocks == point.removed_blocks
        separate += selection.ranking.stats["block_evaluations"]
    # the M's reuse one another's measurements: the sweep costs less than separate calls
    assert 0 < sweep.block_evaluations < separate
    # the model is untouched: all blocks, the same logits, no ranking left behind by the sweep
    assert len(get_adapter(model).block_list(model)) == 6 and pruner.result is None and pruner.ranking is None
    assert torch.equal(model(**batch_of(tokenizer, TEXTS[:2])).logits, reference)
    # quality is measured on samples the ranking never saw
    assert sweep.held_out["num_samples"] == 6
    assert all(p.perplexity > 0 and p.kl >= 0 for p in sweep.points)
    records = sweep.to_records()
    assert [r["num_blocks"] for r in records] == [1, 2, 3]
    assert records[-1]["parameters_removed"] > records[0]["parameters_removed"] > 0
    json.dumps(sweep.to_dict())


def test_speed_is_timed_on_the_pruned_architecture_sharing_the_weights(tokenizer):
    model = build_tiny_model("llama")
    twin = pruned_copy(model, (1, 3, 4))
    blocks = get_adapter(twin).block_list(twin)
    assert len(blocks) == 3 and len(get_adapter(model).block_list(model)) == 6
    originals = {id(p) for p in model.parameters()}
    assert all(id(p) in originals for p in twin.parameters())  # every weight shared, none copied
    assert twin.model.embed_tokens.weight is model.model.embed_tokens.weight  # shared, not copied
    runs = {"pruned": 0, "unpruned": 0}
    for name, target in (("pruned", twin), ("unpruned", model)):
        for block in get_adapter(target).block_list(target):
            block.register_forward_pre_hook(lambda *args, name=name: runs.__setitem__(name, runs[name] + 1))
        measure_speed(target, vocab_size=128, settings=FAST_SPEED)
    # a warm-up and a timed run of the prefill, then of the decode: an untimed prefill and 3 cached steps
    calls_per_block = 2 + 2 * (1 + 3)
    assert runs == {"pruned": 3 * calls_per_block, "unpruned": 6 * calls_per_block}
    sweep = Pruner(model, tokenizer).sweep(CONFIG, DATA, [2], num_eval_samples=6, speed_settings=FAST_SPEED)
    point = sweep.points[0]
    assert point.speed.prefill_tokens_per_s > 0 and point.speed.decode_tokens_per_s > 0
    assert sweep.unpruned_speed.prefill_tokens_per_s > 0 and sweep.device == "cpu"
    assert sweep.speedup(point, "prefill") > 0 and "prefill tok/s" in sweep.to_markdown()


def _points(perplexities, kls=None):
    kls = kls or [0.01 * m for m in range(1, len(perplexities) + 1)]
    return [
        SweepPoint(m, tuple(range(m)), ppl, kl, 0.1 * m, 0.1 * m, 100, 1.0)
        for m, ppl, kl in zip(range(1, len(perplexities) + 1), perplexities, kls)
    ]


def test_the_budget_picks_the_largest_m_within_it():
    points = _points([10.5, 10.9, 11.4, 13.0, 10.8])  # unpruned 10; the last point dips back under the budget
    assert largest_within_budget(points, 10.0, max_perplexity_increase=0.15) == 3
    assert largest_within_budget(points, 10.0, max_perplexity_increase=0.01) is None
    assert largest_within_budget(points, 10.0, max_perplexity_increase=0.1) == 2
    assert largest_within_budget(points, 10.0, max_kl=0.025) == 2
    assert largest_within_budget(points, 10.0, max_perplexity_increase=1.0, max_kl=0.035) == 3  # both hold
    with pytest.raises(ConfigurationError, match="Give a budget"):
        largest_within_budget(points, 10.0)
    with pytest.raises(ConfigurationError, match="`max_kl` must be a non-negative number"):
        largest_within_budget(points, 10.0, max_kl=-1)
    assert knee_of([1, 2, 3, 4, 5], [math.log(v) for v in (10, 10.5, 11, 20, 60)]) == 3
    assert knee_of([1, 2], [1, 2]) is None


@pytest.mark.parametrize("bad", [[], [0], [6], [2, 2], [1.5], [True], "2:4", 3])
def test_bad_counts_are_refused_before_any_work(tokenizer, bad, monkeypatch):
    import optimum_blockprune.selection as selection

    monkeypatch.setattr(selection, "prepare_scoring_data", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(
        ConfigurationError, match=r"`num_blocks`=.* must be a non-empty list or range of distinct"
    ):
        Pruner(build_tiny_model("llama"), tokenizer).sweep(CONFIG, DATA, bad)


def test_the_card_carries_the_measured_speed_up_and_the_sweep(tokenizer, tmp_path):
    from optimum_blockprune.hub import render_model_card

    pruner = Pruner(build_tiny_model("llama"), tokenizer, model_id="someone/tiny")
    sweep = pruner.sweep(CONFIG, DATA, [1, 2, 3], num_eval_samples=6, speed_settings=FAST_SPEED)
    pruner.measure_speed(FAST_SPEED)
    pruner.prune(BlockRemovalConfig(**{**CONFIG.to_dict(), "num_blocks_to_remove": 2}), DATA)
    pruner.measure_speed(FAST_SPEED)
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Speed" in card and "Measured on `cpu`" in card
    assert "| prefill |" in card and "| decode |" in card and "x |" in card
    assert "## How many blocks to remove: the sweep" in card and sweep.to_markdown() in card
    assert (tmp_path / "out" / "blockprune_sweep.png").is_file()
    provenance = json.loads((tmp_path / "out" / "blockprune_config.json").read_text())
    assert [entry["stage"] for entry in provenance["speed"]] == ["unpruned", "pruned"]
    assert provenance["sweep"]["points"][1]["removed_blocks"] == list(sweep.points[1].removed_blocks)
    # the saved provenance renders the same card (what model_cards/render.py relies on)
    assert render_model_card(provenance) == card


def test_the_sweep_command_prints_the_table_the_budget_and_writes_json_and_picture(
    tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    from optimum_blockprune.cli import main

    args = [
        "sweep",
        str(tiny_model_dir),
        "--dataset",
        str(calibration_file),
        "--num-blocks",
        "1:4",
        *SMALL_RUN,
    ]
    args += ["--prompt-length", "8", "--new-tokens", "2", "--repeats", "1", "--max-perplexity-increase", "10"]
    assert main([*args, "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "| M | removed blocks | held-out ppl |" in out and "Largest M within the budget: 3" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [p["num_blocks"] for p in saved["points"]] == [1, 2, 3] and saved["unpruned_speed"][
        "prefill_tokens_per_s"
    ] > 0
    assert (tmp_path / "s.png").stat().st_size > 0
    # bad requests fail before the model loads
    monkeypatch.setattr(Pruner, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    assert main([*args[:5], "0:3", *args[6:]]) == 2  # M = 0 is not a removal
    assert "`num_blocks`=[0, 1, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args[:5], "two", *args[6:]])
    assert main([*args, "--max-kl", "-1"]) == 2
    assert "`max_kl` must be a non-negative number" in capsys.readouterr().err
    assert main([*args, "--json", str(tmp_path / "s.json")]) == 2  # exists: not replaced without --overwrite


def test_prune_auto_sweeps_then_prunes_the_largest_m_within_the_budget(
    tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    from optimum_blockprune.cli import main

    args = [
        "prune",
        str(tiny_model_dir),
        "--dataset",
        str(calibration_file),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    args += SMALL_RUN
    assert (
        main([*args, "--num-blocks-to-remove", "auto", "--sweep-num-blocks", "1:4", "--max-kl", "1e9"]) == 0
    )
    saved = json.loads((tmp_path / "o" / "blockprune_config.json").read_text())
    sweep = saved["sweep"]
    chosen = max(p["num_blocks"] for p in sweep["points"])  # an unbounded budget takes the largest M tried
    assert saved["result"]["removed_blocks"] == sweep["points"][-1]["removed_blocks"] and chosen == 3
    assert [entry["stage"] for entry in saved["speed"]] == ["unpruned", "pruned"]
    card = (tmp_path / "o" / "README.md").read_text()
    assert "## Speed" in card and "## How many blocks to remove: the sweep" in card
    assert f"Largest M within the budget: {chosen}." in capsys.readouterr().out
    # an impossible budget prunes and saves nothing
    impossible = [*args[:5], str(tmp_path / "none"), *args[6:], "--num-blocks-to-remove", "auto"]
    assert main([*impossible, "--sweep-num-blocks", "1:4", "--max-kl", "0"]) == 2
    assert (
        "No M of [1, 2, 3] keeps within the budget" in capsys.readouterr().err
        and not (tmp_path / "none").exists()
    )
    # missing pieces fail before the model loads
    monkeypatch.setattr(Pruner, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    assert main([*args, "--num-blocks-to-remove", "auto", "--max-kl", "0.1"]) == 2
    assert "needs the M's to try (--sweep-num-blocks" in capsys.readouterr().err
