"""The fault catalogue: one test per class of bad input or fault, through the Python API and the command line.

Each asserts the error type, that the message names the argument and the fix, that the failure comes before the
expensive work (no model loaded, no calibration pass), and that nothing is left behind or overwritten.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from conftest import TEXTS, build_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimum_blockprune import (
    BlockRemovalConfig,
    CalibrationDataError,
    ConfigurationError,
    FisherEstimate,
    FisherFileError,
    HubUploadError,
    ModelLoadError,
    OutputExistsError,
    OutputPathError,
    Pruner,
)
from optimum_blockprune.cli import main

FAST = ["--num-calibration-samples", "6", "--max-length", "24", "--batch-size", "3", "--no-show-progress"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(Pruner, "from_pretrained", classmethod(refuse))


@pytest.fixture(scope="module")
def fisher_file(tiny_model_dir, calibration_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "fisher.safetensors"
    args = ["estimate", str(tiny_model_dir), "--dataset", str(calibration_file), "--output", str(path), *FAST]
    assert main(args) == 0
    return path


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("optimum-blockprune")]
    assert "Traceback" not in err and len(errors) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _listing(directory):
    return sorted(os.listdir(directory))


# -- calibration data ---------------------------------------------------------------------------------------------
BAD_DATA = {
    "malformed.jsonl": ('{"text": "fine"}\n{"text": "cut off\n', "line 2, is not valid JSON"),
    "empty.jsonl": ("", "is empty"),
    "blank.txt": ("\n \n", "only whitespace"),
    "table.xml": ("<a/>", "unsupported extension"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_calibration_files(name, llama, tokenizer, tiny_model_dir, tmp_path, capsys, monkeypatch):
    content, message = BAD_DATA[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CalibrationDataError, match=message):
        Pruner(llama, tokenizer).select(BlockRemovalConfig(show_progress=False), str(path))
    if name == "table.xml":  # found from the name alone: before the model loads
        monkeypatch.setattr(Pruner, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded")))
    code = main(["rank", str(tiny_model_dir), "--dataset", str(path), *FAST])
    assert code == 2
    _one_line_error(capsys, message)


def test_a_mistyped_data_path_fails_before_the_model_loads(no_model_load, tiny_model_dir, tmp_path, capsys):
    missing = os.path.join("data", "calibraton.jsonl")  # relative, with a typo
    with pytest.raises(CalibrationDataError, match="does not exist"):
        Pruner(build_tiny_model("llama")).estimate(missing)
    assert (
        main(["prune", str(tiny_model_dir), "--dataset", missing, "--output-dir", str(tmp_path / "o")]) == 2
    )
    _one_line_error(capsys, "`--dataset`='data/calibraton.jsonl' does not exist")
    assert not (tmp_path / "o").exists()


def test_too_little_calibration_data(llama, tokenizer, tiny_model_dir, tmp_path, capsys):
    few = BlockRemovalConfig(num_calibration_samples=4, max_length=24, show_progress=False)
    with pytest.raises(CalibrationDataError, match="over 6 gates"):  # a rank-4 Fisher cannot rank 6 blocks
        Pruner(llama, tokenizer).estimate(TEXTS, few)
    with pytest.raises(CalibrationDataError, match="at least 4 are needed"):  # auto's held-out slice
        Pruner(llama, tokenizer).select(BlockRemovalConfig(selection="auto", show_progress=False), TEXTS[:4])
    out = tmp_path / "f.safetensors"
    args = ["estimate", str(tiny_model_dir), "--dataset", str(tmp_path / "d.jsonl"), "--output", str(out)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[:3]))
    assert main([*args, *FAST]) == 2
    _one_line_error(capsys, "3 calibration sample(s)", "at least 6 samples")
    assert not out.exists()


# -- model ----------------------------------------------------------------------------------------------------------
def test_a_missing_model_directory_is_named(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Pruner.from_pretrained(missing)
    assert main(["rank", missing, "--dataset", str(tmp_path), *FAST]) == 2
    _one_line_error(capsys, "no-such-model", "does not exist")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        Pruner.from_pretrained(str(tmp_path / "weights.bin"))


# -- Fisher files ---------------------------------------------------------------------------------------------------
def _garbage(path, fisher_file):
    path.write_bytes(b"\x00garbage" * 100)


def _truncated(path, fisher_file):
    path.write_bytes(fisher_file.read_bytes()[:-200])


def _edited(path, fisher_file):
    fisher = FisherEstimate.load(fisher_file)
    fisher.hessian[0, 0] *= 3.0
    fisher.save(path)


def _nan(path, fisher_file):
    """A file with a NaN that `save` would refuse to write (another tool wrote it, or a disk flipped bits)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(fisher_file), "np") as handle:
        metadata = handle.metadata()
    arrays = load_file(str(fisher_file))
    arrays["gradients"][1, 2] = np.nan
    save_file(arrays, str(path), metadata=metadata)


