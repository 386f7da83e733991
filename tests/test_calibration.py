"""Calibration input: every supported source, chat templates, shuffling, truncation, packing, fingerprints."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import TEXTS

from optimum_blockprune import BlockRemovalConfig, CalibrationDataError, prepare_calibration_data
from optimum_blockprune.estimation.calibration import join_short_documents, split_documents


def _config(**overrides):
    return BlockRemovalConfig(
        **{"num_calibration_samples": 4, "max_length": 32, "shuffle": False, **overrides}
    ).calibration_options()


def _decoded(tokenizer, data):
    return [tokenizer.decode(s) for s in data.samples]


def test_list_of_strings_truncated_to_max_length(tokenizer):
    data = prepare_calibration_data(TEXTS, tokenizer, **_config(max_length=10))
    assert data.num_samples == 4 and all(len(s) == 10 for s in data.samples)
    assert data.samples[0][0] == tokenizer.bos_token_id
    assert (
        data.source == f"a list of {len(TEXTS)} texts"
    )  # how the card names it (it once read "from `list`")


def test_dataset_text_column_and_messages_with_chat_template(tokenizer):
    texts = prepare_calibration_data(
        datasets.Dataset.from_dict({"body": TEXTS}), tokenizer, **_config(text_column="body")
    )
    assert _decoded(tokenizer, texts)[0].startswith("<1>the quick")
    messages = [[{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}] for t in TEXTS]
    chat = prepare_calibration_data(
        datasets.Dataset.from_dict({"messages": messages}), tokenizer, **_config(max_length=200)
    )
    first = _decoded(tokenizer, chat)[0]
    assert first.startswith("<1>user: the quick") and "<1>assistant: ok<2>" in first
    assert not first.startswith("<1><1>"), "special tokens must not be added twice to a rendered template"
    as_list = prepare_calibration_data(messages, tokenizer, **_config(max_length=200))
    assert as_list.samples == chat.samples


def test_missing_column_and_missing_chat_template_are_explained(tokenizer):
    with pytest.raises(CalibrationDataError, match="no `text` column .*columns: \\['body'\\]"):
        prepare_calibration_data(datasets.Dataset.from_dict({"body": TEXTS}), tokenizer, **_config())
    plain = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, bos_token="<1>", eos_token="<2>"
    )
    with pytest.raises(CalibrationDataError, match="no `chat_template`"):
        prepare_calibration_data([[{"role": "user", "content": "hi"}]], plain, **_config())
    with pytest.raises(CalibrationDataError, match="empty list"):
        prepare_calibration_data([], tokenizer, **_config())
    with pytest.raises(CalibrationDataError, match="not supported"):
        prepare_calibration_data(42, tokenizer, **_config())


def test_local_files(tokenizer, tmp_path):
    txt = tmp_path / "play.txt"
    txt.write_text("\n\n".join(TEXTS))
    options = _config(max_length=120, shuffle=False, num_calibration_samples=500)
    documents = prepare_calibration_data(str(txt), tokenizer, **options)
    assert documents.source == "file:play.txt"
    # paragraphs joined in file order while they fit: every sample full-ish, nothing cut, nothing lost
    assert documents.num_samples > 1 and all(len(s) <= 120 for s in documents.samples)
    text = "".join(_decoded(tokenizer, documents)).replace("<1>", "")
    assert all(t in text for t in TEXTS) and text.index(TEXTS[0]) < text.index(TEXTS[-1])
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    records = prepare_calibration_data(jsonl, tokenizer, **_config())
    assert records.samples == prepare_calibration_data(TEXTS, tokenizer, **_config()).samples
    with pytest.raises(CalibrationDataError, match="unsupported extension"):
        (tmp_path / "data.xml").write_text("<a/>")
        prepare_calibration_data(str(tmp_path / "data.xml"), tokenizer, **_config())


def test_dataset_repository_layout_uses_the_hub_loader(tokenizer, tmp_path):
    """A directory laid out like a Hub dataset repo goes through the same `load_dataset(name, subset, split)`."""
    repo = tmp_path / "user__calibration"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[:6]))
    (repo / "data" / "validation.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[6:]))
    data = prepare_calibration_data(str(repo), tokenizer, **_config(dataset_split="validation"))
    assert _decoded(tokenizer, data)[0].startswith("<1>" + TEXTS[6][:20])
    assert data.source == "local:user__calibration"


def test_unreachable_hub_name_fails_clearly(tokenizer):
    with pytest.raises(
        CalibrationDataError, match="Could not load calibration dataset 'nobody/nothing-here'"
    ):
        prepare_calibration_data("nobody/nothing-here", tokenizer, **_config())


def test_shuffle_is_seeded(tokenizer):
    a = prepare_calibration_data(TEXTS, tokenizer, **_config(shuffle=True, seed=1))
    b = prepare_calibration_data(TEXTS, tokenizer, **_config(shuffle=True, seed=1))
    c = prepare_calibration_data(TEXTS, tokenizer, **_config(shuffle=True, seed=2))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    every = _config(shuffle=False, num_calibration_samples=len(TEXTS))
    unshuffled = prepare_calibration_data(TEXTS, tokenizer, **every).samples
    shuffled = prepare_calibration_data(
        TEXTS, tokenizer, **_config(shuffle=True, seed=1, num_calibration_samples=len(TEXTS))
    ).samples
    assert shuffled != unshuffled and sorted(shuffled) == sorted(unshuffled)


def test_packing_cuts_full_windows(tokenizer):
    data = prepare_calibration_data(
        TEXTS, tokenizer, **_config(pack_samples=True, max_length=16, num_calibration_samples=10)
    )
    assert data.num_samples == 10 and all(len(s) == 16 for s in data.samples)
    flat = [t for s in data.samples for t in s]
    assert tokenizer.eos_token_id in flat  # documents are separated


def test_batches_pad_and_mask(tokenizer):
    data = prepare_calibration_data(["ab", "abcdef"], tokenizer, **_config())
    batch = next(data.batches(2, pad_token_id=0))
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].sum(1).tolist() == [3, 7]
    assert (batch["labels"][0, 3:] == -100).all() and (batch["labels"][1] != -100).all()


# -- token ids: no tokenizer needed ---------------------------------------------------------------------------------
def _ids(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def test_every_token_id_form_gives_the_same_samples(tokenizer):
    import torch

    ids = _ids(tokenizer)
    expected = prepare_calibration_data(TEXTS, tokenizer, **_config()).samples
    forms = {
        "lists": ids,
        "tensors": [torch.tensor(s) for s in ids],
        "records": [{"input_ids": s} for s in ids],
        "dataset": datasets.Dataset.from_dict({"input_ids": ids, "text": ["ignored"] * len(ids)}),
        "iterable": datasets.Dataset.from_dict({"input_ids": ids}).to_iterable_dataset(),
        "encoding": tokenizer(list(TEXTS), padding=True, return_tensors="pt"),
    }
    for name, data in forms.items():
        prepared = prepare_calibration_data(data, None, **_config())
        assert prepared.samples == expected, name
    # a 2-D tensor is [samples, tokens] without padding information
    square = torch.tensor([s[:5] for s in ids])
    assert prepare_calibration_data(square, None, **_config()).samples == [s[:5] for s in ids[:4]]


def test_jsonl_with_input_ids_and_a_streamed_text_dataset(tokenizer, tmp_path):
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text("\n".join(json.dumps({"input_ids": s}) for s in _ids(tokenizer)))
    from_file = prepare_calibration_data(str(jsonl), None, **_config())
    assert from_file.samples == prepare_calibration_data(TEXTS, tokenizer, **_config()).samples
    streamed = datasets.Dataset.from_dict({"text": TEXTS}).to_iterable_dataset()
    assert (
        prepare_calibration_data(streamed, tokenizer, **_config()).samples
        == prepare_calibration_data(TEXTS, tokenizer, **_config()).samples
    )
    shuffled = prepare_calibration_data(
        datasets.Dataset.from_dict({"text": TEXTS}).to_iterable_dataset(), tokenizer, **_config(shuffle=True)
    )
    assert shuffled.num_samples == 4


def test_token_ids_are_truncated_packed_and_checked_against_the_vocabulary(tokenizer):
    ids = _ids(tokenizer)
    short = prepare_calibration_data(ids, None, **_config(max_length=7))
    assert all(len(s) == 7 for s in short.samples)
    packed = prepare_calibration_data(ids, None, **_config(pack_samples=True, max_length=16))
    assert all(len(s) == 16 for s in packed.samples)  # no EOS separator without a tokenizer
    with pytest.raises(
        CalibrationDataError, match=r"sample 1 holds token id 500, outside the model's vocabulary \(0..48\)"
    ):
        prepare_calibration_data([ids[0], [1, 500, 2]], None, shuffle=False, vocab_size=49)
    with pytest.raises(CalibrationDataError, match="sample 0 holds token id -3"):
        prepare_calibration_data([[1, -3, 2]], None, vocab_size=49)


def test_text_without_a_tokenizer_and_odd_records_are_explained(tokenizer):
    with pytest.raises(CalibrationDataError, match="A tokenizer is needed .* token ids"):
        prepare_calibration_data(TEXTS, None, **_config())
    with pytest.raises(CalibrationDataError, match="keys \\['body'\\]; expected `input_ids`"):
        prepare_calibration_data([{"body": "hello"}], tokenizer, **_config())
    records = [{"text": t} for t in TEXTS]
    assert (
        prepare_calibration_data(records, tokenizer, **_config()).samples
        == prepare_calibration_data(TEXTS, tokenizer, **_config()).samples
    )


def test_text_files_split_into_documents():
    assert split_documents("a b\nc\n\n  \nd\n\n\ne\n") == ["a b\nc", "d", "e"]  # blank-line paragraphs
    assert split_documents("one\ntwo\n\nthree") == ["one\ntwo", "three"]
    assert split_documents("one\ntwo\nthree\n") == ["one", "two", "three"]  # no blank line: one per line
    assert split_documents(" \n\n ") == []
    assert join_short_documents(["a", "b", "c", "d"], [3, 3, 5, 9], 6) == ["a\n\nb", "c", "d"]
    assert join_short_documents(["a", "b"], [7, 7], 6) == [
        "a",
        "b",
    ]  # too long alone: kept alone (truncated later)


def test_a_long_text_file_gives_many_samples_not_one(tokenizer, tmp_path):
    """A 17 KB file of 40 paragraphs used to become one sample cut at `max_length`, the rest thrown away."""
    paragraphs = [" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(9)) for i in range(40)]
    path = tmp_path / "essay.txt"
    path.write_text("\n\n".join(paragraphs))
    data = prepare_calibration_data(
        str(path), tokenizer, **_config(max_length=512, num_calibration_samples=500)
    )
    assert data.num_samples >= 30 and data.num_tokens >= 0.95 * len(path.read_text())


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": "broken\n', "line 2, is not valid JSON"),
        ("empty.jsonl", "", "is empty"),
        ("blank.txt", "\n  \n\n", "only whitespace"),
        ("empty.csv", "", "is empty"),
        ("header.csv", "text\n", "holds no records"),
    ],
)
def test_unreadable_files_fail_with_one_clear_error(tokenizer, tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CalibrationDataError, match=match):
        prepare_calibration_data(str(path), tokenizer, **_config())
