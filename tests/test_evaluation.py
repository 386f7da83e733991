"""Held-out evaluation: perplexity masking, removals through gates against real surgery, lm-eval on a local task."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, build_tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_blockprune import (
    BlockRemovalConfig,
    evaluate_perplexity,
    get_adapter,
    prepare_calibration_data,
    remove_blocks,
)
from optimum_blockprune.evaluation import evaluate_lm_eval, evaluate_removals


def _data(tokenizer, texts=TEXTS, max_length=32):
    config = BlockRemovalConfig(num_calibration_samples=len(texts), max_length=max_length, shuffle=False)
    return prepare_calibration_data(list(texts), tokenizer, **config.calibration_options())


def _per_sample_nll(model, data):
    """Sum of next-token NLL and token count, one unpadded sample at a time (no masking to get wrong)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in data.samples:
            ids = torch.tensor([sample])
            logits = model(input_ids=ids).logits[0, :-1]
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(sample) - 1
    return total, count


def test_perplexity_matches_unpadded_samples_and_ignores_batching(llama, tokenizer):
    data = _data(tokenizer)
    total, count = _per_sample_nll(llama, data)
    expected = math.exp(total / count)
    assert len({len(s) for s in data.samples}) > 1  # batches really are padded
    for batch_size in (1, 3, 12):
        assert evaluate_perplexity(llama, data, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    # texts in, same answer: tokenised in order with the same truncation
    assert evaluate_perplexity(llama, list(TEXTS), tokenizer=tokenizer, max_length=32) == pytest.approx(
        expected
    )
    with pytest.raises(TypeError, match="list of texts"):
        evaluate_perplexity(llama, "one text", tokenizer=tokenizer)


def test_removals_through_gates_equal_real_surgery(llama, tokenizer):
    data = _data(tokenizer)
    removals = [(), (1,), (2, 4), (0, 3, 5)]
    losses = evaluate_removals(llama, data, removals, metric="loss", batch_size=5)
    kls = evaluate_removals(llama, data, removals, metric="kl", batch_size=5)
    reference = [
        F.log_softmax(llama(input_ids=torch.tensor([s])).logits[0, :-1], -1).detach() for s in data.samples
    ]
    assert kls[0] == pytest.approx(0.0, abs=1e-7)
    for removal, loss, kl in zip(removals, losses, kls):
        pruned = copy.deepcopy(llama)
        if removal:
            remove_blocks(pruned, removal)
        total, count = _per_sample_nll(pruned, data)
        assert loss == pytest.approx(total / count, rel=1e-5)
        expected_kl = 0.0
        with torch.no_grad():
            for sample, log_p in zip(data.samples, reference):
                log_q = F.log_softmax(pruned(input_ids=torch.tensor([sample])).logits[0, :-1], -1)
                expected_kl += float((log_p.exp() * (log_p - log_q)).sum())
        assert kl == pytest.approx(expected_kl / count, rel=1e-4, abs=1e-8)
    assert all(k > 0 for k in kls[1:])
    # the model is untouched afterwards
    assert evaluate_removals(llama, data, [()])[0] == pytest.approx(losses[0])


def test_kl_reuses_the_unpruned_logits(llama, tokenizer):
    data = _data(tokenizer)
    calls = []
    llama.register_forward_pre_hook(lambda module, args: calls.append(1))
    evaluate_removals(llama, data, [(1,), (2,), (3,)], metric="kl", batch_size=4)
    assert len(calls) == 3 * (3 + 1)  # 3 batches x (one unpruned pass + one per removal)


def test_evaluate_removals_refuses_what_it_cannot_measure(llama, tokenizer):
    data = _data(tokenizer)
    with pytest.raises(ValueError, match="`metric`"):
        evaluate_removals(llama, data, [(1,)], metric="accuracy")
    bert = build_tiny_model("bert")
    with pytest.raises(ValueError, match="next-token logits"):
        evaluate_removals(bert, data, [(1,)])


# -- lm-evaluation-harness ------------------------------------------------------------------------------------
CHOICE_DOCS = [
    {"context": "the quick brown", "choices": ["fox", "dog", "cat"], "label": 0},
    {"context": "to be, or not to", "choices": ["be", "go", "see"], "label": 0},
    {"context": "all that glitters is not", "choices": ["gold", "lead", "tin"], "label": 0},
    {"context": "brevity is the soul of", "choices": ["wit", "fun", "art"], "label": 0},
    {"context": "love all, trust a", "choices": ["few", "lot", "man"], "label": 0},
    {"context": "a stitch in time saves", "choices": ["nine", "ten", "one"], "label": 0},
]


@pytest.fixture
def local_task(tmp_path):
    """A multiple-choice lm-eval task over a local json file: runs with no Hub access."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in CHOICE_DOCS))
    (tmp_path / "blockprune_toy.yaml").write_text(
        "task: blockprune_toy\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    return tmp_path


def _choice_log_likelihoods(model, tokenizer):
    """By hand: log p(" " + choice | context) summed over the choice's tokens (lm-eval's default delimiter, and
    the tokenizer's own special tokens, here a BOS)."""
    scores = []
    with torch.no_grad():
        for doc in CHOICE_DOCS:
            for choice in doc["choices"]:
                whole = tokenizer(doc["context"] + " " + choice)["input_ids"]
                continuation = whole[len(tokenizer(doc["context"])["input_ids"]) :]
                ids = torch.tensor([whole])
                log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
                targets = ids[0, 1:]
                token_scores = log_probs[torch.arange(len(targets)), targets]
                scores.append(float(token_scores[-len(continuation) :].sum()))
    return scores


def _lm_eval_log_likelihoods(output):
    samples = sorted(output["samples"]["blockprune_toy"], key=lambda s: s["doc_id"])
    return [float(response[0]) for sample in samples for response in sample["filtered_resps"]]


def test_lm_eval_evaluates_the_in_memory_pruned_model(llama, tokenizer, local_task):
    kwargs = dict(include_path=str(local_task), batch_size=2, log_samples=True)
    output = evaluate_lm_eval(llama, tokenizer, ["blockprune_toy"], **kwargs)
    expected = _choice_log_likelihoods(llama, tokenizer)
    assert _lm_eval_log_likelihoods(output) == pytest.approx(expected, rel=1e-4)
    accuracy = sum(
        max(range(3), key=lambda c: expected[3 * d + c]) == doc["label"] for d, doc in enumerate(CHOICE_DOCS)
    ) / len(CHOICE_DOCS)
    assert output["results"]["blockprune_toy"]["acc,none"] == pytest.approx(accuracy)
    remove_blocks(llama, [0, 1, 2, 3])  # the same object, pruned in memory: lm-eval must see the change
    pruned = evaluate_lm_eval(llama, tokenizer, ["blockprune_toy"], **kwargs)
    pruned_expected = _choice_log_likelihoods(llama, tokenizer)
    assert _lm_eval_log_likelihoods(pruned) == pytest.approx(pruned_expected, rel=1e-4)
    assert pruned_expected != pytest.approx(expected, rel=1e-3)


def test_lm_eval_errors_are_clear(llama, tokenizer):
    with pytest.raises(ValueError, match="at least one"):
        evaluate_lm_eval(llama, tokenizer, [])
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="bos_token"):
        evaluate_lm_eval(llama, no_bos, ["anything"])


