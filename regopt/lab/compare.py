"""`regopt compare`: optimizers x regularizer settings on one data set, each cell tuned fairly, then seeded.

API. `Grid` (a frozen dataclass; `Grid.from_sources(toml_path, overrides)` builds one from a TOML
file and flags) describes the comparison; `compare(grid, store, workers=None, progress=True) ->
Result` runs it through regopt.lab.runner.run_many and returns the per-cell results
(`Result.cells`: CellResult with the chosen lr and strengths, the tune and final runs, test
accuracy mean/std over seeds, rank); `Result.table()` is the printed table and `Result.to_dict()`
its JSON. `plan(grid)` lists the tune jobs and states the budget without running anything.

The protocol (after DeepOBS, Schneider et al. 2019, and AlgoPerf, Dahl et al. 2023): every cell
(optimizer x regularizer setting) gets the same budget.
1. Tune (phase "tune", seed 0): one run per learning rate of the grid (times each strength of
   the setting's grid with --tune-strength). The lr grid is the one given (--tune-lrs) or "auto":
   5 points in half-decade steps (x1, x3 ladder), two steps either side of the optimizer's centre
   learning rate (AUTO_LR_CENTRE: torch.optim's default lr, except SGD, whose 1e-3 default is a
   placeholder, centred at 3e-2, and RMSprop at 1e-3, Keras's default, since torch's 1e-2 is high
   for a normalized step). Adam: 1e-4, 3e-4, 1e-3, 3e-3, 1e-2.
2. Select on the validation split only: the tune run whose *final weights* (the ones that would
   be tested: the last epoch's, or the best epoch's when early stopping restored them) have the
   highest validation accuracy; ties go to the lower validation loss, then to the earlier grid
   point (the smaller lr). The last epoch rather than the best one over epochs is used because
   it is what the test split scores: an lr that peaks early and then degrades is not rewarded.
3. Final (phase "final"): the chosen setting rerun with seeds 0..N-1 (default 3); seed 0 is the
   winning tune run itself, reused (copied into a "final" run) rather than trained again. The
   table reports test accuracy mean +- sample standard deviation (n - 1) over the seeds, the rank
   (1 = highest mean; equal means share a rank), the train-test generalization gap, the epochs run
   and the training seconds (means over the seeds).
A chosen lr at an end of its grid is flagged: the optimum may lie outside the grid.

Everything is resumable: the runs are keyed by their config hash and tags (experiment = the grid's
name, cell = "optimizer | setting", phase), so the same command again skips finished runs, resumes
killed ones from their checkpoints and only trains what is missing.

Grid file (TOML; every key optional; flags override it; other keys are RunConfig keys, the base
config shared by all runs, e.g. epochs, batch_size, hidden, schedule, dataset)::

    name = "fashion-best"              # experiment name (default: the file's stem, or compare-<dataset>)
    optimizers = ["adam", "sgd:momentum=0.9:nesterov=true"]
    regularizers = ["none", "wd", "dropout+batchnorm+adamw-wd"]
    seeds = 3
    tune_lrs = "auto"                  # or a list, e.g. [1e-4, 3e-4, 1e-3]
    tune_strength = false
    workers = 2
    dataset = "fashion-mnist"
    epochs = 30

An optimizer is a regopt.optim name, optionally with its own options after colons
(momentum, nesterov, betas as b1/b2, amsgrad): "sgd:momentum=0.9". The learning rate, seed,
optimizer and every regularization key are set by the grid, not the base config.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from regopt.errors import ConfigError
from regopt.lab.config import KEYS as CONFIG_KEYS
from regopt.lab.config import OPTIMIZER_OPTIONS, RunConfig, _read_toml
from regopt.lab.runner import Job, plan_jobs, run_many
from regopt.lab.settings import (REGULARIZATION_KEYS, SETTINGS, apply_setting, describe_settings,
                                 parse_setting, setting_strengths, strength_grid)
from regopt.lab.store import RunStore

__all__ = ["Grid", "Cell", "CellResult", "Result", "compare", "plan", "auto_lr_grid",
           "selection_score", "add_command", "AUTO_LR_CENTRE", "AUTO_LR_STEPS", "SELECTION_RULE"]

AUTO_LR_CENTRE = {"sgd": 3e-2, "rmsprop": 1e-3}  # others: the optimizer's own default lr
AUTO_LR_STEPS = 2  # half-decade steps either side of the centre: 5 points, two decades
SELECTION_RULE = ("highest validation accuracy of the final weights (ties: lower validation loss, "
                  "then smaller lr), seed 0")
GRID_KEYS = ("name", "optimizers", "regularizers", "seeds", "tune_lrs", "tune_strength", "workers")
_KEY_ALIASES = {"lr_grid": "tune_lrs", "lrs": "tune_lrs"}
_CONTROLLED = {
    "optimizer": "the optimizers come from 'optimizers'",
    "lr": "the learning rate is tuned (use 'tune_lrs')",
    "seed": "the seeds are 0..seeds-1 (use 'seeds')",
    **{key: f"give it with the optimizer, e.g. 'sgd:{key}=...'" for key in OPTIMIZER_OPTIONS},
    **{key: "regularization comes from the settings in 'regularizers'" for key in REGULARIZATION_KEYS},
}


# -- the grid -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: an optimizer spec and a regularizer setting spec."""

    optimizer: str
    setting: str

    @property
    def label(self) -> str:
        return f"{self.optimizer} | {self.setting}"


