"""fit(): learning, metrics, regularizers, schedules, early stopping, determinism, resume in-process."""

import math

import pytest
import torch

from regopt import engine
from regopt.engine import SUMMARY_KEYS, fit
from regopt.errors import CheckpointError, ConfigError, DataError
from regopt.lab import RunConfig, RunStore

TIMING = {"seconds", "samples_per_second", "train_seconds"}


def small(**changes):
    """A quick run on the synthetic blobs (1,200 training samples, 20 features, 4 classes)."""
    values = {"dataset": "synthetic", "hidden": (32,), "epochs": 3, "lr": 0.01, "threads": 1}
    return RunConfig(**{**values, **changes})


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_fit_learns_and_stores_everything(tmp_path):
    store = RunStore(tmp_path)
    summary = fit(small(), store)
    assert summary["test_accuracy"] > 0.7  # chance is 0.25
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["epochs_run"] == 3 and summary["stop_reason"] == "completed 3 epochs"
    assert summary["generalization_gap"] == pytest.approx(summary["train_accuracy"] - summary["test_accuracy"])
    assert summary["num_parameters"] == 20 * 32 + 32 + 32 * 4 + 4
    run = store.get_run(summary["run_id"])
    assert run["status"] == "finished" and run["summary"] == summary
    rows = store.metrics(summary["run_id"])
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lr"] == 0.01 and r["samples_per_second"] > 0 and r["zero_fraction"] == 0 for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    best = min(rows, key=lambda r: r["val_loss"])
    assert (summary["best_epoch"], summary["best_val_loss"]) == (best["epoch"], best["val_loss"])
    files = sorted(p.name for p in (tmp_path / summary["run_id"]).iterdir())
    assert files == ["checkpoint.pt", "model.pt", "summary.json"]


def test_fit_without_a_store_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = fit(small(epochs=1))
    assert summary["run_id"] is None and summary["epochs_run"] == 1
    assert list(tmp_path.iterdir()) == []


def test_proximal_l1_makes_exact_zeros_and_penalties_shrink_weights():
    plain = fit(small())
    prox = fit(small(prox_l1=0.5))
    l1 = fit(small(l1=1e-3, l2=1e-3))  # elastic net penalty in the loss
    assert plain["zero_fraction"] == 0.0
    assert prox["zero_fraction"] > 0.2
    assert l1["weight_l1"] < plain["weight_l1"]


def test_early_stopping_stops_and_restores_best_weights():
    # lr so small that float32 weights cannot move: val_loss never improves after epoch 1
    summary = fit(small(lr=1e-12, epochs=10, early_stopping=2))
    assert summary["epochs_run"] == 3
    assert summary["stop_reason"].startswith("early stopping: val_loss did not improve for 2 epochs")
    assert summary["best_epoch"] == 1 and summary["restored_best"] is True


def test_non_finite_training_loss_stops_with_a_reason():
    summary = fit(small(optimizer="sgd", lr=1e6, epochs=5))
    assert summary["epochs_run"] < 5
    assert "became" in summary["stop_reason"] and ("nan" in summary["stop_reason"] or "inf" in summary["stop_reason"])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    store = RunStore(tmp_path)
    config = small(dropout=0.2, batchnorm=True)
    runs = [fit(config, store)["run_id"] for _ in range(2)] + [fit(config.replace(seed=1), store)["run_id"]]
    weights = [torch.load(tmp_path / run / "model.pt", weights_only=True) for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert without_timing(store.metrics(runs[0])) == without_timing(store.metrics(runs[1]))


@pytest.mark.parametrize("schedule, extra, check", [
    ("step", {"step_size": 1, "gamma": 0.5}, lambda lrs: lrs == pytest.approx([0.01, 0.005, 0.0025])),
    ("cosine", {}, lambda lrs: lrs[0] == 0.01 and lrs[0] > lrs[1] > lrs[2] > 0),
    ("warmup", {"warmup_epochs": 2}, lambda lrs: lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.01)),
    ("warmup-cosine", {"warmup_epochs": 1}, lambda lrs: lrs[0] < 0.01 and lrs[1] == pytest.approx(0.01) and lrs[2] < lrs[1]),
    ("onecycle", {}, lambda lrs: lrs[0] == pytest.approx(0.01 / 25) and lrs[1] > lrs[0] and lrs[2] < lrs[1]),
])
def test_schedules_shape_the_learning_rate(schedule, extra, check):
    store_rows = []

    class Recorder:
        def start(self, *args): pass
        def batch(self, *args): pass
        def epoch(self, row): store_rows.append(row)

    fit(small(schedule=schedule, **extra), progress=Recorder())
    assert check([row["lr"] for row in store_rows])


