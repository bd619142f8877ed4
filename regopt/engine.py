"""fit(): the training loop, from a validated config to a summary, with checkpoints and exact resume.

One run, top to bottom (the order matters for reproducibility and for "nothing written on bad input"):

1. threads, subnormal floats flushed to zero (config.flush_denormals) and seed; the data set; the model (seeded init); the optimizer, with the decayed tensors
   (weight matrices) and the rest (biases, norm parameters) in separate groups; the learning-rate
   schedule; the loss penalty; early stopping. Every one of these can reject bad input, and all of
   them run before the run is created in the store.
2. epochs: shuffled mini-batches (the batch order comes from a torch.Generator the loop owns),
   loss = cross_entropy + penalty, backward, optional gradient clipping, optimizer step, scheduler
   step (every batch); then validation; one metrics row; early stopping; a checkpoint.
3. the end: the best weights are restored when early stopping is on, then train and test are
   evaluated at those final weights, and the summary is stored.

Resume. A checkpoint holds everything the next epoch depends on: model, optimizer, scheduler and
early-stopping state, the batch-order generator's state, torch's global RNG state (dropout), the
history of metrics rows and the resolved config. Loading it into freshly built objects and carrying
on from the next epoch gives the same weights, bit for bit, and the same metrics (except the
timings) as a run that was never interrupted, on the same machine with the same thread count.

Metrics per epoch (epochs are numbered from 1):
    train_loss, train_accuracy  mean cross-entropy (without the penalty) and accuracy over the
                                epoch's training batches, as the weights moved (dropout on)
    val_loss, val_accuracy      on the validation split after the epoch (eval mode)
    lr                          the learning rate of the epoch's first step
    weight_l1, weight_l2        sum |w| and sqrt(sum w^2) over the decayed tensors
    zero_fraction               fraction of the decayed tensors' entries that are exactly 0
    seconds, samples_per_second wall time of the epoch (training and validation), train samples / it

Summary: test_loss / test_accuracy and train_loss / train_accuracy at the final weights (eval mode),
generalization_gap = train_accuracy - test_accuracy (both at the final weights), best_epoch and
best_val_loss / best_val_accuracy (the epoch the monitored metric was best, whether or not early
stopping is on), epochs_run, stop_reason, train_seconds (sum of the epochs' seconds),
samples_per_second (training samples seen / train_seconds), zero_fraction, weight norms,
num_parameters, restored_best (whether the final weights are the best epoch's).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from regopt.data import Dataset, Split, evaluation_batches, iterate_batches, load_dataset, num_batches
from regopt.errors import CheckpointError, ConfigError, UserError
from regopt.models import build_mlp, count_parameters
from regopt.optim import fast, get_optimizer
from regopt.regularize import L1, L2, EarlyStopping, ElasticNet, decayed_parameters, param_groups
from regopt.regularize.penalties import sum_abs, sum_squares

__all__ = ["fit", "Progress", "build_model", "build_optimizer", "build_scheduler", "evaluate",
           "CHECKPOINT_FORMAT", "SUMMARY_KEYS"]

CHECKPOINT_FORMAT = 1
PROGRESS_INTERVAL_S = 0.25  # at most this often the loop reads running loss/accuracy for a bar
OPTIMIZER_OPTIONS = ("momentum", "nesterov", "betas", "amsgrad")
SUMMARY_KEYS = (
    "run_id", "dataset", "optimizer", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
    "generalization_gap", "best_val_accuracy", "best_val_loss", "best_epoch", "epochs_run",
    "stop_reason", "restored_best", "train_seconds", "samples_per_second", "zero_fraction",
    "weight_l1", "weight_l2", "num_parameters", "optimizer_path",
)
COMPILE_PAYOFF = 2e9
"""Element-steps (parameters x optimizer steps) from which a run compiles the fast path's kernels.

