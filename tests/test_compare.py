"""regopt compare: settings, the grid's jobs, the tuning protocol against the stored runs, skip and
resume on a re-run, the same numbers with 2 worker processes, and the CLI (bad input -> exit 2)."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regopt.cli import main
from regopt.engine import fit
from regopt.errors import ConfigError, UserError
from regopt.lab import RunConfig, RunStore
from regopt.lab.compare import Grid, auto_lr_grid, compare
from regopt.lab.runner import Job, plan_jobs, run_many
from regopt.lab.settings import (REGULARIZATION_KEYS, SETTINGS, apply_setting, describe_settings,
                                 setting_strengths, strength_grid)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# One torch thread per run: on a busy 2-core machine two threads per tiny run are ten times slower.
# (The thread count the runner picks when a config leaves it open is tested on its own below.)
BASE = {"dataset": "synthetic", "hidden": [16], "epochs": 3, "threads": 1}
LRS = [1e-3, 1e-2, 1e-1]


def small_grid(**changes):
    values = {"optimizers": ["adam", "sgd:momentum=0.9"], "regularizers": ["none", "dropout+early-stop=1"],
              "tune_lrs": LRS, "seeds": 2, "name": "t", "base": BASE}
    return Grid(**{**values, **changes})


def numbers(result):
    """Everything a compare result says, less the timings and run ids."""
    return [(cell.cell, cell.lr, cell.rank, cell.test_accuracies,
             [(entry["lr"], entry["val_accuracy"], entry["val_loss"]) for entry in cell.tune])
            for cell in result.cells]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The small grid, compared once in this process (workers=1): (grid, store, result)."""
    grid = small_grid()
    store = RunStore(tmp_path_factory.mktemp("compare"))
    return grid, store, compare(grid, store, workers=1, progress=False)


# -- settings -------------------------------------------------------------------------------------


def test_none_switches_off_every_regularizer_even_runconfig_defaults():
    base = RunConfig(dropout=0.5, batchnorm=True, prox_l1=0.1, l1=1e-3, early_stopping=3)
    assert RunConfig().weight_decay == 1e-4  # the default that "none" must undo
    none = apply_setting(base, "none")
    assert (none.weight_decay, none.dropout, none.batchnorm, none.prox_l1, none.l1, none.l2,
            none.early_stopping) == (0.0, 0.0, False, 0.0, 0.0, 0.0, None)
    assert none.replace(**{k: getattr(base, k) for k in REGULARIZATION_KEYS}) == base.replace(decoupled=False)


def test_each_setting_sets_its_keys_at_its_default_strength():
    base = RunConfig(optimizer="adamw")
    expected = {
        "l1": {"l1": 1e-4}, "l2": {"l2": 5e-4}, "wd": {"weight_decay": 5e-4, "decoupled": False},
        "adamw-wd": {"weight_decay": 1e-2, "decoupled": True}, "prox-l1": {"prox_l1": 1e-4},
        "elastic": {"l1": 1e-4, "l2": 1e-4}, "dropout": {"dropout": 0.2}, "batchnorm": {"batchnorm": True},
        "early-stop": {"early_stopping": 5},
    }
    off = apply_setting(base, "none")
    for name, changes in expected.items():
        config = apply_setting(base, name)
        changed = {key: getattr(config, key) for key in REGULARIZATION_KEYS
                   if getattr(config, key) != getattr(off, key)}
        assert changed == {k: v for k, v in changes.items() if v != getattr(off, k)}, name
    assert set(SETTINGS) == {"none", *expected}
    assert [name for name, _ in describe_settings()] == list(SETTINGS)


def test_combinations_and_strengths():
    config = apply_setting(RunConfig(), "dropout+batchnorm+wd")
    assert (config.dropout, config.batchnorm, config.weight_decay, config.decoupled) == (0.2, True, 5e-4, False)
    inline = apply_setting(RunConfig(), "Dropout=0.3 + WD=1e-3")
    assert (inline.dropout, inline.weight_decay) == (0.3, 1e-3)
    assert apply_setting(RunConfig(), "l1", 1e-2).l1 == 1e-2
    assert apply_setting(RunConfig(), "dropout+batchnorm", 0.4).dropout == 0.4  # the one tunable part
    mapped = apply_setting(RunConfig(), "dropout+wd", {"dropout": 0.1, "wd": 0.0})
    assert (mapped.dropout, mapped.weight_decay) == (0.1, 0.0)
    assert apply_setting(RunConfig(), "early-stop", 7).early_stopping == 7
    assert setting_strengths("dropout=0.3+wd") == {"dropout": 0.3, "wd": 5e-4}
    assert len(strength_grid("dropout+batchnorm+wd")) == 9 and strength_grid("batchnorm") == [{}]
    assert strength_grid("dropout=0.3+wd") == [{"dropout": 0.3, "wd": w} for w in SETTINGS["wd"]["grid"]]


