"""Config: loading, profiles, overrides and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onevision.config import ConfigError, describe_fields, load_config, overrides_to_tree, parse_override
from tests.support.defaults import default_params_file

DEFAULT_PARAMS = default_params_file()


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_repo_params_load_for_every_profile():
    raw = yaml.safe_load(DEFAULT_PARAMS.read_text())
    for profile in ["default", *raw["profiles"]]:
        cfg = load_config(DEFAULT_PARAMS, profile=profile)
        assert cfg.profile == profile
    assert load_config(DEFAULT_PARAMS, profile="small").data.n_items < load_config(DEFAULT_PARAMS, profile="default").data.n_items


def test_profile_then_overrides_layering(tmp_path):
    path = write(tmp_path, {
        "data": {"n_items": 100, "n_users": 10},
        "profiles": {"tiny": {"data": {"n_items": 50}}},
        "overrides": {"data": {"n_users": 7}},
    })
    cfg = load_config(path, profile="tiny", overrides=["data.n_brands=3"])
    assert (cfg.data.n_items, cfg.data.n_users, cfg.data.n_brands) == (50, 7, 3)
    # CLI overrides win over the file's overrides
    assert load_config(path, overrides=["data.n_users=9"]).data.n_users == 9


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"data": {"n_itmes": 100}})
    with pytest.raises(ConfigError, match=r"unknown key 'data\.n_itmes' in .*params\.yaml"):
        load_config(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, {"dataa": {}})
    with pytest.raises(ConfigError, match="unknown key 'dataa'"):
        load_config(path)


def test_mistyped_value_names_key(tmp_path):
    path = write(tmp_path, {"data": {"n_items": "many"}})
    with pytest.raises(ConfigError, match=r"invalid value for 'data\.n_items'.*'many'"):
        load_config(path)


def test_out_of_range_value(tmp_path):
    path = write(tmp_path, {"validate": {"max_bad_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"validate\.max_bad_fraction"):
        load_config(path)


def test_typo_in_an_inactive_profile_fails_too(tmp_path):
    path = write(tmp_path, {"profiles": {"small": {"data": {"n_item": 5}}}})
    with pytest.raises(ConfigError, match=r"unknown key 'data\.n_item'.*profile 'small'"):
        load_config(path)


def test_unknown_profile(tmp_path):
    path = write(tmp_path, {"profiles": {"small": {}}})
    with pytest.raises(ConfigError, match="unknown profile 'big' .*known: default, small"):
        load_config(path, profile="big")


def test_bad_override_syntax_and_unknown_override_key(tmp_path):
    path = write(tmp_path, {})
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, overrides=["data.n_items"])
    with pytest.raises(ConfigError, match=r"unknown key 'data\.nope' in .* with --set overrides"):
        load_config(path, overrides=["data.nope=1"])


def test_invalid_combination_says_what_to_do(tmp_path):
    path = write(tmp_path, {"data": {"source": "import"}})
    with pytest.raises(ConfigError, match="import_dir"):
        load_config(path)


def test_override_values_are_yaml():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=true") == ("a.b", True)
    assert overrides_to_tree(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/params.yaml")


def test_every_field_is_documented():
    undocumented = [key for key, _, _, doc in describe_fields() if not doc]
    assert undocumented == []
