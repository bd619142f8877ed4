"""regopt report: from a store of fake runs (made-up metrics and weights written with RunStore's own
API), the files and figures exist, the tables hold the numbers of the stored summaries, the
statistics follow their definitions, bad input exits 2, and the HTML renders in headless Chromium
with every plot image loaded."""

import json
import math
import re
import shutil
import statistics
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch

from regopt.cli import main
from regopt.errors import UserError
from regopt.lab import RunConfig, RunStore
from regopt.lab.report import (build_report, collect_sections, competition_ranks, default_target,
                               mean_std, median_time, performance_profile, time_to_target)

CHROMIUM = "/usr/bin/chromium"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# cell -> (optimizer, final lr, tuned lrs, accuracy level, seconds per epoch, zero fraction of weights)
GRID = {
    "adam | none": ("adam", 1e-3, (1e-4, 1e-3, 1e-2), 0.95, 0.20, 0.0),
    "adam | prox-l1": ("adam", 1e-3, (1e-4, 1e-3, 1e-2), 0.93, 0.22, 0.4),
    "sgd | wd": ("sgd", 1e-2, (1e-3, 1e-2, 1e-1), 0.90, 0.15, 0.0),
}
SEEDS = (0, 1, 2)
EPOCHS = 6


def fake_metrics(level, seconds, rng, epochs=EPOCHS):
    """Rows that rise towards `level` (validation accuracy) with a little seeded noise."""
    rows = []
    for epoch in range(1, epochs + 1):
        progress = 1 - math.exp(-epoch / 2)
        val_accuracy = min(1.0, level * (0.6 + 0.4 * progress) + rng.normal(0, 0.004))
        rows.append({
            "epoch": epoch, "train_loss": 1.5 * (1 - progress) + 0.05, "train_accuracy": min(1.0, val_accuracy + 0.02),
            "val_loss": 1.6 * (1 - progress) + 0.12, "val_accuracy": val_accuracy, "lr": 1e-3,
            "weight_l1": 10.0, "weight_l2": 3.0, "zero_fraction": 0.0,
            "seconds": seconds * (1 + rng.uniform(-0.1, 0.1)), "samples_per_second": 1000.0,
        })
    return rows


def fake_weights(zero_fraction, rng):
    weights = {"0.weight": torch.tensor(rng.normal(0, 0.1, (16, 8)), dtype=torch.float32),
               "0.bias": torch.zeros(16), "2.weight": torch.tensor(rng.normal(0, 0.1, (3, 16)), dtype=torch.float32),
               "2.bias": torch.zeros(3)}
    for name in ("0.weight", "2.weight"):
        mask = torch.tensor(rng.uniform(size=weights[name].shape) < zero_fraction)
        weights[name][mask] = 0.0
    return weights