@pytest.mark.parametrize("spec, strength, message", [
    ("dropuot", None, "did you mean 'dropout'"),
    ("none+wd", None, "'none' cannot be combined"),
    ("wd+adamw-wd", None, "both set decoupled, weight_decay"),
    ("l1+elastic", None, "both set l1"),
    ("wd+wd", None, "appears twice"),
    ("dropout+wd", 0.1, "give each one, e.g. 'dropout=0.2+wd=0.0005'"),
    ("batchnorm", 1.0, "takes no strength"),
    ("batchnorm=2", None, "takes no strength"),
    ("dropout", 1.5, "dropout must be in [0, 1)"),
    ("early-stop=2.5", None, "integer >= 1"),
    ("l1=-1", None, "must be >= 0"),
    ("wd=lots", None, "must be a number"),
    ("", None, "must be a name"),
])
def test_bad_settings_are_config_errors(spec, strength, message):
    with pytest.raises(ConfigError) as error:
        apply_setting(RunConfig(), spec, strength)
    assert message in str(error.value)


# -- the grid -------------------------------------------------------------------------------------


def test_the_grid_expands_to_the_tune_and_final_jobs():
    grid = small_grid(seeds=3)
    jobs = grid.tune_jobs()
    labels = ["adam | none", "adam | dropout+early-stop=1", "sgd:momentum=0.9 | none",
              "sgd:momentum=0.9 | dropout+early-stop=1"]
    assert [job.cell for job in jobs] == [label for label in labels for _ in LRS]
    assert [job.config.lr for job in jobs] == LRS * 4
    assert {(job.experiment, job.phase, job.config.seed, job.config.epochs) for job in jobs} == {("t", "tune", 0, 3)}
    assert all(job.config.weight_decay == 0 for job in jobs)  # "none" and dropout+early-stop: no decay
    assert {job.config.momentum for job in jobs if job.config.optimizer == "sgd"} == {0.9}
    assert {(job.config.dropout, job.config.early_stopping) for job in jobs if "dropout" in job.cell} == {(0.2, 1)}
    chosen = {job.cell: job.config for job in jobs[1::3]}  # say each cell chose lr 1e-2
    finals = grid.final_jobs(chosen)
    assert [(job.cell, job.config.seed) for job in finals] == [(label, s) for label in labels for s in range(3)]
    assert all(job.phase == "final" and job.config.replace(seed=0) == chosen[job.cell] for job in finals)
    budget = grid.budget()
    assert (budget["tune_runs"], budget["final_runs"], budget["runs"]) == (12, 8, 20)

    tuned = small_grid(tune_strength=True, regularizers=["none", "dropout+wd"])
    assert tuned.budget()["tune_runs_per_cell"]["adam | dropout+wd"] == 3 * 9
    assert {(j.config.dropout, j.config.weight_decay) for j in tuned.tune_jobs() if j.cell == "adam | dropout+wd"} \
        == {(d, w) for d in SETTINGS["dropout"]["grid"] for w in SETTINGS["wd"]["grid"]}