def test_gated_forward_leaves_the_model_as_it_found_it(llama, tokenizer):
    from optimum_blockprune.estimation.forward import GatedForward, next_token_targets

    llama.train()
    flags = [p.requires_grad for p in llama.parameters()]
    data = _data(tokenizer)
    with GatedForward(llama, data, batch_size=4) as run:
        assert not llama.training and not torch.is_grad_enabled() and run.gates.num_gates == 6
        batches = list(run)
        assert sum(b["input_ids"].shape[0] for b in batches) == data.num_samples
        run.set_removed((1, 3))
        assert run.gates.alpha.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
        assert run.logits(batches[0]).shape[:2] == batches[0]["input_ids"].shape
    assert llama.training and [p.requires_grad for p in llama.parameters()] == flags
    assert all(not m._forward_hooks for m in llama.modules())
    labels = torch.tensor([[5, 6, -100]])
    assert next_token_targets(labels).tolist() == [[6, -100, -100]]


def test_perplexity_takes_token_ids_without_a_tokenizer(llama, tokenizer):
    ids = [tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in TEXTS]
    from_ids = evaluate_perplexity(llama, ids, max_length=32)
    from_text = evaluate_perplexity(llama, TEXTS, tokenizer=tokenizer, max_length=32)
    assert from_ids == pytest.approx(from_text, rel=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen2_moe", "nemotron_h"])
def test_resuming_from_the_captured_stream_gives_the_same_measurements(model_type, tokenizer):
    from optimum_blockprune.evaluation import removal_losses

    model = build_tiny_model(model_type)
    data = _data(tokenizer)
    n = len(get_adapter(model).block_list(model))
    # pairs sharing block 1 resume from a shared capture of (1,); (1, 2, n - 1) from (1, 2); (0, 2) and (2, n - 2)
    # from the unpruned stream
    removals = [(), (0,), (n - 1,), (1, 3), (2, n - 2), (1, 2), (1, n - 1), (1, 2, n - 1), (0, 2), (1, 3)]
    for metric in ("loss", "kl"):
        full = removal_losses(model, data, removals, metric=metric, batch_size=3)
        resumed = removal_losses(model, data, removals, metric=metric, batch_size=3, reuse_prefix=True)
        np.testing.assert_allclose(resumed.sums, full.sums, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(resumed.tokens, full.tokens)
        np.testing.assert_allclose(
            full.mean(), evaluate_removals(model, data, removals, metric=metric, batch_size=5)
        )
    per_sample = full.per_sample()
    assert per_sample.shape == (len(removals), data.num_samples) and np.allclose(
        per_sample[0], 0.0, atol=1e-6
    )


def test_resuming_runs_only_the_blocks_from_the_first_removed_one(llama, tokenizer):
    from optimum_blockprune.evaluation import removal_losses

    data = _data(tokenizer, texts=TEXTS[:4])
    calls = [0] * 6
    for index, block in enumerate(llama.model.layers):  # the MLP runs only when the block really computes
        block.mlp.register_forward_pre_hook(lambda module, args, i=index: calls.__setitem__(i, calls[i] + 1))
    removal_losses(llama, data, [(4,), (2, 5), ()], batch_size=4, reuse_prefix=True)
    # one capture pass + the half-way check (blocks 3..5) + (4,) runs 4..5 + (2, 5) runs 2..5 + () runs none
    assert calls == [1, 1, 2, 3, 4, 4]
    assert all(not m._forward_hooks for m in llama.modules()) and not llama.model.layers[0]._forward_pre_hooks
    assert all("forward" not in block.__dict__ for block in llama.model.layers)


def test_removals_sharing_a_prefix_resume_from_its_capture(llama, tokenizer):
    from optimum_blockprune.evaluation import removal_losses

    data = _data(tokenizer, texts=TEXTS[:4])
    calls = [0] * 6
    for index, block in enumerate(llama.model.layers):
        block.mlp.register_forward_pre_hook(lambda module, args, i=index: calls.__setitem__(i, calls[i] + 1))
    heads = []
    handle = llama.lm_head.register_forward_pre_hook(lambda module, args: heads.append(1))
    shared = removal_losses(llama, data, [(1, 3), (1, 4), (1, 5)], batch_size=4, reuse_prefix=True)
    handle.remove()
    # capture + half-way check (3..5) + the shared prefix (1,) without its head (1..5) + each pair from its second
    # block; from the unpruned stream alone every pair would re-run blocks 1..5: [1, 5, 5, 6, 6, 6]
    assert calls == [1, 2, 2, 4, 5, 6]
    assert len(heads) == 2 + 3  # the capture, the check and the three pairs: the prefix stops before the head
    full = removal_losses(llama, data, [(1, 3), (1, 4), (1, 5)], batch_size=4)
    np.testing.assert_allclose(shared.sums, full.sums, rtol=1e-6)


def test_resumption_plan_shares_prefixes_and_greedy_steps():
    from optimum_blockprune.estimation.residual_cache import UNPRUNED, blocks_run, plan_resumption

    plan = plan_resumption([(2, 4), (2, 5), (2, 7)], num_blocks=8)
    prefix, *pairs = plan
    assert (prefix.removal, prefix.rows, prefix.capture, prefix.start) == ((2,), (), True, 2)
    assert [(p.removal, p.parent, p.start, p.rows) for p in pairs] == [
        ((2, 4), 0, 4, (0,)),
        ((2, 5), 0, 5, (1,)),
        ((2, 7), 0, 7, (2,)),
    ]
    # a greedy step with (3,) removed: candidates after block 3 resume from its capture, earlier ones cannot
    steps = {p.removal: p for p in plan_resumption([(3,), (1, 3), (3, 5), (3, 6)], num_blocks=8)}
    assert steps[(3,)].capture and steps[(3,)].parent == UNPRUNED
    assert (steps[(1, 3)].parent, steps[(1, 3)].start) == (UNPRUNED, 1)
    assert [steps[r].start for r in ((3, 5), (3, 6))] == [5, 6]
    unshared = plan_resumption([(2, 4), (2, 5), (2, 7)], num_blocks=8, share=False)
    assert [(p.parent, p.start, p.capture) for p in unshared] == [(UNPRUNED, 2, False)] * 3
    assert blocks_run(unshared, 8) == 18 > blocks_run(plan, 8) == 6 + 4 + 3 + 1
    # a prefix shared by two removals that barely save anything is not worth its own pass
    assert [p.removal for p in plan_resumption([(0, 1), (0, 2)], num_blocks=8)] == [(0, 1), (0, 2)]


@given(
    st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=4), min_size=1, max_size=25),
)
@settings(max_examples=200, deadline=None)
def test_resumption_plan_is_valid(removals):
    """Every asked removal is measured once, and each step reads from its parent only blocks where both agree."""
    from optimum_blockprune.estimation.residual_cache import UNPRUNED, plan_resumption

    n = 8
    plan = plan_resumption(removals, num_blocks=n)
    rows = sorted(row for step in plan for row in step.rows)
    assert rows == list(range(len(removals)))
    for index, step in enumerate(plan):
        assert step.removal == tuple(sorted(set(step.removal)))
        for row in step.rows:
            assert step.removal == tuple(sorted(set(removals[row])))
        if step.parent == UNPRUNED:
            parent, parent_start = (), 0
        else:
            assert step.parent < index and plan[step.parent].capture
            parent, parent_start = plan[step.parent].removal, plan[step.parent].start
        assert parent_start <= step.start <= n
        assert {b for b in step.removal if b < step.start} == {b for b in parent if b < step.start}
        assert step.capture == any(later.parent == index for later in plan)