@dataclass(frozen=True)
class Grid:
    """A comparison: optimizers x regularizer settings, the tuning budget, the seeds, the base config.

    Every value is normalized and checked on construction (ConfigError naming the problem),
    including every run config the grid expands to, so nothing runs on bad input.
    """

    optimizers: tuple[str, ...] = ("adam",)
    regularizers: tuple[str, ...] = ("none",)
    seeds: int = 3
    tune_lrs: tuple[float, ...] | str = "auto"
    tune_strength: bool = False
    name: str | None = None
    workers: int = 1
    base: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731 (frozen)
        set_("optimizers", tuple(_normalize_optimizer(spec) for spec in _listed("optimizers", self.optimizers)))
        set_("regularizers", tuple(_normalize_setting(spec) for spec in _listed("regularizers", self.regularizers)))
        set_("seeds", _positive_int("seeds", self.seeds))
        set_("workers", _positive_int("workers", self.workers))
        set_("tune_lrs", _lr_list(self.tune_lrs))
        set_("tune_strength", _boolean("tune_strength", self.tune_strength))
        set_("base", _base_values(self.base))
        _no_duplicates("optimizers", self.optimizers)
        _no_duplicates("regularizers", self.regularizers)
        if self.name is not None:
            set_("name", _experiment_name(self.name))
        self.tune_jobs()  # builds (and so validates) every config of the grid

    # -- construction from a file and flags --------------------------------------------------

    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> Grid:
        """The TOML file's keys, then `overrides` (flags; None values count as not given).

        Grid keys (GRID_KEYS) go to the Grid, the others to the base RunConfig. The default name
        is the file's stem.
        """
        values: dict[str, Any] = {}
        if toml_path is not None:
            document = _read_toml(Path(toml_path))
            values.update(_grid_keys(document, str(toml_path)))
            values.setdefault("name", Path(toml_path).stem)
        values.update(_grid_keys({k: v for k, v in (overrides or {}).items() if v is not None}, None))
        grid_values = {key: values.pop(key) for key in GRID_KEYS if key in values}
        return cls(**grid_values, base=values)

    # -- what the grid expands to ------------------------------------------------------------

    @property
    def dataset(self) -> str:
        return self.base_config(self.optimizers[0]).dataset

    @property
    def experiment(self) -> str:
        return self.name or f"compare-{self.dataset}"

    def cells(self) -> list[Cell]:
        return [Cell(optimizer, setting) for optimizer in self.optimizers for setting in self.regularizers]

    def base_config(self, optimizer_spec: str) -> RunConfig:
        """The base config with this optimizer and its options (lr, seed and regularizers not yet set)."""
        name, options = _parse_optimizer(optimizer_spec)
        try:
            return RunConfig(**self.base, optimizer=name, **options)
        except ConfigError as error:
            raise ConfigError(f"optimizer {optimizer_spec!r}: {error}") from None

    def lr_grid(self, optimizer_spec: str) -> tuple[float, ...]:
        if self.tune_lrs == "auto":
            return auto_lr_grid(_parse_optimizer(optimizer_spec)[0])
        return self.tune_lrs

    def strength_grid(self, setting: str) -> list[dict[str, float]]:
        """The strengths tried: the setting's grid with tune_strength, else just its defaults."""
        return strength_grid(setting) if self.tune_strength else [setting_strengths(setting)]

    def tune_jobs(self) -> list[Job]:
        """Phase "tune": for each cell, lr x strength at seed 0 (lr ascending, then strengths)."""
        jobs = []
        for cell in self.cells():
            base = self.base_config(cell.optimizer)
            for lr in self.lr_grid(cell.optimizer):
                for strengths in self.strength_grid(cell.setting):
                    config = apply_setting(base.replace(lr=lr, seed=0), cell.setting, strengths)
                    jobs.append(Job(config, self.experiment, cell.label, "tune"))
        return jobs

    def final_jobs(self, chosen: Mapping[str, RunConfig]) -> list[Job]:
        """Phase "final": each cell's chosen config (by cell label) with seeds 0..seeds-1."""
        return [Job(chosen[cell.label].replace(seed=seed), self.experiment, cell.label, "final")
                for cell in self.cells() for seed in range(self.seeds)]

    def budget(self) -> dict[str, Any]:
        """How many runs the protocol makes: tune runs per cell and in all, final runs, epochs."""
        cells = self.cells()
        per_cell = {cell.label: len(self.lr_grid(cell.optimizer)) * len(self.strength_grid(cell.setting))
                    for cell in cells}
        tune = sum(per_cell.values())
        final = len(cells) * (self.seeds - 1)  # seed 0 is the winning tune run
        epochs = self.base_config(self.optimizers[0]).epochs
        return {"cells": len(cells), "tune_runs_per_cell": per_cell, "tune_runs": tune,
                "final_runs": final, "runs": tune + final, "epochs_per_run": epochs,
                "lr_grids": {spec: list(self.lr_grid(spec)) for spec in self.optimizers}}

    def check_data(self) -> None:
        """Load the data set once, so that a missing or corrupt one fails before anything is written."""
        from regopt.data import load_dataset

        base = self.base_config(self.optimizers[0])
        load_dataset(base.dataset, base.data_dir, base.split_seed)

    def describe_budget(self) -> str:
        budget = self.budget()
        sizes = sorted(set(budget["tune_runs_per_cell"].values()))
        lrs = "; ".join(f"{spec}: {', '.join(_fmt(lr) for lr in grid)}" for spec, grid in budget["lr_grids"].items())
        source = "auto, 5 half-decade points around each optimizer's centre" if self.tune_lrs == "auto" else "given"
        strength = ", x each setting's strength grid" if self.tune_strength else ""
        return (f"{self.experiment}: {budget['cells']} cells; tuning {'/'.join(map(str, sizes))} runs per cell "
                f"(lr grid {source}{strength}: {lrs}) = {budget['tune_runs']} tune runs, then "
                f"{self.seeds} seeds of each chosen setting (seed 0 reused) = {budget['final_runs']} "
                f"more; {budget['runs']} runs of {budget['epochs_per_run']} epochs at most")


