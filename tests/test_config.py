"""BlockRemovalConfig validation and serialisation."""

from __future__ import annotations

import json

import pytest

from optimum_blockprune import BlockRemovalConfig, ConfigurationError
from optimum_blockprune.version import __version__


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_blocks_to_remove": 0}, "`num_blocks_to_remove` must be a positive integer, got 0"),
        ({"num_blocks_to_remove": 2.5}, "`num_blocks_to_remove`"),
        ({"num_states": -1}, "`num_states`"),
        ({"max_length": True}, "`max_length`"),
        (
            {"fisher": "hessian"},
            "`fisher` must be one of ['auto', 'empirical', 'model', 'output'], got 'hessian'",
        ),
        ({"granularity": "head"}, "`granularity` must be one of ['block', 'sublayer']"),
        (
            {"candidate_kinds": "moe"},
            "`candidate_kinds`='moe' is of type str, not a list; it must be a list of distinct",
        ),
        ({"max_removed_per_kind": {"moe": -1}}, "`max_removed_per_kind` must map block kinds"),
        (
            {"min_removed_per_kind": {"moe": 3}, "max_removed_per_kind": {"moe": 1}},
            "`min_removed_per_kind` exceeds `max_removed_per_kind` for {'moe': (3, 1)}",
        ),
        ({"solver": "quantum"}, "`solver`='quantum' is not a registered solver; choose one of"),
        ({"method": "shortgpt"}, "`method`='shortgpt' is not a registered method; choose one of"),
        (
            {"energy": "exact_loss"},
            "`energy`='exact_loss' is not a registered energy; choose one of ['calibrated', 'first_order'",
        ),
        ({"protected_blocks": 3}, "`protected_blocks`=3 is of type int, not a list"),
        ({"protected_blocks": [-1]}, "non-negative integers"),
        ({"selected_state": 20}, "`selected_state` must be an integer in [0, num_states=20)"),
        ({"apply_chat_template": "yes"}, "`apply_chat_template`"),
        (
            {"protected_blocks": [1], "forced_blocks": [1]},
            "Blocks [1] are both in `protected_blocks` and `forced_blocks`",
        ),
        ({"num_blocks_to_remove": 1, "forced_blocks": [1, 2]}, "`forced_blocks` has 2 blocks"),
        ({"solver_time_limit_s": 0}, "`solver_time_limit_s` must be a positive number"),
        ({"min_parameters_removed": 10, "max_parameters_removed": 5}, "exceeds `max_parameters_removed`"),
    ],
)
def test_invalid_values_name_the_argument(kwargs, fragment):
    with pytest.raises(ConfigurationError) as excinfo:
        BlockRemovalConfig(**kwargs)
    assert fragment in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_model_dependent_checks():
    BlockRemovalConfig(num_blocks_to_remove=5).validate_for_model(6)
    with pytest.raises(ConfigurationError, match="has only 6 blocks"):
        BlockRemovalConfig(num_blocks_to_remove=6).validate_for_model(6)
    with pytest.raises(
        ConfigurationError,
        match=r"`protected_blocks`=\(0, 7\) holds 7, which is not a block index.*integers in 0..5",
    ):
        BlockRemovalConfig(protected_blocks=[0, 7]).validate_for_model(6)
    with pytest.raises(ConfigurationError, match=r"`forced_blocks`=\(6,\) holds 6"):
        BlockRemovalConfig(forced_blocks=[6]).validate_for_model(6)
    with pytest.raises(ConfigurationError, match="only 3 of 6 blocks are removable"):
        BlockRemovalConfig(num_blocks_to_remove=4, protected_blocks=[0, 1, 2]).validate_for_model(6)


def test_round_trip(tmp_path):
    config = BlockRemovalConfig(
        num_blocks_to_remove=3, protected_blocks=[5, 0], fisher="model", energy="first_order"
    )
    assert config.protected_blocks == (0, 5)
    assert BlockRemovalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path = config.save_pretrained(tmp_path)
    with open(path) as handle:
        assert json.load(handle)["library_version"] == __version__
    assert BlockRemovalConfig.from_pretrained(tmp_path) == config


def test_configs_saved_with_the_first_order_flag_load_as_its_energy():
    legacy = {k: v for k, v in BlockRemovalConfig().to_dict().items() if k != "energy"}
    assert BlockRemovalConfig.from_dict({**legacy, "first_order": True}).energy == "first_order"
    assert BlockRemovalConfig.from_dict({**legacy, "first_order": False}).energy == "paper"


def test_every_registered_solver_is_accepted():
    from optimum_blockprune.solvers import available_solvers

    assert {"gurobi", "tabu", "dimod_sa", "exact", "auto"} <= set(available_solvers())
    for name in available_solvers():
        assert BlockRemovalConfig(solver=name).solver == name


def test_a_solver_whose_package_is_missing_fails_with_the_pip_line(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gurobipy" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'optimum-blockprune\[gurobi\]'"):
        BlockRemovalConfig(solver="gurobi")


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigurationError, match="Unknown `BlockRemovalConfig` keys \\['num_layers'\\]"):
        BlockRemovalConfig.from_dict({"num_layers": 3})


def test_every_field_has_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(BlockRemovalConfig))


def test_an_unset_method_resolves_to_guided_where_it_applies_and_cbo_elsewhere():
    config = BlockRemovalConfig(num_blocks_to_remove=2)
    assert config.method is None and config.method_name == "guided"
    assert config.resolved().method == "guided" and config.resolved().resolved() == config.resolved()
    # where the guided search cannot run: no next-token predictions, inexact gates, no data
    for context in ({"task": "feature-extraction"}, {"exact_gates": False}, {"has_data": False}):
        assert config.resolved(**context).method == "cbo", context
    # a setting of cbo's, given with the method unset, chooses cbo
    for given in (
        {"energy": "paper"},
        {"correction_rounds": 0},
        {"reexpansion_interval": 2},
        {"granularity": "sublayer"},
    ):
        assert (
            BlockRemovalConfig(**given).method_name == "cbo" == BlockRemovalConfig(**given).resolved().method
        )
    # a method given is kept, whatever the context
    assert BlockRemovalConfig(method="sleb").resolved(task="feature-extraction").method == "sleb"
    with pytest.raises(ConfigurationError, match="`method` must be a registered method's name or None"):
        BlockRemovalConfig(method=3)


def test_a_pruner_records_the_method_an_unset_one_became(llama, tokenizer, tmp_path):
    from optimum_blockprune import Pruner
    from optimum_blockprune.estimation.calibration import CalibrationData

    config = BlockRemovalConfig(
        num_blocks_to_remove=2, num_calibration_samples=6, max_length=16, show_progress=False
    )
    pruner = Pruner(llama, tokenizer)
    data = CalibrationData([[5, 6, 7, 8, 9, 10]] * 3 + [[11, 12, 13, 14]] * 3, "ids")
    selection = pruner.select(config, data)
    assert selection.config.method == pruner.config.method == selection.ranking.method == "guided"
    # rerunning the recorded config repeats the choice
    assert Pruner(llama, tokenizer).select(selection.config, data).removed_blocks == selection.removed_blocks
    pruner.apply(selection)
    pruner.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "blockprune_config.json").read_text())
    assert saved["config"]["method"] == "guided"
