"""The report's figures: matplotlib (Agg canvas, no pyplot, no global state), one function per plot.

API: ``cell_styles(labels) -> {label: CellStyle}`` gives every cell one colour (and, past ten
cells, a line style and hatch) used in every plot of a report; ``section_figures(section, styles,
store) -> list[report.Figure]`` draws a report section's plots as PNG bytes. Each plot function
takes a report.Section (rank-ordered cells of final runs) and returns a matplotlib Figure or None
when the section has nothing to show for it.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex as _to_hex
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from regopt.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from regopt.lab.report import CellResult, Figure, Section
    from regopt.lab.store import RunStore

__all__ = ["CellStyle", "cell_styles", "section_figures", "to_hex", "render_png", "DPI"]

DPI = 110
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # matplotlib's tab10
LINESTYLES = ("-", "--", ":", "-.")
HATCHES = ("", "//", "..", "xx")
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.labelsize": 10,
    "figure.titlesize": 13, "figure.titleweight": "bold", "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "legend.frameon": False, "legend.fontsize": 9, "savefig.facecolor": "white",
    "figure.facecolor": "white", "axes.axisbelow": True,
}


@dataclass(frozen=True)
class CellStyle:
    color: str
    linestyle: str
    hatch: str


def cell_styles(labels) -> dict[str, CellStyle]:
    """One style per distinct label, in order of first appearance: tab10 colours, then the same
    colours dashed (and hatched) for cells 11-20, and so on."""
    styles: dict[str, CellStyle] = {}
    for label in labels:
        if label not in styles:
            index = len(styles)
            cycle = index // len(PALETTE) % len(LINESTYLES)
            styles[label] = CellStyle(PALETTE[index % len(PALETTE)], LINESTYLES[cycle], HATCHES[cycle])
    return styles


def to_hex(color) -> str:
    return _to_hex(color)


def render_png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# -- the section's figures --------------------------------------------------------------------------


def section_figures(section: "Section", styles: dict[str, CellStyle], store: "RunStore") -> list["Figure"]:
    """All of a section's plots, rendered: [report.Figure(name, path, title, caption, png)]."""
    from regopt.lab.report import Figure

    target = f"{section.target:.4f}" if section.target is not None else ""
    plan: list[tuple[str, str, Callable[[], tuple[MplFigure | None, str]], str]] = [
        ("learning-curves-epoch", "Learning curves by epoch",
         lambda: (learning_curves(section, styles, by="epoch"), ""),
         "Training and validation loss and accuracy of the final runs; line = mean over seeds, "
         "band = range over seeds. The two loss panels share their y axis, as do the two accuracy panels."),
        ("learning-curves-seconds", "Learning curves by wall time",
         lambda: (learning_curves(section, styles, by="seconds"), ""),
         "The same curves against cumulative seconds (training + validation): each epoch sits at "
         "the seeds' mean elapsed time, so faster cells end further left."),
        ("test-accuracy", "Final test accuracy",
         lambda: (final_accuracy(section, styles), ""),
         "Each dot is one seed's test accuracy at the final weights; the diamond and bar are the "
         "mean and sample standard deviation; cells in rank order."),
        ("generalization-gap", "Generalization gap",
         lambda: (generalization_gap(section, styles), ""),
         "Train accuracy (open circle) and test accuracy (filled) at the final weights, mean over "
         "seeds; the line between them is the gap. Smaller is less over-fitting."),
        ("time-to-target", f"Time to validation accuracy {target}",
         lambda: (time_to_target_plot(section, styles), ""),
         "AlgoPerf's measure: seconds until the validation accuracy first reaches the target, in "
         "whole epochs. Bar = median over seeds (a miss counts as infinite), dots = seeds. "
         f"Target: {section.target_rule}."),
        ("performance-profile", "Performance profile",
         lambda: (performance_profile_plot(section, styles), ""),
         "Dolan-More profile of the time to target: for each cell, the fraction of tasks (here: "
         "seeds) it solved within a factor tau of the fastest cell on that seed. Higher and further "
         "left is better; the right end is the fraction of seeds that reached the target at all."),
        ("lr-sensitivity", "Learning-rate sensitivity",
         lambda: (lr_sensitivity(section, styles), ""),
         "DeepOBS-style: the last epoch's validation accuracy of each tuning run against its "
         "learning rate (the best over other tuned values at the same lr); the star is the lr the "
         "final runs use. A flat curve means a forgiving cell."),
        ("weight-histograms", "Weight histograms",
         lambda: weight_histograms(section, styles, store),
         "Values of the weight matrices (the tensors the regularizers act on) of each cell's "
         "lowest-seed final run with stored weights; log-scale counts; the shared x axis covers "
         "99.9% of the weights. The black bar at 0 counts exact zeros apart: proximal L1 makes "
         "them, an L1 penalty in the loss only makes weights small."),
        ("zero-fraction", "Fraction of exact zeros",
         lambda: (zero_fraction(section, styles), ""),
         "The fraction of weight-matrix entries that are exactly 0 at the final weights, mean over "
         "seeds (the engine's summary)."),
        ("seconds-per-epoch", "Seconds per epoch",
         lambda: (seconds_per_epoch(section, styles), ""),
         "Mean wall time of an epoch (training + validation) per run, then mean ± std over seeds; "
         "the label gives training samples per second."),
    ]
    figures = []
    with rc_context(STYLE), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-nan columns: we want nan
        for name, title, draw, caption in plan:
            figure, extra = draw()
            if figure is None:
                if extra:
                    section.notes.append(extra)
                continue
            figures.append(Figure(name, f"{section.slug}/{name}.png", title,
                                  caption + (f" {extra}" if extra else ""), render_png(figure)))
    return figures