def add_run(store, config, rng, level, seconds, zeros=0.0, experiment=None, cell=None, phase=None,
            epochs=EPOCHS, finish=True):
    run_id = store.create_run(config.to_dict(), experiment=experiment, cell=cell, phase=phase)
    rows = fake_metrics(level, seconds, rng, epochs)
    for row in rows:
        store.log_epoch(run_id, row)
    if not finish:
        return run_id
    test_accuracy = level + rng.normal(0, 0.006)
    train_accuracy = min(1.0, test_accuracy + 0.03 + rng.uniform(0, 0.01))
    store.save_model(run_id, fake_weights(zeros, rng))
    store.finish_run(run_id, {
        "run_id": run_id, "dataset": config.dataset, "optimizer": config.optimizer,
        "test_accuracy": test_accuracy, "test_loss": 0.2, "train_accuracy": train_accuracy,
        "train_loss": 0.1, "generalization_gap": train_accuracy - test_accuracy,
        "best_val_accuracy": max(row["val_accuracy"] for row in rows), "best_val_loss": 0.1,
        "best_epoch": epochs, "epochs_run": epochs, "stop_reason": f"completed {epochs} epochs",
        "restored_best": False, "train_seconds": sum(row["seconds"] for row in rows),
        "samples_per_second": 1000.0, "zero_fraction": zeros, "weight_l1": 10.0, "weight_l2": 3.0,
        "num_parameters": 8 * 16 + 16 + 16 * 3 + 3,
    })
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experiment "grid" (3 cells, tune + final runs, one failed run), experiment "claims-digits"
    (final runs only, no tuning), and single runs on digits (two configs, one with two seeds)."""
    store = RunStore(tmp_path_factory.mktemp("store") / "runs")
    rng = np.random.default_rng(0)
    for cell, (optimizer, lr, tune_lrs, level, seconds, zeros) in GRID.items():
        base = RunConfig(dataset="digits", optimizer=optimizer, lr=lr, hidden=(16,), epochs=EPOCHS)
        for tune_lr in tune_lrs:
            penalty = 0.0 if tune_lr == lr else 0.05 * abs(math.log10(tune_lr / lr))
            add_run(store, base.replace(lr=tune_lr), rng, level - penalty, seconds, zeros, "grid", cell, "tune")
        for seed in SEEDS:
            add_run(store, base.replace(seed=seed), rng, level, seconds, zeros, "grid", cell, "final")
    failed = store.create_run(RunConfig(lr=0.5).to_dict(), experiment="grid", cell="adam | none", phase="tune")
    store.fail_run(failed, "RuntimeError: made up")
    for arm, zeros in (("l1", 0.3), ("l2", 0.0)):
        for seed in (0, 1):
            add_run(store, RunConfig(l1=1e-3 if arm == "l1" else 0.0, seed=seed, epochs=4), rng, 0.9, 0.1,
                    zeros, "claims-digits", arm, "final", epochs=4)
    add_run(store, RunConfig(epochs=5), rng, 0.96, 0.3, epochs=5)
    add_run(store, RunConfig(epochs=5, seed=1), rng, 0.96, 0.3, epochs=5)
    add_run(store, RunConfig(epochs=5, optimizer="sgd", lr=0.05), rng, 0.92, 0.25, epochs=5)
    add_run(store, RunConfig(epochs=5, optimizer="sgd", lr=0.05, seed=7), rng, 0.92, 0.25, epochs=5, finish=False)
    return store


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store, dest=tmp_path_factory.mktemp("out") / "report")


# -- the statistics, by their definitions ---------------------------------------------------------


def test_mean_std_and_ranks():
    assert mean_std([0.9, 0.92, 0.94]) == (pytest.approx(0.92), pytest.approx(0.02))
    assert mean_std([0.9]) == (0.9, None)
    assert math.isnan(mean_std([None, math.nan])[0])
    assert competition_ranks([0.9, 0.95, 0.9, 0.8]) == [2, 1, 2, 4]
    assert competition_ranks([math.nan, 0.5]) == [2, 1]


def test_time_to_target_counts_whole_epochs_until_first_reach():
    rows = [{"val_accuracy": 0.5, "seconds": 1.0}, {"val_accuracy": 0.8, "seconds": 2.0},
            {"val_accuracy": 0.7, "seconds": 4.0}, {"val_accuracy": 0.9, "seconds": 8.0}]
    assert time_to_target(rows, 0.8) == 3.0
    assert time_to_target(rows, 0.85) == 15.0
    assert time_to_target(rows, 0.95) == math.inf
    assert time_to_target([{"val_accuracy": None, "seconds": 1.0}], 0.1) == math.inf


def test_median_time_counts_misses_as_infinite():
    assert median_time([3.0, 1.0, math.inf]) == 3.0
    assert median_time([1.0, math.inf, math.inf]) == math.inf
    assert median_time([1.0, 3.0]) == 2.0
    assert median_time([1.0, math.inf]) == math.inf


def test_default_target_is_a_reached_quantile_rounded_down():
    values = [0.91234, 0.95, 0.97, 0.99]
    target = default_target(values)
    assert target == 0.9123
    assert sum(v >= target for v in values) >= 0.75 * len(values)
    assert default_target([math.nan]) is None


def test_performance_profile_follows_dolan_more():
    times = {"fast": {0: 1.0, 1: 2.0}, "slow": {0: 2.0, 1: 8.0}, "never": {0: math.inf}}
    profile = performance_profile(times, [0, 1])
    assert profile["ratios"] == {"fast": [1.0, 1.0], "slow": [2.0, 4.0], "never": [math.inf, math.inf]}
    assert profile["taus"] == [1.0, 2.0, 4.0]
    assert profile["rho"] == {"fast": [1.0, 1.0, 1.0], "slow": [0.0, 0.5, 1.0], "never": [0.0, 0.0, 0.0]}


# -- the report on the fake store -------------------------------------------------------------------


def test_every_file_exists_and_every_figure_is_a_valid_png(report):
    assert report.html_path.is_file() and report.markdown_path.is_file() and report.json_path.is_file()
    names = {path.relative_to(report.dest).as_posix() for path in report.figure_paths}
    for figure in ("learning-curves-epoch", "learning-curves-seconds", "test-accuracy", "generalization-gap",
                   "time-to-target", "performance-profile", "lr-sensitivity", "weight-histograms",
                   "zero-fraction", "seconds-per-epoch"):
        assert f"grid/{figure}.png" in names
    assert "claims-digits/test-accuracy.png" in names and "claims-digits/lr-sensitivity.png" not in names
    assert "single-runs-digits/learning-curves-epoch.png" in names
    for path in report.figure_paths:
        width, height = png_size(path.read_bytes())
        assert width > 300 and height > 150, path


def png_size(data):
    """Check the PNG structure (signature, chunk CRCs, IHDR first, IEND last) and return its size."""
    assert data[:8] == PNG_SIGNATURE
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    ihdr = data[16:24]
    return struct.unpack(">II", ihdr)


def markdown_table(markdown, heading):
    """The rows (dicts by header) of the first table after `## heading`."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    header = split(lines[0])
    return [dict(zip(header, split(line))) for line in lines[2:]]


