"""regopt: regularization and optimization for deep networks.

The library (``regopt.optim``, ``regopt.regularize``) is a drop-in for torch.optim with every
regularizer available on every optimizer; the lab (``regopt.engine``, ``regopt.lab``, the ``regopt``
command) trains and compares runs on real data.
"""

from . import optim
from .models import MLP, build_mlp
from .optim import LAMB, LARS, SGD, Adagrad, Adam, AdamW, RMSprop, get_optimizer
from .regularize import L1, L2, EarlyStopping, ElasticNet, decayed_parameters, param_groups

__version__ = "0.1.0"

__all__ = ["optim", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "LARS", "LAMB", "get_optimizer",
           "param_groups", "decayed_parameters", "L1", "L2", "ElasticNet", "EarlyStopping",
           "MLP", "build_mlp"]