FISHER_FAULTS = {
    "missing": (None, "does not exist"),
    "garbage": (_garbage, "not a readable safetensors file"),
    "truncated": (_truncated, "not a readable safetensors file"),
    "edited": (_edited, "not what its per-sample gradients give"),
    "nan": (_nan, "NaN or inf"),
}


@pytest.mark.parametrize("fault", sorted(FISHER_FAULTS))
def test_broken_fisher_files(fault, fisher_file, tiny_model_dir, tmp_path, capsys, no_model_load):
    make, message = FISHER_FAULTS[fault]
    path = tmp_path / "broken.safetensors"
    if make is not None:
        make(path, fisher_file)
    with pytest.raises(FisherFileError, match=message):
        FisherEstimate.load(path)
    assert main(["rank", str(tiny_model_dir), "--fisher-file", str(path), "--energy", "paper"]) == 2
    _one_line_error(capsys, message)


def test_a_fisher_from_another_model_is_refused(fisher_file, tokenizer, tiny_model_dir, capsys):
    other = Pruner(build_tiny_model("llama", seed=1), tokenizer)  # same shape, other weights
    fisher = FisherEstimate.load(fisher_file)
    config = BlockRemovalConfig(num_blocks_to_remove=2, energy="paper", show_progress=False)
    with pytest.raises(FisherFileError, match="weights fingerprint"):
        other.solve(fisher, config)
    with pytest.raises(FisherFileError, match="weights fingerprint"):
        other.select(config, fisher=fisher)
    # the expert override: a Fisher known to fit (here: the same architecture) is used as it is
    assert other.solve(fisher, replace(config, verify_fisher_model=False)).states
    # the model it came from accepts it
    assert Pruner.from_pretrained(tiny_model_dir).solve(fisher, config).states
    for key in ("model", "architecture", "num_blocks", "weights_fingerprint", "model_type"):
        assert fisher.metadata[key], key