def test_auto_lr_grid_is_five_half_decade_points_around_the_centre():
    assert auto_lr_grid("adam") == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    assert auto_lr_grid("sgd") == (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # torch's 1e-3 is a placeholder
    assert auto_lr_grid("adagrad") == (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    grid = Grid(optimizers="adam,sgd", base=BASE)
    assert grid.tune_lrs == "auto" and grid.budget()["tune_runs"] == 10
    assert "5 half-decade points" in grid.describe_budget()


@pytest.mark.parametrize("changes, message", [
    ({"base": {**BASE, "lr": 0.1}}, "lr cannot be set in a compare grid"),
    ({"base": {**BASE, "weight_decay": 0.1}}, "weight_decay cannot be set"),
    ({"base": {**BASE, "momentum": 0.9}}, "sgd:momentum"),
    ({"base": {**BASE, "epochz": 3}}, "did you mean 'epochs'"),
    ({"optimizers": "adma"}, "did you mean 'adam'"),
    ({"optimizers": "adam:momentum=0.9"}, "momentum does not apply"),
    ({"optimizers": "sgd:speed=2"}, "must be one of momentum=VALUE"),
    ({"optimizers": "adam,adam"}, "more than once"),
    ({"regularizers": "dropout,nope"}, "unknown regularizer setting 'nope'"),
    ({"seeds": 0}, "seeds must be an integer >= 1"),
    ({"workers": "two"}, "workers must be an integer >= 1"),
    ({"tune_lrs": [1e-3, -1]}, "learning rates > 0"),
    ({"tune_lrs": "fast"}, "learning rates > 0"),
])
def test_bad_grids_are_config_errors(changes, message):
    with pytest.raises(ConfigError) as error:
        small_grid(**changes)
    assert message in str(error.value)


# -- the protocol, against the stored runs ----------------------------------------------------------


def final_weights_row(store, run):
    """The metrics row of the weights a run ended with (independently of compare's code)."""
    rows = store.metrics(run["run_id"])
    if run["summary"]["restored_best"]:
        return next(row for row in rows if row["epoch"] == run["summary"]["best_epoch"])
    return rows[-1]


def test_tuning_picks_the_best_validation_accuracy_and_reruns_it_over_seeds(done):
    grid, store, result = done
    assert len(result.cells) == 4
    for cell in result.cells:
        tune = store.list_runs(experiment="t", cell=cell.cell, phase="tune")
        assert sorted(run["config"]["lr"] for run in tune) == LRS
        assert all(run["status"] == "finished" and run["config"]["seed"] == 0 for run in tune)
        scored = [(final_weights_row(store, run)["val_accuracy"], -final_weights_row(store, run)["val_loss"],
                   -run["config"]["lr"], run) for run in tune]
        winner = max(scored, key=lambda item: item[:3])[3]
        assert cell.lr == winner["config"]["lr"]

        finals = store.list_runs(experiment="t", cell=cell.cell, phase="final")
        assert sorted(run["config"]["seed"] for run in finals) == [0, 1]
        assert all({**run["config"], "seed": 0} == winner["config"] for run in finals)
        seed0 = next(run for run in finals if run["config"]["seed"] == 0)
        assert seed0["summary"]["reused_from"] == winner["run_id"]  # not trained twice
        assert store.metrics(seed0["run_id"]) == store.metrics(winner["run_id"])
        accuracies = [run["summary"]["test_accuracy"] for run in sorted(finals, key=lambda r: r["config"]["seed"])]
        assert cell.test_accuracies == accuracies
        assert cell.test_accuracy_mean == pytest.approx(statistics.fmean(accuracies))
        assert cell.test_accuracy_std == pytest.approx(statistics.stdev(accuracies))
    means = sorted((cell.test_accuracy_mean for cell in result.cells), reverse=True)
    assert all(cell.rank == 1 + means.index(cell.test_accuracy_mean) for cell in result.cells)
    assert any(cell.test_accuracy_mean > 0.6 for cell in result.cells)  # it learned (chance 0.25)
    assert set(store.experiments()) == {"t"}


def test_a_rerun_trains_nothing_and_gives_the_same_result(done):
    grid, store, result = done
    before = store.list_runs()
    assert {p.action for p in plan_jobs(grid.tune_jobs(), store)} == {"skip"}
    again = compare(grid, store, workers=1, progress=False)
    assert store.list_runs() == before  # no new runs, nothing touched
    assert numbers(again) == numbers(result)


def test_two_worker_processes_give_the_same_numbers(done, tmp_path):
    grid, _, result = done
    parallel = compare(grid, RunStore(tmp_path), workers=2, progress=False)
    assert numbers(parallel) == numbers(result)


def test_runs_do_not_depend_on_the_thread_count_the_runner_picks(tmp_path):
    config = RunConfig(dataset="synthetic", hidden=(32,), epochs=2, lr=1e-2)
    [summary] = run_many([Job(config, "x", "c", "tune")], RunStore(tmp_path), workers=1, progress=False)
    one_thread = fit(config.replace(threads=1))
    timing = {"run_id", "train_seconds", "samples_per_second"}
    assert {k: v for k, v in summary.items() if k not in timing} == \
        {k: v for k, v in one_thread.items() if k not in timing}


class Interrupt:
    """An engine progress that stops the run after its first epoch, as a kill would."""

    def start(self, *args):
        pass

    def batch(self, *args):
        pass

    def epoch(self, row):
        raise KeyboardInterrupt


def test_a_killed_compare_resumes_its_runs_and_gives_the_same_numbers(done, tmp_path):
    grid, _, result = done
    store = RunStore(tmp_path)
    tune = grid.tune_jobs()
    winner = next(job for job in tune if job.cell == result.cells[0].cell and job.config.lr == result.cells[0].lr)
    final = Job(next(job for job in tune if job.cell == result.cells[1].cell
                     and job.config.lr == result.cells[1].lr).config.replace(seed=1), "t", result.cells[1].cell, "final")
    killed = []
    for job in (winner, final):
        with pytest.raises(KeyboardInterrupt):
            fit(job.config, store, progress=Interrupt(), tags=job.tags)
        run = store.list_runs(cell=job.cell, phase=job.phase)[-1]
        store.set_status(run["run_id"], "running")  # as after kill -9
        assert store.checkpoint_path(run["run_id"]).is_file() and run["epochs_logged"] == 1
        killed.append(run["run_id"])
    stale_job = tune[-1]  # killed before its first checkpoint: started over
    stale = store.create_run(stale_job.config.to_dict(), **stale_job.tags)
    assert [p.action for p in plan_jobs([winner, final, stale_job], store)] == ["resume", "resume", "run"]

    resumed = compare(grid, store, workers=1, progress=False)
    assert numbers(resumed) == numbers(result)
    assert all(store.get_run(run_id)["status"] == "finished" for run_id in killed)
    assert store.get_run(stale)["status"] == "failed"
    assert len(store.list_runs(status="finished")) == len(done[1].list_runs(status="finished"))


# -- the command ----------------------------------------------------------------------------------


def test_the_command_runs_a_grid_file_and_prints_json(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text('optimizers = ["adam"]\nregularizers = ["none", "wd"]\ntune_lrs = [1e-2, 1e-1]\n'
                    'seeds = 2\ndataset = "synthetic"\nhidden = [8]\nepochs = 2\n')
    out = tmp_path / "runs"
    assert main(["compare", "--grid", str(path), "--regularizers", "none", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["experiment"] == "tiny" and [c["cell"] for c in result["cells"]] == ["adam | none"]
    assert result["budget"]["runs"] == 3 and len(RunStore(out).list_runs()) == 4  # + the seed-0 copy
    assert main(["compare", "--grid", str(path), "--regularizers", "none", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 tune runs" in printed and printed.count("skip") == 2
    assert main(["compare", "--list-settings"]) == 0
    assert "prox-l1" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adma"], "did you mean 'adam'"),
    (["--regularizers", "none,dropuot"], "did you mean 'dropout'"),
    (["--seeds", "0"], "seeds must be an integer >= 1"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--tune-lrs", "1e-3,zero"], "learning rates > 0"),
    (["--tune-lrs", "1e-3", "--lr-grid", "auto"], "not allowed with argument"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
    (["--grid", "/nonexistent/grid.toml"], "does not exist"),
    (["--grid", "BAD_KEY"], "unknown key 'optimiser'"),
    (["--grid", "BAD_LR"], "lr cannot be set in a compare grid"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    (tmp_path / "key.toml").write_text('optimiser = "adam"\n')
    (tmp_path / "lr.toml").write_text('lr = 0.1\n')
    args = [str(tmp_path / "key.toml") if a == "BAD_KEY" else str(tmp_path / "lr.toml") if a == "BAD_LR" else a
            for a in args]
    out = tmp_path / "runs"
    status = main(["compare", "--dataset", "synthetic", "--epochs", "1", "--tune-lrs", "1e-2",
                   "--seeds", "1", "--out", str(out), *args])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("regopt: error:") and "\n" not in error
    assert message in error
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_grids_are_valid(path):
    grid = Grid.from_sources(path)
    assert grid.experiment == path.stem and grid.budget()["runs"] >= 1


def test_examples_exist():
    assert {"fashion-best.toml", "digits-quick.toml"} <= {p.name for p in EXAMPLES.glob("*.toml")}


def test_kill_9_of_the_command_then_rerun_finishes_every_run_once(tmp_path):
    """A real kill -9 of `regopt compare --workers 2`: its workers exit with it (they would otherwise
    keep writing runs the rerun resumes); the rerun resumes the killed runs and completes the grid."""
    args = ["--dataset", "digits", "--hidden", "64", "--epochs", "25", "--threads", "1", "--optimizers", "adam",
            "--regularizers", "none,dropout", "--tune-lrs", "1e-3,1e-2", "--seeds", "2", "--workers", "2",
            "--out", str(tmp_path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "regopt", "compare", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    store = RunStore(tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if any(run["status"] == "running" and run["epochs_logged"] >= 2 for run in _runs(store)):
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # the command only: its workers must notice and exit
    process.wait(timeout=10)
    assert _group_ends(process.pid, timeout=15), "worker processes outlived the killed compare"
    interrupted = [run["run_id"] for run in store.list_runs() if run["status"] != "finished"]

    assert main(["compare", *args, "--workers", "1"]) == 0  # the last flag wins
    runs = store.list_runs()
    assert all(store.get_run(run_id)["status"] in ("finished", "failed") for run_id in interrupted)
    finished = [run for run in runs if run["status"] == "finished"]
    keys = [(run["config_hash"], run["cell"], run["phase"]) for run in finished]
    assert len(keys) == len(set(keys)) == 2 * 2 + 2 * 2  # every tune and final run, once
    assert all(run["epochs_logged"] == 25 for run in finished)


def _group_ends(group: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)  # do not leave them behind for the next test
    return False


def _runs(store):
    try:
        return store.list_runs()
    except UserError:  # the database is being created
        return []