def auto_lr_grid(optimizer: str) -> tuple[float, ...]:
    """5 learning rates on the 1-3-10 ladder, two half-decade steps either side of the centre."""
    from regopt.optim import get_optimizer

    name = optimizer.strip().lower()
    centre = AUTO_LR_CENTRE.get(name) or inspect.signature(get_optimizer(name)).parameters["lr"].default
    step = round(2 * math.log10(centre))
    return tuple(_ladder(step + offset) for offset in range(-AUTO_LR_STEPS, AUTO_LR_STEPS + 1))


def _ladder(step: int) -> float:
    """Half-decade ladder: step 2k -> 1e{k}, step 2k+1 -> 3e{k}."""
    exponent, odd = divmod(step, 2)
    return float(f"{3 if odd else 1}e{exponent}")


def plan(grid: Grid, store: RunStore | None = None) -> list[dict[str, Any]]:
    """The tune jobs (cell, lr, strengths) and, with a store, what run_many would do with each."""
    jobs = grid.tune_jobs()
    actions = [p.action for p in plan_jobs(jobs, store)] if store is not None else [None] * len(jobs)
    return [{"cell": job.cell, "phase": job.phase, "lr": job.config.lr, "seed": job.config.seed,
             "action": action} for job, action in zip(jobs, actions)]