Compiled kernels save about 1-5 ns per element-step over the reference path, and cost ~4 s to
load from Inductor's disk cache (~15 s to compile the first time): a shorter run takes the
reference path, with the same numbers within float tolerance. torch's own fused kernels cost
nothing to start and are always used. The choice depends on the config and the data only, so a
seed still fixes a run."""


class Progress(Protocol):
    """What fit() reports as it goes (the CLI draws a progress bar with it). All optional."""

    def start(self, run_id: str | None, first_epoch: int, epochs: int, batches_per_epoch: int) -> None: ...
    def batch(self, epoch: int, done: int, total: int, loss: float, accuracy: float,
              samples_per_second: float) -> None: ...
    def epoch(self, row: dict[str, float]) -> None: ...


def fit(config, store=None, run_id: str | None = None, resume: bool = False,
        progress: Progress | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train the run described by `config` (a regopt.lab.RunConfig) and return its summary.

    With a `store` (regopt.lab.RunStore) the run, its metrics rows, a checkpoint per epoch and
    its summary are stored; `run_id` names a new run (default: a generated id). With
    resume=True, `run_id` is an existing run: training continues after its last checkpoint, whose
    stored config must equal `config` (else CheckpointError naming the first differing key).
    `tags` (experiment, cell, phase) label a new run in the store for compare and claims.
    Bad input raises a UserError before anything is written.

    The caller's torch RNG state, thread count and handling of subnormal floats are left as they
    were (the run seeds and uses its own, see config.seed, config.threads and
    config.flush_denormals).
    """
    if resume and (store is None or run_id is None):
        raise ValueError("resume=True needs a store and the run_id to resume")
    threads, flushed = torch.get_num_threads(), denormals_flushed()
    with torch.random.fork_rng(devices=[]):
        try:
            if config.threads is not None:
                torch.set_num_threads(config.threads)
            torch.set_flush_denormal(config.flush_denormals)
            return _train(config, store, run_id, resume, progress, tags)
        finally:
            torch.set_flush_denormal(flushed)
            torch.set_num_threads(threads)