def load_benchmark(name: str, monkeypatch):
    """A module of `benchmarks/` (not a package: its scripts import their siblings by name, hence the path)."""
    import importlib.util

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_mmlu_task_is_stratified_and_scores_gated_removals_like_surgery(
    llama, tokenizer, tmp_path, monkeypatch
):
    """benchmarks/_mmlu.py: an MMLU-format file becomes a local lm-eval task; a removal gated to 0 scores exactly
    as the same blocks cut out of a copy."""
    pytest.importorskip("lm_eval")
    mmlu = load_benchmark("_mmlu", monkeypatch)
    source = tmp_path / "mmlu.jsonl"
    letters = "ABCD"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"what is {t} {q}?",
                    **{f"answer_{c}": f"{c}{q}" for c in "abcd"},
                    "correct_answer": letters[(t + q) % 4],
                    "topic": f"topic {t}",
                }
            )
            + "\n"
            for t in range(3)
            for q in range(4)
        )
    )
    pruned = copy.deepcopy(llama)
    remove_blocks(pruned, [1, 3])
    for style in mmlu.STYLES:  # lettered answers (lm-eval's mmlu) and each answer's own text (cloze)
        task = tmp_path / style
        info = mmlu.write_mmlu_task(task, source, per_topic=2, seed=0, style=style)
        assert info == {"num_questions": 6, "num_topics": 3, "per_topic": 2, "seed": 0, "style": style}
        docs = [json.loads(line) for line in (task / "mmlu_offline.jsonl").read_text().splitlines()]
        assert [d["topic"] for d in docs] == ["topic 0"] * 2 + ["topic 1"] * 2 + ["topic 2"] * 2
        gated = mmlu.mmlu_accuracy(llama, tokenizer, task, removed=(1, 3), batch_size=2)
        cut = mmlu.mmlu_accuracy(pruned, tokenizer, task, batch_size=2)
        assert gated == cut and 0.0 <= gated["accuracy"] <= 1.0
        p, n = gated["accuracy"], 6  # lm-eval's standard error: the sample standard deviation over sqrt(n)
        assert gated["standard_error"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), abs=1e-9)
        assert len(gated["correct"]) == n and set(gated["correct"]) <= {0, 1}
        assert sum(gated["correct"]) / n == pytest.approx(p)  # one entry per question, in the task's order
        unpruned = mmlu.mmlu_accuracy(llama, tokenizer, task, batch_size=2)
        paired = mmlu.paired_difference(gated["correct"], unpruned["correct"])
        assert paired["difference"] == pytest.approx(p - unpruned["accuracy"])
        assert paired["disagreements"] == sum(a != b for a, b in zip(gated["correct"], unpruned["correct"]))
    # the paired error by hand: differences (1, 0, 0, -1) have mean 0 and sample variance 2/3, so SE sqrt(2/3 / 4)
    paired = mmlu.paired_difference([1, 1, 0, 0], [0, 1, 0, 1])
    assert paired == {
        "difference": 0.0,
        "standard_error": pytest.approx(math.sqrt(2 / 12)),
        "disagreements": 2,
    }
    assert mmlu.paired_difference([1, 0], [1, 0])["standard_error"] == 0.0  # identical picks: no noise at all
    with pytest.raises(ValueError, match="the same questions"):
        mmlu.paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="style='essay' is not one of"):
        mmlu.write_mmlu_task(tmp_path / "bad", source, style="essay")


