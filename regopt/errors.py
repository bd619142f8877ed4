"""Errors that mean "the user gave bad input": the CLI prints them on one line and exits 2."""


class UserError(ValueError):
    """Bad input from the user (a flag, a config file, a data file, a checkpoint)."""


class DataError(UserError):
    """A data set or data file is missing, corrupt or inconsistent."""


class ConfigError(UserError):
    """A configuration value or key is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or belongs to another configuration."""