def test_full_batch_and_clipping_run():
    summary = fit(small(batch_size="full", clip=0.1, optimizer="sgd", momentum=0.9, lr=0.5, epochs=2))
    assert summary["epochs_run"] == 2 and math.isfinite(summary["test_loss"])


def test_bad_input_fails_before_anything_is_written(tmp_path):
    store = RunStore(tmp_path / "runs")
    with pytest.raises(DataError):
        fit(small(dataset="fashion-mnist", data_dir=str(tmp_path / "missing")), store)
    with pytest.raises(ConfigError):
        fit(small(schedule="onecycle", batch_size="full", epochs=1), store)
    assert not (tmp_path / "runs").exists()


class StopAfter:
    """A progress hook that interrupts training after `epochs` epochs, like Ctrl-C."""

    def __init__(self, epochs):
        self.epochs = epochs

    def start(self, *args): pass
    def batch(self, *args): pass

    def epoch(self, row):
        if row["epoch"] == self.epochs:
            raise KeyboardInterrupt


def test_resume_matches_an_uninterrupted_run(tmp_path):
    config = small(epochs=4, dropout=0.3, schedule="cosine", early_stopping=10, batch_size=50)
    reference_store, store = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    reference = fit(config, reference_store)
    with pytest.raises(KeyboardInterrupt):
        fit(config, store, run_id="cut", progress=StopAfter(2))
    assert store.get_run("cut")["status"] == "failed"
    assert store.load_checkpoint("cut")["epoch"] == 2
    resumed = fit(config, store, run_id="cut", resume=True)

    final_a = reference_store.load_checkpoint(reference["run_id"])
    final_b = store.load_checkpoint("cut")
    for part in ("model", "early_stopping"):
        for key, value in final_a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, final_b[part][key]), (part, key)
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    assert without_timing(reference_store.metrics(reference["run_id"])) == without_timing(store.metrics("cut"))
    drop = TIMING | {"run_id"}
    assert {k: v for k, v in reference.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}