# -- learning curves ----------------------------------------------------------------------------------

CURVES = (  # (metrics column, panel title, y label), in the 2 x 2 grid's reading order
    ("train_loss", "Training loss", "cross-entropy loss"),
    ("val_loss", "Validation loss", "cross-entropy loss"),
    ("train_accuracy", "Training accuracy", "accuracy"),
    ("val_accuracy", "Validation accuracy", "accuracy"),
)


def _stack(series: list[np.ndarray]) -> np.ndarray:
    """Runs x epochs, padded with nan (runs of different length, e.g. early stopping)."""
    length = max((len(values) for values in series), default=0)
    out = np.full((len(series), length), np.nan)
    for row, values in zip(out, series):
        row[: len(values)] = values
    return out


def learning_curves(section: "Section", styles, by: str = "epoch") -> MplFigure | None:
    if not section.cells:
        return None
    figure = MplFigure(figsize=(12.5, 7.6), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True, sharey="row")
    few_points = max(len(run.metrics) for cell in section.cells for run in cell.runs) <= 12
    for ax, (column, title, ylabel) in zip(axes.flat, CURVES):
        for cell in section.cells:
            style = styles[cell.cell]
            values = _stack([run.series(column) for run in cell.runs])
            if values.size == 0:
                continue
            if by == "epoch":
                x = np.arange(1, values.shape[1] + 1)
            else:
                x = np.nanmean(_stack([run.cumulative_seconds() for run in cell.runs]), axis=0)
            mean = np.nanmean(values, axis=0)
            ax.plot(x, mean, color=style.color, linestyle=style.linestyle, linewidth=1.8,
                    marker="o" if few_points else None, markersize=3.5, label=_wrap(f"#{cell.rank} {cell.cell}"))
            if values.shape[0] > 1:
                ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=style.color, alpha=0.16, linewidth=0)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if not any(np.isfinite(run.series(column)).any() for cell in section.cells for run in cell.runs):
            ax.text(0.5, 0.5, "no finite values stored", transform=ax.transAxes, ha="center",
                    va="center", color="#a00")
        if by == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if column.endswith("accuracy"):
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in axes[1]:
        ax.set_xlabel("epoch" if by == "epoch" else "seconds (cumulative wall time)")
    _log_scale_if_wide(axes[0][0], [run.series(c) for cell in section.cells for run in cell.runs
                                    for c in ("train_loss", "val_loss")])
    _legend_right(axes[0][1], "cell (rank order)\nline: mean over seeds\nband: min to max", source=axes[0][0])
    figure.suptitle(f"{section.title}: learning curves by {'epoch' if by == 'epoch' else 'wall time'}")
    return figure


def _log_scale_if_wide(ax, series: list[np.ndarray]) -> None:
    values = np.concatenate(series) if series else np.array([])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")


