"""Both command lines: `optimum-blockprune` and `optimum-cli blockprune`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from transformers import AutoModelForCausalLM

from optimum_blockprune.cli import main

FAST = ["--num-calibration-samples", "6", "--max-length", "24", "--batch-size", "3", "--no-show-progress"]


@pytest.fixture(scope="module")
def fisher_file(tiny_model_dir, calibration_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("fisher") / "fisher.safetensors"
    assert (
        main(
            [
                "estimate",
                str(tiny_model_dir),
                "--dataset",
                str(calibration_file),
                "--output",
                str(path),
                *FAST,
            ]
        )
        == 0
    )
    return path


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_prune_writes_a_loadable_checkpoint(tiny_model_dir, calibration_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "prune",
            str(tiny_model_dir),
            "--dataset",
            str(calibration_file),
            "--output-dir",
            str(out),
            "--num-blocks-to-remove",
            "2",
            "--protected-blocks",
            "0",
            "--energy",
            "paper",
            "--save-fisher",
            str(tmp_path / "f.safetensors"),
            *FAST,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "CBO:0" in printed and "Removed blocks (0-based)" in printed
    provenance = json.loads((out / "blockprune_config.json").read_text())
    assert 0 not in provenance["result"]["removed_blocks"] and len(provenance["result"]["kept_blocks"]) == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert (tmp_path / "f.safetensors").exists()


def test_rank_prints_and_leaves_the_model_alone(tiny_model_dir, calibration_file, tmp_path, capsys):
    before = _digest(tiny_model_dir)
    code = main(
        [
            "rank",
            str(tiny_model_dir),
            "--dataset",
            str(calibration_file),
            "--num-blocks-to-remove",
            "3",
            "--num-states",
            "5",
            "--method",
            "cbo",
            "--json",
            str(tmp_path / "ranking.json"),
            *FAST,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "5 CBO states (lowest energy (measured_pairs) first) removing 3 of 6 blocks" in printed
        and "CBO:4" in printed
    )
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert len(ranking["states"]) == 5 and ranking["proven"]
    assert _digest(tiny_model_dir) == before


def _estimate(model_dir, calibration_file, output):
    """Run `estimate` on the tiny model and return the Fisher file it wrote."""
    assert (
        main(["estimate", str(model_dir), "--dataset", str(calibration_file), "--output", str(output), *FAST])
        == 0
    )
    return output


def test_estimate_then_rank_from_the_file(tiny_model_dir, calibration_file, tmp_path, capsys):
    fisher = _estimate(tiny_model_dir, calibration_file, tmp_path / "fisher.safetensors")
    capsys.readouterr()
    for m in ("1", "4"):
        assert (
            main(
                ["rank", "--fisher-file", str(fisher), "--num-blocks-to-remove", m, "--energy", "paper"]
                + ["--no-show-progress"]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert (
            f"removing {m} of 6 blocks" in out and "| CBO:0 (prune would apply) |" in out
        )  # rank applies nothing: the state prune would apply is marked as such
        assert "(applied)" not in out
    # the default energy measures removals, which a Fisher file does not hold: one line that says what to do
    assert main(["rank", "--fisher-file", str(fisher), "--num-blocks-to-remove", "2"]) == 2
    assert "--energy paper" in capsys.readouterr().err


def test_rank_with_constraints_and_a_chosen_solver(tiny_model_dir, calibration_file, tmp_path, capsys):
    fisher = _estimate(tiny_model_dir, calibration_file, tmp_path / "fisher.safetensors")
    capsys.readouterr()
    json_path = tmp_path / "ranking.json"
    code = main(
        [
            "rank",
            "--fisher-file",
            str(fisher),
            "--num-blocks-to-remove",
            "3",
            "--forced-blocks",
            "2",
            "--protected-blocks",
            "0",
            "--solver",
            "exact",
            "--solver-time-limit-s",
            "5",
            "--json",
            str(json_path),
            "--energy",
            "paper",
            "--no-show-progress",
        ]
    )
    assert code == 0
    ranking = json.loads(json_path.read_text())
    assert ranking["solver"] == "exact" and ranking["proven"] and len(ranking["states"]) == 6  # C(4, 2)
    assert all(2 in s["removed_blocks"] and 0 not in s["removed_blocks"] for s in ranking["states"])
    code = main(
        [
            "rank",
            "--fisher-file",
            str(fisher),
            "--num-blocks-to-remove",
            "2",
            "--contiguous",
            "--json",
            str(json_path),
            "--overwrite",  # the first ranking's file: replaced only when asked
            "--energy",
            "paper",
            "--no-show-progress",
        ]
    )
    runs = [tuple(s["removed_blocks"]) for s in json.loads(json_path.read_text())["states"]]
    assert code == 0 and sorted(runs) == [(i, i + 1) for i in range(5)]


def test_errors_are_one_clear_line_and_happen_before_work(tiny_model_dir, calibration_file, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = main(
        ["prune", str(tiny_model_dir), "--dataset", str(calibration_file), "--output-dir", str(out), *FAST]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and (out / "keep.txt").exists()
    assert main(["rank", "--num-blocks-to-remove", "1"]) == 2
    assert "--dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"), "--fisher", "exact"])


def test_baselines_and_auto_selection_from_the_command_line(
    tiny_model_dir, calibration_file, fisher_file, tmp_path, capsys
):
    out = tmp_path / "last"
    assert main(["prune", str(tiny_model_dir), "--method", "last_blocks", "--num-blocks-to-remove", "2",
                 "--output-dir", str(out), "--no-show-progress"]) == 0  # fmt: skip
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    assert json.loads((out / "blockprune_config.json").read_text())["result"]["removed_blocks"] == [4, 5]
    capsys.readouterr()
    json_path = tmp_path / "auto.json"
    code = main(
        ["rank", str(tiny_model_dir), "--dataset", str(calibration_file), "--fisher-file", str(fisher_file),
         "--selection", "auto", "--num-selection-samples", "4", "--num-blocks-to-remove", "2", "--num-states", "4",
         "--auto-candidates", "last_blocks", "--json", str(json_path), *FAST]
    )  # fmt: skip
    ranking = json.loads(json_path.read_text())
    assert code == 0 and ranking["selection_metric"] == "kl" and len(ranking["states"]) in (4, 5)
    assert [s["source"] for s in ranking["states"][4:]] in ([], ["last_blocks"])
    assert all(s["score"] is not None for s in ranking["states"]) and "held-out KL" in capsys.readouterr().out
    assert main(["rank", "--fisher-file", str(fisher_file), "--method", "sleb"]) == 2
    assert "--dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rank", "--fisher-file", str(fisher_file), "--method", "shortgpt"])


@pytest.mark.skipif(shutil.which("optimum-cli") is None, reason="optimum-cli is not on PATH")
def test_optimum_cli_plugin_is_registered(tiny_model_dir, calibration_file, tmp_path):
    listed = subprocess.run(
        ["optimum-cli", "blockprune", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in listed for name in ("prune", "rank", "estimate"))
    ranked = subprocess.run(
        [
            "optimum-cli",
            "blockprune",
            "rank",
            str(tiny_model_dir),
            "--dataset",
            str(calibration_file),
            "--num-blocks-to-remove",
            "2",
            *FAST,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Guided:0" in ranked  # the default method, resolved for a language model