def test_mmlu_picks_pairs_every_pick_with_the_default_of_its_own_corpus_and_m(monkeypatch):
    """benchmarks/mmlu_picks.py compares each pick with the default's pick on the same questions, only within one
    corpus, calibration and M; a group without a default pick gets no comparison."""
    picks = load_benchmark("mmlu_picks", monkeypatch)

    def row(corpus, m, method, correct):
        return {"corpus": corpus, "calibration_samples": 32, "num_removed": m, "method": method,
                "held_out_perplexity": 100.0, "accuracy": sum(correct) / len(correct), "standard_error": 0.1,
                "correct": correct}  # fmt: skip

    rows = [
        row("shakespeare", 12, "guided", [1, 1, 0, 0]),
        row("shakespeare", 12, "sleb", [0, 1, 0, 1]),
        row("shakespeare", 12, "block_influence", [0, 0, 0, 0]),
        row("python_docs", 12, "sleb", [1, 1, 1, 1]),  # no default pick of this corpus: nothing to pair with
        row("shakespeare", 6, "guided", [0, 0, 0, 0]),
    ]
    paired = picks.paired_with_default(rows)
    assert [(p["corpus"], p["num_removed"], p["method"]) for p in paired] == [
        ("shakespeare", 12, "sleb"),
        ("shakespeare", 12, "block_influence"),
    ]
    assert paired[0]["difference"] == 0.0 and paired[0]["disagreements"] == 2
    assert paired[1]["difference"] == 0.5 and paired[1]["disagreements"] == 2
    table = picks.markdown_table(
        {
            "subset": {"style": "cloze", "num_questions": 4, "per_topic": 1, "num_topics": 4},
            "unpruned": {"accuracy": 0.5, "standard_error": 0.1},
            "rows": rows,
            "paired": paired,
        }
    )
    assert "| +50.0 ± 28.9 points (2 questions differ) |" in table  # sqrt(1/3 / 4) = 0.289
    assert table.count("| – |") == 3  # the two default rows and the unpaired Python row


