"""The resolved configuration of one training run: defaults <- TOML file <- command-line flags.

Every value is checked here, before anything is written, and every problem is a ConfigError whose
one-line message names the key and the value. The defaults are the classic recipe: Adam, lr 1e-3,
coupled weight decay 1e-4 on the weight matrices, batch 64, an MLP with hidden layers 256-128, 20
epochs, on the bundled `digits` data set (a few seconds on two cores).

A TOML file holds the same keys at its top level (`-` and `_` are interchangeable)::

    dataset = "fashion-mnist"
    optimizer = "sgd"
    lr = 0.05
    momentum = 0.9
    nesterov = true
    hidden = [256, 128]
    batch_size = "full"      # or an integer >= 1
    early_stopping = 5       # patience in epochs; omit for none

Strings are accepted for every key (that is what flags give), so `lr = "1e-3"` and `--lr 1e-3` mean
the same; "none" means None for the keys that may be None.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from regopt.errors import ConfigError

__all__ = ["RunConfig", "SCHEDULES", "MONITORS", "ACTIVATIONS", "PRESETS"]

SCHEDULES = ("constant", "step", "cosine", "onecycle", "warmup", "warmup-cosine")
MONITORS = ("val_loss", "val_accuracy")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu")
WARMUP_SCHEDULES = ("warmup", "warmup-cosine")

# Named starting points, applied before the TOML file and the flags (which override them).
#   classic: the reference workload (Adam lr 1e-3, weight decay 1e-4, batch 64, 20 epochs).
#   fast:    the shortest path to 0.88 test accuracy on Fashion-MNIST found here: large batches
#            (fewer, cheaper steps), batch normalization (tolerates the high learning rate) and a
#            one-cycle schedule (Smith & Topin, 2019) over 5 epochs. See BENCHMARKS.md.
PRESETS: dict[str, dict[str, Any]] = {
    "classic": {},
    "fast": {"batch_size": 512, "epochs": 5, "schedule": "onecycle", "lr": 5e-3,
             "batchnorm": True},
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Construction coerces strings and validates every field.

    Data:      dataset (digits | fashion-mnist | mnist | synthetic), data_dir (folder of IDX files),
               split_seed (chooses the train/val/test split).
    Model:     hidden (sizes of the hidden layers; () is multinomial logistic regression),
               activation, dropout (probability in [0, 1), after each hidden layer), input_dropout
               (probability of dropping each input feature), batchnorm.
    Optimizer: optimizer (a regopt.optim.OPTIMIZERS name), lr, momentum (sgd, rmsprop, lars),
               nesterov (sgd), betas (adam, adamw, lamb), amsgrad (adam, adamw). None (the
               default) resolves to the optimizer's own default (e.g. lars momentum 0.9) when the
               optimizer takes the argument, and stays None when it does not; setting one to a
               non-neutral value for an optimizer without that argument is an error.
    Regularization (orthogonal to the optimizer):
               weight_decay (lambda, on weight matrices only: biases and norm parameters are never
               decayed), decoupled (AdamW form theta -= lr*lambda*theta instead of the coupled
               g += lambda*theta; None -> the optimizer's default: True for adamw, else False),
               decay_scaled_by_lr (decoupled decay is lr*lambda, else lambda),
               fused (the optimizer's fast path, regopt.optim.fast; False: the reference path),
               compile (run the model's forward and backward through torch.compile),
               prox_l1 (proximal L1 step in the optimizer: exact zeros), l1 / l2 (penalty terms
               added to the loss: lam*sum|w| and (lam/2)*sum w^2; both set -> elastic net),
               early_stopping (patience in epochs, or None), monitor (val_loss | val_accuracy;
               also picks the best epoch when early stopping is off).
    Schedule:  batch_size (int >= 1 or "full"), epochs, schedule (constant | step | cosine |
               onecycle | warmup | warmup-cosine, stepped every batch), warmup_epochs (warmup
               schedules), step_size (epochs between decays of the step schedule; None ->
               epochs // 3) and gamma (its decay factor), clip (max global gradient norm).
    Reproducibility: seed (weights, dropout and batch order), threads (torch threads; None leaves
               torch's default). Same seed and thread count on one machine -> identical runs.
               flush_denormals (default True): the run computes with subnormal floats flushed to
               zero (torch.set_flush_denormal), as TensorFlow does on CPUs; False keeps them.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    split_seed: int = 0

    hidden: tuple[int, ...] = (256, 128)
    activation: str = "relu"
    dropout: float = 0.0
    input_dropout: float = 0.0
    batchnorm: bool = False

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float | None = None
    nesterov: bool | None = None
    betas: tuple[float, float] | None = None
    amsgrad: bool | None = None

    weight_decay: float = 1e-4
    decoupled: bool | None = None
    decay_scaled_by_lr: bool = True
    fused: bool = True
    compile: bool = False
    prox_l1: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    early_stopping: int | None = None
    monitor: str = "val_loss"

    batch_size: int | str = 64
    epochs: int = 20
    schedule: str = "constant"
    warmup_epochs: int = 1
    step_size: int | None = None
    gamma: float = 0.1
    clip: float | None = None

    seed: int = 0
    threads: int | None = None
    flush_denormals: bool = True

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = _COERCE[spec.name](spec.name, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        _check_names(self)
        _check_ranges(self)

    # -- construction from the outside world ---------------------------------------------------

    @classmethod
    def from_sources(
        cls,
        toml_path: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        base: Mapping[str, Any] | None = None,
        preset: str | None = None,
    ) -> RunConfig:
        """Defaults, then a named preset (PRESETS), then `base` (e.g. a stored run's config), then
        the TOML file, then `overrides`.

        Keys in `overrides` whose value is None count as not given (argparse's "flag absent").
        Raises ConfigError for an unreadable or invalid TOML file, an unknown key (with a
        "did you mean"), or a value of the wrong type or out of range.
        """
        values: dict[str, Any] = dict(_preset(preset)) if preset is not None else {}
        if base:
            values.update(_known_keys(base, "the stored config"))
        if toml_path is not None:
            values.update(_known_keys(_read_toml(Path(toml_path)), str(toml_path)))
        if overrides:
            given = {key: value for key, value in overrides.items() if value is not None}
            values.update(_known_keys(given, None))
        return cls(**values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """The inverse of to_dict(); unknown keys and bad values raise ConfigError."""
        return cls(**_known_keys(values, None))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able values (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some keys changed (validated like any other config)."""
        return dataclasses.replace(self, **_known_keys(changes, None))


KEYS = tuple(spec.name for spec in fields(RunConfig))


# -- reading ------------------------------------------------------------------------------------


def _preset(name: str) -> dict[str, Any]:
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, list(PRESETS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown preset {name!r}{hint}; choose from {', '.join(PRESETS)}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return document


def _known_keys(values: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """`values` with keys normalized (`-` -> `_`); an unknown key raises with a suggestion."""
    known = {}
    where = f" in {source}" if source else ""
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {raw_key!r}{where}{hint}")
        if isinstance(value, dict):
            raise ConfigError(f"{key}{where} must be a value, not a table")
        known[key] = value
    return known


# -- coercion: one function per kind of value -----------------------------------------------------

_NONE_WORDS = ("none", "null", "")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value.strip()


def _optional(coerce):
    def coerce_optional(key: str, value: Any):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return coerce(key, value)
    return coerce_optional


def _sequence(key: str, value: Any) -> list:
    if isinstance(value, str):
        return [part for part in value.replace(" ", ",").split(",") if part]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{key} must be a list, got {value!r}")


def _as_hidden(key: str, value: Any) -> tuple[int, ...]:
    sizes = tuple(_as_int(key, size) for size in _sequence(key, value))
    if any(size < 1 for size in sizes):
        raise ConfigError(f"{key} sizes must be integers >= 1, got {list(sizes)}")
    return sizes


def _as_betas(key: str, value: Any) -> tuple[float, float]:
    betas = _sequence(key, value)
    if len(betas) != 2:
        raise ConfigError(f"{key} must be two numbers (beta1, beta2), got {value!r}")
    return (_as_float(key, betas[0]), _as_float(key, betas[1]))


def _as_batch_size(key: str, value: Any) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "full":
        return "full"
    try:
        size = _as_int(key, value)
    except ConfigError:
        raise ConfigError(f"{key} must be an integer >= 1 or 'full', got {value!r}") from None
    if size < 1:
        raise ConfigError(f"{key} must be an integer >= 1 or 'full', got {size}")
    return size


def _as_name(key: str, value: Any) -> str:
    return _as_str(key, value).lower()


_COERCE = {
    "dataset": lambda key, value: _as_name(key, value).replace("_", "-"),
    "data_dir": _optional(_as_str),
    "split_seed": _as_int,
    "hidden": _as_hidden,
    "activation": lambda key, value: _as_name(key, value).replace("-", "_"),
    "dropout": _as_float,
    "input_dropout": _as_float,
    "batchnorm": _as_bool,
    "optimizer": _as_name,
    "lr": _as_float,
    "momentum": _optional(_as_float),
    "nesterov": _optional(_as_bool),
    "betas": _optional(_as_betas),
    "amsgrad": _optional(_as_bool),
    "weight_decay": _as_float,
    "decoupled": _optional(_as_bool),
    "decay_scaled_by_lr": _as_bool,
    "fused": _as_bool,
    "compile": _as_bool,
    "prox_l1": _as_float,
    "l1": _as_float,
    "l2": _as_float,
    "early_stopping": _optional(_as_int),
    "monitor": _as_name,
    "batch_size": _as_batch_size,
    "epochs": _as_int,
    "schedule": lambda key, value: _as_name(key, value).replace("_", "-"),
    "warmup_epochs": _as_int,
    "step_size": _optional(_as_int),
    "gamma": _as_float,
    "clip": _optional(_as_float),
    "seed": _as_int,
    "threads": _optional(_as_int),
    "flush_denormals": _as_bool,
}
assert set(_COERCE) == set(KEYS), "every RunConfig field needs a coercion"


# -- validation ---------------------------------------------------------------------------------


def _check_names(config: RunConfig) -> None:
    """Names that must be one of a fixed set: optimizer, dataset, activation, schedule, monitor."""
    from regopt.data import DATASETS

    _resolve_optimizer_options(config)
    _check_choice("dataset", config.dataset, tuple(DATASETS))
    _check_choice("activation", config.activation, ACTIVATIONS)
    _check_choice("schedule", config.schedule, SCHEDULES)
    _check_choice("monitor", config.monitor, MONITORS)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {key} {value!r}{hint} (choose from {', '.join(choices)})")


# The optimizer-specific options and their neutral values (no effect if the optimizer lacks them).
OPTIMIZER_OPTIONS = {"momentum": 0.0, "nesterov": False, "betas": (0.9, 0.999), "amsgrad": False}


def _resolve_optimizer_options(config: RunConfig) -> None:
    """Fill None options with the optimizer's own defaults, read from its signature.

    An option the optimizer does not take stays None; giving it a non-neutral value (say
    momentum 0.9 for adam) is a ConfigError, since it would silently do nothing.
    """
    from regopt.optim import get_optimizer

    optimizer_class = get_optimizer(config.optimizer)  # ConfigError with a "did you mean"
    parameters = inspect.signature(optimizer_class).parameters
    for key, neutral in OPTIMIZER_OPTIONS.items():
        value = getattr(config, key)
        if key in parameters:
            if value is None:
                value = _COERCE[key](key, parameters[key].default)
        elif value is not None and value != neutral:
            takes = [name for name in OPTIMIZER_OPTIONS if name in parameters]
            raise ConfigError(
                f"{key} does not apply to optimizer {config.optimizer!r} (it takes "
                f"{', '.join(takes) or 'none of momentum, nesterov, betas, amsgrad'})"
            )
        else:
            value = None
        object.__setattr__(config, key, value)
    if config.decoupled is None:
        default = parameters.get("decoupled_weight_decay")
        object.__setattr__(config, "decoupled", bool(default.default) if default else False)


# key -> (test, what the value must be); checked in this order, so the first failure is reported.
_RANGES = {
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    "betas": (lambda v: v is None or all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "prox_l1": (lambda v: v >= 0, ">= 0"),
    "l1": (lambda v: v >= 0, ">= 0"),
    "l2": (lambda v: v >= 0, ">= 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "input_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "early_stopping": (lambda v: v is None or v >= 1, "an integer >= 1 (patience in epochs) or none"),
    "warmup_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "step_size": (lambda v: v is None or v >= 1, "an integer >= 1 or none"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "clip": (lambda v: v is None or v > 0, "> 0 or none"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer >= 0"),
    "split_seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "threads": (lambda v: v is None or v >= 1, "an integer >= 1 or none"),
}


def _check_ranges(config: RunConfig) -> None:
    for key, (ok, requirement) in _RANGES.items():
        value = getattr(config, key)
        if not ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key} must be {requirement}, got {shown!r}")
    if config.nesterov and not config.momentum:
        raise ConfigError("nesterov needs momentum > 0, got momentum 0")
    if config.schedule in WARMUP_SCHEDULES and not 1 <= config.warmup_epochs < config.epochs + (
        config.schedule == "warmup"
    ):
        limit = "<= epochs" if config.schedule == "warmup" else "< epochs"
        raise ConfigError(
            f"schedule {config.schedule!r} needs 1 <= warmup_epochs {limit} ({config.epochs}), "
            f"got {config.warmup_epochs}"
        )
    _check_used("warmup_epochs", config, config.schedule in WARMUP_SCHEDULES, "the warmup schedules")
    _check_used("step_size", config, config.schedule == "step", "schedule 'step'")
    _check_used("gamma", config, config.schedule == "step", "schedule 'step'")
    _check_used("decay_scaled_by_lr", config, config.decoupled, "decoupled weight decay")


def _check_used(key: str, config: RunConfig, used: bool, what: str) -> None:
    """A key set away from its default where it has no effect is a mistake worth reporting."""
    if not used and getattr(config, key) != _DEFAULTS[key]:
        raise ConfigError(f"{key}={getattr(config, key)!r} has no effect: it applies only to {what}")


_DEFAULTS = {spec.name: spec.default for spec in fields(RunConfig)}