def _legend_right(ax, title: str = "cell (rank order)", source=None) -> None:
    """The legend of `source`'s lines (default: ax's) to the right of `ax`, top-aligned with it;
    attached to the axes, so the layout keeps it clear of the figure title."""
    handles, labels = (source or ax).get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                  title=title, alignment="left")


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


# -- per-cell horizontal charts -------------------------------------------------------------------------


def _cell_axes(section: "Section", title: str, width: float = 10.5):
    """A figure with one row per cell (best at the top) and the cells' labels on the y axis."""
    count = len(section.cells)
    figure = MplFigure(figsize=(width, max(2.6, 1.35 + 0.5 * count)), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(count)[::-1]
    ax.set_yticks(positions, [_wrap(f"#{cell.rank}  {cell.cell}", 40) for cell in section.cells])
    ax.set_ylim(-0.6, count - 0.4)
    ax.grid(axis="y", visible=False)
    figure.suptitle(f"{section.title}: {title}")
    return figure, ax, positions


def _right_labels(ax, positions, texts: list[str]) -> None:
    for y, text in zip(positions, texts):
        ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(8, 0),
                    textcoords="offset points", va="center", fontsize=9, color="#333")


def _jitter(count: int) -> np.ndarray:
    return np.linspace(-0.13, 0.13, count) if count > 1 else np.zeros(count)


def final_accuracy(section: "Section", styles) -> MplFigure | None:
    if not section.cells:
        return None
    figure, ax, positions = _cell_axes(section, "test accuracy at the final weights")
    texts = []
    for y, cell in zip(positions, section.cells):
        style = styles[cell.cell]
        values = [run.summary_value("test_accuracy") for run in cell.runs]
        ax.scatter(values, y + _jitter(len(values)), s=22, color=style.color, alpha=0.55,
                   edgecolors="none", zorder=3)
        mean, std = cell.test_accuracy
        ax.errorbar([mean], [y], xerr=[[std or 0.0], [std or 0.0]], fmt="D", markersize=8,
                    color=style.color, markeredgecolor="black", markeredgewidth=0.6, capsize=4,
                    elinewidth=1.6, zorder=4)
        texts.append(f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + f"  (n={cell.n})")
    _right_labels(ax, positions, texts)
    ax.set_xlabel("test accuracy")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    _pad_xlim(ax)
    ax.scatter([], [], s=22, color="grey", alpha=0.55, label="one seed")
    ax.errorbar([], [], xerr=[], fmt="D", color="grey", markeredgecolor="black", label="mean ± std")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, borderaxespad=0.2)
    return figure


def _pad_xlim(ax, fraction: float = 0.06) -> None:
    low, high = ax.get_xlim()
    span = (high - low) or 1e-3
    ax.set_xlim(low - span * fraction, high + span * fraction)


def generalization_gap(section: "Section", styles) -> MplFigure | None:
    if not section.cells:
        return None
    figure, ax, positions = _cell_axes(section, "generalization gap (train - test accuracy)")
    texts = []
    for y, cell in zip(positions, section.cells):
        style = styles[cell.cell]
        train = cell.stat("train_accuracy")[0]
        test = cell.stat("test_accuracy")[0]
        ax.plot([test, train], [y, y], color=style.color, linewidth=3, alpha=0.5, solid_capstyle="round")
        ax.scatter([train], [y], s=70, facecolors="white", edgecolors=style.color, linewidths=2, zorder=3)
        ax.scatter([test], [y], s=70, color=style.color, zorder=3)
        gap, gap_std = cell.gap
        texts.append(f"gap {gap:+.4f}" + (f" ± {gap_std:.4f}" if gap_std is not None else ""))
    _right_labels(ax, positions, texts)
    ax.set_xlabel("accuracy at the final weights (mean over seeds)")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    _pad_xlim(ax)
    ax.scatter([], [], s=70, facecolors="white", edgecolors="grey", linewidths=2, label="train")
    ax.scatter([], [], s=70, color="grey", label="test")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, borderaxespad=0.2)
    return figure