def test_the_paired_loss_difference_weights_samples_by_tokens_and_removes_what_they_share():
    """`paired_difference` (the guided search's finalist gap and benchmarks/held_out_paired.py): a ratio estimator
    over samples of different token counts, by hand; a constant per-token shift has no error at all, however
    different the samples are; one sample gives no error estimate (infinite, not zero)."""
    from optimum_blockprune.evaluation import paired_difference

    tokens = np.array([10.0, 10.0, 20.0])
    a, b = np.array([2.0, 2.0, 5.0]), np.array([1.0, 2.0, 3.0])  # differences 1, 0, 2 over 40 tokens
    mean, error = paired_difference(a, b, tokens)
    residuals = np.array([1.0, 0.0, 2.0]) - 0.075 * tokens
    assert mean == pytest.approx(0.075)
    assert error == pytest.approx(np.sqrt(3 / 2 * (residuals**2).sum()) / 40)
    hard_and_easy = np.array([50.0, 5.0, 300.0])  # very different samples, the same 0.1 per token worse
    assert paired_difference(hard_and_easy + 0.1 * tokens, hard_and_easy, tokens) == pytest.approx((0.1, 0.0))
    assert paired_difference([3.0], [1.0], [10.0]) == (pytest.approx(0.2), math.inf)