def expected_cells(store, experiment):
    """cell -> (mean, sample std) of the finished final runs' test accuracy, read straight from the store."""
    runs = store.list_runs(experiment=experiment, status="finished", phase="final")
    by_cell = {}
    for run in runs:
        by_cell.setdefault(run["cell"], []).append(run["summary"]["test_accuracy"])
    return {cell: (statistics.mean(v), statistics.stdev(v)) for cell, v in by_cell.items()}


def test_markdown_table_numbers_equal_the_stored_summaries(store, report):
    markdown = report.markdown_path.read_text()
    for experiment in ("grid", "claims-digits"):
        expected = expected_cells(store, experiment)
        rows = markdown_table(markdown, f"Experiment {experiment}")
        assert {row["cell"] for row in rows} == set(expected)
        ranked = sorted(expected, key=lambda cell: -expected[cell][0])
        for row in rows:
            mean, std = expected[row["cell"]]
            assert float(row["test acc mean"]) == pytest.approx(mean, abs=5e-5)
            assert float(row["test acc std"]) == pytest.approx(std, abs=5e-5)
            assert int(row["rank"]) == ranked.index(row["cell"]) + 1
            assert int(row["seeds"]) == (3 if experiment == "grid" else 2)
        assert [row["cell"] for row in rows] == ranked  # the table is in rank order
    gaps = {run["cell"]: [] for run in store.list_runs(experiment="grid", phase="final")}
    for run in store.list_runs(experiment="grid", phase="final"):
        gaps[run["cell"]].append(run["summary"]["generalization_gap"])
    for row in markdown_table(markdown, "Experiment grid"):
        assert float(row["gap (train - test)"].split()[0]) == pytest.approx(statistics.mean(gaps[row["cell"]]), abs=5e-5)


def test_single_runs_are_grouped_by_config_without_the_seed(store, report):
    rows = markdown_table(report.markdown_path.read_text(), "Single runs on digits")
    seeds = {row["cell"]: int(row["seeds"]) for row in rows}
    assert seeds == {"adam lr=0.001 | wd=0.0001": 2, "sgd lr=0.05 | wd=0.0001": 1}
    sgd = next(row for row in rows if row["cell"].startswith("sgd"))
    assert sgd["test acc std"] == "-"  # one run: no standard deviation


def test_time_to_target_in_the_table_matches_the_metrics(store, report):
    section = next(s for s in report.sections if s.experiment == "grid")
    finals = store.list_runs(experiment="grid", phase="final")
    best = [max(row["val_accuracy"] for row in store.metrics(run["run_id"])) for run in finals]
    assert section.target == math.floor(np.quantile(best, 0.25, method="lower") * 1e4) / 1e4
    assert sum(b >= section.target for b in best) >= 0.75 * len(best)
    rows = markdown_table(report.markdown_path.read_text(), "Experiment grid")
    for row in rows:
        times = sorted(time_to_target(store.metrics(run["run_id"]), section.target)
                       for run in finals if run["cell"] == row["cell"])
        shown = row[f"time to val acc {section.target:.4f} (s)"]
        if math.isfinite(times[1]):
            assert float(shown.split()[0]) == pytest.approx(times[1], abs=0.005)
        else:
            assert shown.startswith("not reached")


def test_unfinished_runs_are_listed_not_counted(store, report):
    markdown = report.markdown_path.read_text()
    failed = store.list_runs(status="failed")[0]["run_id"]
    running = store.list_runs(status="running")[0]["run_id"]
    assert f"{failed} (failed)" in markdown and f"{running} (running)" in markdown


