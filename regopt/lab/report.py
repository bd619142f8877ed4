"""`regopt report`: from the run store, an HTML report (plots embedded), a Markdown summary and PNGs.

API: ``build_report(store, experiments=None, dest="report", target=None) -> Report`` reads the
store (a RunStore or its folder), writes ``dest/index.html`` (self-contained: every plot is a
base64 PNG inside it, no scripts, no network), ``dest/summary.md`` (the tables, linking the PNGs),
``dest/summary.json`` (the same numbers for programs) and ``dest/<section>/<figure>.png``, and
returns the paths and the numbers. ``collect_sections(store, experiments, target)`` gives the
numbers without writing anything. CLI::

    regopt report [--out runs] [--experiment NAME ...] [--dest report] [--target ACC]

Sections. One per experiment (a `compare` grid or a `claims` run), oldest first; without
--experiment also the single runs (no experiment tag, e.g. `regopt train`), one section per data set.
In a section, a *cell* is a grid cell (the runs' `cell` tag); single runs are grouped into cells by
their config without the seed. Only finished runs count; running and failed ones are listed.

What is measured (each rule is also stated in the report):
- Final runs of a cell: its phase "final" runs (the seeds of the chosen setting); a cell with none
  uses its untagged runs; "tune" runs (the learning-rate search) feed only the lr-sensitivity plot.
  Two finished runs with the same config in a cell count once (the newest).
- Test accuracy: mean and sample standard deviation (n - 1) over the final runs' summaries; rank 1 =
  highest mean, ties share the better rank. Generalization gap = train - test accuracy, both at the
  final weights (the engine's summary), averaged the same way.
- Learning curves: mean over the seeds that reached an epoch, band = range (min to max) over seeds;
  by seconds, an epoch sits at the seeds' mean cumulative wall time (training + validation).
- Time to target (AlgoPerf, Dahl et al. 2023): seconds of training until the validation accuracy
  first reaches the target, counted in whole epochs (cumulative `seconds` up to that epoch); a
  cell's time is the median over its seeds with "not reached" as infinity, so a cell whose seeds
  mostly miss the target did not reach it. Default target: the 25th percentile (numpy "lower") of
  the final runs' best validation accuracy, rounded down to 4 decimals: at least three in four runs
  reach it. --target overrides it.
- Performance profile (Dolan & More 2002): a task is one seed (seed s of every cell is one
  problem instance); r = a cell's time on the task / the best cell's time on it; the profile
  rho(tau) is the fraction of tasks with r <= tau (missing or not reached: never).
- Learning-rate sensitivity (DeepOBS, Schneider et al. 2019): the last epoch's validation accuracy
  of each tune run against its lr (the best over other tuned values at the same lr), the final
  runs' lr marked.
- Weights: a histogram of the weight matrices (tensors with 2 or more dimensions, the ones the
  regularizers act on) of each cell's lowest-seed final run (store.load_model), exact zeros counted
  apart; the zero-fraction bar is the mean of the final runs' summaries.
- Seconds per epoch: each run's mean over its epochs, then mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import difflib
import html
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from regopt.errors import UserError
from regopt.lab.store import RunStore, atomic_write

__all__ = [
    "build_report", "collect_sections", "add_command", "report_command", "Report", "Section",
    "CellResult", "RunRecord", "Figure", "time_to_target", "performance_profile", "default_target",
    "competition_ranks", "mean_std", "TARGET_QUANTILE",
]

TARGET_QUANTILE = 0.25
SINGLE_RUNS = "single runs"
IGNORED_CONFIG_KEYS = ("seed", "threads", "data_dir")  # do not change what a run measures


# -- the numbers ----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One finished run: its tags, config, summary and metrics rows (None -> nan)."""

    run_id: str
    cell: str
    phase: str | None
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    created: str = ""

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def lr(self) -> float | None:
        return self.config.get("lr")

    def series(self, column: str) -> np.ndarray:
        """The column's values by epoch (epochs 1..n), missing values as nan."""
        return np.array([_nan_if_none(row.get(column)) for row in self.metrics], dtype=float)

    def cumulative_seconds(self) -> np.ndarray:
        return np.cumsum(np.nan_to_num(self.series("seconds"), nan=0.0))

    def best_val_accuracy(self) -> float:
        values = self.series("val_accuracy")
        finite = values[np.isfinite(values)]
        return float(finite.max()) if finite.size else math.nan

    def summary_value(self, key: str) -> float:
        return _nan_if_none(self.summary.get(key))