def time_to_target_plot(section: "Section", styles) -> MplFigure | None:
    if not section.cells or section.target is None:
        return None
    figure, ax, positions = _cell_axes(section, f"seconds to validation accuracy {section.target:.4f}")
    texts = []
    for y, cell in zip(positions, section.cells):
        style = styles[cell.cell]
        seconds = [t for t in cell.times_by_seed(section.target).values()]
        finite = [t for t in seconds if math.isfinite(t)]
        if math.isfinite(cell.time_to_target):
            ax.barh([y], [cell.time_to_target], height=0.55, color=style.color, alpha=0.85,
                    hatch=style.hatch, edgecolor="white")
            texts.append(f"{cell.time_to_target:.2f} s  ({cell.reached}/{cell.n} seeds reached)")
        else:
            texts.append(f"not reached  ({cell.reached}/{cell.n} seeds)")
        if finite:
            ax.scatter(finite, y + _jitter(len(finite)), s=18, color="black", alpha=0.6, zorder=3)
    _right_labels(ax, positions, texts)
    ax.set_xlabel("seconds until validation accuracy ≥ target (median over seeds)")
    ax.set_xlim(left=0)
    if not any(math.isfinite(cell.time_to_target) for cell in section.cells):
        ax.text(0.5, 0.5, "no cell reached the target", transform=ax.transAxes, ha="center",
                va="center", color="#a00", fontsize=12)
    return figure


