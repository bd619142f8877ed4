"""RunConfig: defaults, TOML and flag precedence, coercion, validation messages, round trips."""

import dataclasses
import json

import pytest

from regopt.errors import ConfigError
from regopt.lab.config import RunConfig


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_classic_recipe():
    config = RunConfig()
    assert (config.dataset, config.optimizer, config.lr, config.weight_decay) == ("digits", "adam", 1e-3, 1e-4)
    assert (config.batch_size, config.hidden, config.epochs) == (64, (256, 128), 20)
    assert config.decoupled is False and config.betas == (0.9, 0.999) and config.amsgrad is False
    assert config.momentum is None and config.nesterov is None  # adam takes neither


def test_toml_overrides_defaults_and_flags_override_toml(tmp_path):
    path = write(tmp_path, 'lr = 0.01\nepochs = 3\nbatch-size = "full"\nhidden = [32, 16]\noptimizer = "sgd"\n')
    config = RunConfig.from_sources(path, {"lr": "0.5", "epochs": None, "momentum": "0.9"})
    assert config.lr == 0.5            # flag beats file
    assert config.epochs == 3          # None means "flag not given": the file's value stays
    assert config.batch_size == "full" and config.hidden == (32, 16)
    assert config.optimizer == "sgd" and config.momentum == 0.9


def test_base_config_is_overridden_by_file_and_flags(tmp_path):
    base = RunConfig(epochs=7, lr=0.02).to_dict()
    path = write(tmp_path, "epochs = 4\n")
    config = RunConfig.from_sources(path, {"seed": "5"}, base=base)
    assert (config.epochs, config.lr, config.seed) == (4, 0.02, 5)


def test_unknown_toml_key_names_file_and_suggests(tmp_path):
    path = write(tmp_path, "lrr = 0.1\n")
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_sources(path)
    assert str(caught.value) == f"unknown key 'lrr' in {path} (did you mean 'lr'?)"


def test_unknown_override_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'weight_decy' \(did you mean 'weight_decay'\?\)"):
        RunConfig.from_sources(None, {"weight_decy": 1.0})


def test_invalid_toml_reports_tomllib_message(tmp_path):
    path = write(tmp_path, "lr = = 0.1\n")
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_sources(path)
    assert str(caught.value).startswith(f"{path}: invalid TOML: ")
    assert "line 1" in str(caught.value)


def test_missing_toml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_sources(tmp_path / "absent.toml")


@pytest.mark.parametrize("values, message", [
    ({"lr": 0}, "lr must be > 0, got 0.0"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1 or 'full', got 0"),
    ({"batch_size": "half"}, "batch_size must be an integer >= 1 or 'full', got 'half'"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
    ({"early_stopping": 0}, "early_stopping must be an integer >= 1"),
    ({"clip": 0}, "clip must be > 0 or none, got 0.0"),
    ({"betas": "0.9"}, r"betas must be two numbers \(beta1, beta2\)"),
    ({"betas": [0.9, 1.0]}, r"betas must be two numbers in \[0, 1\), got \[0.9, 1.0\]"),
    ({"hidden": [64, 0]}, r"hidden sizes must be integers >= 1, got \[64, 0\]"),
    ({"batchnorm": "maybe"}, "batchnorm must be true or false, got 'maybe'"),
    ({"seed": True}, "seed must be an integer, got True"),
    ({"optimizer": "adma"}, r"unknown optimizer 'adma' \(did you mean 'adam'\?\)"),
    ({"dataset": "digit"}, r"unknown dataset 'digit'; did you mean 'digits'\?"),
    ({"schedule": "cosin"}, r"unknown schedule 'cosin'; did you mean 'cosine'\?"),
    ({"activation": "rellu"}, r"unknown activation 'rellu'; did you mean 'relu'\?"),
    ({"monitor": "val_acc"}, r"unknown monitor 'val_acc'; did you mean 'val_accuracy'\?"),
    ({"optimizer": "adam", "momentum": 0.9}, r"momentum does not apply to optimizer 'adam'"),
    ({"optimizer": "rmsprop", "nesterov": True}, "nesterov does not apply to optimizer 'rmsprop'"),
    ({"optimizer": "sgd", "nesterov": True}, "nesterov needs momentum > 0"),
    ({"schedule": "warmup-cosine", "warmup_epochs": 20}, "needs 1 <= warmup_epochs < epochs"),
    ({"warmup_epochs": 3}, "warmup_epochs=3 has no effect"),
    ({"gamma": 0.5}, "gamma=0.5 has no effect: it applies only to schedule 'step'"),
    ({"decay_scaled_by_lr": False}, "decay_scaled_by_lr=False has no effect"),
])
def test_bad_values_name_key_and_value(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**values)


def test_strings_are_coerced_like_flags():
    config = RunConfig.from_sources(None, {
        "batch_size": "full", "hidden": "64,32", "batchnorm": "true", "early_stopping": "5",
        "clip": "none", "betas": "0.8,0.99", "dropout": "0.25", "dataset": "Synthetic",
    })
    assert config.batch_size == "full" and config.hidden == (64, 32) and config.batchnorm is True
    assert config.early_stopping == 5 and config.clip is None and config.betas == (0.8, 0.99)
    assert config.dropout == 0.25 and config.dataset == "synthetic"
    assert RunConfig(hidden="").hidden == ()  # no hidden layer: logistic regression


def test_optimizer_options_resolve_to_the_optimizers_defaults():
    lars = RunConfig(optimizer="lars")
    assert lars.momentum == 0.9 and lars.betas is None and lars.amsgrad is None
    assert RunConfig(optimizer="sgd").momentum == 0.0
    assert RunConfig(optimizer="adamw").decoupled is True    # AdamW is decoupled by definition
    assert RunConfig(optimizer="adam").decoupled is False
    # neutral values of options an optimizer lacks are accepted and dropped (e.g. after replace())
    assert RunConfig(optimizer="adam", momentum=0.0, nesterov=False).momentum is None


def test_round_trip_through_json():
    config = RunConfig(dataset="synthetic", optimizer="sgd", momentum=0.9, nesterov=True,
                       batch_size="full", early_stopping=3, hidden=(8,), schedule="step", gamma=0.5)
    data = json.loads(json.dumps(config.to_dict()))
    assert RunConfig.from_dict(data) == config
    assert data["hidden"] == [8] and data["betas"] is None


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        RunConfig.from_dict({**RunConfig().to_dict(), "speed": 1})


def test_config_is_immutable_and_replace_validates():
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    assert config.replace(lr=0.1).lr == 0.1
    with pytest.raises(ConfigError, match="lr must be > 0"):
        config.replace(lr=-0.1)


def test_presets_apply_before_file_and_flags(tmp_path):
    from regopt.lab.config import PRESETS
    fast = RunConfig.from_sources(preset="fast")
    assert fast.batch_size == PRESETS["fast"]["batch_size"] and fast.schedule == "onecycle"
    assert fast.batchnorm is True
    toml = tmp_path / "run.toml"
    toml.write_text("epochs = 2\n")
    overridden = RunConfig.from_sources(toml, {"lr": "0.01"}, preset="fast")
    assert (overridden.epochs, overridden.lr, overridden.batch_size) == (2, 0.01, 512)
    assert RunConfig.from_sources(preset="classic") == RunConfig()


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(ConfigError, match="unknown preset 'fsat' \\(did you mean 'fast'\\?\\)"):
        RunConfig.from_sources(preset="fsat")
