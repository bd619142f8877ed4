"""RunStore: runs and metrics round trips, WAL mode, upserts, atomic files, checkpoint errors."""

import json
import math
import re
import sqlite3

import pytest
import torch

from regopt.errors import CheckpointError, UserError
from regopt.lab.store import METRIC_COLUMNS, RunNotFoundError, RunStore, atomic_write

CONFIG = {"dataset": "digits", "optimizer": "adam", "lr": 0.001, "hidden": [256, 128]}


def row(epoch, value=0.5):
    return {"epoch": epoch, **{column: value for column in METRIC_COLUMNS}}


def test_nothing_is_written_until_a_run_is_created(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert store.list_runs() == []
    assert store.metrics("anything") == []
    with pytest.raises(RunNotFoundError):
        store.get_run("anything")
    assert not (tmp_path / "runs").exists()


def test_create_and_read_back_a_run(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    assert re.fullmatch(r"digits-adam-\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["config"] == CONFIG
    assert (run["dataset"], run["optimizer"], run["summary"], run["epochs_logged"]) == ("digits", "adam", None, 0)
    assert (tmp_path / run_id).is_dir()
    assert [r["run_id"] for r in store.list_runs()] == [run_id]


def test_run_ids_are_unique_within_one_second(tmp_path):
    store = RunStore(tmp_path)
    ids = {store.create_run(CONFIG) for _ in range(20)}
    assert len(ids) == 20


def test_explicit_duplicate_run_id_is_refused(tmp_path):
    store = RunStore(tmp_path)
    store.create_run(CONFIG, run_id="mine")
    with pytest.raises(UserError, match="already exists"):
        store.create_run(CONFIG, run_id="mine")


def test_database_is_in_wal_mode(tmp_path):
    store = RunStore(tmp_path)
    store.create_run(CONFIG)
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_log_epoch_upserts_and_stores_non_finite_as_null(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    store.log_epoch(run_id, row(1, 0.1))
    store.log_epoch(run_id, row(2, 0.2))
    store.log_epoch(run_id, {**row(1, 0.9), "val_loss": math.nan})  # a resumed epoch 1
    rows = store.metrics(run_id)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["train_loss"] == 0.9 and rows[0]["val_loss"] is None and rows[1]["lr"] == 0.2
    assert store.get_run(run_id)["epochs_logged"] == 2
    store.truncate_metrics(run_id, 1)
    assert [r["epoch"] for r in store.metrics(run_id)] == [1]


def test_log_epoch_rejects_unknown_columns(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    with pytest.raises(ValueError, match="unknown metric column"):
        store.log_epoch(run_id, {**row(1), "speed": 1.0})


def test_finish_run_writes_summary_file_and_row(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    summary = {"run_id": run_id, "test_accuracy": 0.9, "best_val_loss": math.inf}
    store.finish_run(run_id, summary)
    on_disk = json.loads((tmp_path / run_id / "summary.json").read_text())  # strict JSON
    assert on_disk == {"run_id": run_id, "test_accuracy": 0.9, "best_val_loss": None}
    run = store.get_run(run_id)
    assert run["status"] == "finished" and run["summary"] == on_disk
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == ["summary.json"]


def test_fail_run_and_status_filter(tmp_path):
    store = RunStore(tmp_path)
    failed, running = store.create_run(CONFIG), store.create_run(CONFIG)
    store.fail_run(failed, "interrupted")
    assert store.get_run(failed)["summary"]["error"] == "interrupted"
    assert [r["run_id"] for r in store.list_runs(status="running")] == [running]
    with pytest.raises(ValueError):
        store.set_status(running, "paused")


def test_unknown_run_suggests_a_close_id(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    with pytest.raises(RunNotFoundError, match=f"did you mean '{run_id}'"):
        store.get_run(run_id[:-1] + ("0" if run_id[-1] != "0" else "1"))
    with pytest.raises(RunNotFoundError):
        store.set_status("no-such-run", "failed")


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    state = {"model": {"w": torch.randn(3, 4)}, "rng": torch.get_rng_state(), "epoch": 2,
             "history": [{"epoch": 1, "val_loss": 0.5}], "config": CONFIG, "reason": None}
    store.save_checkpoint(run_id, state)
    store.save_checkpoint(run_id, {**state, "epoch": 3})  # overwrite
    loaded = store.load_checkpoint(run_id)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["history"] == state["history"]
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == ["checkpoint.pt"]  # no temp files


def test_missing_and_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        store.load_checkpoint(run_id)
    store.checkpoint_path(run_id).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is corrupt"):
        store.load_checkpoint(run_id)
    store.save_checkpoint(run_id, {"w": torch.randn(100)})
    data = store.checkpoint_path(run_id).read_bytes()
    store.checkpoint_path(run_id).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="is corrupt"):
        store.load_checkpoint(run_id)


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    torch.save({"evil": re.compile("x")}, store.checkpoint_path(run_id))  # not weights_only-safe
    with pytest.raises(CheckpointError, match="is corrupt"):
        store.load_checkpoint(run_id)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def broken(file):
        file.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_stale_temporary_files_are_cleaned_on_next_checkpoint(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG)
    (tmp_path / run_id / ".tmp-checkpoint.pt.abc123").write_bytes(b"left by kill -9")
    store.save_checkpoint(run_id, {"epoch": 1})
    assert sorted(p.name for p in (tmp_path / run_id).iterdir()) == ["checkpoint.pt"]


def test_experiment_tags_filters_and_config_hash(tmp_path):
    from regopt.lab.store import config_hash
    store = RunStore(tmp_path)
    tune = store.create_run({"dataset": "digits", "optimizer": "adam", "lr": 1e-3},
                            experiment="grid", cell="adam | wd", phase="tune")
    final = store.create_run({"dataset": "digits", "optimizer": "sgd", "lr": 0.1},
                             experiment="grid", cell="sgd | none", phase="final")
    store.create_run({"dataset": "digits", "optimizer": "sgd", "lr": 0.1})
    assert store.experiments() == ["grid"]
    assert [r["run_id"] for r in store.list_runs(experiment="grid")] == [tune, final]
    assert [r["run_id"] for r in store.list_runs(experiment="grid", phase="final")] == [final]
    assert store.get_run(tune)["cell"] == "adam | wd"
    same = config_hash({"lr": 0.1, "optimizer": "sgd", "dataset": "digits"})
    assert store.get_run(final)["config_hash"] == same
    assert len(store.list_runs(config_hash=same)) == 2
    assert config_hash({"lr": 0.2}) != config_hash({"lr": 0.1})


def test_final_weights_round_trip(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({"dataset": "digits", "optimizer": "adam"})
    with pytest.raises(CheckpointError, match="no final weights"):
        store.load_model(run_id)
    weights = {"layers.0.weight": torch.randn(3, 2)}
    store.save_model(run_id, weights)
    assert torch.equal(store.load_model(run_id)["layers.0.weight"], weights["layers.0.weight"])


def test_store_made_before_the_tag_columns_gains_them(tmp_path):
    db = sqlite3.connect(tmp_path / "regopt.db")
    db.executescript("CREATE TABLE runs (run_id TEXT PRIMARY KEY, created TEXT NOT NULL,"
                     " updated TEXT NOT NULL, status TEXT NOT NULL, dataset TEXT NOT NULL,"
                     " optimizer TEXT NOT NULL, config TEXT NOT NULL, summary TEXT);"
                     "INSERT INTO runs VALUES ('old', 't', 't', 'finished', 'digits', 'adam', '{}', NULL);")
    db.close()
    runs = RunStore(tmp_path).list_runs()
    assert [r["run_id"] for r in runs] == ["old"] and runs[0]["experiment"] is None


def test_a_file_that_is_not_a_database_is_a_user_error(tmp_path):
    (tmp_path / "regopt.db").write_bytes(b"not a database at all, just text" * 64)
    with pytest.raises(UserError, match="is unreadable"):
        RunStore(tmp_path).list_runs()


def test_a_store_being_created_reads_as_empty(tmp_path):
    sqlite3.connect(tmp_path / "regopt.db").close()  # the file exists, the schema not yet
    assert RunStore(tmp_path).list_runs() == []
    assert RunStore(tmp_path).experiments() == []


def test_a_schema_cut_off_midway_leaves_no_half_store(tmp_path, monkeypatch):
    """The tables are created in one transaction: a creation that fails (or is killed) after
    ``runs`` and before ``metrics`` leaves neither, so no reader sees runs without metrics."""
    connect = sqlite3.connect

    def connect_refusing_metrics(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_authorizer(lambda action, name, *rest: sqlite3.SQLITE_DENY
                          if action == sqlite3.SQLITE_CREATE_TABLE and name == "metrics"
                          else sqlite3.SQLITE_OK)
        return db

    monkeypatch.setattr(sqlite3, "connect", connect_refusing_metrics)
    with pytest.raises(UserError, match="unreadable"):
        RunStore(tmp_path).create_run(CONFIG)
    monkeypatch.setattr(sqlite3, "connect", connect)
    db = connect(tmp_path / "regopt.db")
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []
    db.close()
    assert RunStore(tmp_path).list_runs() == []
    run_id = RunStore(tmp_path).create_run(CONFIG)
    assert [r["run_id"] for r in RunStore(tmp_path).list_runs()] == [run_id]


def test_keys_added_later_leave_older_runs_hashes_alone():
    from regopt.lab import RunConfig
    from regopt.lab.store import config_hash
    config = RunConfig().to_dict()
    before_compile_existed = {k: v for k, v in config.items() if k != "compile"}
    assert config_hash(config) == config_hash(before_compile_existed)
    assert config_hash({**config, "compile": True}) != config_hash(config)
