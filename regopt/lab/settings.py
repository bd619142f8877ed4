"""Named regularizer settings for `regopt compare` and `regopt claims`, and their combinations.

API. `SETTINGS: dict[str, dict]` maps a name (none, l1, l2, wd, adamw-wd, prox-l1, elastic,
dropout, batchnorm, early-stop) to {"description", "changes" (fixed RunConfig changes),
"strength" ({RunConfig key: factor}: the strength s sets key = factor * s; absent for
none/batchnorm), "default" (the default s), "grid" (the values --tune-strength tries),
"integer" (True for early-stop's patience)}. A setting *spec* joins names with "+" and may fix a
component's strength inline: "dropout+batchnorm+wd", "dropout=0.3+wd=1e-3".
`apply_setting(base, spec, strength=None) -> RunConfig` first switches every regularizer of `base`
off (REGULARIZATION_OFF: weight_decay 0, no penalty, dropout 0, no batchnorm, no early stopping;
RunConfig's own default weight_decay is 1e-4, so this matters for "none"), then applies each
component at its strength: `strength` is a number (for a spec with one tunable component) or a
{component: value} mapping; else the inline value; else the default. Unknown names, "none"
combined with others, repeated or conflicting components (wd+adamw-wd, l1+elastic), a strength
for a component that takes none, and out-of-range strengths raise ConfigError (with a "did you
mean" for names). `describe_settings() -> list[(name, description)]`; `parse_setting(spec) ->
list[(component, inline strength or None)]`; `setting_strengths(spec, strength=None) ->
{component: value}` (what apply_setting uses); `strength_grid(spec) -> list[{component: value}]`
(the product of the tunable components' grids; [{}] when nothing is tunable).

Default strengths (the values in common use; --tune-strength searches the grid around them):
    l1 1e-4 and prox-l1 1e-4   the same lambda*sum|w|: for SGD the proximal step is the exact
                               prox of the penalty, so the two reach the same objective (measured on
                               digits: same accuracy and weight L1 norm), the prox one with zeros.
                               With Adam the prox threshold lr*lambda is small against Adam's
                               normalized step, so Adam needs a larger prox-l1 for sparsity (tune it).
    l2 5e-4 and wd 5e-4        (lambda/2)*sum w^2 in the loss has gradient lambda*w, the same as
                               coupled weight decay: for SGD the two are one method (Loshchilov &
                               Hutter, 2019); 5e-4 is the classic value for SGD-trained networks.
    adamw-wd 1e-2              decoupled w -= lr*lambda*w, torch.optim.AdamW's default.
    elastic 1e-4               l1 = l2 = lambda (both penalties at once).
    dropout 0.2                Srivastava et al. (2014) use 0.5 on large nets; 0.2 suits the small
                               MLPs and short runs here (0.5 costs ~3 points on digits in 10 epochs).
    early-stop 5               patience in epochs (best weights restored).
"""

from __future__ import annotations

import difflib
import itertools
import math
from typing import Any, Mapping

from regopt.errors import ConfigError
from regopt.lab.config import RunConfig

__all__ = ["SETTINGS", "REGULARIZATION_OFF", "REGULARIZATION_KEYS", "apply_setting",
           "describe_settings", "parse_setting", "setting_strengths", "strength_grid"]

# Every RunConfig key a regularizer setting controls, at its "off" value. decoupled None resolves to
# the optimizer's own default (True for adamw), which with weight_decay 0 changes nothing.
REGULARIZATION_OFF: dict[str, Any] = {
    "weight_decay": 0.0, "decoupled": None, "decay_scaled_by_lr": True, "prox_l1": 0.0,
    "l1": 0.0, "l2": 0.0, "dropout": 0.0, "input_dropout": 0.0, "batchnorm": False, "early_stopping": None,
}
REGULARIZATION_KEYS = tuple(REGULARIZATION_OFF)