# -- outputs --------------------------------------------------------------------------------------------------------
def test_output_locations_are_checked_before_any_work(
    no_model_load, fisher_file, tiny_model_dir, calibration_file, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    data = ["--dataset", str(calibration_file)]
    cases = [
        (["prune", str(tiny_model_dir), *data, "--output-dir", str(blocker / "out")], "is a file"),
        (["prune", str(tiny_model_dir), *data, "--output-dir", str(blocker)], "existing file"),
        (
            ["estimate", str(tiny_model_dir), *data, "--output", str(tmp_path / "no" / "f.safetensors")],
            "mkdir",
        ),
        (
            [
                "rank",
                "--fisher-file",
                str(fisher_file),
                "--energy",
                "paper",
                "--json",
                str(tmp_path / "n" / "r"),
            ],
            "mkdir",
        ),
        (["estimate", str(tiny_model_dir), *data, "--output", str(blocker)], "already exists"),
        (
            ["rank", "--fisher-file", str(fisher_file), "--energy", "paper", "--json", str(blocker)],
            "already exists",
        ),
        (
            ["prune", str(tiny_model_dir), *data, "--output-dir", str(tmp_path / "o"), "--energy", "paper"]
            + ["--save-fisher", str(blocker)],
            "already exists",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        _one_line_error(capsys, message)
    assert blocker.read_text() == "mine" and _listing(tmp_path) == ["a-file"]
    with pytest.raises(OutputExistsError, match="already exists"):
        FisherEstimate.load(fisher_file).save(blocker)
    with pytest.raises(OutputPathError, match="is a file"):
        _pruned().save_pretrained(blocker / "model")


def _pruned():
    pruner = Pruner(build_tiny_model("llama"))
    pruner.apply((4, 5))
    return pruner


def test_saved_files_get_the_modes_save_pretrained_gives(tmp_path, fisher_file):
    mask = os.umask(0o022)
    try:
        saved = _pruned().save_pretrained(tmp_path / "model")
        FisherEstimate.load(fisher_file).save(tmp_path / "f.safetensors")
    finally:
        os.umask(mask)
    assert os.stat(saved).st_mode & 0o777 == 0o755
    assert os.stat(tmp_path / "f.safetensors").st_mode & 0o777 == 0o644
    assert _listing(tmp_path) == ["f.safetensors", "model"]  # no staging or temporary file left


_SAVE_AND_HANG = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import build_tiny_model
    from optimum_blockprune import Pruner

    pruner = Pruner(build_tiny_model("llama"))
    pruner.apply((4, 5))
    def slow_save(directory, **kwargs):
        open(directory + "/model.safetensors", "wb").write(b"partial")
        print("writing", flush=True)
        time.sleep(60)
    pruner.model.save_pretrained = slow_save
    pruner.save_pretrained({target!r})
    """
)


def test_sigterm_during_save_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model"
    script = _SAVE_AND_HANG.format(tests=os.path.dirname(__file__), target=str(target))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    assert _listing(tmp_path) == []  # no half-written model, no hidden staging directory


# -- budgets --------------------------------------------------------------------------------------------------------
class _Untouchable:
    """Calibration data that fails the test if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError("calibration data was read before the infeasible request was refused")


@pytest.mark.parametrize(
    "request_",
    [
        {"min_parameters_removed": 10**12},
        {"contiguous": True, "num_blocks_to_remove": 3, "protected_blocks": (1, 4)},
    ],
    ids=["parameters-above-the-total", "contiguous-run-broken-by-protection"],
)
def test_infeasible_requests_fail_before_calibration(request_, llama, tokenizer, tiny_model_dir, capsys):
    config = BlockRemovalConfig(**{"num_blocks_to_remove": 2, **request_}, show_progress=False)
    with pytest.raises(ConfigurationError, match="No way to remove the requested blocks"):
        Pruner(llama, tokenizer).select(config, _Untouchable())
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={','.join(map(str, v)) if isinstance(v, tuple) else v}")
             for k, v in request_.items()]  # fmt: skip
    assert main(["rank", str(tiny_model_dir), "--dataset", str(tiny_model_dir), *flags, *FAST]) == 2
    _one_line_error(capsys, "No way to remove the requested blocks")


def test_nan_in_an_in_memory_estimate_is_one_clear_error(fisher_file, tiny_model_dir, capsys):
    fisher = FisherEstimate.load(fisher_file)
    fisher.hessian[0, 1] = np.inf
    config = BlockRemovalConfig(num_blocks_to_remove=2, energy="paper", verify_fisher_model=False)
    with pytest.raises(ConfigurationError, match="NaN or infinite .* float32"):
        Pruner.from_pretrained(tiny_model_dir).solve(fisher, config)


# -- the Hub --------------------------------------------------------------------------------------------------------
def test_an_offline_push_keeps_the_local_save_and_says_how_to_retry(
    tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_OFFLINE", True
    )  # any request fails, like no network
    out = tmp_path / "out"
    args = ["prune", str(tiny_model_dir), "--dataset", str(calibration_file), "--output-dir", str(out)]
    assert main([*args, "--energy", "paper", "--push-to-hub", "me/pruned", *FAST]) == 2
    _one_line_error(capsys, "The local files are intact", f"optimum-blockprune push {out} me/pruned")
    saved = _listing(out)
    assert "config.json" in saved and "README.md" in saved
    assert main(["push", str(out), "me/pruned"]) == 2  # the retry command, still offline: the same clear line
    _one_line_error(capsys, "failed")
    assert _listing(out) == saved
    assert main(["push", str(tmp_path), "me/pruned"]) == 2  # not a saved model
    _one_line_error(capsys, "not a model saved by optimum-blockprune")
    with pytest.raises(HubUploadError, match="pruner.save_pretrained"):
        _pruned().push_to_hub("me/pruned")


# -- overwrite replaces what a save writes, nothing else -----------------------------------------------------------
def test_overwrite_keeps_every_file_a_save_did_not_write(
    tiny_model_dir, calibration_file, tmp_path, monkeypatch
):
    """`--output-dir . --overwrite` in a project directory: the input data, notes and subfolders stay; a previous
    save's files (a sharded checkpoint among them) are replaced, so no stale shard can mix with the new weights."""
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    data = project / "data.jsonl"
    data.write_bytes(calibration_file.read_bytes())
    (project / "notes.md").write_text("my notes")
    (project / "sub" / "data.csv").write_text("a,b\n")
    # a previous plain save_pretrained of a sharded checkpoint, and a picture of an older save
    (project / "model-00001-of-00002.safetensors").write_text("stale")
    (project / "model.safetensors.index.json").write_text("{}")
    (project / "blockprune_removal_map.png").write_text("stale")
    monkeypatch.chdir(project)
    args = ["prune", str(tiny_model_dir), "--dataset", "data.jsonl", "--num-blocks-to-remove", "2"]
    assert main([*args, "--output-dir", ".", "--overwrite", "--energy", "paper", *FAST]) == 0
    assert data.read_bytes() == calibration_file.read_bytes()
    assert (project / "notes.md").read_text() == "my notes" and (project / "sub" / "data.csv").exists()
    assert not (project / "model-00001-of-00002.safetensors").exists()
    assert not (project / "model.safetensors.index.json").exists()
    saved = json.loads((project / "blockprune_config.json").read_text())["saved"]["files"]
    assert "model.safetensors" in saved and "notes.md" not in saved
    kept = {"data.jsonl", "notes.md", "sub"}
    assert set(_listing(project)) == kept | set(saved)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(project).config.num_hidden_layers == 4

    # a save the previous one listed is replaced file by file; a failure half-way puts every old file back
    before = {name: (project / name).read_bytes() for name in saved if (project / name).is_file()}
    import optimum_blockprune.hub as hub

    real_replace = os.replace
    calls = []

    def failing(src, dst):
        if ".tmp-" in str(src) and os.path.dirname(str(dst)) == str(project):
            calls.append(dst)  # a new file moving in, after every old one moved out
            if len(calls) == 3:
                raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(hub.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        _pruned().save_pretrained(project, overwrite=True)
    monkeypatch.setattr(hub.os, "replace", real_replace)
    assert len(calls) == 3
    assert {name: (project / name).read_bytes() for name in before} == before
    assert set(_listing(project)) == kept | set(saved)


# -- every list of block indices gets one check --------------------------------------------------------------------
INDEX_MESSAGE = (
    r"it must be a list of distinct 0-based block indices \((integers in 0\.\.5|non-negative integers)\)"
)

index_items = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.booleans(),
    st.floats(min_value=-1, max_value=7, allow_nan=False),
    st.sampled_from(["1", None]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(index_items, max_size=4), as_tuple=st.booleans())
def test_index_lists_are_refused_with_one_message_or_applied_exactly(tokenizer, items, as_tuple):
    """`apply`, `protected_blocks` and `forced_blocks` take the same lists the same way: integers only (no bools,
    no floats), distinct, in range (and, to apply, not empty); anything else is refused naming the argument."""
    value = tuple(items) if as_tuple else list(items)
    valid = (
        all(isinstance(i, int) and not isinstance(i, bool) for i in items)
        and len(set(items)) == len(items)
        and all(0 <= i < 6 for i in items)
    )
    # at most 4 indices of 6 blocks: the counts always fit, so only the list itself can be wrong
    for argument, remove in (("protected_blocks", 1), ("forced_blocks", max(1, len(items)))):
        try:
            config = BlockRemovalConfig(num_blocks_to_remove=remove, **{argument: value})
            config.validate_for_model(6)
        except ConfigurationError as error:
            assert not valid, error
            assert f"`{argument}`=" in str(error) and re.search(INDEX_MESSAGE, str(error)), error
        else:
            assert valid and getattr(config, argument) == tuple(sorted(items))
    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    if valid and items:
        assert pruner.apply(value).removed_blocks == tuple(sorted(items))
        return
    with pytest.raises(ConfigurationError) as caught:
        pruner.apply(value)
    assert "`state`=" in str(caught.value) and re.search(INDEX_MESSAGE, str(caught.value))
    assert pruner.result is None


def test_index_list_messages_name_the_argument_the_value_and_the_range(
    tiny_model_dir, calibration_file, capsys
):
    pruner = Pruner(build_tiny_model("llama"))
    for value, problem in [
        ([1.0, 2.5], "holds 1.0, which is not an integer index"),
        ([True, False], "holds True, which is not an integer index"),
        ([1, 1], "repeats 1"),
        ([], "is empty"),
        ("1,2", "is of type str, not a list"),
        ([-1], "holds -1, which is not a block index"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(f"`state`={value!r} {problem}; ")):
            pruner.apply(value)
    with pytest.raises(
        ConfigurationError, match=re.escape("`forced_blocks`=[-1] holds -1, which is not a block")
    ):
        BlockRemovalConfig(forced_blocks=[-1])
    with pytest.raises(ConfigurationError, match=re.escape("`candidate_kinds`=['moe', 'moe'] repeats 'moe'")):
        BlockRemovalConfig(candidate_kinds=["moe", "moe"])
    # the CLI forms get the same check and message, before the model loads
    args = ["prune", str(tiny_model_dir), "--dataset", str(calibration_file), "--output-dir", "unused", *FAST]
    assert main([*args, "--protected-blocks", "1,1"]) == 2
    _one_line_error(capsys, "`protected_blocks`=(1, 1) repeats 1")
    assert main([*args, "--forced-blocks", "9"]) == 2
    _one_line_error(capsys, "`forced_blocks`=(9,) holds 9, which is not a block index", "integers in 0..5")


# -- too little data is refused before the model runs, with advice for the input given -----------------------------
@pytest.mark.parametrize(
    ("method", "energy", "minimum"),
    [("cbo", "measured_pairs", 4), ("guided", "measured_pairs", 4), ("evopress", "measured_pairs", 2)],
)
def test_each_method_and_energy_declares_the_samples_it_needs(
    tokenizer, tmp_path, method, energy, minimum, monkeypatch
):
    """A six-paragraph `.txt` is one sample at the default length: refused before any forward pass (the default
    energy's split halves and standard errors need several), with advice that works for a `.txt`."""
    import optimum_blockprune.evaluation as evaluation

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran before the sample count was checked")

    monkeypatch.setattr(evaluation, "removal_losses", no_forward)
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(TEXTS[:6]))
    config = BlockRemovalConfig(num_blocks_to_remove=2, method=method, energy=energy, show_progress=False)
    needed_by = f"`energy`='{energy}'" if method == "cbo" else f"`method`='{method}'"
    with pytest.raises(CalibrationDataError) as caught:
        Pruner(build_tiny_model("llama"), tokenizer).select(
            replace(config, num_calibration_samples=minimum - 1, pack_samples=True, max_length=24), str(text)
        )
    message = str(caught.value)
    assert (
        f"{minimum - 1} calibration sample(s)" in message
        and f"{needed_by} needs at least {minimum}" in message
    )
    assert "smaller `max_length` (now 24" in message  # packed already: the advice is the length
    with pytest.raises(
        CalibrationDataError, match=r"1 calibration sample\(s\).*`pack_samples=True` \(`--pack-samples`\)"
    ):
        Pruner(build_tiny_model("llama"), tokenizer).select(config, str(text))


# -- non-finite values: refused once, before the long work, saying where they came from ----------------------------
def _nan_weight_model():
    import torch

    model = build_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("method", ["cbo", "block_influence", "sleb", "guided"])
def test_a_nan_weight_is_named_before_any_ranking_work(tokenizer, method, monkeypatch):
    from optimum_blockprune import NonFiniteError
    from optimum_blockprune.methods import get_method

    def no_ranking(*args, **kwargs):
        raise AssertionError("the method ran on a model whose own loss is NaN")

    monkeypatch.setattr(type(get_method(method)), "rank", no_ranking)
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, method=method, num_calibration_samples=8, max_length=24
    )
    with pytest.raises(NonFiniteError) as caught:
        Pruner(_nan_weight_model(), tokenizer).select(replace(config, show_progress=False), TEXTS * 2)
    message = str(caught.value)
    assert "The unpruned model's calibration loss on sample 0 is not finite (nan)" in message
    assert "`model.layers.2.mlp.down_proj.weight`" in message and isinstance(caught.value, FloatingPointError)


def test_a_nan_fisher_is_neither_returned_nor_saved(tokenizer, tmp_path, fisher_file):
    from optimum_blockprune import NonFiniteError

    pruner = Pruner(_nan_weight_model(), tokenizer)
    config = BlockRemovalConfig(num_calibration_samples=8, max_length=24, show_progress=False)
    with pytest.raises(NonFiniteError, match="unpruned model's calibration loss on sample 0.*down_proj"):
        pruner.estimate(TEXTS * 2, config)
    assert pruner.fisher is None
    broken = FisherEstimate.load(fisher_file)
    broken.gradients[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="Fisher estimate to save .* gradients"):
        broken.save(tmp_path / "broken.safetensors")
    assert not (tmp_path / "broken.safetensors").exists()


def test_a_nan_weight_is_one_line_on_the_command_line(tmp_path, calibration_file, capsys):
    _nan_weight_model().save_pretrained(tmp_path / "broken")
    from conftest import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "broken")
    args = [
        "prune",
        str(tmp_path / "broken"),
        "--dataset",
        str(calibration_file),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--num-blocks-to-remove", "2", *FAST]) == 2
    _one_line_error(capsys, "is not finite", "down_proj.weight")
    assert not (tmp_path / "o").exists()


def test_a_nan_in_any_measured_removal_names_the_removal_and_the_sample(tokenizer, monkeypatch):
    """Finite weights, but one removal overflows on one sample (as fp16 can): refused where it happened."""
    from optimum_blockprune import NonFiniteError
    from optimum_blockprune.methods.base import RankingContext

    real = RankingContext._measure

    def overflowing(self, removals, metric, data, **options):
        losses = real(self, removals, metric, data, **options)
        for row, removal in enumerate(removals):
            if removal == (2,):
                losses.sums[row, 1] = np.inf
        return losses

    monkeypatch.setattr(RankingContext, "_measure", overflowing)
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, method="sleb", num_calibration_samples=8, max_length=24
    )
    with pytest.raises(NonFiniteError) as caught:
        Pruner(build_tiny_model("llama"), tokenizer).select(replace(config, show_progress=False), TEXTS * 2)
    message = str(caught.value)
    assert "The calibration loss of removing blocks [2] on sample 1 is not finite (inf)" in message
    assert "The weights are finite, yet the activations overflowed in float32" in message


# -- checks that used to run late ----------------------------------------------------------------------------------
def test_a_model_without_weights_or_with_an_impossible_dtype_is_a_model_load_error(tiny_model_dir, tmp_path):
    import shutil

    empty = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, empty)
    (empty / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match=r"Could not load the model weights of .*no-weights.*no file named"
    ):
        Pruner.from_pretrained(str(empty))
    with pytest.raises(ModelLoadError, match=r"with dtype='int8'.*not a floating-point dtype"):
        Pruner.from_pretrained(str(tiny_model_dir), dtype="int8")


