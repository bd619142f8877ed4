"""regopt claims: the decision rule, each claim's verdict on fed runs with known outcomes (supported,
not supported, inconclusive), the rare-features data set, the command end to end on a tiny setting
(its table, JSON and plot agree with the stored runs; a rerun trains nothing), and bad input."""

import json
import math

import numpy as np
import pytest
import torch

from regopt.cli import main
from regopt.data import load_dataset
from regopt.lab import RunStore
from regopt.lab.claims import (
    CLAIMS, INCONCLUSIVE, LR_GRID_CLAIM6, MOMENTUM_ARMS, NOT_SUPPORTED, SUPPORTED, Effect, Setup,
    arm_of, choose_lr, claim3_target, claim_runs, combine_all, combine_any, epochs_to_target, judge,
    judge_difference, weight_sparsity,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- fed runs ------------------------------------------------------------------------------------


def fake_run(claim, arm, seed, summary=None, metrics=None, weights=None, lr=1e-3, phase="final"):
    """A run as claim_runs returns it: store.get_run's fields plus metrics (and weights)."""
    run = {"run_id": f"c{claim}-{arm}-{seed}-{phase}-{lr}", "status": "finished", "phase": phase,
           "experiment": "claims-test", "cell": f"claim{claim} | {arm}",
           "config": {"seed": seed, "lr": lr}, "summary": dict(summary or {}),
           "metrics": [dict(row) for row in (metrics or [])]}
    if weights is not None:
        run["weights"] = weights
    return run


def rows(key, values, **other):
    return [{"epoch": epoch, key: value, "seconds": 0.1, **other} for epoch, value in enumerate(values, 1)]


def arms_of(claim, seeds, **arm_values):
    """Runs for every arm and seed; arm_values[arm] is a function seed -> fake_run keyword args."""
    return [fake_run(claim, arm.replace("_", "-"), seed, **make(seed))
            for arm, make in arm_values.items() for seed in seeds]


def noisy(values, seed):
    return values[seed % len(values)]


# -- the rule ------------------------------------------------------------------------------------


def test_rule_follows_mean_and_two_standard_errors():
    assert judge(Effect((0.10, 0.11, 0.12)), 0.05) == SUPPORTED           # clearly above e
    assert judge(Effect((-0.10, -0.11, -0.12)), 0.05) == NOT_SUPPORTED    # clearly opposite
    assert judge(Effect((0.010, 0.011, 0.012)), 0.05) == NOT_SUPPORTED    # real but too small
    assert judge(Effect((0.2, -0.1, 0.05)), 0.05) == INCONCLUSIVE         # mean .05, 2 se .17
    assert judge(Effect((0.07, 0.05, 0.06)), 0.05) == SUPPORTED           # above e, se small
    assert judge(Effect((0.5,)), 0.05) == INCONCLUSIVE                    # one seed: no spread
    assert judge(Effect((0.5, math.nan)), 0.05) == INCONCLUSIVE
    effect = Effect((1.0, 2.0, 3.0))
    assert effect.mean == 2.0 and effect.se == pytest.approx(1.0 / math.sqrt(3))
    assert judge_difference(Effect((-0.3, -0.31, -0.29)), 0.05) == SUPPORTED  # either direction
    assert judge_difference(Effect((0.001, -0.001, 0.0)), 0.05) == NOT_SUPPORTED
    assert combine_all([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_all([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_all([INCONCLUSIVE, NOT_SUPPORTED]) == NOT_SUPPORTED
    assert combine_any([NOT_SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_any([NOT_SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_any([NOT_SUPPORTED, NOT_SUPPORTED]) == NOT_SUPPORTED


# -- claim 1 -------------------------------------------------------------------------------------


def claim1_runs(prox_zeros=0.5, l1_hoyer=(0.6,), l2_zeros=0.0, seeds=(0, 1, 2)):
    def arm(zeros, hoyer, norm):
        return lambda seed: {"summary": {"zero_fraction": zeros,
                                         "weight_l2": norm + 0.01 * seed, "weight_l1": 100.0,
                                         "test_accuracy": 0.9},
                             "weights": {"hoyer": noisy(hoyer, seed)}}
    return arms_of(1, seeds, none=arm(0.0, (0.25,), 15.0), l1=arm(0.0, l1_hoyer, 10.0),
                   prox_l1=arm(prox_zeros, (0.6,), 10.0), l2=arm(l2_zeros, (0.3, 0.31, 0.29), 10.0))


def test_claim1_verdicts_follow_the_numbers():
    result = CLAIMS[1].decide(claim1_runs())
    assert result.verdict == SUPPORTED and [p.verdict for p in result.parts] == [SUPPORTED] * 4
    assert result.parts[0].effect.mean == pytest.approx(0.5)
    assert result.parts[2].effect.mean == pytest.approx(1 - 10.01 / 15.01, abs=1e-3)
    assert "0.0000" in result.notes[0]  # the L1 penalty's exact zeros are reported
    # no exact zeros from the proximal step: part a, hence the claim, is not supported
    result = CLAIMS[1].decide(claim1_runs(prox_zeros=0.0))
    assert result.verdict == NOT_SUPPORTED and result.parts[0].verdict == NOT_SUPPORTED
    # L2 with many exact zeros is not dense
    assert CLAIMS[1].decide(claim1_runs(l2_zeros=0.3)).parts[3].verdict == NOT_SUPPORTED
    # the L1 penalty's extra Hoyer sparsity is noisy around the threshold: inconclusive
    result = CLAIMS[1].decide(claim1_runs(l1_hoyer=(0.5, 0.2, 0.35)))
    assert result.parts[1].verdict == INCONCLUSIVE and result.verdict == INCONCLUSIVE


def test_weight_sparsity_counts_weight_matrices_only():
    one = torch.zeros(10, 10)
    one[3, 4] = 2.0
    measured = weight_sparsity({"0.weight": one, "0.bias": torch.ones(10)})
    assert measured["count"] == 100 and measured["zero_fraction"] == pytest.approx(0.99)
    assert measured["hoyer"] == pytest.approx(1.0)
    assert weight_sparsity({"w": torch.full((4, 5), -0.3)})["hoyer"] == pytest.approx(0.0, abs=1e-6)


# -- claim 2 -------------------------------------------------------------------------------------


def claim2_runs(none_gap=0.05, dropout_gap=0.02, none_loss_gap=0.2, dropout_loss_gap=0.1):
    def arm(gap, loss_gap):
        return lambda seed: {"summary": {"generalization_gap": gap + 0.001 * seed, "train_loss": 0.01,
                                         "test_loss": 0.01 + loss_gap + 0.002 * seed,
                                         "train_accuracy": 1.0, "test_accuracy": 1.0 - gap}}
    return arms_of(2, (0, 1, 2), none=arm(none_gap, none_loss_gap), dropout=arm(dropout_gap, dropout_loss_gap))


def test_claim2_verdicts_follow_the_numbers():
    result = CLAIMS[2].decide(claim2_runs())
    assert result.verdict == SUPPORTED and result.parts[0].effect.mean == pytest.approx(0.03)
    # dropout does not narrow the accuracy gap at all
    result = CLAIMS[2].decide(claim2_runs(dropout_gap=0.05))
    assert result.parts[0].verdict == NOT_SUPPORTED and result.verdict == NOT_SUPPORTED
    # the baseline does not over-fit: the accuracy part cannot be judged
    result = CLAIMS[2].decide(claim2_runs(none_gap=0.005, dropout_gap=-0.02))
    assert result.parts[0].verdict == INCONCLUSIVE and "precondition not met" in result.parts[0].note
    assert result.parts[1].verdict == SUPPORTED and result.verdict == INCONCLUSIVE


# -- claim 3 -------------------------------------------------------------------------------------


def ramp(reach_epoch, epochs=20, top=0.97):
    """Validation accuracy rising linearly to `top` at `reach_epoch`, then flat."""
    return [top * min(1.0, epoch / reach_epoch) for epoch in range(1, epochs + 1)]


def claim3_runs(none_reach=(8, 9, 10), bn_reach=(2, 2, 3)):
    return arms_of(3, (0, 1, 2),
                   none=lambda seed: {"metrics": rows("val_accuracy", ramp(none_reach[seed])),
                                      "summary": {"test_accuracy": 0.96}},
                   batchnorm=lambda seed: {"metrics": rows("val_accuracy", ramp(bn_reach[seed])),
                                           "summary": {"test_accuracy": 0.97}})


def test_claim3_verdicts_follow_the_numbers():
    runs = claim3_runs()
    assert claim3_target({"a": {0: runs[0]}}) == pytest.approx(0.98 * 0.97)
    result = CLAIMS[3].decide(runs)
    # target 0.9506 = 0.97 * e / reach  ->  first epoch >= 0.98 * reach
    assert result.parts[0].effect.values == (8 - 2, 9 - 2, 10 - 3) and result.verdict == SUPPORTED
    assert CLAIMS[3].decide(claim3_runs(bn_reach=(8, 9, 10))).verdict == NOT_SUPPORTED  # same speed
    assert CLAIMS[3].decide(claim3_runs(bn_reach=(4, 12, 7))).verdict == INCONCLUSIVE   # noisy
    never = fake_run(3, "none", 0, metrics=rows("val_accuracy", [0.5] * 5))
    assert epochs_to_target(never, 0.9) == 6  # never reached: censored at epochs + 1


# -- claim 4 -------------------------------------------------------------------------------------


def u_curve(rise=0.3, epochs=20, best=10):
    """Validation loss falling to 0.1 at `best`, then rising linearly by `rise` (relative) at the end."""
    return [0.1 + 0.05 * (best - e) if e <= best else 0.1 * (1 + rise * (e - best) / (epochs - best))
            for e in range(1, epochs + 1)]


def claim4_runs(chosen=(10, 10, 10), rise=0.3, es_test_loss=0.15):
    return arms_of(4, (0, 1, 2),
                   none=lambda seed: {"metrics": rows("val_loss", u_curve(rise)),
                                      "summary": {"test_loss": 0.2 + 0.001 * seed, "best_epoch": 10,
                                                  "epochs_run": 20, "test_accuracy": 0.95}},
                   early_stop=lambda seed: {"summary": {"best_epoch": chosen[seed], "epochs_run": chosen[seed] + 5,
                                                        "test_loss": es_test_loss + 0.001 * seed,
                                                        "test_accuracy": 0.96}})


def test_claim4_verdicts_follow_the_numbers():
    result = CLAIMS[4].decide(claim4_runs())
    assert [p.verdict for p in result.parts] == [SUPPORTED, SUPPORTED] and result.verdict == SUPPORTED
    assert "lowest at epoch 10 of 20" in result.notes[0]
    # stopped far too early (val loss 0.4 at epoch 4 against a minimum of 0.1): not near the best
    result = CLAIMS[4].decide(claim4_runs(chosen=(4, 4, 4)))
    assert result.parts[0].verdict == NOT_SUPPORTED and result.verdict == NOT_SUPPORTED
    # no late rise to prevent: part b cannot be judged
    result = CLAIMS[4].decide(claim4_runs(rise=0.0))
    assert result.parts[1].verdict == INCONCLUSIVE and "precondition not met" in result.parts[1].note
    assert result.verdict == INCONCLUSIVE


# -- claim 5 -------------------------------------------------------------------------------------


def claim5_runs(sgd=2.0, adam=0.3, slow=1.5, momentum=0.5, seeds=(0, 1, 2)):
    def arm(level):
        return lambda seed: {"metrics": rows("train_loss", [level + 0.01 * seed] * 5),
                             "summary": {"test_accuracy": 0.9}}
    runs = arms_of(5, seeds, sgd=arm(sgd), adam=arm(adam), slow=arm(slow), fast=arm(momentum))
    names = {"slow": MOMENTUM_ARMS[0], "fast": MOMENTUM_ARMS[1]}
    return [dict(run, cell=f"claim5 | {names.get(arm_of(run), arm_of(run))}") for run in runs]


def test_claim5_verdicts_follow_the_numbers():
    result = CLAIMS[5].decide(claim5_runs())
    assert result.verdict == SUPPORTED
    assert result.parts[0].effect.values[0] == pytest.approx((2.0 - 0.3) / 2.0)
    assert result.parts[1].effect.values[0] == pytest.approx((1.5 - 0.5) / 1.5)
    assert CLAIMS[5].decide(claim5_runs(adam=2.0)).verdict == NOT_SUPPORTED
    assert CLAIMS[5].decide(claim5_runs(momentum=1.45)).parts[1].verdict == NOT_SUPPORTED  # 3% < 10%
    result = CLAIMS[5].decide(claim5_runs(seeds=(0,)))  # one seed: no spread to judge by
    assert result.verdict == INCONCLUSIVE and all(p.verdict == INCONCLUSIVE for p in result.parts)


# -- claim 6 -------------------------------------------------------------------------------------


def claim6_runs(sgd=(0.80, 0.81, 0.79), adagrad=(0.95, 0.94, 0.95), adam=(0.94, 0.95, 0.94)):
    def arm(accuracies):
        return lambda seed: {"summary": {"test_accuracy": accuracies[seed], "train_accuracy": 1.0}, "lr": 0.1}
    tune = [fake_run(6, "sgd", 0, phase="tune", lr=lr,
                     summary={"test_accuracy": 0.1, "restored_best": False},
                     metrics=rows("val_accuracy", [0.1], val_loss=1.0)) for lr in (0.01, 0.1)]
    return tune + arms_of(6, (0, 1, 2), sgd=arm(sgd), adagrad=arm(adagrad), adam=arm(adam))


def test_claim6_verdicts_follow_the_numbers():
    result = CLAIMS[6].decide(claim6_runs())
    assert result.verdict == SUPPORTED and result.parts[0].effect.mean == pytest.approx(0.1467, abs=1e-3)
    assert "0.01, 0.1" in result.notes[0]  # the tune runs are shown, not judged
    assert CLAIMS[6].decide(claim6_runs(adagrad=(0.79, 0.80, 0.78))).verdict == NOT_SUPPORTED
    assert CLAIMS[6].decide(claim6_runs(adam=(0.99, 0.70, 0.85))).verdict == INCONCLUSIVE


def test_choose_lr_takes_the_best_validation_accuracy_then_lower_loss_then_smaller_lr():
    def tune(arm, lr, accuracy, loss):
        return fake_run(6, arm, 0, phase="tune", lr=lr, summary={"restored_best": False},
                        metrics=[{"epoch": 1, "val_accuracy": 0.0, "val_loss": 9.0},
                                 {"epoch": 2, "val_accuracy": accuracy, "val_loss": loss}])
    runs = [tune("sgd", 0.01, 0.80, 0.5), tune("sgd", 0.1, 0.90, 0.6), tune("sgd", 1.0, 0.90, 0.4),
            tune("adam", 0.001, 0.95, 0.3), tune("adam", 0.01, 0.95, 0.3)]
    assert choose_lr(runs) == {"sgd": 1.0, "adam": 0.001}


# -- claim 7 -------------------------------------------------------------------------------------


def claim7_runs(wd_norm=(9.0, 9.1, 8.9), adamw_norm=(17.0, 17.1, 16.9), wd_acc=(0.95,) * 3, adamw_acc=(0.96,) * 3):
    def arm(norms, accuracies):
        return lambda seed: {"summary": {"weight_l2": norms[seed], "test_accuracy": accuracies[seed],
                                         "test_loss": 0.2}}
    return arms_of(7, (0, 1, 2), none=arm(adamw_norm, adamw_acc), wd=arm(wd_norm, wd_acc),
                   adamw_wd=arm(adamw_norm, adamw_acc))


def test_claim7_verdicts_follow_the_numbers():
    result = CLAIMS[7].decide(claim7_runs())
    # the norms differ (wd smaller: a negative difference counts), the accuracies by a point only
    assert result.parts[0].verdict == SUPPORTED and result.parts[0].effect.mean < 0
    assert result.verdict == SUPPORTED
    same = CLAIMS[7].decide(claim7_runs(wd_norm=(17.0, 17.1, 16.9), wd_acc=(0.96,) * 3))
    assert [p.verdict for p in same.parts] == [NOT_SUPPORTED] * 2 and same.verdict == NOT_SUPPORTED
    noisy_result = CLAIMS[7].decide(claim7_runs(wd_norm=(12.0, 22.0, 17.0), wd_acc=(0.90, 0.99, 0.96)))
    assert noisy_result.verdict == INCONCLUSIVE


# -- the rare-features data set -----------------------------------------------------------------


def test_rare_features_data_set_has_rare_informative_features():
    data = load_dataset("rare-features")
    again = load_dataset("rare-features")
    assert torch.equal(data.train.x, again.train.x) and torch.equal(data.test.y, again.test.y)
    assert (data.num_features, data.num_classes) == (420, 4)
    assert (len(data.train), len(data.val), len(data.test)) == (3600, 1200, 1200)
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    assert set(x.unique().tolist()) == {0.0, 1.0}
    rare = x[:, 20:]
    assert torch.all(rare.sum(dim=1) == 1)                  # one rare feature per example
    assert rare.mean(dim=0).max() < 0.01                     # each in under 1% of the examples
    assert 0.2 < x[:, :20].mean() < 0.4                      # common features: on ~30% of the time
    # the label follows the rare feature: its majority class covers ~91% of its examples
    counts = (rare.T @ torch.nn.functional.one_hot(y, 4).float())  # [rare feature, class]
    assert counts.max(dim=1).values.sum() / len(y) > 0.85


# -- the command ---------------------------------------------------------------------------------


def test_claims_command_end_to_end_writes_table_json_and_plot(tmp_path, capsys):
    out, dest = tmp_path / "runs", tmp_path / "claims"
    args = ["claims", "--dataset", "synthetic", "--only", "1", "--epochs", "1", "--seeds", "2",
            "--threads", "1", "--workers", "1", "--out", str(out), "--dest", str(dest), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    store = RunStore(out)
    runs = store.list_runs(experiment="claims-synthetic")
    assert len(runs) == 8 and {run["cell"] for run in runs} == {
        "claim1 | none", "claim1 | l1", "claim1 | prox-l1", "claim1 | l2"}
    assert all(run["status"] == "finished" and run["phase"] == "final" for run in runs)

    report = json.loads((dest / "claims.json").read_text())
    (claim,) = report["claims"]
    recomputed = CLAIMS[1].decide(claim_runs(store, CLAIMS[1], Setup("synthetic", seeds=2, epochs=1, threads=1)))
    assert claim["verdict"] == recomputed.verdict and f"claim 1: {recomputed.verdict}" in printed
    for stored, part in zip(claim["parts"], recomputed.parts):
        assert stored["values"] == pytest.approx(list(part.effect.values))
    # the zero fraction behind part a is the stored summaries' own number
    prox = [r["summary"]["zero_fraction"] for r in runs if r["cell"] == "claim1 | prox-l1"]
    l2 = [r["summary"]["zero_fraction"] for r in runs if r["cell"] == "claim1 | l2"]
    assert claim["parts"][0]["mean"] == pytest.approx(np.mean(prox) - np.mean(l2))
    markdown = (dest / "claims.md").read_text()
    assert f"| 1 | {claim['title']} | **{claim['verdict']}** |" in markdown
    assert "Decision rule" in markdown and "![claim 1](claim1.png)" in markdown
    assert (dest / "claim1.png").read_bytes().startswith(PNG_SIGNATURE)

    assert main(args) == 0  # a rerun finds every run done: nothing new in the store
    assert len(store.list_runs()) == 8


def test_claim6_finals_use_the_lr_the_tune_runs_chose(tmp_path):
    out = tmp_path / "runs"
    assert main(["claims", "--only", "6", "--epochs", "1", "--seeds", "2", "--threads", "1",
                 "--workers", "1", "--out", str(out), "--dest", str(tmp_path / "claims"), "--quiet"]) == 0
    store = RunStore(out)
    tune = store.list_runs(experiment="claims-digits", phase="tune")
    finals = store.list_runs(experiment="claims-digits", phase="final")
    assert len(tune) == 3 * len(LR_GRID_CLAIM6) and len(finals) == 3 * 2
    for run in tune + finals:
        run["metrics"] = store.metrics(run["run_id"])
    chosen = choose_lr(tune)
    for run in finals:
        assert run["config"]["dataset"] == "rare-features"
        assert run["config"]["lr"] == chosen[run["cell"].split(" | ")[1]]


@pytest.mark.parametrize("flags, message", [
    (["--only", "9"], "--only: unknown claim '9' (choose from 1, 2, 3, 4, 5, 6, 7)"),
    (["--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
    (["--workers", "two"], "--workers must be an integer >= 1, got 'two'"),
    (["--dataset", "digitz"], "unknown dataset 'digitz'; did you mean 'digits'?"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent"], "data folder /nonexistent does not exist"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "runs"
    assert main(["claims", *flags, "--out", str(out), "--dest", str(tmp_path / "claims")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not out.exists() and not (tmp_path / "claims").exists()