def performance_profile_plot(section: "Section", styles) -> MplFigure | None:
    profile = section.profile
    if not section.cells or not profile:
        return None
    figure = MplFigure(figsize=(10.5, 5.4), layout="constrained")
    ax = figure.subplots()
    taus = profile["taus"]
    top = max(taus) * 1.25 if max(taus) > 1 else 2.0
    for cell in section.cells:
        style = styles[cell.cell]
        rho = profile["rho"][cell.cell]
        ax.step([*taus, top], [*rho, rho[-1]], where="post", color=style.color,
                linestyle=style.linestyle, linewidth=2, label=_wrap(f"#{cell.rank} {cell.cell}"))
    if top > 4:
        ax.set_xscale("log", base=2)
    ax.set_xlim(1, top)
    ax.set_ylim(-0.03, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("τ: time to target / fastest cell's time on the same seed")
    ax.set_ylabel("fraction of seeds within τ")
    tasks = len(section.tasks)
    figure.suptitle(f"{section.title}: performance profile, time to val. accuracy {section.target:.4f}")
    ax.set_title(f"{tasks} task{'s' if tasks != 1 else ''} (one per seed); higher and further left "
                 "is better", fontsize=9.5, fontweight="normal", color="#444")
    if not any(math.isfinite(r) for ratios in profile["ratios"].values() for r in ratios):
        ax.text(0.5, 0.5, "no cell reached the target", transform=ax.transAxes, ha="center",
                va="center", color="#a00", fontsize=12)
    _legend_right(ax)
    return figure


def lr_sensitivity(section: "Section", styles) -> MplFigure | None:
    cells = [cell for cell in section.all_cells() if cell.tune_runs]
    if not cells:
        return None
    figure = MplFigure(figsize=(10.5, 5.6), layout="constrained")
    ax = figure.subplots()
    for cell in cells:
        style = styles[cell.cell]
        best: dict[float, float] = {}
        for run in cell.tune_runs:
            values = run.series("val_accuracy")
            last = float(values[-1]) if values.size else math.nan
            if run.lr is not None and math.isfinite(last):
                best[run.lr] = max(best.get(run.lr, -math.inf), last)
        if not best:
            continue
        lrs = sorted(best)
        ax.plot(lrs, [best[lr] for lr in lrs], color=style.color, linestyle=style.linestyle,
                marker="o", markersize=5, linewidth=1.8,
                label=_wrap(cell.cell if not cell.rank else f"#{cell.rank} {cell.cell}"))
        for lr in {run.lr for run in cell.runs}:
            if lr in best:
                ax.scatter([lr], [best[lr]], marker="*", s=260, color=style.color,
                           edgecolors="black", linewidths=0.7, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation accuracy at the last epoch")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.scatter([], [], marker="*", s=200, color="grey", edgecolors="black", label="chosen lr")
    runs = sum(len(cell.tune_runs) for cell in cells)
    figure.suptitle(f"{section.title}: learning-rate sensitivity ({runs} tuning runs)")
    _legend_right(ax)
    return figure


def weight_histograms(section: "Section", styles, store: "RunStore") -> tuple[MplFigure | None, str]:
    """Small multiples, one per cell with stored weights; returns (figure, note on missing weights)."""
    weights, missing = [], []
    for cell in section.cells:
        values = _weight_matrices(cell, store)
        if values is None:
            missing.append(cell.cell)
        else:
            weights.append((cell, values))
    note = f"No stored weights for: {', '.join(missing)}." if missing else ""
    if not weights:
        return None, note
    columns = min(3, len(weights))
    rows = math.ceil(len(weights) / columns)
    figure = MplFigure(figsize=(4.2 * columns, 2.9 * rows + 0.7), layout="constrained")
    axes = list(figure.subplots(rows, columns, sharex=True, squeeze=False).flat)
    everything = np.concatenate([values for _, values in weights])
    limit = float(np.quantile(np.abs(everything), 0.999)) or 1e-3
    bins = np.linspace(-limit, limit, 81)
    for ax, (cell, values) in zip(axes, weights):
        style = styles[cell.cell]
        zeros = int((values == 0).sum())
        ax.hist(values[values != 0], bins=bins, color=style.color, alpha=0.85, hatch=style.hatch,
                edgecolor=style.color)
        if zeros:
            ax.bar([0.0], [zeros], width=(bins[1] - bins[0]) * 1.2, color="black", label="exact zeros")
        ax.set_yscale("log")
        ax.set_title(_wrap(f"#{cell.rank} {cell.cell}", 44), fontsize=10)
        ax.text(0.98, 0.95, f"{zeros / values.size:.1%} exact zeros\nmedian |w| {np.median(np.abs(values)):.3g}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#ccc", "alpha": 0.9})
        ax.set_xlabel("weight value")
        ax.set_ylabel("count (log)")
    for ax in axes[len(weights):]:
        ax.set_visible(False)
    for ax in axes[:len(weights)]:  # shared x, but every panel keeps its tick labels (rows may be short)
        ax.tick_params(axis="x", labelbottom=True)
    figure.suptitle(f"{section.title}: weight histograms (weight matrices, final weights; "
                    "black = exact zeros)")
    return figure, note


def _weight_matrices(cell: "CellResult", store: "RunStore") -> np.ndarray | None:
    """The weight-matrix entries (tensors with >= 2 dimensions) of the cell's lowest-seed final run
    whose weights are stored, flattened into one array; None if no run has them."""
    for run in cell.runs:
        try:
            state = store.load_model(run.run_id)
        except CheckpointError:
            continue
        matrices = [tensor.detach().float().flatten().numpy() for tensor in state.values()
                    if hasattr(tensor, "ndim") and tensor.ndim >= 2 and tensor.is_floating_point()]
        if matrices:
            return np.concatenate(matrices)
    return None


def zero_fraction(section: "Section", styles) -> MplFigure | None:
    figure = _cell_bars(section, styles, "fraction of weight-matrix entries exactly 0",
                        lambda cell: cell.stat("zero_fraction"), lambda mean, cell: f"{mean:.2%}")
    if figure is not None:
        ax = figure.axes[0]
        ax.set_xlabel("exact zeros (mean over seeds)")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlim(0, max(0.01, ax.get_xlim()[1]))
    return figure


def seconds_per_epoch(section: "Section", styles) -> MplFigure | None:
    def label(mean, cell) -> str:
        rate = cell.samples_per_second
        return f"{mean:.3f} s" + (f"  ·  {rate:,.0f} samples/s" if math.isfinite(rate) else "")

    figure = _cell_bars(section, styles, "seconds per epoch (training + validation)",
                        lambda cell: cell.seconds_per_epoch, label)
    if figure is not None:
        ax = figure.axes[0]
        ax.set_xlabel("seconds per epoch (mean ± std over seeds)")
        ax.set_xlim(left=0)
    return figure


def _cell_bars(section: "Section", styles, title: str, value_of, label_of) -> MplFigure | None:
    """One horizontal bar per cell (mean, with a std error bar), labelled on the right."""
    if not section.cells:
        return None
    figure, ax, positions = _cell_axes(section, title)
    texts = []
    for y, cell in zip(positions, section.cells):
        style = styles[cell.cell]
        mean, std = value_of(cell)
        mean = 0.0 if not math.isfinite(mean) else mean
        ax.barh([y], [mean], height=0.55, color=style.color, hatch=style.hatch, edgecolor="white",
                xerr=[[std or 0.0], [std or 0.0]] if std else None, capsize=3)
        texts.append(label_of(mean, cell))
    _right_labels(ax, positions, texts)
    return figure
