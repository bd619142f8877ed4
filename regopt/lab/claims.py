"""`regopt claims`: seven textbook claims about regularizers and optimizers, each put to a small
seeded experiment, with a verdict computed from the stored runs by a stated rule.

API. `CLAIMS: dict[int, Claim]` holds the claims (title, the arms' configs, the verdict function,
the plot). `run_claims(store, numbers=None, setup=Setup(), workers=1, progress=True) ->
list[ClaimResult]` trains what the store lacks through regopt.lab.runner.run_many (experiment
"claims-<dataset>", cell "claim<N> | <arm>", phase "final", or "tune" for claim 6's learning-rate
search) and then decides every claim from the stored runs. `claim_runs(store, claim, setup)` reads
a claim's runs back: store.get_run dicts plus "metrics" (the per-epoch rows) and, for claim 1,
"weights" (sparsity of the final weights). The verdict functions `decide_claim1` ...
`decide_claim7` (also `CLAIMS[n].decide`) take that list of runs and nothing else: they are pure,
so tests feed them runs with known outcomes. `write_outputs(results, dest, context)` writes
claims.md, claims.json and one PNG per claim. --workers defaults to one process per CPU (at
most 8), each with one torch thread (default_workers).

    regopt claims [--dataset digits] [--data-dir DIR] [--out runs] [--workers N] [--seeds 3]
                  [--only 1,3] [--epochs N] [--threads N] [--dest report/claims] [--quiet]

The decision rule (RULE below, printed with every result). A claim is split into parts; each part
is an effect measured once per seed, in the direction the claim predicts (mostly a paired
difference between two arms trained with the same seed), with mean m and standard error
se = sample std / sqrt(n) over the n seeds, and a smallest effect that matters, e:
    supported      m - 2 se > 0 and m >= e    (clearly positive, and large enough to matter)
    not supported  m + 2 se < e               (clearly below what matters, or clearly opposite)
    inconclusive   otherwise, and whenever n < 2 (no spread to judge by) or a stated
                   precondition fails (e.g. the baseline does not over-fit)
A part that bounds a value from above (value < limit L, e.g. "L2 leaves under 1% exact zeros")
judges L - value with e = 0: supported if m + 2 se < L, not supported if m - 2 se > L.
A claim is supported when all its parts are, not supported when any part is not, and otherwise
inconclusive; claim 7 ("coupled and decoupled decay are not the same") needs a difference in
either measure, so there one supported part suffices and all must fail for "not supported".
2 se is a rough 95% interval: with 3 seeds it is a screen, not a test; more --seeds sharpen it.

The experiments (default epochs, for digits; --epochs replaces every claim's epoch count):
1. plain SGD lr 0.2, 20 epochs: none / l1 penalty 1e-3 / prox-l1 1e-3 / l2 1e-2 (the two L1s are
   the same objective; l2 = 10 x l1 makes both penalties pull equally on a weight of size 0.1).
2. Adam, MLP 256-128 without regularization (it reaches ~100% training accuracy: it over-fits),
   30 epochs: none / dropout 0.5 (Srivastava et al., 2014).
3. Adam, 20 epochs: none / batchnorm (Ioffe & Szegedy, 2015).
4. Adam, 40 epochs: none (the full run) / early-stop with patience 5 (best weights restored).
5. 20 epochs, no regularization. Adam vs SGD at default settings: sgd / adam, each at its
   optimizer's own default learning rate (torch.optim's: 1e-3 for both). Momentum: sgd lr=0.01 /
   sgd+momentum 0.9 lr=0.01, the same learning rate with and without momentum (at SGD's 1e-3
   default neither leaves the chance-level plateau in 20 epochs, so nothing could be measured).
   Convergence speed = the mean training loss over the epochs (area under the curve).
6. the rare-features data set (regopt.data, 400 rare binary features), MLP 64, 10 epochs, no
   regularization: sgd / adagrad / adam, each at the learning rate of the grid LR_GRID_CLAIM6 that
   gives the best validation accuracy (seed 0, the `regopt compare` selection rule).
7. Adam lr 1e-3, 20 epochs: none / coupled wd 1e-2 / decoupled (AdamW) wd 1e-2, the same lambda
   (torch.optim.AdamW's default).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from regopt.errors import ConfigError, UserError
from regopt.lab.config import RunConfig
from regopt.lab.runner import Job, run_many
from regopt.lab.settings import apply_setting
from regopt.lab.store import RunStore

__all__ = [
    "CLAIMS", "Claim", "ClaimResult", "Effect", "Part", "Setup", "RULE", "VERDICTS",
    "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "judge", "judge_difference", "combine_all",
    "combine_any", "paired", "single", "run_claims", "claim_jobs", "claim_runs", "choose_lr",
    "weight_sparsity", "write_outputs", "render_markdown", "add_command",
    "decide_claim1", "decide_claim2", "decide_claim3", "decide_claim4", "decide_claim5",
    "decide_claim6", "decide_claim7",
]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
Z = 2.0  # the rule's multiple of the standard error

RULE = (
    "Each part of a claim is an effect measured once per seed in the direction the claim "
    "predicts (mostly a paired difference of two arms trained with the same seed); with m its mean "
    f"over the n seeds, se = sample std / sqrt(n) and e the smallest effect that matters: "
    f"supported if m - {Z:g} se > 0 and m >= e; not supported if m + {Z:g} se < e; otherwise "
    "inconclusive (also when n < 2 or a stated precondition fails). A part that bounds a value from "
    f"above (value < limit L) judges L - value with e = 0: supported if m + {Z:g} se < L, not supported "
    f"if m - {Z:g} se > L. A claim is supported when all "
    "its parts are, not supported when any part is not, else inconclusive (claim 7: one supported "
    "part suffices, and all must fail for not supported)."
)

# -- the smallest effects that matter, and the other thresholds of the rules ---------------------
MIN_ZERO_FRACTION = 0.05      # claim 1: extra share of weights exactly zero
MIN_HOYER = 0.05              # claim 1: extra Hoyer sparsity
MIN_NORM_DROP = 0.05          # claim 1: relative drop of the weight L2 norm
DENSE_ZERO_FRACTION = 0.01    # claim 1: "dense" = fewer than this share of exact zeros
MIN_GAP_NARROWING = 0.01      # claim 2: accuracy gap narrower by one point
MIN_LOSS_GAP_NARROWING = 0.10  # claim 2: loss gap narrower by 10% of the baseline's
OVERFIT_GAP = 0.02            # claim 2: the baseline over-fits if its accuracy gap is >= this
TARGET_FRACTION = 0.98        # claim 3: target = this x the slower arm's mean best val accuracy
MIN_EPOCHS_SAVED = 1.0        # claim 3
NEAR_BEST = 0.05              # claim 4: chosen epoch's val loss within 5% of the run's minimum
LATE_RISE = 0.05              # claim 4: the full run's last val loss >= 5% above its minimum
MIN_TEST_LOSS_DROP = 0.02     # claim 4: relative drop of the test loss
MIN_TRAIN_LOSS_DROP = 0.10    # claim 5: relative drop of the mean training loss
MOMENTUM_LR = 0.01            # claim 5: the lr of the momentum comparison (plain SGD makes progress)
MOMENTUM_ARMS = (f"sgd lr={MOMENTUM_LR:g}", f"sgd+momentum lr={MOMENTUM_LR:g}")
MIN_ACCURACY_GAIN = 0.01      # claim 6: test accuracy, one point
MIN_NORM_DIFFERENCE = 0.05    # claim 7: relative difference of the weight L2 norms
MIN_ACCURACY_DIFFERENCE = 0.01  # claim 7: test accuracy, one point

LR_GRID_CLAIM6 = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


# == statistics: effects, parts and the rule =======================================================


@dataclass(frozen=True)
class Effect:
    """Per-seed effects in the direction the claim predicts; `seeds` names where each came from."""

    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def se(self) -> float:
        """Standard error of the mean: sample standard deviation (n - 1) / sqrt(n); nan for n < 2."""
        return statistics.stdev(self.values) / math.sqrt(self.n) if self.n >= 2 else math.nan


def judge(effect: Effect, min_effect: float) -> str:
    """The rule for one part: supported if mean - 2 se > 0 and mean >= min_effect; not supported
    if mean + 2 se < min_effect; else inconclusive (always for fewer than 2 seeds or non-finite
    values)."""
    if effect.n < 2 or not all(math.isfinite(value) for value in effect.values):
        return INCONCLUSIVE
    low, high = effect.mean - Z * effect.se, effect.mean + Z * effect.se
    if low > 0 and effect.mean >= min_effect:
        return SUPPORTED
    if high < min_effect:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def judge_difference(effect: Effect, min_effect: float) -> str:
    """The rule for "A differs from B" (either direction): judge() with the effects signed so
    that their mean is positive."""
    sign = -1.0 if effect.mean < 0 else 1.0
    return judge(Effect(tuple(sign * value for value in effect.values), effect.seeds), min_effect)


def combine_all(verdicts: Sequence[str]) -> str:
    """supported if every part is, not supported if any part is not, else inconclusive."""
    if verdicts and all(verdict == SUPPORTED for verdict in verdicts):
        return SUPPORTED
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine_any(verdicts: Sequence[str]) -> str:
    """supported if any part is, not supported if every part is not, else inconclusive."""
    if SUPPORTED in verdicts:
        return SUPPORTED
    if verdicts and all(verdict == NOT_SUPPORTED for verdict in verdicts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class Part:
    """One measured part of a claim and its verdict under the rule.

    kind "at least": the per-seed effects must be clearly positive and >= min_effect (judge);
    "differs": the same for the effects' size, either sign (judge_difference); "below": the
    per-seed values must stay below the limit min_effect, judged as the effects limit - value with
    smallest effect 0 (supported if mean + 2 se < limit, not supported if mean - 2 se > limit).
    """

    statement: str        # what the claim says, e.g. "proximal L1 sets weights exactly to zero"
    measure: str          # how the effect (or, for "below", the value) is measured, per seed
    effect: Effect        # per-seed effects; for "below", the per-seed values
    min_effect: float     # the smallest effect that matters; for "below", the limit
    unit: str             # "fraction" (plain number), "relative" (shown in %), "epochs"
    verdict: str
    note: str = ""        # a precondition, met or not
    kind: str = "at least"

    def describe(self) -> str:
        """e.g. "+0.5120 ± 0.0040 (2 se, n=3); needs mean - 2 se > 0 and mean >= 0.0500"."""
        if self.effect.n == 0:
            return "no runs"
        spread = "n/a" if math.isnan(self.effect.se) else _format(Z * self.effect.se, self.unit, sign=False)
        measured = f"{_format(self.effect.mean, self.unit, sign=self.kind != 'below')} ± {spread} " \
                   f"({Z:g} se, n={self.effect.n})"
        if self.kind == "below":
            return f"{measured}; needs mean + {Z:g} se < {_format(self.min_effect, self.unit, sign=False)}"
        size = "|mean|" if self.kind == "differs" else "mean"
        return (f"{measured}; needs {size} - {Z:g} se > 0 and {size} >= "
                f"{_format(self.min_effect, self.unit, sign=False)}")

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement, "measure": self.measure, "verdict": self.verdict,
                "kind": self.kind, "values": list(self.effect.values), "seeds": list(self.effect.seeds),
                "mean": _finite(self.effect.mean), "se": _finite(self.effect.se), "n": self.effect.n,
                ("limit" if self.kind == "below" else "min_effect"): self.min_effect,
                "unit": self.unit, "note": self.note}


def make_part(statement: str, measure: str, effect: Effect, min_effect: float, unit: str = "fraction",
              precondition: tuple[bool, str] | None = None, kind: str = "at least") -> Part:
    """A Part judged by the rule (see Part for the kinds); a failed precondition (ok, reason)
    makes it inconclusive."""
    if kind == "below":
        verdict = judge(Effect(tuple(min_effect - value for value in effect.values), effect.seeds), 0.0)
    elif kind == "differs":
        verdict = judge_difference(effect, min_effect)
    elif kind == "at least":
        verdict = judge(effect, min_effect)
    else:
        raise ValueError(f"kind must be 'at least', 'differs' or 'below', got {kind!r}")
    note = ""
    if precondition is not None and not precondition[0]:
        verdict, note = INCONCLUSIVE, f"precondition not met: {precondition[1]}"
    elif precondition is not None:
        note = f"precondition met: {precondition[1]}"
    return Part(statement, measure, effect, min_effect, unit, verdict, note, kind)


def _format(value: float, unit: str, sign: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    plus = "+" if sign else ""
    if unit == "relative":
        return f"{100 * value:{plus}.1f}%"
    if unit == "epochs":
        return f"{value:{plus}.2f} epochs"
    return f"{value:{plus}.4f}"


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# == the runs a verdict reads ======================================================================


def arm_of(run: Mapping[str, Any]) -> str:
    """The arm of a claims run: its cell "claim<N> | <arm>" after the bar."""
    return str(run["cell"]).split(" | ", 1)[-1]


def seed_of(run: Mapping[str, Any]) -> int:
    return int(run["config"]["seed"])


def by_arm(runs: Iterable[Mapping[str, Any]], phase: str = "final") -> dict[str, dict[int, Mapping[str, Any]]]:
    """{arm: {seed: run}} of the finished runs of one phase (the last run wins for a repeated seed)."""
    arms: dict[str, dict[int, Mapping[str, Any]]] = {}
    for run in runs:
        if run.get("phase", "final") == phase and run.get("status", "finished") == "finished":
            arms.setdefault(arm_of(run), {})[seed_of(run)] = run
    return arms


def paired(arms: Mapping[str, Mapping[int, Mapping]], first: str, second: str,
           difference: Callable[[Mapping, Mapping], float]) -> Effect:
    """difference(run of `first`, run of `second`) for every seed both arms have, by seed."""
    seeds = sorted(set(arms.get(first, {})) & set(arms.get(second, {})))
    return Effect(tuple(float(difference(arms[first][s], arms[second][s])) for s in seeds), tuple(seeds))


def single(arms: Mapping[str, Mapping[int, Mapping]], arm: str, value: Callable[[Mapping], float]) -> Effect:
    """value(run) for every seed of one arm."""
    seeds = sorted(arms.get(arm, {}))
    return Effect(tuple(float(value(arms[arm][s])) for s in seeds), tuple(seeds))


def _summary(key: str) -> Callable[[Mapping], float]:
    def value(run: Mapping) -> float:
        found = run["summary"].get(key)
        return math.nan if found is None else float(found)
    return value


def _relative_drop(value: Callable[[Mapping], float]) -> Callable[[Mapping, Mapping], float]:
    """(value(a) - value(b)) / |value(a)|: how much lower b is than a, as a share of a."""
    def drop(a: Mapping, b: Mapping) -> float:
        base = value(a)
        return (base - value(b)) / abs(base) if base else math.nan
    return drop


def _curve(run: Mapping, key: str) -> list[float]:
    return [math.nan if row[key] is None else float(row[key]) for row in run["metrics"]]


def _mean(values: Iterable[float]) -> float:
    values = [value for value in values if value is not None and math.isfinite(value)]
    return statistics.fmean(values) if values else math.nan


# == the result of one claim =======================================================================


@dataclass
class ClaimResult:
    """A claim's verdict, the parts behind it, the arms' numbers and the notes."""

    number: int
    title: str
    verdict: str
    parts: list[Part]
    combine: str                                   # "all" or "any"
    measures: dict[str, dict[str, list[float]]]    # arm -> measure label -> values by seed
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    setup: str = ""                                # filled in by run_claims (the configs)
    plot: str | None = None                        # the PNG's file name, once written
    runs: list = field(default_factory=list, repr=False)  # the runs decided on (not in to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.number, "title": self.title, "verdict": self.verdict,
                "combine": self.combine, "parts": [part.to_dict() for part in self.parts],
                "arms": {arm: {label: [_finite(v) for v in values] for label, values in measures.items()}
                         for arm, measures in self.measures.items()},
                "seeds": self.seeds, "notes": self.notes, "setup": self.setup, "plot": self.plot}


def _result(number: int, parts: list[Part], arms: Mapping[str, Mapping[int, Mapping]],
            measures: Sequence[tuple[str, Callable[[Mapping], float]]], notes: list[str] | None = None,
            combine: str = "all") -> ClaimResult:
    verdicts = [part.verdict for part in parts]
    verdict = combine_any(verdicts) if combine == "any" else combine_all(verdicts)
    table = {arm: {label: [float(value(runs[s])) for s in sorted(runs)] for label, value in measures}
             for arm, runs in arms.items()}
    seeds = sorted({seed for runs in arms.values() for seed in runs})
    return ClaimResult(number, TITLES[number], verdict, parts, combine, table, seeds, notes or [])


TITLES = {
    1: "L1 gives sparse weights, L2 gives small dense weights",
    2: "Dropout narrows the train-test gap of an over-fitting network",
    3: "Batch normalization reaches a given accuracy in fewer epochs",
    4: "Early stopping picks an epoch near the best validation loss and prevents the late rise in test loss",
    5: "Adam converges faster than plain SGD at default settings; momentum speeds up SGD",
    6: "Adagrad and Adam handle sparse gradients well (rare features)",
    7: "Adam's coupled weight decay is not the same as AdamW's decoupled decay (accuracy, weight norms)",
}


# == the verdicts: one pure function per claim ====================================================


def weight_sparsity(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Sparsity of the decayed tensors (the weight matrices: ndim >= 2, as regularize.groups):
    count, exact-zero fraction, and Hoyer's (2004) sparsity
    (sqrt(n) - ||w||_1 / ||w||_2) / (sqrt(n) - 1): 0 when all weights are equal in size, 1 when
    one weight is nonzero; scale-free, so it compares shapes of weight distributions, not sizes.
    Also `abs_values`, the weights' magnitudes (numpy), for the histogram."""
    import torch

    tensors = [tensor.detach().float().flatten() for tensor in state_dict.values()
               if isinstance(tensor, torch.Tensor) and tensor.ndim >= 2]
    flat = torch.cat(tensors) if tensors else torch.zeros(0)
    count = flat.numel()
    l1, l2 = flat.abs().sum().item(), flat.norm().item()
    hoyer = (math.sqrt(count) - l1 / l2) / (math.sqrt(count) - 1) if l2 > 0 and count > 1 else 1.0
    return {"count": count, "zero_fraction": (flat == 0).float().mean().item() if count else 0.0,
            "hoyer": hoyer, "abs_values": flat.abs().numpy()}