def test_json_numbers_and_lr_sensitivity_inputs(store, report):
    numbers = json.loads(report.json_path.read_text())
    grid = next(section for section in numbers if section["experiment"] == "grid")
    cell = next(cell for cell in grid["cells"] if cell["cell"] == "sgd | wd")
    assert sorted(run["lr"] for run in cell["tune_runs"]) == [1e-3, 1e-2, 1e-1]
    assert cell["seeds"] == [0, 1, 2] and cell["lrs"] == "0.01"
    assert cell["zero_fraction_mean"] == 0.0
    prox = next(cell for cell in grid["cells"] if cell["cell"] == "adam | prox-l1")
    assert prox["zero_fraction_mean"] == pytest.approx(0.4)


def test_html_is_self_contained(report):
    page = report.html_path.read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(report.figure_paths)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_experiment_filter_and_target(store):
    sections = collect_sections(store, ["claims-digits"], target=0.5)
    assert [section.experiment for section in sections] == ["claims-digits"]
    assert sections[0].target == 0.5 and "given with --target" in sections[0].target_rule
    assert all(cell.reached == cell.n == 2 for cell in sections[0].cells)


def test_target_nobody_reaches_still_draws(store, tmp_path):
    report = build_report(store, ["grid"], tmp_path / "high", target=1.0)
    assert all(cell.time_to_target == math.inf for cell in report.sections[0].cells)
    assert (tmp_path / "high" / "grid" / "performance-profile.png").is_file()


# -- the command --------------------------------------------------------------------------------------


def test_command_writes_the_report(store, tmp_path, capsys):
    assert main(["report", "--out", str(store.root), "--dest", str(tmp_path / "r"),
                 "--experiment", "grid", "claims-digits", "--target", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "index.html" in out and "best 'adam | none'" in out and "2 sections" in out
    assert (tmp_path / "r" / "grid" / "lr-sensitivity.png").is_file()
    assert (tmp_path / "r" / "claims-digits" / "test-accuracy.png").is_file()
    assert not (tmp_path / "r" / "single-runs-digits").exists()


def test_experiment_with_only_tuning_runs_shows_lr_sensitivity(tmp_path):
    store = RunStore(tmp_path / "runs")
    rng = np.random.default_rng(3)
    for lr in (1e-3, 1e-2):
        add_run(store, RunConfig(lr=lr, epochs=3), rng, 0.9, 0.1, experiment="killed", cell="adam | none",
                phase="tune", epochs=3)
    report = build_report(store, dest=tmp_path / "r")
    (section,) = report.sections
    assert section.cells == [] and [cell.cell for cell in section.tune_only] == ["adam | none"]
    assert [path.name for path in report.figure_paths] == ["lr-sensitivity.png"]
    assert "no final run yet" in report.markdown_path.read_text()


@pytest.mark.parametrize("args, message", [
    (["--experiment", "gird"], "no experiment 'gird'"),
    (["--target", "1.5"], "--target must be an accuracy in (0, 1]"),
    (["--target", "abc"], "--target must be an accuracy in (0, 1]"),
])
def test_bad_input_exits_2_with_one_line(store, tmp_path, capsys, args, message):
    assert main(["report", "--out", str(store.root), "--dest", str(tmp_path / "r"), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_unknown_experiment_suggests_a_name(store):
    with pytest.raises(UserError, match="did you mean 'grid'"):
        collect_sections(store, ["gird"])


def test_empty_store_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "none"), "--dest", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert "no runs in" in error and error.count("\n") == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "none").exists()


def test_store_without_finished_runs_is_a_one_line_error(tmp_path):
    store = RunStore(tmp_path / "runs")
    store.create_run(RunConfig().to_dict())
    with pytest.raises(UserError, match=r"no finished runs .*\(1 running\)"):
        build_report(store, dest=tmp_path / "r")


# -- a real browser -----------------------------------------------------------------------------------

MARK_IMAGES = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  for (const image of images) image.setAttribute("data-loaded", image.complete && image.naturalWidth > 0 ? "yes" : "no");
  document.body.setAttribute("data-images", String(images.length));
});
</script>"""


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian package chromium)")
def test_every_plot_loads_in_headless_chromium(report, tmp_path):
    page = report.html_path.read_text().replace("</body>", MARK_IMAGES + "</body>")
    probe = report.dest / "browser-probe.html"
    probe.write_text(page)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert f'data-images="{len(report.figure_paths)}"' in dom, dom[:500]
    loaded = re.findall(r'<img [^>]*data-loaded="(yes|no)"', dom)
    assert len(loaded) == len(report.figure_paths) and set(loaded) == {"yes"}
