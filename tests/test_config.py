"""GrowthConfig as data: defaults, validation messages, flat SENN keys, run files, the shipped schema, and
the CLI options generated from it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from dagrow.cli import app
from dagrow.config import (
    NATURAL_KEYS,
    ConfigError,
    GrowthConfig,
    NaturalConfig,
    config_schema,
    load_config,
    parse_config,
)
from dagrow.schedule import Fixed, Rounds

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_depend_on_the_strategy():
    assert GrowthConfig().growths == 10 and isinstance(GrowthConfig().make_schedule(), Fixed)
    natural = GrowthConfig(strategy="natural")
    assert natural.growths is None and isinstance(natural.make_schedule(), Rounds)
    assert GrowthConfig(strategy="natural", growths=4).growths == 4  # an explicit cap stays


def test_senn_keys_may_be_flat_and_replace_revalidates():
    config = GrowthConfig(tau=0.2, cooldown=3)
    assert config.natural.tau == 0.2 and config.natural.cooldown == 3
    again = config.replace(alpha=0.5, every=7)
    assert (again.natural.tau, again.natural.alpha, again.every) == (0.2, 0.5, 7)
    assert GrowthConfig.model_validate(json.loads(json.dumps(again.to_dict()))) == again
    with pytest.raises(ValueError, match="every must be at least 1"):
        config.replace(every=0)


@pytest.mark.parametrize(
    "data, says",
    [
        (
            {"strategy": "amplitude"},
            "strategy: unknown strategy 'amplitude' (did you mean 'amplitude_factor'?)",
        ),
        ({"init": "GradMax"}, "init: unknown init 'GradMax' (did you mean 'gradmax'?)"),
        (
            {"optimizer": "lbfgs"},
            "optimizer: unknown optimizer 'lbfgs'; expected one of: sgd, adam, best_update",
        ),
        ({"natural": {"fisher": "exact"}}, "natural.fisher: unknown fisher 'exact'"),
        ({"growths": -1}, "growths: growths must be >= 0"),
        ({"lr": float("nan")}, "lr: lr must be a finite number >= 0"),
        ({"strategy": "naive", "growths": None}, "needs a number of growths or max_params"),
        ({"statistics": "training", "optimizer": "best_update"}, "not with the best_update optimizer"),
        ({"every": "ten"}, "every: Input should be a valid integer"),
        ({"evry": 3}, "evry: unknown key 'evry' (did you mean 'every'?)"),
    ],
)
def test_bad_settings_give_one_line_each_naming_the_key(data, says):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "run.yaml")
    assert says in str(info.value)
    assert all(line.startswith("run.yaml: ") for line in str(info.value).splitlines())


def test_run_files_are_read_safely(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a mapping of settings"):
        load_config(path)
    path.write_text("")
    assert load_config(path) == {}
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_the_shipped_schema_is_generated_and_validates_run_files():
    shipped = json.loads((ROOT / "dagrow.config.schema.json").read_text())
    assert shipped == config_schema(), "regenerate it: dagrow schema --config -o dagrow.config.schema.json"
    jsonschema.validate({"strategy": "natural", "every": 5, "natural": {"tau": 0.1}}, shipped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"every": "often"}, shipped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"bogus": 1}, shipped)
    result = CliRunner().invoke(app, ["schema", "--config"])
    assert json.loads(result.stdout) == shipped


def test_every_setting_is_a_grow_option_with_its_default_in_the_help():
    result = CliRunner().invoke(app, ["grow", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for name in [*GrowthConfig.model_fields, *NATURAL_KEYS]:
        if name == "natural":
            continue
        assert "--" + name.replace("_", "-") in result.stdout, name
    assert "(default: 200)" in result.stdout  # --every
    assert "SENN" in result.stdout  # SENN's options have a panel of their own
    assert set(NATURAL_KEYS) == set(NaturalConfig.model_fields)


def test_growth_batch_is_a_number_or_all_with_one_line_errors():
    assert parse_config({"growth_batch": "all"}).growth_batch == "all"
    assert parse_config({"growth_batch": 64}).growth_batch == 64
    with pytest.raises(ConfigError) as err:
        parse_config({"growth_batch": "some"}, "run.yaml")
    assert str(err.value) == "run.yaml: growth_batch: expected a whole number or all, got 'some'"
    with pytest.raises(ConfigError, match="growth_batch must be at least 1"):
        parse_config({"growth_batch": 0})
    with pytest.raises(ConfigError, match="unknown zero_gamma 'maybe'; expected one of: skip, add"):
        parse_config({"zero_gamma": "maybe"})
    with pytest.raises(ConfigError, match="unknown round_robin"):
        parse_config({"round_robin": "slide"})
