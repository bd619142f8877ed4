"""The `regopt` command.

    regopt train [flags] [--config FILE.toml]   train one run (flags override the TOML file)
    regopt train --resume RUN_ID                continue a killed run from its last checkpoint
    regopt runs list                            the runs in the store
    regopt runs show RUN_ID                     one run: config, summary, per-epoch metrics

With no flags, `regopt train` trains the classic recipe (Adam, lr 1e-3, weight decay 1e-4, batch
64, MLP 256-128, 20 epochs) on the bundled digits data set in a few seconds. Runs are stored under
--out (default ./runs). Bad input of any kind ends with one line, "regopt: error: <message>", on
stderr and exit status 2, and nothing is written for the run.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Sequence

from regopt.errors import UserError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# (flag, help, extra argparse arguments); the config key is the flag without "--", "-" -> "_".
_BOOL = {"action": argparse.BooleanOptionalAction}
CONFIG_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--dataset", "digits (default), fashion-mnist, mnist, synthetic or rare-features", {"metavar": "NAME"}),
    ("--data-dir", "folder with the IDX files (fashion-mnist, mnist)", {"metavar": "DIR"}),
    ("--split-seed", "seed of the train/validation/test split (default 0)", {"metavar": "N"}),
    ("--optimizer", "sgd, adagrad, rmsprop, adam (default), adamw, lars or lamb", {"metavar": "NAME"}),
    ("--lr", "learning rate (default 1e-3)", {"metavar": "LR"}),
    ("--momentum", "momentum of sgd, rmsprop, lars (default: the optimizer's)", {"metavar": "MU"}),
    ("--nesterov", "Nesterov momentum (sgd)", _BOOL),
    ("--betas", "beta1,beta2 of adam, adamw, lamb (default 0.9,0.999)", {"metavar": "B1,B2"}),
    ("--amsgrad", "AMSGrad variant (adam, adamw)", _BOOL),
    ("--weight-decay", "weight decay lambda on weight matrices (default 1e-4)", {"metavar": "WD"}),
    ("--decoupled", "decoupled (AdamW-form) weight decay (default: adamw only)", _BOOL),
    ("--decay-scaled-by-lr", "decoupled decay is lr*lambda (default) rather than lambda", _BOOL),
    ("--fused", "the optimizer's fast path (default on; --no-fused: the reference path)", _BOOL),
    ("--compile", "compile the model's forward and backward with torch.compile (default off)",
     _BOOL),
    ("--prox-l1", "proximal L1 strength in the optimizer: exact zeros", {"metavar": "LAM"}),
    ("--l1", "L1 penalty lam*sum|w| added to the loss", {"metavar": "LAM"}),
    ("--l2", "L2 penalty (lam/2)*sum w^2 added to the loss (both: elastic net)", {"metavar": "LAM"}),
    ("--hidden", "hidden layer sizes (default 256,128; '' for none)", {"metavar": "N,N"}),
    ("--activation", "relu (default), tanh, gelu, sigmoid or leaky_relu", {"metavar": "NAME"}),
    ("--dropout", "dropout probability after each hidden layer (default 0)", {"metavar": "P"}),
    ("--input-dropout", "dropout probability of the input features (default 0)", {"metavar": "P"}),
    ("--batchnorm", "batch normalization after each hidden Linear", _BOOL),
    ("--batch-size", "mini-batch size, 1, or 'full' (default 64)", {"metavar": "N|full"}),
    ("--epochs", "number of epochs (default 20)", {"metavar": "N"}),
    ("--early-stopping", "stop after PATIENCE epochs without improvement", {"metavar": "PATIENCE"}),
    ("--monitor", "val_loss (default) or val_accuracy: early stopping and best epoch", {"metavar": "NAME"}),
    ("--schedule", "constant (default), step, cosine, onecycle, warmup, warmup-cosine", {"metavar": "NAME"}),
    ("--warmup-epochs", "warm-up length of the warmup schedules (default 1)", {"metavar": "N"}),
    ("--step-size", "epochs between lr decays of the step schedule", {"metavar": "N"}),
    ("--gamma", "lr decay factor of the step schedule (default 0.1)", {"metavar": "G"}),
    ("--clip", "clip the global gradient norm to MAX_NORM", {"metavar": "MAX_NORM"}),
    ("--seed", "seed of the weights, dropout and batch order (default 0)", {"metavar": "N"}),
    ("--threads", "torch threads (default: torch's choice)", {"metavar": "N"}),
    ("--flush-denormals", "flush subnormal floats to zero while training (default on; x86 CPUs "
     "take ~100x longer per operation on them)", _BOOL),
]


# Each module defines add_command(commands): it adds its subparser (built with add_out and the
# shared flags here) and sets `handler` to a function(args) -> exit status.
LAB_COMMANDS = ("regopt.lab.compare", "regopt.lab.report", "regopt.lab.claims")


class _UsageError(UserError):
    """A command-line usage error (argparse's)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are raised (one line, exit 2 in main) instead of printing usage,
    abbreviated flags are refused (``--epoch`` is not ``--epochs``), and an unknown flag gets a
    "did you mean" from the flags of the command it was given to."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise _UsageError(message)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
            flag = next((word.split("=")[0] for word in unknown if word.startswith("--")), None)
            close = difflib.get_close_matches(flag, _flags(_command_parser(self, parsed)), n=1) if flag else []
            raise _UsageError(message + (f" (did you mean {close[0]}?)" if close else ""))
        return parsed


def _command_parser(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that `parsed` went through: e.g. the one of `regopt runs show`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(parsed, action.dest, None)
            if chosen in action.choices:
                return _command_parser(action.choices[chosen], parsed)
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """The long flags of one parser."""
    return sorted(option for option in parser._option_string_actions if option.startswith("--"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="regopt", description="Regularization and optimization for deep networks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one run", description=_train_description())
    for flag, text, extra in CONFIG_FLAGS:
        train.add_argument(flag, help=text, default=None, **extra)
    train.add_argument("--config", metavar="FILE.toml", help="TOML file of config keys (flags override it)")
    train.add_argument("--preset", metavar="NAME", help="a named starting point: classic (the default) "
                       "or fast (batch 512, batchnorm, one-cycle lr 5e-3, 5 epochs); the file and "
                       "flags override it")
    train.add_argument("--resume", metavar="RUN_ID", help="continue this run from its last checkpoint")
    add_out(train)
    output = train.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="no progress; print one line at the end")
    output.add_argument("--json", action="store_true", help="print only the summary as JSON")
    train.set_defaults(handler=train_command)

    runs = commands.add_parser("runs", help="list or show stored runs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    listing = runs_commands.add_parser("list", help="a table of the runs")
    add_out(listing)
    listing.add_argument("--json", action="store_true", help="print the runs as JSON")
    listing.set_defaults(handler=runs_list_command)
    show = runs_commands.add_parser("show", help="one run: config, summary, metrics per epoch")
    show.add_argument("run_id", metavar="RUN_ID")
    add_out(show)
    show.add_argument("--json", action="store_true", help="print the run and its metrics as JSON")
    show.set_defaults(handler=runs_show_command)

    for module_name in LAB_COMMANDS:  # compare, report, claims: each registers its own command
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_command(commands)
    return parser


def add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default="runs", help="the runs folder (default ./runs)")


def _train_description() -> str:
    return ("Train an MLP with one optimizer and any regularizers; store its config, metrics per "
            "epoch, checkpoints and summary under --out. With no flags: Adam, lr 1e-3, weight "
            "decay 1e-4, batch 64, MLP 256-128, 20 epochs on digits.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for bad input, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except UserError as error:
        _print_error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `regopt runs list | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _print_error(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"regopt: error: {one_line}", file=sys.stderr, flush=True)


# -- regopt train ---------------------------------------------------------------------------------


def train_command(args: argparse.Namespace) -> int:
    from regopt.engine import fit
    from regopt.lab import RunConfig, RunStore

    store = RunStore(args.out)
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                 for flag, _, _ in CONFIG_FLAGS}
    if args.resume:
        stored = store.get_run(args.resume)["config"]  # RunNotFoundError for an unknown id
        config = RunConfig.from_sources(args.config, overrides, base=stored)
    else:
        config = RunConfig.from_sources(args.config, overrides, preset=args.preset)

    progress = None if (args.quiet or args.json) else EpochProgress(_console(stderr=True))
    try:
        summary = fit(config, store, run_id=args.resume, resume=bool(args.resume), progress=progress)
    except KeyboardInterrupt:
        run_id = progress.run_id if progress else args.resume
        if run_id:
            _print_error(f"interrupted; continue with: regopt train --resume {run_id} --out {args.out}")
            return EXIT_INTERRUPTED
        raise
    finally:
        if progress is not None:
            progress.close()

    if args.json:
        print(json.dumps(summary, allow_nan=False, default=_json_default))
    elif args.quiet:
        print(f"{summary['run_id']} test_accuracy {summary['test_accuracy']:.4f}")
    else:
        _console().print(summary_table(summary, args.out))
    return 0


def _json_default(value: Any) -> Any:  # pragma: no cover - summaries hold plain values
    return str(value)


class EpochProgress:
    """A rich progress bar over each epoch's batches (on a terminal) and one line per finished epoch."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.run_id: str | None = None
        self.epochs = 0
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                console=console, transient=True,
            )

    def start(self, run_id, first_epoch, epochs, batches_per_epoch) -> None:
        self.run_id, self.epochs = run_id, epochs
        where = f"run {run_id}" if run_id else "run"
        if first_epoch > epochs:
            message = f"{where}: all {epochs} epochs were done; finishing"
        elif first_epoch > 1:
            message = f"{where}: resuming at epoch {first_epoch} of {epochs}"
        else:
            message = f"{where}: {epochs} epochs of {batches_per_epoch} batches"
        self.console.print(message, highlight=False)
        if self.bar is not None and first_epoch <= epochs:
            self.bar.start()
            self.task = self.bar.add_task(self._description(first_epoch), total=batches_per_epoch, stats="")

    def batch(self, epoch, done, total, loss, accuracy, samples_per_second) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, description=self._description(epoch),
                            stats=f"loss {loss:.4f}  acc {accuracy:.4f}  {samples_per_second:,.0f} samples/s")

    def epoch(self, row) -> None:
        line = (f"epoch {row['epoch']:>{len(str(self.epochs))}}/{self.epochs}  "
                f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
                f"{row['samples_per_second']:,.0f} samples/s")
        if self.bar is not None:
            self.bar.console.print(line, highlight=False)
            self.bar.reset(self.task, description=self._description(row["epoch"] + 1), stats="")
        else:
            self.console.print(line, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _description(self, epoch: int) -> str:
        return f"epoch {min(epoch, self.epochs)}/{self.epochs}"


def summary_table(summary: dict[str, Any], out: str | None = None):
    from rich.table import Table

    table = Table(title=f"{summary['dataset']} / {summary['optimizer']}: {summary['run_id']}",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    best = summary.get("best_epoch")
    rows = [
        ("test accuracy", _number(summary["test_accuracy"])),
        ("test loss", _number(summary["test_loss"])),
        ("train accuracy", _number(summary["train_accuracy"])),
        ("generalization gap", _number(summary["generalization_gap"])),
        (f"best val accuracy (epoch {best})", _number(summary["best_val_accuracy"])),
        ("best val loss", _number(summary["best_val_loss"])),
        ("epochs run", str(summary["epochs_run"])),
        ("stopped because", str(summary["stop_reason"])),
        ("final weights", "best epoch's" if summary["restored_best"] else "last epoch's"),
        ("zero fraction", _number(summary["zero_fraction"])),
        ("parameters", f"{summary['num_parameters']:,}"),
        ("train seconds", _number(summary["train_seconds"], ".2f")),
        ("samples / second", _number(summary["samples_per_second"], ",.0f")),
    ]
    if out is not None and summary["run_id"]:
        rows.append(("stored in", f"{out}/{summary['run_id']}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _number(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:  # piped or captured: no 80-column squeeze of the tables
        console = Console(stderr=stderr, width=160)
    return console


# -- regopt runs ----------------------------------------------------------------------------------


def runs_list_command(args: argparse.Namespace) -> int:
    from rich.table import Table

    from regopt.lab import RunStore

    runs = RunStore(args.out).list_runs()
    if args.json:
        print(json.dumps(runs, allow_nan=False))
        return 0
    if not runs:
        print(f"no runs in {args.out}")
        return 0
    table = Table(title=f"runs in {args.out}", title_justify="left")
    for column in ("run id", "status", "created", "dataset", "optimizer", "epochs", "test acc", "stopped because"):
        table.add_column(column, justify="right" if column in ("epochs", "test acc") else "left")
    for run in runs:
        summary = run["summary"] or {}
        table.add_row(run["run_id"], run["status"], run["created"], run["dataset"], run["optimizer"],
                      str(run["epochs_logged"]), _number(summary.get("test_accuracy")),
                      str(summary.get("stop_reason") or summary.get("error") or ""))
    _console().print(table)
    return 0


def runs_show_command(args: argparse.Namespace) -> int:
    from rich.table import Table

    from regopt.lab import RunStore

    store = RunStore(args.out)
    run = store.get_run(args.run_id)
    metrics = store.metrics(args.run_id)
    if args.json:
        print(json.dumps({**run, "metrics": metrics}, allow_nan=False))
        return 0
    console = _console()
    console.print(f"[bold]{run['run_id']}[/bold]  {run['status']}  created {run['created']}  "
                  f"updated {run['updated']}", highlight=False)

    config = Table(title="config", show_header=False, title_justify="left")
    config.add_column(style="bold")
    config.add_column()
    for key, value in run["config"].items():
        config.add_row(key, "-" if value is None else str(value))
    console.print(config)

    if run["summary"] and "test_accuracy" in run["summary"]:
        console.print(summary_table(run["summary"]))
    elif run["summary"]:
        console.print(f"failed: {run['summary'].get('error')}", highlight=False)

    epochs = Table(title="metrics per epoch", title_justify="left")
    columns = [("epoch", "d"), ("train_loss", ".4f"), ("train_accuracy", ".4f"), ("val_loss", ".4f"),
               ("val_accuracy", ".4f"), ("lr", ".3g"), ("weight_l2", ".3f"), ("zero_fraction", ".4f"),
               ("seconds", ".2f"), ("samples_per_second", ",.0f")]
    for name, _ in columns:
        epochs.add_column(name.replace("_", " "), justify="right")
    for row in metrics:
        epochs.add_row(*(_number(row[name], spec) for name, spec in columns))
    console.print(epochs)
    return 0