def test_resume_refuses_another_config_and_finished_runs(tmp_path):
    store = RunStore(tmp_path)
    config = small(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(config, store, run_id="cut", progress=StopAfter(1))
    before = store.get_run("cut")
    with pytest.raises(CheckpointError, match=r"made with lr=0.01, not lr=0.02"):
        fit(config.replace(lr=0.02), store, run_id="cut", resume=True)
    assert store.get_run("cut") == before  # nothing changed
    fit(config, store, run_id="cut", resume=True)
    with pytest.raises(CheckpointError, match="already finished"):
        fit(config, store, run_id="cut", resume=True)


def test_progress_reports_batches_and_epochs(monkeypatch):
    import regopt.engine

    monkeypatch.setattr(regopt.engine, "PROGRESS_INTERVAL_S", 0.0)  # report every batch
    events = []

    class Recorder:
        def start(self, run_id, first_epoch, epochs, batches):
            events.append(("start", first_epoch, epochs, batches))

        def batch(self, epoch, done, total, loss, accuracy, samples_per_second):
            assert 0 <= accuracy <= 1 and loss > 0 and samples_per_second > 0
            events.append(("batch", epoch, done, total))

        def epoch(self, row):
            events.append(("epoch", row["epoch"]))

    fit(small(epochs=2, batch_size=400), progress=Recorder())
    assert events == [("start", 1, 2, 3), ("batch", 1, 1, 3), ("batch", 1, 2, 3), ("batch", 1, 3, 3),
                      ("epoch", 1), ("batch", 2, 1, 3), ("batch", 2, 2, 3), ("batch", 2, 3, 3), ("epoch", 2)]


def test_fit_leaves_the_callers_rng_and_threads_alone():
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    fit(small(epochs=1, threads=1, dropout=0.5))
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


@pytest.mark.parametrize("changes,path", [
    ({}, "torch kernels"),
    ({"prox_l1": 0.05, "optimizer": "sgd", "momentum": 0.9}, "compiled + torch kernels"),
    ({"optimizer": "rmsprop", "lr": 1e-3}, "compiled"),
    ({"clip": 0.05}, "torch kernels"),                          # clipping active on every step
    ({"optimizer": "rmsprop", "lr": 1e-3, "clip": 0.05}, "compiled")])  # + compiled global norm
def test_fast_path_and_reference_path_train_alike(changes, path, monkeypatch):
    monkeypatch.setattr(engine, "COMPILE_PAYOFF", 0)         # compile even for this short run
    fast = fit(small(**changes))
    reference = fit(small(fused=False, **changes))
    assert (fast["optimizer_path"], reference["optimizer_path"]) == (path, "reference")
    for key in ("train_loss", "weight_l2", "zero_fraction"):
        assert fast[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-3), key
    # Clipping: the fast path's global norm sums in float64, torch's in float32; the last-bit
    # difference in the factor grows over the run (weight_l2 1e-4 apart), enough to move a test
    # image or two across a decision boundary (400 test images here).
    assert fast["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=0.01)


def test_input_dropout_is_used_and_changes_training():
    plain = fit(small(dropout=0.1))
    dropped = fit(small(dropout=0.1, input_dropout=0.3))
    assert dropped["train_loss"] != plain["train_loss"]
    assert dropped["test_accuracy"] > 0.5


def test_compiled_model_trains_like_the_eager_model_and_is_deterministic(tmp_path):
    store = RunStore(tmp_path)
    eager = fit(small(epochs=2), store)
    compiled = [fit(small(epochs=2, compile=True), store) for _ in range(2)]
    for key in ("test_accuracy", "train_loss", "weight_l2"):
        assert compiled[0][key] == pytest.approx(eager[key], rel=1e-3, abs=1e-3), key
    eager_weights, *weights = [torch.load(tmp_path / run["run_id"] / "model.pt", weights_only=True)
                               for run in (eager, *compiled)]
    assert weights[0].keys() == eager_weights.keys()       # the model's own keys, no "_orig_mod."
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name   # same seed, same numbers


def test_compile_failure_warns_and_trains_eagerly(monkeypatch):
    import torch._dynamo

    def broken(model, *args, **kwargs):
        def fail(x):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no cc"), None)
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as caught:
        summary = fit(small(epochs=2, compile=True))
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    eager = fit(small(epochs=2))
    assert {k: v for k, v in summary.items() if k not in TIMING} == \
        {k: v for k, v in eager.items() if k not in TIMING}


def test_a_run_too_short_to_pay_for_compiling_takes_the_reference_path(monkeypatch):
    short = small(optimizer="rmsprop", lr=1e-3)       # 3 epochs x 19 batches x 804 parameters
    assert fit(short)["optimizer_path"] == "reference"
    assert fit(small())["optimizer_path"] == "torch kernels"   # torch's kernels: nothing to compile
    prox = small(prox_l1=0.05, optimizer="sgd", momentum=0.9)    # per group: the biases keep them
    assert fit(prox)["optimizer_path"] == "reference + torch kernels"
    monkeypatch.setattr(engine, "COMPILE_PAYOFF", 3 * 19 * 804)
    assert fit(short)["optimizer_path"] == "compiled"


@pytest.mark.parametrize("flush", [True, False])
def test_a_run_flushes_subnormal_floats_as_configured_and_restores_the_callers_setting(flush):
    """config.flush_denormals holds while the run trains (seen from its progress reports, on
    torch's threads too), and the caller's own setting is back afterwards."""
    seen = []

    class Watch:
        def start(self, *args):
            pass

        def batch(self, *args):
            pass

        def epoch(self, row):
            tiny = torch.full((100_000,), 1e-40)      # parallel: torch's other threads too
            seen.append((engine.denormals_flushed(), bool((tiny * 1.0 == 0).all())))

    caller = not flush
    torch.set_flush_denormal(caller)
    try:
        fit(small(epochs=2, threads=2, flush_denormals=flush), progress=Watch())
        assert engine.denormals_flushed() == caller
    finally:
        torch.set_flush_denormal(False)
    assert seen == [(flush, flush)] * 2