SETTINGS: dict[str, dict[str, Any]] = {
    "none": {
        "description": "no regularization: weight decay 0, no penalty, no dropout, batchnorm or early stopping",
        "changes": {},
    },
    "l1": {
        "description": "L1 penalty lam*sum|w| added to the loss (subgradient: small weights, few exact zeros)",
        "changes": {}, "strength": {"l1": 1.0}, "default": 1e-4, "grid": (1e-5, 1e-4, 1e-3),
    },
    "l2": {
        "description": "L2 penalty (lam/2)*sum w^2 added to the loss",
        "changes": {}, "strength": {"l2": 1.0}, "default": 5e-4, "grid": (5e-5, 5e-4, 5e-3),
    },
    "wd": {
        "description": "coupled weight decay: g += lam*w before the update rule (torch's weight_decay)",
        "changes": {"decoupled": False}, "strength": {"weight_decay": 1.0}, "default": 5e-4,
        "grid": (5e-5, 5e-4, 5e-3),
    },
    "adamw-wd": {
        "description": "decoupled weight decay: w -= lr*lam*w after the update rule (AdamW form)",
        "changes": {"decoupled": True}, "strength": {"weight_decay": 1.0}, "default": 1e-2,
        "grid": (1e-3, 1e-2, 1e-1),
    },
    "prox-l1": {
        "description": "proximal L1 step after the update: w = sign(w)*max(|w| - lr*lam, 0) (exact zeros)",
        "changes": {}, "strength": {"prox_l1": 1.0}, "default": 1e-4, "grid": (1e-4, 1e-3, 1e-2),
    },
    "elastic": {
        "description": "elastic net penalty lam*sum|w| + (lam/2)*sum w^2 added to the loss",
        "changes": {}, "strength": {"l1": 1.0, "l2": 1.0}, "default": 1e-4, "grid": (1e-5, 1e-4, 1e-3),
    },
    "dropout": {
        "description": "dropout with probability p after each hidden layer",
        "changes": {}, "strength": {"dropout": 1.0}, "default": 0.2, "grid": (0.1, 0.2, 0.5),
    },
    "batchnorm": {
        "description": "batch normalization after each hidden Linear layer",
        "changes": {"batchnorm": True},
    },
    "early-stop": {
        "description": "early stopping with patience N epochs on the monitored metric; best weights restored",
        "changes": {}, "strength": {"early_stopping": 1}, "default": 5, "grid": (3, 5, 10),
        "integer": True,
    },
}


def describe_settings() -> list[tuple[str, str]]:
    """(name, description with the default strength) for every setting, in SETTINGS order."""
    described = []
    for name, setting in SETTINGS.items():
        text = setting["description"]
        if "default" in setting:
            text += f" (default {_format(setting['default'])}; tuned over {', '.join(map(_format, setting['grid']))})"
        described.append((name, text))
    return described