def test_late_failures_are_caught_before_the_work_or_lose_nothing(
    no_model_load, tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    data = ["--dataset", str(calibration_file)]
    out = ["--output", str(tmp_path / "f.safetensors")]
    assert main(["estimate", str(tiny_model_dir), *data, *out, "--checkpoint-dir", str(blocker)]) == 2
    _one_line_error(capsys, "`--checkpoint-dir`=", "is an existing file, not a directory")
    # permissions say yes, creating an entry says no (as /proc does): refused before the model loads
    real_mkdtemp = __import__("tempfile").mkdtemp

    def refusing(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(30, "Read-only file system")
        return real_mkdtemp(*args, dir=dir, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr("tempfile.mkdtemp", refusing)
    args = ["prune", str(tiny_model_dir), *data, "--output-dir", str(tmp_path / "ro" / "x")]
    assert main(args) == 2
    _one_line_error(capsys, "cannot be written: creating an entry in", "Read-only file system")
    assert blocker.read_text() == "mine"


def test_a_save_that_fails_after_the_work_falls_back_and_says_where(
    tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    import optimum_blockprune.hub as hub

    real = hub._write_into
    target = tmp_path / "out"

    def disk_full(staging, save_directory, *args):
        if save_directory == str(target):
            raise OSError(28, "No space left on device")
        return real(staging, save_directory, *args)

    monkeypatch.setattr(hub, "_write_into", disk_full)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    args = ["prune", str(tiny_model_dir), "--dataset", str(calibration_file), "--output-dir", str(target)]
    assert main([*args, "--num-blocks-to-remove", "2", "--energy", "paper", *FAST]) == 2
    err = _one_line_error(capsys, "No space left on device", "The pruned model was saved to")
    fallback = re.search(r"saved to '([^']+)' instead", err).group(1)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(fallback).config.num_hidden_layers == 4
    assert fallback.startswith(str(tmp_path / "tmp")) and not target.exists()


def test_rank_with_a_model_checks_the_fisher_is_that_models(fisher_file, tmp_path, capsys):
    from conftest import build_tokenizer

    other = tmp_path / "other"
    build_tiny_model("llama", seed=1).save_pretrained(other)  # same blocks, other weights
    build_tokenizer().save_pretrained(other)
    args = ["rank", str(other), "--fisher-file", str(fisher_file), "--energy", "paper", *FAST]
    assert main([*args, "--num-blocks-to-remove", "2"]) == 2
    _one_line_error(capsys, "weights fingerprint")
    # without a model it ranks the Fisher alone, as asked
    assert (
        main(["rank", "--fisher-file", str(fisher_file), "--energy", "paper", "--num-blocks-to-remove", "2"])
        == 0
    )


@pytest.mark.parametrize("checkpoint", [False, True])
def test_ctrl_c_is_one_line_and_exit_130(
    tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch, checkpoint
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "estimate", interrupted)
    args = [
        "estimate",
        str(tiny_model_dir),
        "--dataset",
        str(calibration_file),
        "--output",
        str(tmp_path / "f"),
    ]
    if checkpoint:
        args += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main([*args, *FAST]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    expected = "run the same command again to resume" if checkpoint else "interrupted; nothing was written"
    assert err.startswith("optimum-blockprune estimate: interrupted;") and expected in err
    assert not (tmp_path / "f.safetensors").exists()


# -- offline means offline ------------------------------------------------------------------------------------------
def test_the_base_card_is_one_short_attempt_and_one_warning(monkeypatch, caplog, tmp_path):
    """Online but unreachable: one request with a short timeout, no retries, one warning per model; a model whose
    weights came from a local file asks nothing; offline asks nothing."""
    import huggingface_hub
    from huggingface_hub import constants

    import optimum_blockprune.hub as hub

    calls = []

    class Unreachable:
        def get(self, url, **options):
            calls.append((url, options["timeout"]))
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Unreachable())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    hub._base_card_metadata.cache_clear()
    pruner = _pruned()
    pruner.model_id = "someone/some-model"
    with caplog.at_level("WARNING", logger="optimum_blockprune.hub"):
        pruner.save_pretrained(tmp_path / "a")
        pruner.save_pretrained(tmp_path / "b")
    assert calls == [
        ("https://huggingface.co/someone/some-model/resolve/main/README.md", hub.BASE_CARD_TIMEOUT_S)
    ]
    warnings = [
        r for r in caplog.records if "Could not read the model card of someone/some-model" in r.message
    ]
    assert len(warnings) == 1 and "no licence" in warnings[0].message

    calls.clear()
    hub._base_card_metadata.cache_clear()
    pruner.loaded_from = {"format": "gguf", "gguf_file": "model.gguf"}
    pruner.save_pretrained(tmp_path / "c")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pruner.loaded_from = None
    hub._base_card_metadata.cache_clear()
    pruner.save_pretrained(tmp_path / "d")
    assert calls == []


def test_a_command_prints_no_warnings_it_cannot_act_on(tiny_model_dir, calibration_file, tmp_path):
    """transformers imports torchao's quantizer on model load (when torchao is installed); its kernel and torch
    deprecation messages are filtered unless --verbose."""
    args = ["rank", str(tiny_model_dir), "--dataset", str(calibration_file), "--energy", "paper"]
    args += ["--num-blocks-to-remove", "2", "--num-calibration-samples", "6", "--max-length", "24"]
    run = subprocess.run(
        [sys.executable, "-m", "optimum_blockprune.cli", *args, "--no-show-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert run.returncode == 0, run.stderr
    for noise in ("torchao", "_pytree", "Failed to load", "deprecated"):
        assert noise not in run.stderr, run.stderr
    assert "(prune would apply)" in run.stdout


# -- the card tells the truth about this run ------------------------------------------------------------------------
def test_the_card_says_what_this_run_did(tokenizer, tmp_path):
    import yaml

    pruner = Pruner(build_tiny_model("llama"), tokenizer, model_id="someone/tiny")
    config = BlockRemovalConfig(
        num_blocks_to_remove=2,
        method="cbo",
        num_calibration_samples=8,
        max_length=24,
        show_progress=False,
        calibration_name="support tickets 2024",
    )
    assert config.correction_rounds is None  # left to cbo's default, which runs rounds
    pruner.evaluate(TEXTS[:4], dataset_name="held-out tickets")
    pruner.prune(config, TEXTS * 2)
    pruner.evaluate(TEXTS[:4], dataset_name="held-out tickets")
    pruner.loaded_from = {
        "format": "gguf",
        "gguf_file": "m.gguf",
    }  # weights read from a GGUF, saved as safetensors
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    saved = json.loads((tmp_path / "out" / "blockprune_config.json").read_text())
    rounds = saved["result"]["ranking"]["stats"]["correction_rounds"]
    assert rounds >= 1 and saved["resolved"]["correction_rounds"] == config.rounds_of_correction
    assert f"corrected by {rounds} round(s) of measure-and-correct" in card and "default:" not in card
    assert "from support tickets 2024" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert "gguf" not in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert {m["name"] for r in results for m in r["metrics"]} == {
        "held-out perplexity (pruned)",
        "held-out perplexity (unpruned)",
    }
    assert all(
        r["dataset"]["type"] == "custom" and r["dataset"]["name"] == "held-out tickets" for r in results
    )
    assert "github.com" not in card
    assert not [line for line in card.splitlines() if line != line.rstrip()]  # no trailing `| ` cells
    assert "\n\n\n" not in card
    with pytest.raises(ConfigurationError, match="`calibration_name` must be a non-empty string"):
        BlockRemovalConfig(calibration_name=" ")
