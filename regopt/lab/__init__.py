"""The lab: run configuration (TOML + flags) and the run store (SQLite + checkpoints)."""

from regopt.lab.config import RunConfig
from regopt.lab.store import RunNotFoundError, RunStore

__all__ = ["RunConfig", "RunNotFoundError", "RunStore"]
