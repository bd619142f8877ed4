"""Regularizers that live outside the optimizer: parameter groups, penalty terms, early stopping."""
from regopt.regularize.early_stopping import EarlyStopping
from regopt.regularize.groups import decayed_parameters, is_no_decay, param_groups
from regopt.regularize.penalties import L1, L2, ElasticNet, Penalty

__all__ = [
    "EarlyStopping",
    "ElasticNet",
    "L1",
    "L2",
    "Penalty",
    "decayed_parameters",
    "is_no_decay",
    "param_groups",
]