def denormals_flushed() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero (torch.set_flush_denormal).

    Why the lab flushes them: with the classic recipe (Adam + L2) on Fashion-MNIST, weights fed
    by pixels that are nearly always 0 and their Adam moments decay into the subnormal range
    (7,500 weights and 10,000 first moments after three epochs at batch 64), and on the x86 CPU
    here every operation on a subnormal takes a slow path: epochs grew from 1.3 to 2.9 s (a
    hand-written torch loop) and to 5.3 s (regopt's), against 1.3 and 1.0 s flushed. Only
    values below 1.2e-38 change. torch has no getter: this multiplies one.

    The setting reaches the threads torch starts after it; a run started in a process whose
    threads already ran matrix products with the other setting was only partly flushed here (6.7
    against 3.8 s for four epochs). `regopt train` and the lab's worker processes set it before
    their first product."""
    return bool(torch.tensor([1e-40]).mul(1.0)[0] == 0)


def _train(config, store, run_id: str | None, resume: bool, progress: Progress | None,
           tags: dict[str, str] | None) -> dict[str, Any]:
    """fit()'s body: build, (create or resume the run,) train the epochs, summarize."""
    # -- 1. build everything; any bad input fails here, before the store is touched -------------
    torch.manual_seed(config.seed)  # the weights' initialization, then dropout
    data = load_dataset(config.dataset, config.data_dir, config.split_seed)
    model = build_model(config, data)
    forward = CompiledForward(model) if config.compile else model
    steps_per_epoch = num_batches(len(data.train), config.batch_size)
    optimizer = build_optimizer(config, model, total_steps=config.epochs * steps_per_epoch)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    penalty = build_penalty(config)
    stopper = build_early_stopping(config)
    batch_order = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    stop_reason: str | None = None

    if resume:
        checkpoint = _load_resumable_checkpoint(store, run_id, config)
        _restore_training_state(checkpoint, model, optimizer, scheduler, stopper, batch_order)
        history, stop_reason = list(checkpoint["history"]), checkpoint["stop_reason"]
        store.set_status(run_id, "running")
        store.truncate_metrics(run_id, len(history))
        for row in history:  # the store may lack the last row if the kill came just before it
            store.log_epoch(run_id, row)
    elif store is not None:
        run_id = store.create_run(config.to_dict(), run_id=run_id, **(tags or {}))

    # -- 2. the epochs ------------------------------------------------------------------------
    try:
        if progress is not None:
            progress.start(run_id, len(history) + 1, config.epochs, steps_per_epoch)
        for epoch in range(len(history) + 1, config.epochs + 1):
            if stop_reason is not None:
                break
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss, train_accuracy = train_one_epoch(
                model, optimizer, scheduler, penalty, data.train, config, batch_order,
                progress, epoch, forward,
            )
            val_loss, val_accuracy = evaluate(model, data.val)
            seconds = time.perf_counter() - started
            row = {
                "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr,
                **weight_statistics(model),
                "seconds": seconds, "samples_per_second": len(data.train) / seconds,
            }
            history.append(row)
            stop_reason = _check_stop(row, stopper, model)
            if store is not None:
                # Checkpoint first, then the metrics row: a row in the store always has its
                # checkpoint, which is what a resume (and the resume test) relies on.
                store.save_checkpoint(run_id, _training_state(
                    config, model, optimizer, scheduler, stopper, batch_order, history, stop_reason))
                store.log_epoch(run_id, row)
            if progress is not None:
                progress.epoch(row)

        # -- 3. the end -------------------------------------------------------------------------
        summary = _summarize(config, run_id, model, stopper, data, history,
                             stop_reason or f"completed {config.epochs} epochs")
        summary["optimizer_path"] = optimizer_path(optimizer)
        if store is not None:
            store.save_model(run_id, model.state_dict())
            store.finish_run(run_id, summary)
        return summary
    except KeyboardInterrupt:
        if store is not None:
            store.fail_run(run_id, "interrupted")
        raise
    except BaseException as error:
        if store is not None:
            store.fail_run(run_id, f"{type(error).__name__}: {error}")
        raise


# -- building the pieces -------------------------------------------------------------------------


class CompiledForward:
    """The model's training forward (and so its backward) through ``torch.compile``.

    Only training batches go through it; evaluation stays eager, so validation and test numbers
    come from one forward for every run. If compiling fails (no C++ compiler, an unsupported
    model), it warns once and runs the model eagerly: the same run, slower.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.compiled = torch.compile(model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed ({first_line}); running the model eagerly",
                              RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.model(x)


def build_model(config, data: Dataset) -> nn.Module:
    """The MLP num_features -> hidden... -> num_classes (input size from the data set)."""
    return build_mlp(data.num_features, data.num_classes, hidden=tuple(config.hidden),
                     activation=config.activation, dropout=config.dropout,
                     input_dropout=config.input_dropout,
                     batchnorm=config.batchnorm)


def build_optimizer(config, model: nn.Module, total_steps: int | None = None) -> torch.optim.Optimizer:
    """The optimizer by name, over two groups: decayed tensors (weight_decay, proximal l1) and the rest.

    Options the config resolved to None are ones this optimizer does not take, and are left out.
    With config.fused, a run of `total_steps` too short to pay for compiled kernels
    (COMPILE_PAYOFF) takes the reference path instead.
    """
    optimizer_class = get_optimizer(config.optimizer)
    options = {key: getattr(config, key) for key in OPTIMIZER_OPTIONS if getattr(config, key) is not None}
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    groups = param_groups(model, weight_decay=config.weight_decay, l1=config.prox_l1)
    try:
        optimizer = optimizer_class(groups, lr=config.lr,
                                    decoupled_weight_decay=bool(config.decoupled),
                                    decay_scaled_by_lr=config.decay_scaled_by_lr,
                                    fused=config.fused, **options)
    except UserError:
        raise
    except (ValueError, TypeError) as error:  # the optimizer's own argument checks
        raise ConfigError(f"optimizer {config.optimizer!r}: {error}") from None
    if total_steps is not None and total_steps * count_parameters(model) < COMPILE_PAYOFF:
        for group in optimizer.param_groups:       # torch's kernels stay: nothing to compile
            if fast.compiles(optimizer, group):
                group["fused"] = False
    return optimizer


def build_scheduler(config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """torch's LR scheduler for config.schedule, stepped after every batch (None for constant).

    step:          lr * gamma every step_size epochs (default epochs // 3)
    cosine:        cosine annealing from lr to 0 over the run (Loshchilov & Hutter, 2017)
    onecycle:      Smith & Topin (2019): up to lr over 30% of the steps, then down to lr/25e4;
                   momentum is not cycled (not every optimizer has one)
    warmup:        linear warm-up from lr / warmup_steps to lr over warmup_epochs, then constant
    warmup-cosine: the same warm-up, then cosine annealing to 0 (Goyal et al., 2017)
    """
    from torch.optim import lr_scheduler

    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "constant":
        return None
    if config.schedule == "step":
        step_epochs = config.step_size or max(1, config.epochs // 3)
        return lr_scheduler.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=config.gamma)
    if config.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        if total < 2:
            raise ConfigError("schedule 'onecycle' needs at least 2 steps (more epochs or smaller batches)")
        return lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                       cycle_momentum=False)
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup)
    if config.schedule == "warmup":
        return warm
    if config.schedule == "warmup-cosine":
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        return lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup])
    raise ConfigError(f"unknown schedule {config.schedule!r}")


def build_penalty(config):
    """The loss penalty: L1, L2 or, with both, elastic net (over the decayed tensors); or None."""
    if config.l1 and config.l2:
        return ElasticNet(config.l1, config.l2)
    if config.l1:
        return L1(config.l1)
    if config.l2:
        return L2(config.l2)
    return None


def build_early_stopping(config) -> EarlyStopping:
    """Early stopping on config.monitor; with early stopping off, the same object only tracks the
    best epoch (patience longer than the run, best weights not kept)."""
    mode = "min" if config.monitor.endswith("loss") else "max"
    if config.early_stopping is None:
        return EarlyStopping(config.monitor, mode, patience=config.epochs + 1, restore_best=False)
    return EarlyStopping(config.monitor, mode, patience=config.early_stopping, restore_best=True)


# -- one epoch, evaluation, statistics ----------------------------------------------------------


def train_one_epoch(model, optimizer, scheduler, penalty, split: Split, config,
                    batch_order: torch.Generator, progress, epoch: int,
                    forward=None) -> tuple[float, float]:
    """One pass over `split` in a fresh random order; returns (mean train loss, train accuracy).

    `forward` computes the logits (default: the model itself; `regopt train --compile` passes a
    CompiledForward of it).

    Loss and correct counts accumulate in tensors on the data's device: reading them (.item())
    would synchronize every batch, so it happens once per epoch, plus at most every
    PROGRESS_INTERVAL_S for a progress bar.
    """
    model.train()
    forward = forward if forward is not None else model
    device = split.x.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = num_batches(len(split), config.batch_size)
    seen = 0
    penalized = penalty.tensors_of(model) if penalty is not None else []  # selected once per epoch
    started = last_report = time.perf_counter()
    for index, (x, y) in enumerate(iterate_batches(split, config.batch_size, batch_order), start=1):
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        objective = loss + penalty.compute(penalized) if penalized else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.clip is not None:
            fast.clipped_step(optimizer, config.clip)     # clip_grad_norm_, then step
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        if progress is not None and time.perf_counter() - last_report >= PROGRESS_INTERVAL_S:
            last_report = time.perf_counter()
            progress.batch(epoch, index, total, loss_sum.item() / seen, correct.item() / seen,
                           seen / (last_report - started))
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `split`, in eval mode, in large batches."""
    was_training = model.training
    model.eval()
    device = split.x.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in evaluation_batches(split):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    count = max(len(split), 1)
    return loss_sum.item() / count, correct.item() / count


@torch.no_grad()
def weight_statistics(model: nn.Module) -> dict[str, float]:
    """weight_l1 = sum |w|, weight_l2 = sqrt(sum w^2), zero_fraction, over the decayed tensors."""
    tensors = decayed_parameters(model)
    if not tensors:
        return {"weight_l1": 0.0, "weight_l2": 0.0, "zero_fraction": 0.0}
    l1, l2 = sum_abs(tensors), sum_squares(tensors).sqrt()
    zeros = sum((t == 0).sum() for t in tensors)
    count = sum(t.numel() for t in tensors)
    return {"weight_l1": l1.item(), "weight_l2": l2.item(), "zero_fraction": zeros.item() / count}


def _check_stop(row: dict[str, float], stopper: EarlyStopping, model: nn.Module) -> str | None:
    """The reason to stop after this epoch, or None: a non-finite training loss or early stopping."""
    epoch = row["epoch"]
    if not math.isfinite(row["train_loss"]):
        return f"training loss became {row['train_loss']} in epoch {epoch}"
    if not stopper.update(row[stopper.monitor], model):
        return None
    value = row[stopper.monitor]
    if not math.isfinite(value):
        return f"{stopper.monitor} became {value} in epoch {epoch}"
    return (f"early stopping: {stopper.monitor} did not improve for {stopper.wait} epochs "
            f"(best {stopper.best:.4g} at epoch {stopper.best_epoch + 1})")


# -- checkpoints ----------------------------------------------------------------------------------


def _training_state(config, model, optimizer, scheduler, stopper, batch_order, history,
                    stop_reason) -> dict[str, Any]:
    """Everything the next epoch depends on (all plain values and tensors: weights_only-loadable)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": len(history),
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "early_stopping": stopper.state_dict(),
        "batch_order_rng": batch_order.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "stop_reason": stop_reason,
    }


def _load_resumable_checkpoint(store, run_id: str, config) -> dict[str, Any]:
    """The run's checkpoint, checked: a known format, a run not yet finished, the same config."""
    run = store.get_run(run_id)  # RunNotFoundError for an unknown id
    if run["status"] == "finished":
        raise CheckpointError(f"run {run_id!r} is already finished; there is nothing to resume")
    checkpoint = store.load_checkpoint(run_id)
    path = store.checkpoint_path(run_id)
    missing = [key for key in ("format", "config", "model", "optimizer", "scheduler", "early_stopping",
                               "batch_order_rng", "torch_rng", "history", "stop_reason")
               if key not in checkpoint]
    if missing or checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a regopt checkpoint of format "
                              f"{CHECKPOINT_FORMAT} (missing {', '.join(missing) or 'nothing'})")
    stored, given = checkpoint["config"], config.to_dict()
    for key in given:
        if stored.get(key) != given[key]:
            raise CheckpointError(
                f"checkpoint of run {run_id!r} was made with {key}={stored.get(key)!r}, "
                f"not {key}={given[key]!r}; resume with the run's own config"
            )
    return checkpoint


def _restore_training_state(checkpoint, model, optimizer, scheduler, stopper, batch_order) -> None:
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        stopper.load_state_dict(checkpoint["early_stopping"])
        batch_order.set_state(checkpoint["batch_order_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint does not fit this run: {str(error).splitlines()[0]}") from None


# -- the summary ----------------------------------------------------------------------------------


def optimizer_path(optimizer: torch.optim.Optimizer) -> str:
    """How the optimizer stepped: "torch kernels", "compiled" or "reference" (per group, joined)."""
    names = {"torch": "torch kernels", "compiled": "compiled", "reference": "reference"}
    return " + ".join(dict.fromkeys(names.get(engine, "reference")
                                    for engine in fast.engines(optimizer)))


def _summarize(config, run_id, model, stopper, data: Dataset, history, stop_reason) -> dict[str, Any]:
    restored = stopper.restore(model)  # best weights if early stopping kept them
    train_loss, train_accuracy = evaluate(model, data.train)
    test_loss, test_accuracy = evaluate(model, data.test)
    best = history[stopper.best_epoch] if 0 <= stopper.best_epoch < len(history) else None
    train_seconds = sum(row["seconds"] for row in history)
    return {
        "run_id": run_id,
        "dataset": config.dataset,
        "optimizer": config.optimizer,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_accuracy": train_accuracy,
        "train_loss": train_loss,
        "generalization_gap": train_accuracy - test_accuracy,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "restored_best": restored,
        "train_seconds": train_seconds,
        "samples_per_second": len(data.train) * len(history) / train_seconds if train_seconds else None,
        **weight_statistics(model),
        "num_parameters": count_parameters(model),
    }