def parse_setting(spec: str) -> list[tuple[str, float | None]]:
    """The components of a spec such as "dropout=0.3+wd": [("dropout", 0.3), ("wd", None)].

    Names are case-insensitive and "_" means "-". Raises ConfigError for an empty spec, an
    unknown name (with a suggestion), "none" combined with others, a repeated component, two
    components that set the same RunConfig key, or an inline strength that is not a number.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a regularizer setting must be a name such as 'wd' or 'dropout+wd', got {spec!r}")
    components: list[tuple[str, float | None]] = []
    for part in spec.split("+"):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower().replace("_", "-")
        if name not in SETTINGS:
            close = difflib.get_close_matches(name, list(SETTINGS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown regularizer setting {name!r} in {spec!r}{hint}; "
                              f"choose from {', '.join(SETTINGS)}")
        components.append((name, _parse_strength(name, value, spec) if value.strip() else None))
    _check_combination(spec, [name for name, _ in components])
    return components


def setting_strengths(spec: str, strength: float | Mapping[str, float] | None = None) -> dict[str, float]:
    """{component: strength} for the components that take one: `strength`, else inline, else default.

    A number applies to the spec's one tunable component (an error when it has none or several:
    then pass a {component: value} mapping or write the values inline).
    """
    components = parse_setting(spec)
    tunable = [name for name, _ in components if "strength" in SETTINGS[name]]
    given: dict[str, float] = {}
    if isinstance(strength, Mapping):
        for name, value in strength.items():
            key = str(name).strip().lower().replace("_", "-")
            if key not in tunable:
                raise ConfigError(f"setting {spec!r} has no component {name!r} that takes a strength"
                                  f" (tunable: {', '.join(tunable) or 'none'})")
            given[key] = value
    elif strength is not None:
        if len(tunable) != 1:
            raise ConfigError(_one_strength_message(spec, tunable))
        given[tunable[0]] = strength
    inline = dict(components)
    return {name: _check_strength(name, given.get(name, inline[name] if inline[name] is not None
                                               else SETTINGS[name]["default"]), spec)
            for name in tunable}


def apply_setting(base: RunConfig, spec: str, strength: float | Mapping[str, float] | None = None) -> RunConfig:
    """`base` with every regularizer switched off, then the setting's components applied.

    >>> apply_setting(RunConfig(), "dropout+wd").dropout
    0.2
    >>> apply_setting(RunConfig(), "none").weight_decay
    0.0
    """
    strengths = setting_strengths(spec, strength)
    changes = dict(REGULARIZATION_OFF)
    for name, _ in parse_setting(spec):
        setting = SETTINGS[name]
        changes.update(setting["changes"])
        for key, factor in setting.get("strength", {}).items():
            value = factor * strengths[name]
            changes[key] = int(value) if setting.get("integer") else value
    try:
        return base.replace(**changes)
    except ConfigError as error:
        raise ConfigError(f"setting {spec!r}: {error}") from None


def strength_grid(spec: str) -> list[dict[str, float]]:
    """Every {component: strength} --tune-strength tries: the product of the tunable components'
    grids (a component with an inline strength stays fixed at it). [{}] when none is tunable."""
    choices = []
    for name, inline in parse_setting(spec):
        if "strength" not in SETTINGS[name]:
            continue
        values = (inline,) if inline is not None else SETTINGS[name]["grid"]
        choices.append([(name, value) for value in values])
    return [dict(combination) for combination in itertools.product(*choices)]


# -- helpers --------------------------------------------------------------------------------------


def _parse_strength(name: str, text: str, spec: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"strength of {name!r} in {spec!r} must be a number, got {text.strip()!r}") from None
    return _check_strength(name, value, spec)


def _check_strength(name: str, value: Any, spec: str) -> float:
    setting = SETTINGS[name]
    if "strength" not in setting:
        raise ConfigError(f"{name!r} in {spec!r} takes no strength")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"strength of {name!r} in {spec!r} must be a finite number, got {value!r}")
    if setting.get("integer"):
        if value != int(value) or value < 1:
            raise ConfigError(f"strength of {name!r} in {spec!r} is a patience in epochs: an integer >= 1, got {value!r}")
        return int(value)
    if value < 0:
        raise ConfigError(f"strength of {name!r} in {spec!r} must be >= 0, got {value!r}")
    return float(value)


def _one_strength_message(spec: str, tunable: list[str]) -> str:
    if not tunable:
        return f"setting {spec!r} takes no strength"
    example = "+".join(f"{name}={_format(SETTINGS[name]['default'])}" for name in tunable)
    return (f"setting {spec!r} has {len(tunable)} components that take a strength "
            f"({', '.join(tunable)}); give each one, e.g. {example!r}")


def _keys(name: str) -> set[str]:
    setting = SETTINGS[name]
    return set(setting["changes"]) | set(setting.get("strength", {}))


def _check_combination(spec: str, names: list[str]) -> None:
    if "none" in names and len(names) > 1:
        raise ConfigError(f"'none' cannot be combined with other settings in {spec!r}")
    for index, name in enumerate(names):
        for earlier in names[:index]:
            if earlier == name:
                raise ConfigError(f"{name!r} appears twice in {spec!r}")
            shared = _keys(earlier) & _keys(name)
            if shared:
                raise ConfigError(f"{earlier!r} and {name!r} in {spec!r} both set "
                                  f"{', '.join(sorted(shared))}; choose one")


def _format(value: float) -> str:
    return f"{value:g}"
