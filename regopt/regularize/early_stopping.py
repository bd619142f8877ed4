"""Early stopping: stop training when a monitored metric stops improving, and keep the best weights.

Early stopping is a regularizer: it limits how far the weights travel from their initialization
(for a quadratic loss and gradient descent it is equivalent to an L2 penalty whose strength falls as
training goes on; Goodfellow, Bengio & Courville, Deep Learning, 2016, section 7.8; Prechelt,
"Early Stopping - But When?", 1998).

Rules (``mode="min"``; for ``"max"`` flip the comparisons):

* an update *improves* when ``value < best - min_delta``; ``best`` starts at +inf, or at
  ``baseline`` when one is given, so with a baseline only values that beat it count;
* an improvement sets ``best``, ``best_epoch``, ``wait = 0`` and keeps a CPU copy of
  ``model.state_dict()`` (when ``restore_best``);
* any other update adds 1 to ``wait``; when ``wait >= patience`` training stops (patience 0 stops at
  the first update that does not improve). With a baseline the count runs from the first update;
* a non-finite value (nan, inf, -inf) stops at once, whatever the patience: the run has diverged;
* updates with index < ``start_from_epoch`` (a warm-up) are ignored entirely, as in Keras: they do
  not set ``best``, keep weights or count toward ``patience``. They do count in ``epoch``, and a
  non-finite value still stops;
* after a stop, further updates change nothing and return True.

Epochs are the 0-based indices of the ``update`` calls.

Example::

    stopper = EarlyStopping("val_loss", patience=5)
    for epoch in range(max_epochs):
        train_one_epoch()
        if stopper.update(evaluate(), model):
            break
    stopper.restore(model)   # best weights, whether or not training stopped early
    print(stopper.reason)
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from regopt.errors import CheckpointError, ConfigError

__all__ = ["EarlyStopping"]

_MODES = ("min", "max")
_PROGRESS_KEYS = ("best", "best_epoch", "epoch", "wait", "stopped", "reason", "best_state")


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` updates.

    Args:
        monitor: name of the metric, used in ``reason`` (e.g. "val_loss", "val_acc").
        mode: "min" (lower is better) or "max" (higher is better).
        patience: updates without improvement before stopping (integer >= 0).
        min_delta: an improvement must be larger than this (>= 0).
        restore_best: keep a CPU copy of the best weights; :meth:`restore` loads it.
        baseline: if given, only values better than ``baseline`` (by more than ``min_delta``) count as
            improvements, and patience counts from the first update.
        start_from_epoch: updates before this index are ignored (warm-up).

    Attributes: ``best`` (float), ``best_epoch`` (int, -1 until an improvement), ``epoch`` (updates
    seen), ``wait``, ``stopped`` (bool), ``reason`` (str or None), ``improved`` (whether the last
    update improved), ``best_state`` (the kept state_dict or None).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ):
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"Invalid monitor value: {monitor!r} (must be a non-empty string)")
        if mode not in _MODES:
            raise ConfigError(f"Invalid mode value: {mode!r} (must be 'min' or 'max')")
        _check_count("patience", patience)
        _check_count("start_from_epoch", start_from_epoch)
        if not _is_number(min_delta) or not math.isfinite(min_delta) or min_delta < 0:
            raise ConfigError(f"Invalid min_delta value: {min_delta!r} (must be a finite number >= 0)")
        if baseline is not None and (not _is_number(baseline) or not math.isfinite(baseline)):
            raise ConfigError(f"Invalid baseline value: {baseline!r} (must be a finite number or None)")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = start_from_epoch
        self.reset()

    def reset(self) -> None:
        """Forget all progress (a fresh run)."""
        if self.baseline is not None:
            self.best = self.baseline
        else:
            self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.epoch = 0
        self.wait = 0
        self.stopped = False
        self.reason: str | None = None
        self.improved = False
        self.best_state: dict | None = None

    @property
    def has_best(self) -> bool:
        """True once some update has improved (beaten the start value or the baseline)."""
        return self.best_epoch >= 0

    def update(self, value: float, model: nn.Module | None = None) -> bool:
        """Record this epoch's ``value`` (a float or 0-d tensor); return True when training should stop.

        ``model`` is needed to keep the best weights (when ``restore_best``); it may be None otherwise.
        """
        if self.stopped:
            return True
        value = float(value)
        epoch = self.epoch
        self.epoch += 1
        self.improved = False
        if not math.isfinite(value):
            return self._stop(f"{self.monitor} is {value} at epoch {epoch}")
        if epoch < self.start_from_epoch:
            return False
        if self._is_improvement(value):
            self._record_best(value, epoch, model)
            return False
        self.wait += 1
        if self.wait >= self.patience:
            return self._stop(self._patience_reason())
        return False

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model`` if ``restore_best`` and a best exists; return whether it did."""
        if not self.restore_best or self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict:
        """Settings and progress as plain Python values and CPU tensors (torch.load(weights_only=True) safe)."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "restore_best": self.restore_best,
            "baseline": self.baseline,
            "start_from_epoch": self.start_from_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epoch": self.epoch,
            "wait": self.wait,
            "stopped": self.stopped,
            "reason": self.reason,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume progress from :meth:`state_dict`. Settings stay those of this object's constructor,
        except that ``monitor`` and ``mode`` must match (otherwise ``best`` would mean something else)."""
        missing = [key for key in ("monitor", "mode", *_PROGRESS_KEYS) if key not in state]
        if missing:
            raise CheckpointError(f"early-stopping state is missing {', '.join(missing)}")
        for key in ("monitor", "mode"):
            if state[key] != getattr(self, key):
                raise CheckpointError(
                    f"early-stopping state has {key}={state[key]!r}, but this run uses {getattr(self, key)!r}"
                )
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.epoch = int(state["epoch"])
        self.wait = int(state["wait"])
        self.stopped = bool(state["stopped"])
        self.reason = state["reason"]
        self.best_state = None if state["best_state"] is None else dict(state["best_state"])
        self.improved = False

    def _is_improvement(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _record_best(self, value: float, epoch: int, model: nn.Module | None) -> None:
        self.best, self.best_epoch, self.wait, self.improved = value, epoch, 0, True
        # Without a model there is nothing to keep; drop older weights so restore() never loads stale ones.
        keep = self.restore_best and model is not None
        self.best_state = _cpu_copy(model.state_dict()) if keep else None

    def _stop(self, reason: str) -> bool:
        self.stopped, self.reason = True, reason
        return True

    def _patience_reason(self) -> str:
        epochs = f"{self.wait} epoch{'s' if self.wait != 1 else ''}"
        if not self.has_best:
            return f"{self.monitor} did not improve on baseline {self.best:.4g} for {epochs}"
        return (
            f"{self.monitor} did not improve by more than {self.min_delta:g} for {epochs} "
            f"(best {self.best:.4g} at epoch {self.best_epoch})"
        )

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, patience={self.patience}, "
            f"min_delta={self.min_delta!r}, restore_best={self.restore_best}, baseline={self.baseline!r}, "
            f"start_from_epoch={self.start_from_epoch})"
        )


def _cpu_copy(state: dict) -> dict:
    """A detached CPU clone of a state_dict, as a plain dict (later training cannot change it)."""
    return {
        key: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else copy.deepcopy(value)
        for key, value in state.items()
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_count(argument: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"Invalid {argument} value: {value!r} (must be an integer >= 0)")