def test_held_out_paired_compares_every_pick_with_the_one_default_of_its_m(monkeypatch):
    """benchmarks/held_out_paired.py: picks are grouped per M with every method (and protocol) that made them
    (`_corpora.picks_by_blocks`, as calibration_kl.py groups them), the default's pick is the reference (refused
    when a protocol gives two), and the first passages are reported apart from all of them."""
    script = load_benchmark("held_out_paired", monkeypatch)
    corpora = load_benchmark("_corpora", monkeypatch)

    def recorded(samples, method, m, blocks):
        return "x.json", {"args": {"samples": samples}}, {
            "method": method, "num_removed": m, "removed_blocks": blocks, "held_out_perplexity": 10.0 + m
        }  # fmt: skip

    picks = corpora.picks_by_blocks(
        [
            recorded(32, "guided", 3, [1, 2, 3]),
            recorded(32, "sleb", 3, [1, 2, 3]),
            recorded(32, "evopress", 3, [1, 2, 4]),
            recorded(32, "guided", 6, [1, 2, 3, 4, 5, 6]),
            recorded(16, "guided", 6, [1, 2, 3, 4, 5, 7]),
        ]
    )
    assert picks[3][(1, 2, 3)]["picked_by"] == ["guided (32 passages)", "sleb (32 passages)"]
    assert script.default_pick(picks[3], 3) == (1, 2, 3)
    with pytest.raises(SystemExit, match="M = 6: 2 picks of 'guided'"):
        script.default_pick(picks[6], 6)
    with pytest.raises(SystemExit, match="M = 9: 0 picks of 'guided'"):
        script.default_pick({}, 9)

    tokens = np.array([10.0, 10.0, 20.0, 20.0])
    sums = np.array(
        [[10.0, 10.0, 20.0, 20.0], [12.0, 11.0, 24.0, 22.0]]
    )  # the second: worse on every passage
    rows = script.compare(sums, tokens, reference=0, first=2)
    assert rows[0]["ratio_to_default"] == 1.0 and rows[0]["ratio_interval"] == [1.0, 1.0]
    assert rows[1]["perplexity_first"] == pytest.approx(math.exp(23 / 20))
    assert rows[1]["perplexity_all"] == pytest.approx(math.exp(69 / 60))
    assert rows[1]["ratio_to_default"] == pytest.approx(math.exp(9 / 60))
    low, high = rows[1]["ratio_interval"]
    assert 1.0 < low < math.exp(9 / 60) < high and rows[1]["standard_errors"] > 1.96


def test_benchmarks_record_paths_relative_and_never_leave_half_a_file(tmp_path, monkeypatch):
    """benchmarks/_report.py: `output` and the named path arguments are recorded relative to the repository; a
    payload that cannot be written leaves the previous file whole and no temporary file behind."""
    import argparse

    report = load_benchmark("_report", monkeypatch)
    repository = Path(report.REPOSITORY)
    args = argparse.Namespace(
        output=str(repository / "benchmarks" / "results" / "x.json"),
        results=[str(repository / "a.json"), "b.json"],
        threads=1,
    )
    monkeypatch.chdir(repository)
    assert report.recorded_args(args, "results") == {
        "output": os.path.join("benchmarks", "results", "x.json"),
        "results": ["a.json", "b.json"],
        "threads": 1,
    }
    assert args.output.startswith(str(repository))  # the namespace itself is left as it was
    with pytest.raises(KeyError):
        report.recorded_args(args, "picks")  # a path argument the script does not have is a bug, not a skip

    path = tmp_path / "nested" / "result.json"
    report.write_json(str(path), {"rows": [1]})
    assert json.loads(path.read_text()) == {"rows": [1]}
    with pytest.raises(TypeError):
        report.write_json(str(path), {"rows": [object()]})
    assert json.loads(path.read_text()) == {"rows": [1]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
    report.write_json(str(path), {"value": np.float32(0.5)}, default=float)
    assert json.loads(path.read_text()) == {"value": 0.5}