# -- running it ---------------------------------------------------------------------------------


@dataclass
class CellResult:
    """One cell's outcome. tune: per tune run, {run_id, lr, strengths, val_accuracy, val_loss}
    (the selection metrics); finals: the final runs' summaries, seeds 0..N-1."""

    cell: str
    optimizer: str
    setting: str
    lr: float
    strengths: dict[str, float]
    lr_at_edge: bool
    tune: list[dict[str, Any]]
    finals: list[dict[str, Any]]
    rank: int = 0

    @property
    def test_accuracies(self) -> list[float]:
        return [summary["test_accuracy"] for summary in self.finals]

    @property
    def test_accuracy_mean(self) -> float:
        return statistics.fmean(self.test_accuracies)

    @property
    def test_accuracy_std(self) -> float:
        values = self.test_accuracies
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def mean_of(self, key: str) -> float | None:
        values = [summary[key] for summary in self.finals if summary.get(key) is not None]
        return statistics.fmean(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell, "optimizer": self.optimizer, "setting": self.setting, "rank": self.rank,
            "lr": self.lr, "strengths": self.strengths, "lr_at_edge": self.lr_at_edge,
            "test_accuracy_mean": self.test_accuracy_mean, "test_accuracy_std": self.test_accuracy_std,
            "seeds": len(self.finals), "test_accuracies": self.test_accuracies,
            "generalization_gap_mean": self.mean_of("generalization_gap"),
            "epochs_run_mean": self.mean_of("epochs_run"), "train_seconds_mean": self.mean_of("train_seconds"),
            "final_run_ids": [summary["run_id"] for summary in self.finals], "tune": self.tune,
        }


@dataclass
class Result:
    """The outcome of compare(): one CellResult per cell, in grid order (rank says the order)."""

    experiment: str
    dataset: str
    grid: Grid
    cells: list[CellResult]

    @property
    def best(self) -> CellResult:
        return min(self.cells, key=lambda cell: cell.rank)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "dataset": self.dataset, "selection": SELECTION_RULE,
                "budget": self.grid.budget(), "cells": [cell.to_dict() for cell in self.cells]}

    def table(self):
        """A rich Table, best cell first."""
        from rich.table import Table

        table = Table(title=f"{self.experiment}: {self.dataset}, test accuracy over {self.grid.seeds} "
                            f"seed(s) of the setting tuned on validation", title_justify="left",
                      caption=f"chosen by {SELECTION_RULE}; * = chosen lr at the end of its grid",
                      caption_justify="left")
        for column in ("rank", "cell", "chosen lr", "test acc (mean ± std)", "train-test gap",
                       "epochs", "seconds"):
            table.add_column(column, justify="left" if column in ("cell",) else "right")
        for cell in sorted(self.cells, key=lambda cell: (cell.rank, cell.cell)):
            chosen = _fmt(cell.lr) + ("*" if cell.lr_at_edge else "")
            if self.grid.tune_strength and cell.strengths:
                chosen += " " + ", ".join(f"{name}={_fmt(value)}" for name, value in cell.strengths.items())
            table.add_row(str(cell.rank), cell.cell, chosen,
                          f"{cell.test_accuracy_mean:.4f} ± {cell.test_accuracy_std:.4f}",
                          _number(cell.mean_of("generalization_gap"), ".4f"),
                          _number(cell.mean_of("epochs_run"), ".1f"),
                          _number(cell.mean_of("train_seconds"), ".1f"))
        return table