@dataclass
class CellResult:
    """A cell's final runs (sorted by seed), its tune runs and the statistics over the final runs."""

    cell: str
    runs: list[RunRecord]
    tune_runs: list[RunRecord] = field(default_factory=list)
    rank: int = 0
    time_to_target: float = math.inf  # median over seeds, inf = not reached
    reached: int = 0  # seeds that reached the target

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, key: str) -> tuple[float, float | None]:
        """(mean, sample std or None for one run) of a summary value over the final runs."""
        return mean_std([run.summary_value(key) for run in self.runs])

    @property
    def test_accuracy(self) -> tuple[float, float | None]:
        return self.stat("test_accuracy")

    @property
    def gap(self) -> tuple[float, float | None]:
        return self.stat("generalization_gap")

    @property
    def seconds_per_epoch(self) -> tuple[float, float | None]:
        return mean_std([_nanmean(run.series("seconds")) for run in self.runs])

    @property
    def samples_per_second(self) -> float:
        return mean_std([run.summary_value("samples_per_second") for run in self.runs])[0]

    @property
    def optimizers(self) -> str:
        return ", ".join(sorted({str(run.config.get("optimizer", "?")) for run in self.runs}))

    @property
    def lrs(self) -> str:
        return ", ".join(f"{lr:g}" for lr in sorted({run.lr for run in self.runs if run.lr is not None}))

    @property
    def datasets(self) -> str:
        return ", ".join(sorted({str(run.config.get("dataset", "?")) for run in self.runs}))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    def times_by_seed(self, target: float) -> dict[int, float]:
        return {run.seed: time_to_target(run.metrics, target) for run in self.runs}


@dataclass
class Figure:
    """One plot: its file (relative to the report folder), title, caption and PNG bytes."""

    name: str
    path: str
    title: str
    caption: str
    png: bytes = b""


@dataclass
class Section:
    """One experiment (or the single runs on one data set): ranked cells, target, figures."""

    title: str
    slug: str
    experiment: str | None
    cells: list[CellResult]  # rank order
    tune_only: list[CellResult]  # cells with tune runs but no final run yet
    unfinished: list[dict[str, Any]]  # running / failed runs (store rows)
    target: float | None
    target_rule: str
    profile: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        return sorted({str(run.config.get("dataset", "?")) for cell in self.cells for run in cell.runs})

    @property
    def tasks(self) -> list[int]:
        return sorted({run.seed for cell in self.cells for run in cell.runs})

    def all_cells(self) -> list[CellResult]:
        return self.cells + self.tune_only


@dataclass
class Report:
    """What build_report wrote: the files and the sections with their numbers."""

    dest: Path
    html_path: Path
    markdown_path: Path
    json_path: Path
    figure_paths: list[Path]
    sections: list[Section]


def mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1) of the finite values; std None for n < 2."""
    finite = [float(value) for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return math.nan, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None


def competition_ranks(values: Sequence[float]) -> list[int]:
    """Rank 1 = largest; equal values share the better rank ("1, 2, 2, 4"); nan ranks last."""
    keyed = [value if math.isfinite(value) else -math.inf for value in values]
    return [1 + sum(other > value for other in keyed) for value in keyed]


def time_to_target(metrics: Sequence[dict[str, Any]], target: float) -> float:
    """AlgoPerf's time to target: cumulative seconds up to the first epoch whose validation
    accuracy is >= target (inf if none)."""
    elapsed = 0.0
    for row in metrics:
        seconds = row.get("seconds")
        elapsed += float(seconds) if seconds is not None else 0.0
        accuracy = row.get("val_accuracy")
        if accuracy is not None and accuracy >= target:
            return elapsed
    return math.inf


def median_time(times: Iterable[float]) -> float:
    """Median over seeds with inf for "not reached" (a majority of misses gives inf)."""
    values = sorted(times)
    if not values:
        return math.inf
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    low, high = values[middle - 1], values[middle]
    return math.inf if math.isinf(high) else (low + high) / 2


def default_target(best_val_accuracies: Iterable[float], quantile: float = TARGET_QUANTILE) -> float | None:
    """The `quantile` (numpy method "lower": an actual run's value) of the runs' best validation
    accuracy, rounded down to 4 decimals; None when no run has one."""
    values = np.array([v for v in best_val_accuracies if math.isfinite(v)], dtype=float)
    if values.size == 0:
        return None
    return math.floor(float(np.quantile(values, quantile, method="lower")) * 1e4) / 1e4


def performance_profile(times: dict[str, dict[int, float]], tasks: Sequence[int]) -> dict[str, Any]:
    """Dolan-More performance profile of the cells' times on `tasks`.

    times[cell][task] = seconds (inf or absent: not solved). Returns {"ratios": {cell: [r per task]},
    "taus": sorted breakpoints, "rho": {cell: [fraction of tasks with r <= tau for tau in taus]}}.
    A task no cell solved counts as unsolved for every cell.
    """
    ratios: dict[str, list[float]] = {cell: [] for cell in times}
    for task in tasks:
        best = min((cell_times.get(task, math.inf) for cell_times in times.values()), default=math.inf)
        for cell, cell_times in times.items():
            time = cell_times.get(task, math.inf)
            if not math.isfinite(time):
                ratios[cell].append(math.inf)
            else:
                ratios[cell].append(time / best if best > 0 else 1.0)
    finite = sorted({r for values in ratios.values() for r in values if math.isfinite(r)} | {1.0})
    rho = {cell: [sum(r <= tau for r in values) / max(len(tasks), 1) for tau in finite]
           for cell, values in ratios.items()}
    return {"ratios": ratios, "taus": finite, "rho": rho}


# -- reading the store ----------------------------------------------------------------------------


def collect_sections(store: RunStore, experiments: Sequence[str] | None = None,
                     target: float | None = None) -> list[Section]:
    """The report's sections, numbers only (no plots). Raises UserError for an empty store or an
    unknown experiment name."""
    all_runs = store.list_runs()
    if not all_runs:
        raise UserError(f"no runs in {store.root}: nothing to report (run `regopt train` or "
                        "`regopt compare` first)")
    known = store.experiments()
    if experiments:
        for name in experiments:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                choices = f"; experiments: {', '.join(known)}" if known else "; the store has none"
                raise UserError(f"no experiment {name!r} in {store.root}{hint}{choices}")
        names = list(dict.fromkeys(experiments))
    else:
        names = known

    sections = [_experiment_section(store, name, [r for r in all_runs if r["experiment"] == name], target)
                for name in names]
    if not experiments:
        singles = [run for run in all_runs if run["experiment"] is None]
        for dataset in dict.fromkeys(run["dataset"] for run in singles):
            runs = [run for run in singles if run["dataset"] == dataset]
            sections.append(_single_runs_section(store, dataset, runs, target))
    if not any(section.all_cells() for section in sections):
        statuses = ", ".join(f"{count} {status}" for status, count in _count(r["status"] for r in all_runs).items())
        raise UserError(f"no finished runs to report in {store.root} ({statuses})")
    _make_slugs_unique(sections)
    return sections


def _experiment_section(store: RunStore, name: str, rows: list[dict], target: float | None) -> Section:
    finished = [row for row in rows if _is_finished(row)]
    by_cell: dict[str, list[dict]] = {}
    for row in finished:
        by_cell.setdefault(row["cell"] or _describe(row["config"]), []).append(row)
    cells, tune_only = [], []
    for cell, cell_rows in by_cell.items():
        tune = [row for row in cell_rows if row["phase"] == "tune"]
        final = [row for row in cell_rows if row["phase"] == "final"] or \
                [row for row in cell_rows if row["phase"] != "tune"]
        result = CellResult(cell, _records(store, final, cell), _records(store, tune, cell))
        (cells if result.runs else tune_only).append(result)
    return _finish_section(Section(
        title=f"Experiment {name}", slug=_slug(name), experiment=name, cells=cells, tune_only=tune_only,
        unfinished=[row for row in rows if not _is_finished(row)], target=None, target_rule=""), target)


def _single_runs_section(store: RunStore, dataset: str, rows: list[dict], target: float | None) -> Section:
    finished = [row for row in rows if _is_finished(row)]
    groups: dict[str, list[dict]] = {}
    for row in finished:
        groups.setdefault(_config_key(row["config"]), []).append(row)
    labels = _group_labels([group[0]["config"] for group in groups.values()])
    cells = [CellResult(label, _records(store, group, label)) for label, group in zip(labels, groups.values())]
    section = Section(
        title=f"Single runs on {dataset}", slug=_slug(f"single-runs-{dataset}"), experiment=None,
        cells=cells, tune_only=[], unfinished=[row for row in rows if not _is_finished(row)],
        target=None, target_rule="")
    section.notes.append("Runs without an experiment tag (e.g. `regopt train`), grouped by their "
                         "config without the seed; each group is a cell.")
    return _finish_section(section, target)


def _finish_section(section: Section, target: float | None) -> Section:
    """Rank the cells, set the target and the times to target, and the performance profile."""
    ranks = competition_ranks([cell.test_accuracy[0] for cell in section.cells])
    for cell, rank in zip(section.cells, ranks):
        cell.rank = rank
    section.cells.sort(key=lambda cell: (cell.rank, cell.cell))
    runs = [run for cell in section.cells for run in cell.runs]
    if target is not None:
        section.target = target
        section.target_rule = f"validation accuracy {target:.4f}, given with --target"
    else:
        section.target = default_target(run.best_val_accuracy() for run in runs)
        if section.target is not None:
            section.target_rule = (
                f"validation accuracy {section.target:.4f}: the 25th percentile of the {len(runs)} final "
                "runs' best validation accuracy (rounded down), so at least three in four runs reach "
                "it; change it with --target")
    if section.target is not None:
        times = {}
        for cell in section.cells:
            by_seed = cell.times_by_seed(section.target)
            cell.time_to_target = median_time(by_seed.values())
            cell.reached = sum(math.isfinite(t) for t in by_seed.values())
            times[cell.cell] = by_seed
        section.profile = performance_profile(times, section.tasks)
    return section


def _records(store: RunStore, rows: list[dict], cell: str) -> list[RunRecord]:
    """RunRecords of `rows`, one per config (the newest), sorted by seed then lr."""
    newest: dict[str, dict] = {}
    for row in rows:  # rows are oldest first
        newest[row["config_hash"] or row["run_id"]] = row
    records = [RunRecord(row["run_id"], cell, row["phase"], row["config"], row["summary"],
                         store.metrics(row["run_id"]), row["created"]) for row in newest.values()]
    return sorted(records, key=lambda run: (run.seed, run.lr or 0.0, run.created))


def _is_finished(row: dict) -> bool:
    return row["status"] == "finished" and isinstance(row["summary"], dict) and "test_accuracy" in row["summary"]


# -- cell labels for single runs ------------------------------------------------------------------


def _config_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}, sort_keys=True)


def _describe(config: dict) -> str:
    """A short label: "adam lr=0.001 | wd=0.0001 dropout=0.2"."""
    parts = []
    if config.get("weight_decay"):
        parts.append(f"{'decoupled-wd' if config.get('decoupled') else 'wd'}={config['weight_decay']:g}")
    for key, name in (("l1", "l1"), ("l2", "l2"), ("prox_l1", "prox-l1"), ("dropout", "dropout")):
        if config.get(key):
            parts.append(f"{name}={config[key]:g}")
    if config.get("batchnorm"):
        parts.append("batchnorm")
    if config.get("early_stopping"):
        parts.append(f"early-stop={config['early_stopping']}")
    head = f"{config.get('optimizer', '?')} lr={config.get('lr', math.nan):g}"
    return f"{head} | {' '.join(parts) if parts else 'no regularization'}"


def _group_labels(configs: list[dict]) -> list[str]:
    """_describe() of each config; labels that collide get the keys where their configs differ."""
    labels = [_describe(config) for config in configs]
    for label in set(labels):
        same = [i for i, other in enumerate(labels) if other == label]
        if len(same) < 2:
            continue
        keys = [key for key in configs[same[0]] if key not in IGNORED_CONFIG_KEYS
                and len({json.dumps(configs[i].get(key)) for i in same}) > 1]
        for i in same:
            extra = " ".join(f"{key}={_short(configs[i].get(key))}" for key in keys)
            labels[i] = f"{label} [{extra}]"
    return labels


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- building the report --------------------------------------------------------------------------


def build_report(store: RunStore | str | Path, experiments: Sequence[str] | None = None,
                 dest: str | Path = "report", target: float | None = None) -> Report:
    """Write index.html, summary.md, summary.json and the PNGs under `dest`; return what was written."""
    from regopt.lab import plots  # matplotlib is imported only when a report is made

    if not isinstance(store, RunStore):
        store = RunStore(store)
    if target is not None and not 0 < target <= 1:
        raise UserError(f"--target must be an accuracy in (0, 1], got {target!r}")
    sections = collect_sections(store, experiments, target)
    dest = Path(dest)
    styles = plots.cell_styles([cell.cell for section in sections for cell in section.all_cells()])
    figure_paths = []
    for section in sections:
        section.figures = plots.section_figures(section, styles, store)
        for figure in section.figures:
            path = dest / figure.path
            _write_bytes(path, figure.png)
            figure_paths.append(path)
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    html_path, markdown_path, json_path = dest / "index.html", dest / "summary.md", dest / "summary.json"
    _write_text(html_path, render_html(sections, store, generated))
    _write_text(markdown_path, render_markdown(sections, store, generated))
    _write_text(json_path, json.dumps(report_numbers(sections), indent=2, allow_nan=False) + "\n")
    return Report(dest, html_path, markdown_path, json_path, figure_paths, sections)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    """Atomically, readable like any new file (atomic_write's temporary files are private, 0600)."""
    atomic_write(path, lambda file: file.write(data))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


# -- tables (shared by Markdown, HTML and JSON) -----------------------------------------------------


def results_table(section: Section) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the section's results table, as formatted strings."""
    several_datasets = len(section.datasets) > 1
    target = f"{section.target:.4f}" if section.target is not None else "-"
    header = ["rank", "cell", *(["dataset"] if several_datasets else []), "optimizer", "lr", "seeds",
              "test acc mean", "test acc std", "test loss", "gap (train - test)",
              f"time to val acc {target} (s)", "s / epoch", "zero fraction"]
    rows = []
    for cell in section.cells:
        mean, std = cell.test_accuracy
        gap_mean, gap_std = cell.gap
        rows.append([
            str(cell.rank), cell.cell, *([cell.datasets] if several_datasets else []), cell.optimizers,
            cell.lrs or "-", str(cell.n), _fmt(mean), _fmt(std), _fmt(cell.stat("test_loss")[0]),
            _fmt(gap_mean) + (f" ± {_fmt(gap_std)}" if gap_std is not None else ""),
            _fmt_time(cell), _fmt(cell.seconds_per_epoch[0], ".3f"), _fmt(cell.stat("zero_fraction")[0]),
        ])
    return header, rows


def _fmt(value: float | None, spec: str = ".4f") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, spec)


def _fmt_time(cell: CellResult) -> str:
    if not math.isfinite(cell.time_to_target):
        return f"not reached ({cell.reached}/{cell.n})"
    return f"{cell.time_to_target:.2f} ({cell.reached}/{cell.n})"


def _section_facts(section: Section) -> list[str]:
    finals = sum(cell.n for cell in section.cells)
    tunes = sum(len(cell.tune_runs) for cell in section.all_cells())
    facts = [f"data set: {', '.join(section.datasets) or '-'}",
             f"{len(section.cells)} cells, {finals} final runs (seeds {_seed_list(section.tasks)})"
             + (f", {tunes} tuning runs" if tunes else "")]
    epochs = sorted({len(run.metrics) for cell in section.cells for run in cell.runs})
    if epochs:
        facts.append(f"epochs run: {epochs[0]}" + (f" to {epochs[-1]}" if len(epochs) > 1 else ""))
    return facts


def _seed_list(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "-"


def _warnings(section: Section) -> list[str]:
    lines = list(section.notes)
    if section.tune_only:
        lines.append("Cells with tuning runs but no final run yet (only in the lr-sensitivity plot): "
                     + ", ".join(cell.cell for cell in section.tune_only) + ".")
    if section.unfinished:
        listed = ", ".join(f"{row['run_id']} ({row['status']})" for row in section.unfinished[:10])
        more = f" and {len(section.unfinished) - 10} more" if len(section.unfinished) > 10 else ""
        lines.append(f"Left out, not finished: {listed}{more}.")
    return lines


RULES = [
    "Test accuracy: mean and sample standard deviation (n - 1) over the final runs (the seeds of "
    "each cell's chosen setting); rank 1 = highest mean, ties share a rank.",
    "Gap: train accuracy - test accuracy at the final weights, mean ± std over seeds.",
    "Time to target (AlgoPerf): seconds of training until the validation accuracy first reaches the "
    "target, in whole epochs; median over seeds with misses counted as infinite; (k/n) = seeds that "
    "reached it.",
    "Learning curves: mean over seeds, band = min to max over seeds.",
]


# -- Markdown ---------------------------------------------------------------------------------------


def render_markdown(sections: list[Section], store: RunStore, generated: str) -> str:
    lines = ["# regopt report", "",
             f"Run store `{store.root}`, generated {generated}. The HTML version with the plots "
             "embedded is `index.html`.", ""]
    lines += [f"- {rule}" for rule in RULES] + [""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        lines += [f"- {fact}" for fact in _section_facts(section)]
        if section.target is not None:
            lines.append(f"- target: {section.target_rule}")
        lines.append("")
        if section.cells:
            header, rows = results_table(section)
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---:" if _numeric_column(name) else "---" for name in header) + "|")
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        lines += [f"> {line}" for line in _warnings(section)]
        if _warnings(section):
            lines.append("")
        for figure in section.figures:
            lines += [f"**{figure.title}.** {figure.caption}", "", f"![{figure.title}]({figure.path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _numeric_column(name: str) -> bool:
    return name not in ("cell", "dataset", "optimizer")


# -- HTML -------------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; box-sizing: border-box; }
.table-scroll { overflow-x: auto; }
h1 { margin-bottom: 4px; } h2 { margin-top: 48px; border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; }
.meta, figcaption, .facts { color: #555; }
nav ul { columns: 2; } nav a, a { color: #1f5fa8; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13.5px; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }
th { background: #f0f2f5; white-space: normal; vertical-align: bottom; }
td.text, th.text { text-align: left; white-space: normal; }
tr.best td { background: #eef7ee; font-weight: 600; }
.label { white-space: nowrap; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
          vertical-align: middle; }
figure { margin: 28px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { font-size: 13.5px; margin-top: 6px; } figcaption b { color: #222; }
.note { background: #fff8e5; border-left: 4px solid #f0b400; padding: 6px 12px; margin: 8px 0; }
details { margin: 12px 0; } summary { cursor: pointer; color: #1f5fa8; }
ul.rules li { margin: 2px 0; }
"""


def render_html(sections: list[Section], store: RunStore, generated: str) -> str:
    from regopt.lab.plots import cell_styles

    styles = cell_styles([cell.cell for section in sections for cell in section.all_cells()])
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>regopt report</title>", f"<style>{_CSS}</style></head><body><main>",
        "<h1>regopt report</h1>",
        f'<p class="meta">Run store <code>{esc(str(store.root))}</code>, generated {esc(generated)}. '
        f"{sum(len(s.figures) for s in sections)} figures; the numbers are also in "
        '<a href="summary.md">summary.md</a> and <a href="summary.json">summary.json</a>.</p>',
        "<nav><ul>" + "".join(f'<li><a href="#{s.slug}">{esc(s.title)}</a></li>' for s in sections)
        + "</ul></nav>",
        '<details><summary>How the numbers are computed</summary><ul class="rules">'
        + "".join(f"<li>{esc(rule)}</li>" for rule in RULES) + "</ul></details>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.slug}"><h2>{esc(section.title)}</h2>')
        parts.append('<p class="facts">' + " &middot; ".join(esc(f) for f in _section_facts(section)) + "</p>")
        if section.target is not None:
            parts.append(f'<p class="facts">Target: {esc(section.target_rule)}.</p>')
        parts += [f'<p class="note">{esc(line)}</p>' for line in _warnings(section)]
        if section.cells:
            parts.append(_html_table(section, styles))
            parts.append(_html_run_list(section))
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure id="{section.slug}-{figure.name}"><img alt="{esc(figure.title)}" '
                         f'src="data:image/png;base64,{data}"><figcaption><b>{esc(figure.title)}.</b> '
                         f'{esc(figure.caption)} <a href="{esc(figure.path)}">PNG</a></figcaption></figure>')
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _html_table(section: Section, styles) -> str:
    from regopt.lab.plots import to_hex

    header, rows = results_table(section)
    esc = html.escape
    head = "".join(f'<th class="{"" if _numeric_column(h) else "text"}">{esc(h)}</th>' for h in header)
    body = []
    for cell, row in zip(section.cells, rows):
        swatch = f'<span class="swatch" style="background:{to_hex(styles[cell.cell].color)}"></span>'
        cells = "".join(
            f'<td class="{"" if _numeric_column(name) else "text"}">'
            + (f'<span class="label">{swatch}{esc(value)}</span>' if name == "cell" else esc(value))
            + "</td>"
            for name, value in zip(header, row))
        body.append(f'<tr class="{"best" if cell.rank == 1 else ""}">{cells}</tr>')
    return (f'<div class="table-scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _html_run_list(section: Section) -> str:
    esc = html.escape
    items = []
    for cell in section.all_cells():
        finals = ", ".join(f"seed {run.seed}: <code>{esc(run.run_id)}</code> "
                           f"({_fmt(run.summary_value('test_accuracy'))})" for run in cell.runs)
        tunes = f"; {len(cell.tune_runs)} tuning runs (lr {', '.join(f'{r.lr:g}' for r in cell.tune_runs)})" \
            if cell.tune_runs else ""
        items.append(f"<li><b>{esc(cell.cell)}</b>: {finals or 'no final run'}{tunes}</li>")
    return f"<details><summary>The runs behind each cell</summary><ul>{''.join(items)}</ul></details>"


# -- JSON -------------------------------------------------------------------------------------------


def report_numbers(sections: list[Section]) -> list[dict[str, Any]]:
    """The sections' numbers as plain JSON (non-finite values as None)."""
    def number(value):
        return value if value is not None and math.isfinite(value) else None

    out = []
    for section in sections:
        cells = []
        for cell in section.cells:
            mean, std = cell.test_accuracy
            cells.append({
                "cell": cell.cell, "rank": cell.rank, "optimizers": cell.optimizers, "lrs": cell.lrs,
                "seeds": cell.seeds, "run_ids": [run.run_id for run in cell.runs],
                "test_accuracy_mean": number(mean), "test_accuracy_std": number(std),
                "generalization_gap_mean": number(cell.gap[0]),
                "time_to_target_seconds": number(cell.time_to_target), "target_reached_by": cell.reached,
                "seconds_per_epoch_mean": number(cell.seconds_per_epoch[0]),
                "zero_fraction_mean": number(cell.stat("zero_fraction")[0]),
                "tune_runs": [{"run_id": run.run_id, "lr": run.lr,
                               "final_val_accuracy": number(_last(run.series("val_accuracy")))}
                              for run in cell.tune_runs],
            })
        out.append({"title": section.title, "experiment": section.experiment, "slug": section.slug,
                    "target": section.target, "target_rule": section.target_rule, "cells": cells,
                    "figures": [figure.path for figure in section.figures],
                    "unfinished": [row["run_id"] for row in section.unfinished]})
    return out


# -- the command --------------------------------------------------------------------------------------


def add_command(commands) -> None:
    from regopt.cli import add_out

    parser = commands.add_parser(
        "report", help="an HTML report with plots, a Markdown summary and PNGs from the run store",
        description="Read the run store and write DEST/index.html (plots embedded), DEST/summary.md, "
                    "DEST/summary.json and the PNG files: learning curves, the test accuracy table "
                    "(mean, std, rank), generalization gap, time to a target accuracy and a "
                    "performance profile, learning-rate sensitivity, weight histograms and zero "
                    "fractions, seconds per epoch.")
    add_out(parser)
    parser.add_argument("--experiment", metavar="NAME", nargs="+", action="extend", default=None,
                        help="report only these experiments (default: all, plus single runs)")
    parser.add_argument("--dest", metavar="DIR", default="report", help="output folder (default ./report)")
    parser.add_argument("--target", metavar="ACC", default=None,
                        help="validation accuracy for time to target (default: the 25th percentile "
                             "of the final runs' best validation accuracy)")
    parser.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    target = _parse_target(args.target)
    report = build_report(RunStore(args.out), args.experiment, args.dest, target)
    figures = len(report.figure_paths)
    cells = sum(len(section.cells) for section in report.sections)
    print(f"report: {report.html_path} ({len(report.sections)} sections, {cells} cells, {figures} figures)")
    print(f"summary: {report.markdown_path}")
    for section in report.sections:
        if section.cells:
            best = section.cells[0]
            mean, std = best.test_accuracy
            spread = f" ± {std:.4f}" if std is not None else ""
            print(f"  {section.title}: best {best.cell!r} test accuracy {mean:.4f}{spread} (n={best.n})")
    return 0


def _parse_target(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--target must be an accuracy in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise UserError(f"--target must be an accuracy in (0, 1], got {text!r}")
    return value


# -- small helpers ------------------------------------------------------------------------------------


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _last(values: np.ndarray) -> float:
    return float(values[-1]) if values.size else math.nan


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _make_slugs_unique(sections: list[Section]) -> None:
    seen: dict[str, int] = {}
    for section in sections:
        count = seen.get(section.slug, 0)
        seen[section.slug] = count + 1
        if count:
            section.slug = f"{section.slug}-{count + 1}"

