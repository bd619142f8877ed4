"""The run store: one SQLite database for every run's config, metrics and summary, plus a folder per run.

Layout under `root` (default ./runs)::

    regopt.db              SQLite in WAL mode (readers never block the writer of a running run)
    <run_id>/checkpoint.pt the latest training state, for --resume (torch.save; loaded weights_only)
    <run_id>/model.pt      the final weights the summary's test metrics refer to
    <run_id>/summary.json  the summary, also stored in the database

Schema (plain on purpose: `compare` and `report` query across runs with ordinary SQL)::

    runs(run_id TEXT PRIMARY KEY, created TEXT, updated TEXT, status TEXT, dataset TEXT,
         optimizer TEXT, config TEXT, summary TEXT,            -- config, summary: JSON
         experiment TEXT, cell TEXT, phase TEXT, config_hash TEXT)

experiment names the compare grid or claims run a run belongs to (NULL for a lone `regopt train`),
cell the grid cell's label (e.g. "adam | wd"), phase "tune" (a learning-rate search run) or "final"
(a seed of the chosen setting); config_hash is the SHA-256 of the canonical config JSON, so a
re-run of the same grid finds its finished runs.
    metrics(run_id TEXT, epoch INTEGER, train_loss REAL, train_accuracy REAL, val_loss REAL,
            val_accuracy REAL, lr REAL, weight_l1 REAL, weight_l2 REAL, zero_fraction REAL,
            seconds REAL, samples_per_second REAL, PRIMARY KEY (run_id, epoch))

status is "running", "finished" or "failed"; a run killed with SIGKILL stays "running" until it is
resumed. Epochs are numbered from 1. Writing a metrics row for an epoch that already has one
replaces it (a resumed run redoes the epoch it was killed in). Non-finite metrics are stored as NULL.

Every file is written atomically: to a temporary file in the same folder, flushed and fsynced, then
renamed over the target with os.replace, so a reader (or a resume after kill -9) sees the old
file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import hashlib
import io
import json
import math
import os
import secrets
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from regopt.errors import CheckpointError, UserError

__all__ = ["RunStore", "RunNotFoundError", "METRIC_COLUMNS", "STATUSES", "atomic_write", "config_hash"]

METRIC_COLUMNS = (
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
    "weight_l1", "weight_l2", "zero_fraction", "seconds", "samples_per_second",
)
STATUSES = ("running", "finished", "failed")
DATABASE_NAME = "regopt.db"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
SUMMARY_NAME = "summary.json"
TEMP_PREFIX = ".tmp-"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id    TEXT PRIMARY KEY,
    created   TEXT NOT NULL,
    updated   TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    dataset   TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    config    TEXT NOT NULL,
    summary   TEXT,
    experiment TEXT,
    cell      TEXT,
    phase     TEXT,
    config_hash TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, phase);
CREATE INDEX IF NOT EXISTS runs_by_config_hash ON runs (config_hash);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    epoch  INTEGER NOT NULL,
    {", ".join(f"{column} REAL" for column in METRIC_COLUMNS)},
    PRIMARY KEY (run_id, epoch)
);
"""

_CREATE_SCHEMA = f"BEGIN IMMEDIATE;\n{_SCHEMA}COMMIT;\n"
"""The schema in one transaction: a reader in another process sees every table or none (created
table by table, a reader once found ``runs`` without ``metrics`` and failed)."""


class RunNotFoundError(UserError):
    """No run with the given id in the store."""