def decide_claim1(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms none, l1 (penalty), prox-l1, l2. Parts (all must hold):
    a. proximal L1 sets weights exactly to zero: zero fraction, prox-l1 minus l2, >= MIN_ZERO_FRACTION;
    b. the L1 penalty makes weights sparser than L2: Hoyer sparsity, l1 minus l2, >= MIN_HOYER;
    c. L2 makes weights smaller: weight L2 norm, relative drop from none to l2, >= MIN_NORM_DROP;
    d. L2 keeps them dense: l2's exact-zero fraction below DENSE_ZERO_FRACTION.
    Reads summary zero_fraction, weight_l2 and run["weights"]["hoyer"] (see weight_sparsity)."""
    arms = by_arm(runs)
    zeros, norm = _summary("zero_fraction"), _summary("weight_l2")
    hoyer = lambda run: run["weights"]["hoyer"]  # noqa: E731
    parts = [
        make_part("proximal L1 sets weights exactly to zero", "exact-zero fraction: prox-l1 minus l2",
                  paired(arms, "prox-l1", "l2", lambda a, b: zeros(a) - zeros(b)), MIN_ZERO_FRACTION),
        make_part("the L1 penalty makes the weights sparser than L2", "Hoyer sparsity: l1 minus l2",
                  paired(arms, "l1", "l2", lambda a, b: hoyer(a) - hoyer(b)), MIN_HOYER),
        make_part("L2 makes the weights smaller", "weight L2 norm: relative drop from none to l2",
                  paired(arms, "none", "l2", _relative_drop(norm)), MIN_NORM_DROP, "relative"),
        make_part("L2 keeps the weights dense", "exact-zero fraction under l2",
                  single(arms, "l2", zeros), DENSE_ZERO_FRACTION, kind="below"),
    ]
    notes = []
    if arms.get("l1"):
        notes.append(f"the L1 penalty (subgradient) leaves an exact-zero fraction of "
                     f"{_mean(zeros(run) for run in arms['l1'].values()):.4f}: its weights hover near "
                     f"zero without reaching it, while the proximal step sets them to zero")
    measures = [("test acc", _summary("test_accuracy")), ("exact zeros", zeros),
                ("Hoyer sparsity", hoyer), ("weight L2 norm", norm), ("weight L1 norm", _summary("weight_l1"))]
    return _result(1, parts, arms, measures, notes)


def decide_claim2(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms none (an over-fitting network) and dropout. Parts (all must hold):
    a. accuracy gap (train - test accuracy at the final weights) narrower with dropout:
       gap(none) - gap(dropout) >= MIN_GAP_NARROWING; precondition: none's mean gap >= OVERFIT_GAP;
    b. loss gap (test loss - train loss) narrower: relative drop from none to dropout
       >= MIN_LOSS_GAP_NARROWING; precondition: none's mean loss gap > 0."""
    arms = by_arm(runs)
    gap = _summary("generalization_gap")
    loss_gap = lambda run: _summary("test_loss")(run) - _summary("train_loss")(run)  # noqa: E731
    baseline_gap = _mean(gap(run) for run in arms.get("none", {}).values())
    baseline_loss_gap = _mean(loss_gap(run) for run in arms.get("none", {}).values())
    parts = [
        make_part("dropout narrows the train-test accuracy gap", "accuracy gap: none minus dropout",
                  paired(arms, "none", "dropout", lambda a, b: gap(a) - gap(b)), MIN_GAP_NARROWING,
                  precondition=(baseline_gap >= OVERFIT_GAP,
                                f"the network without dropout over-fits: mean accuracy gap "
                                f"{baseline_gap:.3f} (needs >= {OVERFIT_GAP:g})")),
        make_part("dropout narrows the test-train loss gap", "loss gap: relative drop from none to dropout",
                  paired(arms, "none", "dropout", _relative_drop(loss_gap)), MIN_LOSS_GAP_NARROWING,
                  "relative",
                  precondition=(baseline_loss_gap > 0, f"the network without dropout has a test loss above "
                                f"its train loss: mean loss gap {baseline_loss_gap:.3f} (needs > 0)")),
    ]
    measures = [("train acc", _summary("train_accuracy")), ("test acc", _summary("test_accuracy")),
                ("accuracy gap", gap), ("train loss", _summary("train_loss")),
                ("test loss", _summary("test_loss")), ("loss gap", loss_gap)]
    return _result(2, parts, arms, measures)


def epochs_to_target(run: Mapping[str, Any], target: float) -> float:
    """The first epoch whose validation accuracy is >= target; epochs run + 1 if none is
    (a censored count: "not within the budget")."""
    for row in run["metrics"]:
        if row["val_accuracy"] is not None and row["val_accuracy"] >= target:
            return float(row["epoch"])
    return float(len(run["metrics"]) + 1)


def claim3_target(arms: Mapping[str, Mapping[int, Mapping]]) -> float:
    """TARGET_FRACTION x the lower of the arms' mean best validation accuracy (over the epochs):
    a level both arms reach, so the race is to a finish line both cross."""
    best = [_mean(max(_curve(run, "val_accuracy"), default=math.nan) for run in runs.values())
            for runs in arms.values() if runs]
    return TARGET_FRACTION * min(best) if best else math.nan


def decide_claim3(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms none and batchnorm. One part: epochs to reach the target validation accuracy
    (claim3_target), none minus batchnorm, >= MIN_EPOCHS_SAVED (a run that never reaches it counts
    epochs + 1)."""
    arms = by_arm(runs)
    target = claim3_target(arms)
    to_target = lambda run: epochs_to_target(run, target)  # noqa: E731
    parts = [make_part("batch normalization reaches the target accuracy in fewer epochs",
                       f"epochs to validation accuracy >= {target:.4f}: none minus batchnorm",
                       paired(arms, "none", "batchnorm", lambda a, b: to_target(a) - to_target(b)),
                       MIN_EPOCHS_SAVED, "epochs")]
    seconds_to = lambda run: _seconds_to(run, target)  # noqa: E731
    notes = [f"target validation accuracy {target:.4f} = {TARGET_FRACTION:g} x the lower of the arms' "
             f"mean best validation accuracy"]
    for arm, arm_runs in arms.items():
        notes.append(f"{arm}: mean {_mean(to_target(r) for r in arm_runs.values()):.2f} epochs, "
                     f"{_mean(seconds_to(r) for r in arm_runs.values()):.2f} s to the target "
                     f"(seconds per epoch {_mean(_mean(_curve(r, 'seconds')) for r in arm_runs.values()):.3f})")
    measures = [("epochs to target", to_target), ("best val acc", lambda r: max(_curve(r, "val_accuracy"))),
                ("test acc", _summary("test_accuracy"))]
    return _result(3, parts, arms, measures, notes)


def _seconds_to(run: Mapping[str, Any], target: float) -> float:
    seconds = 0.0
    for row in run["metrics"]:
        seconds += row["seconds"] or 0.0
        if row["val_accuracy"] is not None and row["val_accuracy"] >= target:
            return seconds
    return math.nan


def decide_claim4(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms none (the full run) and early-stop (the same run with early stopping, restored to its
    best epoch). Parts (all must hold):
    a. the chosen epoch is near the best validation loss: the full run's val loss at the epoch the
       early-stop run chose, relative excess over the full run's minimum, below NEAR_BEST;
    b. early stopping prevents the late rise in test loss: test loss, relative drop from the full
       run (last epoch) to the early-stopped one, >= MIN_TEST_LOSS_DROP; precondition: the full run
       has a late rise, its last val loss >= LATE_RISE above its minimum (mean over seeds)."""
    arms = by_arm(runs)

    def excess_at_chosen(full: Mapping, stopped: Mapping) -> float:
        curve = _curve(full, "val_loss")
        chosen = int(stopped["summary"]["best_epoch"])
        return (curve[chosen - 1] - min(curve)) / min(curve)

    def late_rise(full: Mapping) -> float:
        curve = _curve(full, "val_loss")
        return (curve[-1] - min(curve)) / min(curve)

    rise = _mean(late_rise(run) for run in arms.get("none", {}).values())
    parts = [
        make_part("early stopping picks an epoch near the best validation loss",
                  "the full run's validation loss at the epoch early stopping chose, relative excess "
                  "over the full run's minimum", paired(arms, "none", "early-stop", excess_at_chosen),
                  NEAR_BEST, "relative", kind="below"),
        make_part("early stopping prevents the late rise in test loss",
                  "test loss: relative drop from the full run's last epoch to the early-stopped weights",
                  paired(arms, "none", "early-stop", _relative_drop(_summary("test_loss"))),
                  MIN_TEST_LOSS_DROP, "relative",
                  precondition=(rise >= LATE_RISE, f"the full run's validation loss ends {100 * rise:.1f}% "
                                f"above its minimum (needs >= {100 * LATE_RISE:g}%)")),
    ]
    notes = []
    for seed in sorted(set(arms.get("none", {})) & set(arms.get("early-stop", {}))):
        full, stopped = arms["none"][seed], arms["early-stop"][seed]
        curve = _curve(full, "val_loss")
        notes.append(f"seed {seed}: early stopping chose epoch {stopped['summary']['best_epoch']} "
                     f"(stopped after {stopped['summary']['epochs_run']}); the full run's val loss is "
                     f"lowest at epoch {curve.index(min(curve)) + 1} of {len(curve)}")
    measures = [("test loss", _summary("test_loss")), ("test acc", _summary("test_accuracy")),
                ("epochs run", _summary("epochs_run")), ("chosen epoch", _summary("best_epoch"))]
    return _result(4, parts, arms, measures, notes)


def mean_train_loss(run: Mapping[str, Any]) -> float:
    """The mean of the per-epoch training loss: the area under the training curve per epoch (lower
    = faster convergence over the whole budget, not just at its end)."""
    return _mean(_curve(run, "train_loss"))


def decide_claim5(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms sgd and adam at their optimizers' default lr, and MOMENTUM_ARMS (SGD at MOMENTUM_LR
    without and with momentum 0.9). Parts (all must hold): relative drop of the mean training
    loss (mean_train_loss) from sgd to adam, and from MOMENTUM_ARMS[0] to MOMENTUM_ARMS[1], each
    >= MIN_TRAIN_LOSS_DROP."""
    arms = by_arm(runs)
    drop = _relative_drop(mean_train_loss)
    parts = [
        make_part("Adam converges faster than plain SGD (default settings)",
                  "mean training loss over the epochs: relative drop from sgd to adam",
                  paired(arms, "sgd", "adam", drop), MIN_TRAIN_LOSS_DROP, "relative"),
        make_part("momentum speeds up SGD", f"mean training loss over the epochs: relative drop from "
                  f"{MOMENTUM_ARMS[0]} to {MOMENTUM_ARMS[1]}",
                  paired(arms, *MOMENTUM_ARMS, drop), MIN_TRAIN_LOSS_DROP, "relative"),
    ]
    measures = [("mean train loss", mean_train_loss), ("final train loss", lambda r: _curve(r, "train_loss")[-1]),
                ("test acc", _summary("test_accuracy")), ("lr", lambda r: r["config"]["lr"])]
    return _result(5, parts, arms, measures)


def choose_lr(tune_runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """{arm: lr} chosen from the "tune" runs by `regopt compare`'s rule: the highest validation
    accuracy of the final weights, ties to the lower validation loss, then the smaller lr."""
    from regopt.lab.compare import selection_score

    best: dict[str, tuple] = {}
    for run in tune_runs:
        accuracy, loss = selection_score(run["summary"], run["metrics"])
        key = (-accuracy, loss, float(run["config"]["lr"]))
        arm = arm_of(run)
        if arm not in best or key < best[arm]:
            best[arm] = key
    return {arm: key[2] for arm, key in best.items()}


def decide_claim6(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms sgd, adagrad, adam on rare-features, each at its tuned lr (phase "final"; the "tune"
    runs are only shown). Parts (all must hold): test accuracy (every test example holds a rare
    feature), adagrad minus sgd and adam minus sgd, each >= MIN_ACCURACY_GAIN."""
    arms = by_arm(runs)
    accuracy = _summary("test_accuracy")
    parts = [
        make_part(f"{name} beats SGD on rare features", f"test accuracy: {name} minus sgd",
                  paired(arms, name, "sgd", lambda a, b: accuracy(a) - accuracy(b)), MIN_ACCURACY_GAIN)
        for name in ("adagrad", "adam")
    ]
    tune_runs = [run for run in runs if run.get("phase") == "tune"]
    notes = []
    if tune_runs:
        grid = sorted({float(run["config"]["lr"]) for run in tune_runs})
        notes.append("learning rates tuned on the validation split (seed 0) over "
                     + ", ".join(f"{lr:g}" for lr in grid))
    edges = (min(LR_GRID_CLAIM6), max(LR_GRID_CLAIM6))
    for arm, arm_runs in arms.items():
        lrs = sorted({float(run["config"]["lr"]) for run in arm_runs.values()})
        edge = " (an end of the grid: the best lr may lie beyond it)" if set(lrs) & set(edges) else ""
        notes.append(f"{arm}: lr {', '.join(f'{lr:g}' for lr in lrs)}{edge}")
    measures = [("test acc", accuracy), ("train acc", _summary("train_accuracy")),
                ("lr", lambda r: r["config"]["lr"])]
    return _result(6, parts, arms, measures, notes)


def decide_claim7(runs: Sequence[Mapping[str, Any]]) -> ClaimResult:
    """Arms wd (Adam, coupled decay) and adamw-wd (decoupled), the same lambda, and none (shown
    only). Parts (one supported part suffices; "not supported" needs both to fail), either
    direction: weight L2 norm, relative difference wd vs adamw-wd, |.| >= MIN_NORM_DIFFERENCE;
    test accuracy difference |.| >= MIN_ACCURACY_DIFFERENCE."""
    arms = by_arm(runs)
    norm, accuracy = _summary("weight_l2"), _summary("test_accuracy")
    parts = [
        make_part("coupled and decoupled decay give different weight norms",
                  "weight L2 norm: (wd - adamw-wd) / adamw-wd, either sign",
                  paired(arms, "wd", "adamw-wd", lambda a, b: (norm(a) - norm(b)) / norm(b)),
                  MIN_NORM_DIFFERENCE, "relative", kind="differs"),
        make_part("coupled and decoupled decay give different test accuracy",
                  "test accuracy: wd minus adamw-wd, either sign",
                  paired(arms, "wd", "adamw-wd", lambda a, b: accuracy(a) - accuracy(b)),
                  MIN_ACCURACY_DIFFERENCE, kind="differs"),
    ]
    measures = [("test acc", accuracy), ("test loss", _summary("test_loss")), ("weight L2 norm", norm)]
    return _result(7, parts, arms, measures, combine="any")


# == the experiments ==============================================================================


@dataclass(frozen=True)
class Setup:
    """What every claim shares: the data set, the seeds, an optional epoch count for all claims,
    and optionally the torch threads of every run (None: the runner's share of the CPUs)."""

    dataset: str = "digits"
    data_dir: str | None = None
    seeds: int = 3
    epochs: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for key in ("seeds", "epochs", "threads"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")

    @property
    def experiment(self) -> str:
        return f"claims-{self.dataset}"

    def base(self, epochs: int, dataset: str | None = None, **changes: Any) -> RunConfig:
        """A config on this setup's data set (or `dataset`) with `epochs` unless --epochs is given."""
        data = {"dataset": dataset} if dataset else {"dataset": self.dataset, "data_dir": self.data_dir}
        return RunConfig(**data, epochs=self.epochs or epochs, threads=self.threads, **changes)


def default_lr(optimizer: str) -> float:
    """The optimizer's own default learning rate (its signature's, as torch.optim's)."""
    from regopt.optim import get_optimizer

    return float(inspect.signature(get_optimizer(optimizer)).parameters["lr"].default)


def arms_claim1(setup: Setup) -> dict[str, RunConfig]:
    base = setup.base(20, optimizer="sgd", lr=0.2)
    return {"none": apply_setting(base, "none"), "l1": apply_setting(base, "l1", 1e-3),
            "prox-l1": apply_setting(base, "prox-l1", 1e-3), "l2": apply_setting(base, "l2", 1e-2)}


def arms_claim2(setup: Setup) -> dict[str, RunConfig]:
    base = setup.base(30, optimizer="adam", hidden=(256, 128))
    return {"none": apply_setting(base, "none"), "dropout": apply_setting(base, "dropout", 0.5)}


def arms_claim3(setup: Setup) -> dict[str, RunConfig]:
    base = setup.base(20, optimizer="adam")
    return {"none": apply_setting(base, "none"), "batchnorm": apply_setting(base, "batchnorm")}


def arms_claim4(setup: Setup) -> dict[str, RunConfig]:
    base = setup.base(40, optimizer="adam")
    return {"none": apply_setting(base, "none"), "early-stop": apply_setting(base, "early-stop", 5)}


def arms_claim5(setup: Setup) -> dict[str, RunConfig]:
    sgd = setup.base(20, optimizer="sgd", lr=MOMENTUM_LR)
    return {"sgd": apply_setting(sgd.replace(lr=default_lr("sgd")), "none"),
            "adam": apply_setting(setup.base(20, optimizer="adam", lr=default_lr("adam")), "none"),
            MOMENTUM_ARMS[0]: apply_setting(sgd, "none"),
            MOMENTUM_ARMS[1]: apply_setting(sgd.replace(momentum=0.9), "none")}


def arms_claim6(setup: Setup) -> dict[str, RunConfig]:
    """The arms at the first lr of the grid; the lr itself is tuned (claim_jobs)."""
    base = setup.base(10, dataset="rare-features", hidden=(64,), lr=LR_GRID_CLAIM6[0])
    return {name: apply_setting(base.replace(optimizer=name), "none") for name in ("sgd", "adagrad", "adam")}


def arms_claim7(setup: Setup) -> dict[str, RunConfig]:
    base = setup.base(20, optimizer="adam", lr=1e-3)
    return {"none": apply_setting(base, "none"), "wd": apply_setting(base, "wd", 1e-2),
            "adamw-wd": apply_setting(base, "adamw-wd", 1e-2)}


@dataclass(frozen=True)
class Claim:
    """A claim: its number and title, its arms' configs (seed 0), its verdict function and plot.
    `tuned` claims search the lr over LR_GRID_CLAIM6 before their seeds (phase "tune")."""

    number: int
    arms: Callable[[Setup], dict[str, RunConfig]]
    decide: Callable[[Sequence[Mapping[str, Any]]], ClaimResult]
    plot: Callable[[Sequence[Mapping[str, Any]], ClaimResult, Path], None]
    tuned: bool = False
    needs_weights: bool = False

    @property
    def title(self) -> str:
        return TITLES[self.number]

    def cell(self, arm: str) -> str:
        return f"claim{self.number} | {arm}"


def claim_jobs(claim: Claim, setup: Setup, chosen_lr: Mapping[str, float] | None = None) -> list[Job]:
    """The claim's jobs: one per arm and seed (phase "final"). A tuned claim without `chosen_lr`
    gives its lr search instead (phase "tune", seed 0, one job per arm and lr of the grid)."""
    arms = claim.arms(setup)
    if claim.tuned and chosen_lr is None:
        return [Job(config.replace(lr=lr, seed=0), setup.experiment, claim.cell(arm), "tune")
                for arm, config in arms.items() for lr in LR_GRID_CLAIM6]
    return [Job(config.replace(seed=seed, **({"lr": chosen_lr[arm]} if claim.tuned else {})),
                setup.experiment, claim.cell(arm), "final")
            for arm, config in arms.items() for seed in range(setup.seeds)]


def stored_run(store: RunStore, job: Job, needs_weights: bool = False) -> dict[str, Any]:
    """The job's finished run in the store, with "metrics" (and "weights", see weight_sparsity)."""
    found = store.list_runs(status="finished", config_hash=job.config_hash, **job.tags)
    if not found:
        raise UserError(f"no finished run in {store.root} for {job.cell} [{job.phase}] seed "
                        f"{job.config.seed}; run `regopt claims` to train it")
    run = found[-1]
    run["metrics"] = store.metrics(run["run_id"])
    if needs_weights:
        run["weights"] = weight_sparsity(store.load_model(run["run_id"]))
    return run


def claim_runs(store: RunStore, claim: Claim, setup: Setup) -> list[dict[str, Any]]:
    """The claim's runs read back from the store: its tune runs (if tuned) and final runs."""
    jobs = claim_jobs(claim, setup)
    runs = [stored_run(store, job, claim.needs_weights) for job in jobs]
    if claim.tuned:
        finals = claim_jobs(claim, setup, choose_lr(runs))
        runs += [stored_run(store, job, claim.needs_weights) for job in finals]
    return runs


def run_claims(store: RunStore, numbers: Sequence[int] | None = None, setup: Setup = Setup(),
               workers: int = 1, progress: bool = True) -> list[ClaimResult]:
    """Train what the store lacks for the chosen claims (all by default), then decide each one from
    the stored runs. Returns the results in claim order, each with its setup text and its runs."""
    claims = [CLAIMS[number] for number in (numbers or sorted(CLAIMS))]
    first = [job for claim in claims for job in claim_jobs(claim, setup)]
    run_many(first, store, workers=workers, progress=progress)
    tuned = [claim for claim in claims if claim.tuned]
    if tuned:
        finals = [job for claim in tuned
                  for job in claim_jobs(claim, setup, choose_lr(
                      stored_run(store, tune_job) for tune_job in claim_jobs(claim, setup)))]
        run_many(finals, store, workers=workers, progress=progress)
    results = []
    for claim in claims:
        runs = claim_runs(store, claim, setup)
        result = claim.decide(runs)
        result.setup = describe_arms(claim.arms(setup), tuned=claim.tuned)
        result.runs = runs
        results.append(result)
    return results


def describe_arms(arms: Mapping[str, RunConfig], tuned: bool = False) -> str:
    """The arms' configs in one line: what they share, then what each arm sets differently, both
    as differences from RunConfig's defaults for the arm's optimizer (lr left out when tuned)."""
    skip = {"seed", "threads", "data_dir"} | ({"lr"} if tuned else set())
    changes = {}
    for arm, config in arms.items():
        reference = RunConfig(optimizer=config.optimizer).to_dict()
        always = ("dataset", "optimizer", "epochs")
        changes[arm] = {key: value for key, value in config.to_dict().items()
                        if key not in skip and (value != reference[key] or key in always)}
    first = next(iter(changes.values()), {})
    shared = {key: value for key, value in first.items()
              if all(key in other and other[key] == value for other in changes.values())}
    text = ", ".join(f"{key}={_value(value)}" for key, value in shared.items())
    per_arm = "; ".join(f"{arm}: " + (", ".join(f"{key}={_value(value)}" for key, value in diff.items()
                                               if key not in shared) or "-")
                        for arm, diff in changes.items())
    return f"{text}; arms {per_arm}" + ("; lr tuned per arm" if tuned else "")


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# == plots (matplotlib's Agg canvas through Figure: no pyplot, no global state) ====================

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
VERDICT_COLORS = {SUPPORTED: "#2ca02c", NOT_SUPPORTED: "#d62728", INCONCLUSIVE: "#7f7f7f"}


def _figure(result: ClaimResult, panels: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6 * panels, 3.8), dpi=100, layout="constrained")
    figure.suptitle(f"Claim {result.number}: {result.title}\nverdict: {result.verdict}", fontsize=10,
                    color=VERDICT_COLORS[result.verdict])
    return figure, [figure.add_subplot(1, panels, index + 1) for index in range(panels)]


def _bars(axes, arms: Mapping[str, Mapping[int, Mapping]], value: Callable[[Mapping], float], title: str,
          bars: bool = True) -> None:
    """Every seed as a dot and the mean per arm as a bar from zero, or (bars=False, for values
    whose differences are small against their size) as a short line, on a zoomed axis."""
    for index, (arm, runs) in enumerate(arms.items()):
        values = [value(run) for run in runs.values()]
        color = COLORS[index % len(COLORS)]
        if bars:
            axes.bar(index, _mean(values), color=color, alpha=0.6)
        else:
            axes.hlines(_mean(values), index - 0.3, index + 0.3, color=color, linewidth=3)
        axes.scatter([index] * len(values), values, color="black", s=12, zorder=3)
    axes.set_xticks(range(len(arms)), list(arms), rotation=15)
    axes.set_xlim(-0.6, len(arms) - 0.4)
    axes.set_title(title + ("" if bars else " (zoomed; line = mean)"), fontsize=9)


def _curves(axes, arms: Mapping[str, Mapping[int, Mapping]], key: str, title: str, log: bool = False) -> None:
    """The mean over seeds of a per-epoch metric, per arm, with the seeds' range as a band."""
    for index, (arm, runs) in enumerate(arms.items()):
        curves = [_curve(run, key) for run in runs.values()]
        length = max((len(curve) for curve in curves), default=0)
        epochs = list(range(1, length + 1))
        columns = [[curve[e] for curve in curves if e < len(curve)] for e in range(length)]
        color = COLORS[index % len(COLORS)]
        axes.plot(epochs, [_mean(column) for column in columns], color=color, label=arm)
        axes.fill_between(epochs, [min(column) for column in columns], [max(column) for column in columns],
                          color=color, alpha=0.15)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)


def plot_claim1(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (histogram, zeros, hoyer) = _figure(result, 3)
    import numpy as np

    for index, (arm, arm_runs) in enumerate(arms.items()):
        run = arm_runs[min(arm_runs)]
        values = run.get("weights", {}).get("abs_values")
        if values is not None and len(values):
            logs = np.log10(np.maximum(values, 1e-8))
            histogram.hist(logs, bins=60, histtype="step", color=COLORS[index % len(COLORS)], label=arm)
    histogram.set_xlabel("log10 |w|  (exact zeros at -8)")
    histogram.set_title(f"weight magnitudes (seed {result.seeds[0] if result.seeds else 0})", fontsize=9)
    histogram.legend(fontsize=8)
    _bars(zeros, arms, _summary("zero_fraction"), "fraction of weights exactly zero")
    _bars(hoyer, arms, lambda run: run["weights"]["hoyer"], "Hoyer sparsity (0 dense, 1 one weight)")
    figure.savefig(path)


def plot_claim2(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (curves, gaps) = _figure(result, 2)
    for index, (arm, arm_runs) in enumerate(arms.items()):
        color = COLORS[index % len(COLORS)]
        for key, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
            columns = list(zip(*[_curve(run, key) for run in arm_runs.values()]))
            curves.plot(range(1, len(columns) + 1), [_mean(c) for c in columns], style, color=color,
                        label=f"{arm} {key.split('_')[0]}")
    curves.set_xlabel("epoch")
    curves.set_title("accuracy: train (solid) and validation (dashed)", fontsize=9)
    curves.legend(fontsize=8)
    _bars(gaps, arms, _summary("generalization_gap"), "train - test accuracy at the end")
    figure.savefig(path)


def plot_claim3(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (curves, epochs) = _figure(result, 2)
    target = claim3_target(arms)
    _curves(curves, arms, "val_accuracy", "validation accuracy")
    curves.axhline(target, color="black", linestyle=":", linewidth=1)
    curves.text(1, target, f" target {target:.3f}", va="bottom", fontsize=8)
    _bars(epochs, arms, lambda run: epochs_to_target(run, target), "epochs to the target")
    figure.savefig(path)


def plot_claim4(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (curves, losses) = _figure(result, 2)
    _curves(curves, {"none (full run)": arms.get("none", {})}, "val_loss", "validation loss of the full run",
            log=True)
    for run in arms.get("early-stop", {}).values():
        curves.axvline(run["summary"]["best_epoch"], color="#ff7f0e", linestyle=":", linewidth=1)
    curves.plot([], [], color="#ff7f0e", linestyle=":", label="epochs early stopping chose")
    curves.legend(fontsize=8)
    _bars(losses, arms, _summary("test_loss"), "test loss of the final weights", bars=False)
    figure.savefig(path)


def plot_claim5(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (curves, means) = _figure(result, 2)
    _curves(curves, arms, "train_loss", "training loss", log=True)
    _bars(means, arms, mean_train_loss, "mean training loss over the epochs")
    figure.savefig(path)


def plot_claim6(runs, result: ClaimResult, path: Path) -> None:
    from regopt.lab.compare import selection_score

    arms = by_arm(runs)
    figure, (tuning, accuracy) = _figure(result, 2)
    for index, arm in enumerate(by_arm(runs, phase="tune")):
        points = sorted((run["config"]["lr"], selection_score(run["summary"], run["metrics"])[0])
                        for run in _all_runs(runs, arm, "tune"))
        tuning.plot([p[0] for p in points], [p[1] for p in points], "o-", color=COLORS[index % len(COLORS)],
                    label=arm)
    tuning.set_xscale("log")
    tuning.set_xlabel("learning rate")
    tuning.set_title("validation accuracy of the lr search (seed 0)", fontsize=9)
    tuning.legend(fontsize=8)
    _bars(accuracy, arms, _summary("test_accuracy"), "test accuracy (rare-feature examples)")
    figure.savefig(path)


def _all_runs(runs, arm: str, phase: str) -> list[Mapping]:
    return [run for run in runs if run.get("phase") == phase and arm_of(run) == arm]


def plot_claim7(runs, result: ClaimResult, path: Path) -> None:
    arms = by_arm(runs)
    figure, (norms, accuracy) = _figure(result, 2)
    _curves(norms, arms, "weight_l2", "weight L2 norm")
    _bars(accuracy, arms, _summary("test_accuracy"), "test accuracy", bars=False)
    figure.savefig(path)


CLAIMS: dict[int, Claim] = {
    1: Claim(1, arms_claim1, decide_claim1, plot_claim1, needs_weights=True),
    2: Claim(2, arms_claim2, decide_claim2, plot_claim2),
    3: Claim(3, arms_claim3, decide_claim3, plot_claim3),
    4: Claim(4, arms_claim4, decide_claim4, plot_claim4),
    5: Claim(5, arms_claim5, decide_claim5, plot_claim5),
    6: Claim(6, arms_claim6, decide_claim6, plot_claim6, tuned=True),
    7: Claim(7, arms_claim7, decide_claim7, plot_claim7),
}


# == output: Markdown, JSON, PNG, console ==========================================================


def write_outputs(results: Sequence[ClaimResult], dest: Path, context: Mapping[str, Any]) -> dict[str, Path]:
    """claims.md, claims.json and claim<N>.png (drawn from each result's runs) under `dest`;
    returns {file name: path}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for result in results:
        path = dest / f"claim{result.number}.png"
        CLAIMS[result.number].plot(result.runs, result, path)
        result.plot = path.name
        paths[path.name] = path
    paths["claims.md"] = dest / "claims.md"
    paths["claims.md"].write_text(render_markdown(results, context))
    paths["claims.json"] = dest / "claims.json"
    paths["claims.json"].write_text(json.dumps({**context, "rule": RULE,
                                                "claims": [r.to_dict() for r in results]},
                                               indent=2, allow_nan=False) + "\n")
    return paths


def _evidence(result: ClaimResult) -> str:
    return "; ".join(f"{part.statement}: {_format(part.effect.mean, part.unit)} ({part.verdict})"
                     for part in result.parts)


def render_markdown(results: Sequence[ClaimResult], context: Mapping[str, Any]) -> str:
    """The summary table, then one section per claim: setup, parts, arms, notes, plot."""
    lines = [f"# regopt claims: {context.get('dataset', '')}", "",
             f"`{context.get('command', 'regopt claims')}`, experiment `{context.get('experiment', '')}` "
             f"in `{context.get('store', '')}`, seeds {', '.join(map(str, context.get('seeds', [])))}"
             + (f"; {context['seconds']:.0f} s" if context.get("seconds") is not None else ""), "",
             f"**Decision rule.** {RULE}", "",
             "| # | claim | verdict | parts: mean effect (verdict) |", "|---|---|---|---|"]
    for result in results:
        lines.append(f"| {result.number} | {result.title} | **{result.verdict}** | {_evidence(result)} |")
    for result in results:
        combine = "all parts must be supported" if result.combine == "all" else "one supported part suffices"
        lines += ["", f"## Claim {result.number}: {result.title}: **{result.verdict}**", "",
                  f"Setup: {result.setup}", "", f"Parts ({combine}):", "",
                  "| part | measured per seed | effect: mean ± 2 se (n); needed | verdict |", "|---|---|---|---|"]
        for part in result.parts:
            note = f" ({part.note})" if part.note else ""
            lines.append(f"| {part.statement}{note} | {part.measure} | {part.describe()} | {part.verdict} |")
        labels = list(next(iter(result.measures.values()), {}))
        if labels:
            lines += ["", "Arms (mean ± std over seeds " + ", ".join(map(str, result.seeds)) + "):", "",
                      "| arm | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
            for arm, measures in result.measures.items():
                lines.append(f"| {arm} | " + " | ".join(_mean_std(measures[label]) for label in labels) + " |")
        if result.notes:
            lines += [""] + [f"- {note}" for note in result.notes]
        if result.plot:
            lines += ["", f"![claim {result.number}]({result.plot})"]
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float]) -> str:
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return "-"
    mean = statistics.fmean(finite)
    spec = ".4g" if abs(mean) >= 1e-3 or mean == 0 else ".2e"
    if len(finite) < 2:
        return format(mean, spec)
    return f"{mean:{spec}} ± {statistics.stdev(finite):.2g}"


def print_results(results: Sequence[ClaimResult], console) -> None:
    from rich.table import Table

    for result in results:
        console.print(f"\n[bold]Claim {result.number}[/bold]: {result.title} -> "
                      f"[bold]{result.verdict}[/bold]", highlight=False)
        console.print(f"  setup: {result.setup}", highlight=False, markup=False)
        for part in result.parts:
            note = f" [{part.note}]" if part.note else ""
            console.print(f"  - {part.statement}: {part.measure}: {part.describe()} -> {part.verdict}{note}",
                          highlight=False, markup=False)
        for note in result.notes:
            console.print(f"  * {note}", highlight=False, markup=False)
    table = Table(title="claims", title_justify="left")
    for column in ("#", "claim", "verdict", "seeds"):
        table.add_column(column)
    for result in results:
        table.add_row(str(result.number), result.title, result.verdict, str(len(result.seeds)))
    console.print()
    console.print(table)
    console.print(f"rule: {RULE}", highlight=False, markup=False)


# == the command ==================================================================================


def add_command(commands) -> None:
    """Register `regopt claims` (called by regopt.cli.build_parser)."""
    from regopt.cli import add_out

    parser = commands.add_parser(
        "claims", help="test seven textbook claims with small seeded experiments",
        description=("Run a small seeded experiment for each of seven textbook claims about "
                     "regularizers and optimizers and decide each one (supported, not supported, "
                     "inconclusive) from the stored runs by a stated rule. Writes claims.md, "
                     "claims.json and one PNG per claim under --dest. Re-running skips finished runs."),
    )
    parser.add_argument("--dataset", default="digits", metavar="NAME",
                        help="data set of claims 1-5 and 7 (default digits; claim 6 always uses rare-features)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the IDX files (fashion-mnist, mnist)")
    add_out(parser)
    parser.add_argument("--workers", default=None, metavar="N",
                        help=f"parallel worker processes, one torch thread each (default: the CPUs, at most "
                             f"{MAX_DEFAULT_WORKERS})")
    parser.add_argument("--seeds", default="3", metavar="N", help="seeds per arm, 0..N-1 (default 3)")
    parser.add_argument("--only", default=None, metavar="1,3", help="only these claims (numbers 1-7)")
    parser.add_argument("--epochs", default=None, metavar="N",
                        help="epochs of every run (default: each claim's own)")
    parser.add_argument("--threads", default=None, metavar="N",
                        help="torch threads of every run (default: the CPUs divided between the workers)")
    parser.add_argument("--dest", default="report/claims", metavar="DIR",
                        help="folder for claims.md, claims.json and the plots (default report/claims)")
    parser.add_argument("--quiet", action="store_true", help="no progress; print only the summary table")
    parser.set_defaults(handler=claims_command)


MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker process per usable CPU (at most MAX_DEFAULT_WORKERS), so that each gets one torch
    thread: the claims' models are small, and on a busy machine two threads per small run can be
    many times slower than one (measured here: 1.1-4.5 s vs 19-25 s for the same 40-epoch digits
    run while other processes kept the two cores busy)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def parse_only(text: str | None) -> list[int] | None:
    """"1,3" -> [1, 3]; None -> None (all). Unknown or malformed numbers raise UserError."""
    if text is None:
        return None
    numbers = []
    for part in str(text).replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) not in CLAIMS:
            raise UserError(f"--only: unknown claim {part!r} (choose from {', '.join(map(str, CLAIMS))})")
        if int(part) not in numbers:
            numbers.append(int(part))
    if not numbers:
        raise UserError("--only needs at least one claim number (1-7)")
    return sorted(numbers)


def _positive_int(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise UserError(f"{flag} must be an integer >= 1, got {value}")
    return value


def claims_command(args: argparse.Namespace) -> int:
    from regopt.cli import _console
    from regopt.data import load_dataset

    started = time.perf_counter()
    numbers = parse_only(args.only)
    setup = Setup(dataset=RunConfig(dataset=args.dataset).dataset, data_dir=args.data_dir,
                  seeds=_positive_int("--seeds", args.seeds), epochs=_positive_int("--epochs", args.epochs),
                  threads=_positive_int("--threads", args.threads))
    workers = _positive_int("--workers", args.workers) or default_workers()
    if any(number != 6 for number in numbers or CLAIMS):
        load_dataset(setup.dataset, setup.data_dir)  # a missing data set fails here, before any run
    for number in numbers or CLAIMS:
        CLAIMS[number].arms(setup)  # every config is valid before anything is trained
    store = RunStore(args.out)
    results = run_claims(store, numbers, setup, workers=workers, progress=not args.quiet)
    command = " ".join(["regopt claims", f"--dataset {setup.dataset}", f"--seeds {setup.seeds}"]
                       + ([f"--only {','.join(map(str, numbers))}"] if numbers else [])
                       + ([f"--epochs {setup.epochs}"] if setup.epochs else [])
                       + ([f"--threads {setup.threads}"] if setup.threads else []))
    context = {"dataset": setup.dataset, "experiment": setup.experiment, "store": str(args.out),
               "seeds": list(range(setup.seeds)), "command": command,
               "seconds": time.perf_counter() - started}
    paths = write_outputs(results, Path(args.dest), context)
    console = _console()
    if args.quiet:
        for result in results:
            print(f"claim {result.number}: {result.verdict}")
    else:
        print_results(results, console)
    print(f"wrote {paths['claims.md']}, {paths['claims.json']} and {len(results)} plots "
          f"({time.perf_counter() - started:.0f} s)")
    return 0
