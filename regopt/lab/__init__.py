"""The lab: run configuration (TOML + flags), the run store (SQLite + checkpoints), regularizer
settings, the job runner (skip / resume / parallel workers) and the compare grid."""

from regopt.lab.compare import Grid, Result
from regopt.lab.config import RunConfig
from regopt.lab.runner import Job, run_many
from regopt.lab.settings import SETTINGS, apply_setting, describe_settings
from regopt.lab.store import RunNotFoundError, RunStore

# regopt.lab.compare.compare() is not re-exported here: the name would hide the submodule.
__all__ = ["RunConfig", "RunNotFoundError", "RunStore", "SETTINGS", "apply_setting",
           "describe_settings", "Job", "run_many", "Grid", "Result"]