def compare(grid: Grid, store: RunStore | str, workers: int | None = None, progress: bool = True) -> Result:
    """Run the protocol (module docstring) for every cell of `grid`; workers: processes (default grid.workers)."""
    store = store if isinstance(store, RunStore) else RunStore(store)
    workers = grid.workers if workers is None else workers
    grid.check_data()

    tune_jobs = grid.tune_jobs()
    tune_summaries = run_many(tune_jobs, store, workers=workers, progress=progress)
    by_cell: dict[str, list[tuple[Job, dict]]] = {}
    for job, summary in zip(tune_jobs, tune_summaries):
        by_cell.setdefault(job.cell, []).append((job, summary))
    chosen = {label: _choose(runs, store) for label, runs in by_cell.items()}

    final_jobs = grid.final_jobs({label: job.config for label, (job, _) in chosen.items()})
    final_summaries = run_many(final_jobs, store, workers=workers, progress=progress)
    results = []
    for cell in grid.cells():
        job, _ = chosen[cell.label]
        finals = [summary for final, summary in zip(final_jobs, final_summaries) if final.cell == cell.label]
        lrs = grid.lr_grid(cell.optimizer)
        results.append(CellResult(
            cell=cell.label, optimizer=cell.optimizer, setting=cell.setting, lr=job.config.lr,
            strengths=_strengths_of(cell.setting, job.config),
            lr_at_edge=len(lrs) > 1 and job.config.lr in (min(lrs), max(lrs)),
            tune=[_tune_entry(tune_job, summary, store) for tune_job, summary in by_cell[cell.label]],
            finals=finals,
        ))
    _rank(results)
    return Result(grid.experiment, grid.dataset, grid, results)