class RunStore:
    """Runs under `root`: the SQLite database and one folder per run.

    Nothing touches the disk until the first write (create_run), so validating a config and then
    failing leaves no trace; reading from a store that does not exist yet finds no runs.
    """

    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)
        self.db_path = self.root / DATABASE_NAME

    def init(self) -> None:
        """Create the folder and the database now (the first create_run would do it anyway);
        for callers that start several writer processes at once."""
        with self._connect(create=True):
            pass

    # -- runs ---------------------------------------------------------------------------------

    def create_run(self, config: Mapping[str, Any], run_id: str | None = None,
                   experiment: str | None = None, cell: str | None = None,
                   phase: str | None = None) -> str:
        """Insert a run with status "running" and make its folder; return its id.

        `config` is the resolved config as a dict (RunConfig.to_dict()). Without `run_id` a
        readable unique id is made: "<dataset>-<optimizer>-<YYYYmmdd-HHMMSS>-<4 hex>".
        experiment, cell and phase tag runs made by `compare` and `claims` (see the schema).
        """
        config = dict(config)
        now = _now()
        with self._connect(create=True) as db:
            for _ in range(100):
                candidate = run_id or _new_run_id(config, now)
                try:
                    with db:
                        db.execute(
                            "INSERT INTO runs (run_id, created, updated, status, dataset, optimizer,"
                            " config, experiment, cell, phase, config_hash)"
                            " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                            (candidate, now.isoformat(timespec="seconds"),
                             now.isoformat(timespec="seconds"), str(config.get("dataset", "")),
                             str(config.get("optimizer", "")), _to_json(config),
                             experiment, cell, phase, config_hash(config)),
                        )
                    break
                except sqlite3.IntegrityError:
                    if run_id is not None:
                        raise UserError(f"a run with id {run_id!r} already exists in {self.db_path}") from None
            else:  # pragma: no cover - 100 collisions of 16 random bits within one second
                raise RuntimeError("could not make a unique run id")
        self.run_dir(candidate).mkdir(parents=True, exist_ok=True)
        return candidate

    def set_status(self, run_id: str, status: str, summary: Mapping[str, Any] | None = None) -> None:
        """Set a run's status (and summary, when given)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        with self._connect() as db, db:
            sets = "status = ?, updated = ?" + (", summary = ?" if summary is not None else "")
            values = [status, _now().isoformat(timespec="seconds")]
            values += [_to_json(summary)] if summary is not None else []
            cursor = db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", (*values, run_id))
            if cursor.rowcount == 0:
                raise self._not_found(run_id)

    def finish_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """Write summary.json atomically, then mark the run finished with its summary."""
        text = json.dumps(_json_safe(summary), indent=2) + "\n"
        atomic_write(self.run_dir(run_id) / SUMMARY_NAME, lambda file: file.write(text.encode()))
        self.set_status(run_id, "finished", summary)

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark a run failed, keeping its reason in the summary column."""
        self.set_status(run_id, "failed", {"run_id": run_id, "error": reason})

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run: run_id, created, updated, status, dataset, optimizer, config (dict), summary
        (dict or None) and epochs_logged (its number of metrics rows)."""
        with self._connect(missing_ok=True) as db:
            row = db.execute(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,)).fetchone() if db else None
        if row is None:
            raise self._not_found(run_id)
        return _run_row(row)

    def list_runs(self, status: str | None = None, experiment: str | None = None,
                  cell: str | None = None, phase: str | None = None,
                  config_hash: str | None = None) -> list[dict[str, Any]]:
        """Every run matching the given fields (all runs when none is given), oldest first."""
        filters = {"status": status, "experiment": experiment, "cell": cell, "phase": phase,
                   "config_hash": config_hash}
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given)
        with self._connect(missing_ok=True) as db:
            if db is None:
                return []
            rows = db.execute(f"{_SELECT_RUNS} {'WHERE ' + where if where else ''}"
                              " ORDER BY created, run_id", tuple(given.values())).fetchall()
        return [_run_row(row) for row in rows]

    def experiments(self) -> list[str]:
        """The names of the experiments (compare grids, claims runs) in the store, oldest first."""
        with self._connect(missing_ok=True) as db:
            if db is None:
                return []
            rows = db.execute("SELECT experiment FROM runs WHERE experiment IS NOT NULL"
                              " GROUP BY experiment ORDER BY MIN(created), experiment").fetchall()
        return [row[0] for row in rows]

    def run_ids(self) -> list[str]:
        return [run["run_id"] for run in self.list_runs()]

    # -- metrics ------------------------------------------------------------------------------

    def log_epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        """Insert or replace the metrics row of `row["epoch"]` (the other keys: METRIC_COLUMNS)."""
        unknown = set(row) - {"epoch", *METRIC_COLUMNS}
        if unknown:
            raise ValueError(f"unknown metric column(s): {', '.join(sorted(unknown))}")
        columns = ("run_id", "epoch", *METRIC_COLUMNS)
        values = (run_id, int(row["epoch"]), *(_finite_or_none(row.get(c)) for c in METRIC_COLUMNS))
        updates = ", ".join(f"{column} = excluded.{column}" for column in METRIC_COLUMNS)
        with self._connect() as db, db:
            db.execute(
                f"INSERT INTO metrics ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                f" ON CONFLICT (run_id, epoch) DO UPDATE SET {updates}",
                values,
            )

    def truncate_metrics(self, run_id: str, last_epoch: int) -> None:
        """Delete the metrics rows after `last_epoch` (a resume goes back to its checkpoint)."""
        with self._connect() as db, db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND epoch > ?", (run_id, last_epoch))

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        """The run's metrics rows, by epoch: dicts with "epoch" and METRIC_COLUMNS."""
        columns = ("epoch", *METRIC_COLUMNS)
        with self._connect(missing_ok=True) as db:
            if db is None:
                return []
            rows = db.execute(
                f"SELECT {', '.join(columns)} FROM metrics WHERE run_id = ? ORDER BY epoch", (run_id,)
            ).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    # -- files --------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or "\\" in run_id or run_id in (".", ".."):
            raise UserError(f"invalid run id {run_id!r}")
        return self.root / run_id

    def checkpoint_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CHECKPOINT_NAME

    def save_checkpoint(self, run_id: str, state: Mapping[str, Any]) -> Path:
        """torch.save `state` to <run>/checkpoint.pt atomically; returns the path."""
        path = self.checkpoint_path(run_id)
        _remove_stale_temporaries(path.parent)
        atomic_write(path, lambda file: torch.save(dict(state), file))
        return path

    def load_checkpoint(self, run_id: str) -> dict[str, Any]:
        """The state saved by save_checkpoint, loaded with torch.load(weights_only=True).

        Raises CheckpointError when the file is missing or cannot be read back.
        """
        path = self.checkpoint_path(run_id)
        if not path.is_file():
            raise CheckpointError(f"run {run_id!r} has no checkpoint ({path} is missing)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated or foreign files
            raise CheckpointError(f"checkpoint {path} is corrupt: {_first_line(error)}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} is corrupt: expected a dict, found {type(state).__name__}")
        return state

    def save_model(self, run_id: str, state_dict: Mapping[str, torch.Tensor]) -> Path:
        """Save the final weights to <run>/model.pt atomically; returns the path."""
        path = self.run_dir(run_id) / MODEL_NAME
        atomic_write(path, lambda file: torch.save(dict(state_dict), file))
        return path

    def load_model(self, run_id: str) -> dict[str, torch.Tensor]:
        """The final weights of a finished run (torch.load(weights_only=True))."""
        path = self.run_dir(run_id) / MODEL_NAME
        if not path.is_file():
            raise CheckpointError(f"run {run_id!r} has no final weights ({path} is missing)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"weights {path} are corrupt: {_first_line(error)}") from None

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, create: bool = False, missing_ok: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A connection (closed afterwards). create: make root and schema; missing_ok: None if absent."""
        if not self.db_path.exists():
            if missing_ok:
                yield None
                return
            if not create:
                raise UserError(f"no run store at {self.db_path}")
            self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            if create:
                db.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the database file
                db.executescript(_CREATE_SCHEMA)
            elif not _has_runs_table(db):  # a store another process is creating at this moment
                if missing_ok:
                    yield None
                    return
                raise UserError(f"no run store at {self.db_path}")
            _add_missing_columns(db)
            yield db
        except sqlite3.DatabaseError as error:
            raise UserError(f"run store {self.db_path} is unreadable: {error}") from None
        finally:
            db.close()

    def _not_found(self, run_id: str) -> RunNotFoundError:
        close = difflib.get_close_matches(run_id, self.run_ids(), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return RunNotFoundError(f"no run {run_id!r} in {self.db_path}{hint}")


# -- helpers --------------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    """Write a file so that it is either wholly old or wholly new, even across a crash.

    `write(file)` fills a temporary file in the same folder (same file system, so the rename is
    atomic); it is flushed and fsynced, then renamed over `path` with os.replace. On an exception
    the temporary file is removed. The folder is not fsynced: after a power cut the rename may be
    lost, which leaves the previous complete file (one epoch older), never a torn one; a process
    killed with SIGKILL loses nothing that was renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# Columns added after the first release of the schema: a store made before them gains them on open.
_LATER_COLUMNS = ("experiment", "cell", "phase", "config_hash")


def _has_runs_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is not None


def _add_missing_columns(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if not present:
        return
    missing = [column for column in _LATER_COLUMNS if column not in present]
    if missing:
        with db:
            for column in missing:
                db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
        db.executescript(_CREATE_SCHEMA)  # the indexes on the new columns


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a process killed in the middle of atomic_write."""
    for stale in folder.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _new_run_id(config: Mapping[str, Any], now: _dt.datetime) -> str:
    stamp = now.astimezone().strftime("%Y%m%d-%H%M%S")
    return f"{config.get('dataset', 'run')}-{config.get('optimizer', 'opt')}-{stamp}-{secrets.token_hex(2)}"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


_SELECT_RUNS = (
    "SELECT run_id, created, updated, status, dataset, optimizer, config, summary,"
    " experiment, cell, phase, config_hash,"
    " (SELECT COUNT(*) FROM metrics WHERE metrics.run_id = runs.run_id) FROM runs"
)


def _run_row(row: tuple) -> dict[str, Any]:
    (run_id, created, updated, status, dataset, optimizer, config, summary,
     experiment, cell, phase, hashed, epochs_logged) = row
    return {
        "run_id": run_id, "created": created, "updated": updated, "status": status,
        "dataset": dataset, "optimizer": optimizer, "config": json.loads(config),
        "summary": json.loads(summary) if summary else None, "experiment": experiment,
        "cell": cell, "phase": phase, "config_hash": hashed, "epochs_logged": epochs_logged,
    }


LATER_KEYS = {"compile": False}
"""Config keys added after runs were stored, with the value every older run had: a config hashes
without them at that value, so runs stored before the key existed keep their hashes."""


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys): equal configs, equal hashes."""
    config = {key: value for key, value in config.items()
              if key not in LATER_KEYS or value != LATER_KEYS[key]}
    canonical = json.dumps(_json_safe(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, tensors numbers."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _to_json(value: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
