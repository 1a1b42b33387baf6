"""The typed run config: YAML + key.sub=value overrides, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixpretrain.config import (
    ConfigError,
    config_diff,
    config_fingerprint,
    config_to_dict,
    load_config,
)


def test_defaults_and_overrides_parse_as_yaml_values():
    cfg = load_config(None, ["train.max_steps=7", "data.crop_size=[16,32,16]", "logging.wandb=false"])
    assert cfg.train.max_steps == 7
    assert cfg.data.crop_size == [16, 32, 16]
    assert cfg.logging.wandb is False


def test_crop_size_single_int_means_cube():
    cfg = load_config(None, ["data.crop_size=24", "model.patch_size=8"])
    assert cfg.data.crop_size == [24, 24, 24]


def test_unknown_key_names_key_and_closest_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step'.*train.max_steps"):
        load_config(None, ["train.max_step=5"])


def test_unknown_key_in_yaml_names_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  presett: tiny\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*'model.presett'.*model.preset"):
        load_config(path)


def test_bad_override_is_attributed_to_the_command_line_not_the_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=r"^command-line override: unknown config key 'train.max_step'"):
        load_config(path, ["train.max_step=5"])
    with pytest.raises(ConfigError, match=r"^command-line override: config key 'data.crop_size'"):
        load_config(path, ["data.crop_size=[32,32]"])
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"run.yaml: config key 'train.lr': must be > 0, got -1"):
        load_config(path, ["train.max_steps=5"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", r"'train.lr': must be > 0, got -1"),
    ("train.lr=.nan", r"'train.lr': must be > 0, got nan"),
    ("data.crops_per_volume=0", r"'data.crops_per_volume': must be >= 1, got 0"),
    ("data.num_workers=-1", r"'data.num_workers': must be >= 0"),
    ("train.decay_fraction=1.5", r"'train.decay_fraction': must be <= 1"),
    ("train.keep_checkpoints=0", r"'train.keep_checkpoints': must be >= 1"),
    ("train.warmup_steps=-3", r"'train.warmup_steps': must be >= 0"),
])
def test_out_of_range_values_fail_before_training(override: str, message: str):
    """Values that would otherwise fail deep inside torch or a DataLoader worker, after the engine was built."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.max_steps.*'ten'"):
        load_config(None, ["train.max_steps=ten"])


def test_crop_not_multiple_of_patch_is_refused():
    with pytest.raises(ConfigError, match="data.crop_size"):
        load_config(None, ["data.crop_size=20", "model.patch_size=8"])


def test_free_form_sampler_options_accept_nested_overrides():
    cfg = load_config(None, ["sampler.options.tau=2.0", "sampler.options.weights={ct: 0.5, mri: 0.5}"])
    assert cfg.sampler.options == {"tau": 2.0, "weights": {"ct": 0.5, "mri": 0.5}}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.max_steps"])


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_and_diff_name_changed_keys():
    a = load_config(None, [])
    b = load_config(None, ["train.lr=0.001"])
    assert config_fingerprint(a) != config_fingerprint(b)
    assert config_fingerprint(a) == config_fingerprint(load_config(None, []))
    assert config_diff(config_to_dict(a), config_to_dict(b)) == ["train.lr"]


def test_exponent_without_dot_is_a_float():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])


def test_file_url_shards_become_the_local_path() -> None:
    from mixpretrain.config import ConfigError, config_from_dict

    assert config_from_dict({"data": {"shards": "file:///data/my%20shards"}}).data.shards == "/data/my shards"
    assert config_from_dict({"data": {"shards": "/data/shards"}}).data.shards == "/data/shards"
    with pytest.raises(ConfigError, match="config key 'data.shards': file://nas/x: a file:// URL with host 'nas'"):
        config_from_dict({"data": {"shards": "file://nas/x"}})