def selection_score(summary: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> tuple[float, float]:
    """(validation accuracy, validation loss) of a run's final weights: the best epoch's when early
    stopping restored them, else the last epoch's. Missing (non-finite) values rank last."""
    if summary.get("restored_best"):
        accuracy, loss = summary.get("best_val_accuracy"), summary.get("best_val_loss")
    elif rows:
        accuracy, loss = rows[-1]["val_accuracy"], rows[-1]["val_loss"]
    else:
        accuracy, loss = None, None
    return (-math.inf if accuracy is None else accuracy, math.inf if loss is None else loss)


def _choose(runs: list[tuple[Job, dict]], store: RunStore) -> tuple[Job, dict]:
    """The tune run with the best selection score; ties: lower loss, then the earlier grid point."""
    def key(item):
        index, (_, summary) = item
        accuracy, loss = selection_score(summary, store.metrics(summary["run_id"]))
        return (-accuracy, loss, index)
    return min(enumerate(runs), key=key)[1]


def _tune_entry(job: Job, summary: dict, store: RunStore) -> dict[str, Any]:
    accuracy, loss = selection_score(summary, store.metrics(summary["run_id"]))
    return {"run_id": summary["run_id"], "lr": job.config.lr,
            "strengths": _strengths_of(job.cell.split(" | ", 1)[1], job.config),
            "val_accuracy": None if math.isinf(accuracy) else accuracy,
            "val_loss": None if math.isinf(loss) else loss}


def _strengths_of(setting: str, config: RunConfig) -> dict[str, float]:
    """The strengths a config was made with, read back from the config (key = factor * strength)."""
    strengths = {}
    for name, _ in parse_setting(setting):
        for key, factor in SETTINGS[name].get("strength", {}).items():
            strengths[name] = getattr(config, key) / factor if factor != 1 else getattr(config, key)
            break
    return strengths


def _rank(results: list[CellResult]) -> None:
    """Competition ranking by mean test accuracy: 1 = best, equal means share the rank."""
    for cell in results:
        cell.rank = 1 + sum(other.test_accuracy_mean > cell.test_accuracy_mean for other in results)


# -- normalization and checks ---------------------------------------------------------------------


def _listed(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(part).strip() for part in value]
    else:
        raise ConfigError(f"{key} must be a list of names, got {value!r}")
    items = [item for item in items if item]
    if not items:
        raise ConfigError(f"{key} must name at least one, got {value!r}")
    return items


def _no_duplicates(key: str, items: tuple[str, ...]) -> None:
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ConfigError(f"{key} lists {', '.join(map(repr, repeated))} more than once")


def _positive_int(key: str, value: Any) -> int:
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _lr_list(value: Any) -> tuple[float, ...] | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    items = _listed("tune_lrs", value) if isinstance(value, (str, list, tuple)) else [value]
    lrs = []
    for item in items:
        try:
            lr = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"tune_lrs must be 'auto' or learning rates > 0, got {item!r}") from None
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"tune_lrs must be 'auto' or learning rates > 0, got {item!r}")
        lrs.append(lr)
    if len(set(lrs)) != len(lrs):
        raise ConfigError(f"tune_lrs lists a learning rate more than once: {value!r}")
    return tuple(sorted(lrs))


def _experiment_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"name must be a non-empty string, got {value!r}")
    return value.strip()


def _base_values(values: Mapping[str, Any]) -> dict[str, Any]:
    base = {}
    for raw_key, value in dict(values).items():
        key = str(raw_key).replace("-", "_")
        if key in _CONTROLLED:
            raise ConfigError(f"{key} cannot be set in a compare grid: {_CONTROLLED[key]}")
        base[key] = value
    RunConfig.from_dict(base)  # unknown keys (with a suggestion) and bad values fail here
    return base


