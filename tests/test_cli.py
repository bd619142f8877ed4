"""The `regopt` command, run as `python -m regopt` in a subprocess: training, JSON output, bad input
(exit 2, one line, nothing written) and resume after kill -9 (bitwise the same as no interruption)."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from regopt.cli import main
from regopt.data import write_idx
from regopt.lab import RunConfig, RunStore

REQUIRED_SUMMARY_KEYS = {
    "run_id", "dataset", "optimizer", "test_accuracy", "test_loss", "best_val_accuracy", "best_epoch",
    "epochs_run", "stop_reason", "train_seconds", "samples_per_second", "zero_fraction",
}
TIMING = {"seconds", "samples_per_second", "train_seconds"}


# One torch thread per process: the tests start several processes on a small shared machine, where
# oversubscribed threads make tiny models many times slower. (Not a regopt flag: `train` with no
# flags is still the default command.)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def regopt(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "regopt", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def start_regopt(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "regopt", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_train_with_no_flags_trains_digits_and_reports(tmp_path, capsys):
    result = regopt("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "epoch 20/20" in result.stderr
    store = RunStore(tmp_path / "runs")
    (run,) = store.list_runs()
    assert run["status"] == "finished" and run["epochs_logged"] == 20
    assert run["config"] == RunConfig().to_dict()
    summary = json.loads((tmp_path / "runs" / run["run_id"] / "summary.json").read_text())
    assert REQUIRED_SUMMARY_KEYS <= set(summary) and summary["test_accuracy"] > 0.9
    assert f"{summary['test_accuracy']:.4f}" in result.stdout

    # runs list / runs show read the same store (in-process: same code, no second torch import)
    assert main(["runs", "list", "--out", str(tmp_path / "runs")]) == 0
    assert run["run_id"] in capsys.readouterr().out
    assert main(["runs", "show", run["run_id"], "--out", str(tmp_path / "runs")]) == 0
    shown = capsys.readouterr().out
    assert "metrics per epoch" in shown and "test accuracy" in shown and "weight_decay" in shown
    assert main(["runs", "show", run["run_id"], "--out", str(tmp_path / "runs"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["metrics"]) == 20


def test_json_output_is_only_the_summary(tmp_path):
    result = regopt("train", "--dataset", "synthetic", "--epochs", "2", "--hidden", "16", "--json",
                    "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert REQUIRED_SUMMARY_KEYS <= set(summary)
    assert summary["dataset"] == "synthetic" and summary["epochs_run"] == 2
    assert result.stderr == ""
    assert (tmp_path / "out" / summary["run_id"] / "summary.json").is_file()


# -- bad input: exit 2, one line on stderr, no traceback, nothing written ---------------------------

BAD_INPUT = {
    "unknown optimizer": (["--optimizer", "adamm"], "did you mean 'adam'?"),
    "out of range": (["--lr", "-0.1"], "lr must be > 0, got -0.1"),
    "dropout out of range": (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    "bad batch size": (["--batch-size", "half"], "batch_size must be an integer >= 1 or 'full'"),
    "unknown flag": (["--epochz", "3"], "did you mean --epochs?"),
    "abbreviated flag": (["--epoch", "3"], "unrecognized arguments: --epoch 3 (did you mean --epochs?)"),
    "flag of another command": (["--dset", "x"], "(did you mean --dataset?)"),
    "missing data folder": (["--dataset", "fashion-mnist", "--data-dir", "no-such-folder"],
                            "data folder no-such-folder does not exist"),
    "corrupt IDX": (["--dataset", "mnist", "--data-dir", "corrupt"], "train-images-idx3-ubyte"),
    "bad TOML": (["--config", "bad.toml"], "bad.toml: invalid TOML: "),
    "unknown TOML key": (["--config", "unknown.toml"], "unknown key 'lrr' in unknown.toml (did you mean 'lr'?)"),
    "resume, other config": (["--resume", "cut", "--lr", "0.5"], "was made with lr=0.01, not lr=0.5"),
    "resume, unknown run": (["--resume", "nope"], "no run 'nope'"),
}


def make_corrupt_idx_folder(folder):
    folder.mkdir()
    labels = np.arange(10, dtype=np.uint8)
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(folder / stem, labels)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    good = write_idx(folder / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8)).read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(good[: len(good) // 2])  # truncated


def make_interrupted_run(root):
    """A run killed after epoch 1 of 3 (lr 0.01), as Ctrl-C leaves it."""
    from regopt.engine import fit

    class StopAfterFirstEpoch:
        def start(self, *args): pass
        def batch(self, *args): pass
        def epoch(self, row): raise KeyboardInterrupt

    config = RunConfig(dataset="synthetic", hidden=(8,), epochs=3, lr=0.01, threads=1)
    with pytest.raises(KeyboardInterrupt):
        fit(config, RunStore(root), run_id="cut", progress=StopAfterFirstEpoch())


def store_snapshot(root):
    if not root.exists():
        return None
    store = RunStore(root)
    runs = store.list_runs()
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
             and not p.name.startswith("regopt.db")}
    return runs, {run["run_id"]: store.metrics(run["run_id"]) for run in runs}, files


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Run every bad-input case at once (a few at a time): each is a fresh `python -m regopt`."""
    folders = {}
    for name in BAD_INPUT:
        folder = tmp_path_factory.mktemp("bad")
        (folder / "bad.toml").write_text("lr = = 0.1\n")
        (folder / "unknown.toml").write_text("lrr = 0.1\n")
        if name == "corrupt IDX":
            make_corrupt_idx_folder(folder / "corrupt")
        if name.startswith("resume"):
            make_interrupted_run(folder / "runs")
        folders[name] = folder
    before = {name: store_snapshot(folder / "runs") for name, folder in folders.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(regopt, "train", *BAD_INPUT[name][0], cwd=folders[name])
                   for name in BAD_INPUT}
        results = {name: future.result() for name, future in futures.items()}
    after = {name: store_snapshot(folder / "runs") for name, folder in folders.items()}
    return results, before, after


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(name, bad_input_results):
    results, before, after = bad_input_results
    result = results[name]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("regopt: error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert BAD_INPUT[name][1] in result.stderr
    assert result.stdout == ""
    assert after[name] == before[name]  # no new run, no changed run, no new file


# -- resume after kill -9 -------------------------------------------------------------------------

RESUME_FLAGS = ["--dataset", "synthetic", "--epochs", "8", "--batch-size", "4", "--hidden", "64",
                "--dropout", "0.1", "--early-stopping", "20", "--schedule", "cosine", "--lr", "0.003",
                "--threads", "1", "--seed", "3", "--quiet"]


def assert_same_tensors(a, b, where="checkpoint"):
    """Every tensor in two nested checkpoint structures is bitwise equal (timings aside)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key not in TIMING:
                assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path):
    reference = start_regopt("train", *RESUME_FLAGS, "--out", "reference", cwd=tmp_path)
    victim = start_regopt("train", *RESUME_FLAGS, "--out", "killed", cwd=tmp_path)
    killed_store = RunStore(tmp_path / "killed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = killed_store.list_runs() if (tmp_path / "killed" / "regopt.db").exists() else []
        if runs and runs[0]["epochs_logged"] >= 1:
            break
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    (run,) = killed_store.list_runs()
    assert run["status"] == "running" and 1 <= run["epochs_logged"] < 8, run  # killed mid-training
    first_epoch_before = killed_store.metrics(run["run_id"])[0]

    resumed = regopt("train", "--resume", run["run_id"], "--out", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stderr
    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    (reference_run,) = RunStore(tmp_path / "reference").list_runs()

    # the final checkpoints: weights, optimizer moments, early-stopping best weights, RNG states
    final_a = RunStore(tmp_path / "reference").load_checkpoint(reference_run["run_id"])
    final_b = killed_store.load_checkpoint(run["run_id"])
    assert final_a["epoch"] == final_b["epoch"] == 8
    assert_same_tensors(final_a, final_b)
    model_a = torch.load(tmp_path / "reference" / reference_run["run_id"] / "model.pt", weights_only=True)
    model_b = torch.load(tmp_path / "killed" / run["run_id"] / "model.pt", weights_only=True)
    assert_same_tensors(model_a, model_b, "model.pt")

    # the metrics and summary, timings aside; epoch 1 kept its timing from before the kill
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    metrics_b = killed_store.metrics(run["run_id"])
    assert strip(RunStore(tmp_path / "reference").metrics(reference_run["run_id"])) == strip(metrics_b)
    assert metrics_b[0] == first_epoch_before
    summary_a = RunStore(tmp_path / "reference").get_run(reference_run["run_id"])["summary"]
    summary_b = killed_store.get_run(run["run_id"])["summary"]
    drop = TIMING | {"run_id"}
    assert {k: v for k, v in summary_a.items() if k not in drop} == {k: v for k, v in summary_b.items() if k not in drop}
    assert killed_store.get_run(run["run_id"])["status"] == "finished"