def _grid_keys(values: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """Keys normalized ("-" -> "_", aliases); an unknown key raises with a suggestion."""
    import difflib

    known = {}
    where = f" in {source}" if source else ""
    for raw_key, value in values.items():
        key = _KEY_ALIASES.get(str(raw_key).replace("-", "_"), str(raw_key).replace("-", "_"))
        if key not in GRID_KEYS and key not in CONFIG_KEYS:
            close = difflib.get_close_matches(key, GRID_KEYS + CONFIG_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {raw_key!r}{where}{hint}")
        known[key] = value
    return known


def _parse_optimizer(spec: str) -> tuple[str, dict[str, Any]]:
    """"sgd:momentum=0.9:nesterov=true" -> ("sgd", {"momentum": "0.9", "nesterov": "true"})."""
    name, *parts = [part.strip() for part in spec.split(":")]
    options = {}
    for part in parts:
        key, equals, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in OPTIMIZER_OPTIONS or not equals:
            raise ConfigError(f"optimizer option {part!r} in {spec!r} must be one of "
                              f"{', '.join(f'{k}=VALUE' for k in OPTIMIZER_OPTIONS)}")
        options[key] = value.strip().replace("/", ",")
    return name.lower(), options


def _normalize_optimizer(spec: str) -> str:
    name, options = _parse_optimizer(spec)
    from regopt.optim import get_optimizer

    get_optimizer(name)  # ConfigError with a "did you mean"
    return ":".join([name, *(f"{key}={value.replace(',', '/')}" for key, value in options.items())])


def _normalize_setting(spec: str) -> str:
    return "+".join(name if strength is None else f"{name}={_fmt(strength)}"
                    for name, strength in parse_setting(spec))


def _fmt(value: float) -> str:
    return f"{value:g}"


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- the command ----------------------------------------------------------------------------------

# RunConfig flags of `regopt train` that make sense as the base of a grid (the rest the grid sets).
_BASE_FLAGS = ("--dataset", "--data-dir", "--split-seed", "--hidden", "--activation", "--batch-size",
               "--epochs", "--monitor", "--schedule", "--warmup-epochs", "--step-size", "--gamma",
               "--clip", "--threads")


def add_command(commands) -> None:
    """Register `regopt compare` (called by regopt.cli.build_parser)."""
    from regopt.cli import CONFIG_FLAGS, add_out

    parser = commands.add_parser(
        "compare", help="compare optimizers x regularizers, each tuned on validation, over seeds",
        description=("Run a grid of optimizers x regularizer settings on one data set: tune each "
                     "cell's learning rate on the validation split (seed 0), rerun the chosen "
                     "setting with N seeds and report test accuracy mean +- std. Re-running the "
                     "same command skips finished runs and resumes killed ones."),
    )
    parser.add_argument("--grid", metavar="FILE.toml", help="grid file (flags override it; see examples/)")
    parser.add_argument("--name", metavar="EXPERIMENT", help="experiment name in the store "
                        "(default: the grid file's stem, or compare-DATASET)")
    parser.add_argument("--optimizers", metavar="LIST", help="e.g. adam,sgd:momentum=0.9 (default adam)")
    parser.add_argument("--regularizers", metavar="LIST",
                        help="settings, e.g. none,wd,dropout+wd,dropout=0.3 (default none; see --list-settings)")
    parser.add_argument("--seeds", metavar="N", help="seeds of each chosen setting (default 3)")
    lrs = parser.add_mutually_exclusive_group()
    lrs.add_argument("--tune-lrs", metavar="LIST", help="learning rates to tune over, or 'auto' (default)")
    lrs.add_argument("--lr-grid", metavar="auto", dest="lr_grid", choices=["auto"],
                     help="auto: 5 half-decade points around each optimizer's centre lr")
    parser.add_argument("--tune-strength", action=argparse.BooleanOptionalAction, default=None,
                        help="also tune each regularizer's strength over its grid")
    parser.add_argument("--workers", metavar="N", help="parallel worker processes (default 1)")
    flags = {flag: (text, extra) for flag, text, extra in CONFIG_FLAGS}
    base = parser.add_argument_group("base config (shared by every run)")
    for flag in _BASE_FLAGS:
        text, extra = flags[flag]
        base.add_argument(flag, help=text, default=None, **extra)
    add_out(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the budget and the tune runs; run nothing")
    parser.add_argument("--list-settings", action="store_true", help="list the regularizer settings and exit")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="no progress output")
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    import json

    from regopt.cli import _console

    if args.list_settings:
        for name, text in describe_settings():
            print(f"{name:<11} {text}")
        return 0
    overrides = {"name": args.name, "optimizers": args.optimizers, "regularizers": args.regularizers,
                 "seeds": args.seeds, "tune_lrs": args.tune_lrs or args.lr_grid,
                 "tune_strength": args.tune_strength, "workers": args.workers}
    overrides.update({flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                      for flag in _BASE_FLAGS})
    grid = Grid.from_sources(args.grid, overrides)
    store = RunStore(args.out)
    console = _console(stderr=True)
    if args.dry_run:
        print(grid.describe_budget())
        for row in plan(grid, store):
            print(f"{row['cell']}  lr {_fmt(row['lr'])}  seed {row['seed']}  {row['action']}")
        return 0
    grid.check_data()
    if not (args.quiet or args.json):
        console.print(grid.describe_budget(), highlight=False, markup=False)
    result = compare(grid, store, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    elif args.quiet:
        best = result.best
        print(f"{result.experiment} best {best.cell} test_accuracy {best.test_accuracy_mean:.4f}"
              f" ± {best.test_accuracy_std:.4f}")
    else:
        _console().print(result.table())
    return 0

