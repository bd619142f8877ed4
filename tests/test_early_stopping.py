"""Tests for regopt.regularize.early_stopping.EarlyStopping on scripted metric sequences."""
import io
import math

import pytest
import torch
from torch import nn

from regopt.errors import CheckpointError
from regopt.regularize import EarlyStopping


def run(stopper, values, model=None):
    """Feed values until the stopper says stop; return the 0-based index of the stopping call or None."""
    for index, value in enumerate(values):
        if stopper.update(value, model):
            return index
    return None


def tagged_model():
    return nn.Linear(2, 1)


def tag(model, epoch):
    """Mark the model's weights with the epoch number, so restored weights say which epoch they are."""
    with torch.no_grad():
        model.weight.fill_(float(epoch))
        model.bias.fill_(-float(epoch))


def run_tagged(stopper, values, model):
    for epoch, value in enumerate(values):
        tag(model, epoch)
        if stopper.update(value, model):
            return epoch
    return None


@pytest.mark.parametrize("patience", [0, 1, 3])
def test_stops_exactly_after_patience_non_improvements(patience):
    values = [1.0, 0.8, 0.9, 0.95, 0.99, 1.2, 1.3]
    stopper = EarlyStopping(patience=patience)
    assert run(stopper, values) == 1 + max(patience, 1)
    assert stopper.stopped and stopper.best == 0.8 and stopper.best_epoch == 1
    assert stopper.epoch == 2 + max(patience, 1)


def test_wait_resets_on_improvement_and_reason_text():
    stopper = EarlyStopping("val_loss", patience=2)
    decisions = [stopper.update(v) for v in [0.5, 0.6, 0.4, 0.45, 0.41]]
    assert decisions == [False, False, False, False, True]
    assert stopper.best_epoch == 2 and stopper.wait == 2
    assert stopper.reason == "val_loss did not improve by more than 0 for 2 epochs (best 0.4 at epoch 2)"


def test_min_delta_must_be_exceeded():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    # 0.95 and 0.9 are not better than 1.0 by more than 0.1; 0.85 is
    assert [stopper.update(v) for v in [1.0, 0.95, 0.85]] == [False, False, False]
    assert stopper.best == 0.85 and stopper.best_epoch == 2
    assert run(stopper, [0.76, 0.751]) == 1
    assert stopper.best == 0.85
    assert "by more than 0.1 for 2 epochs" in stopper.reason


def test_mode_max():
    stopper = EarlyStopping("val_acc", mode="max", patience=2)
    assert run(stopper, [0.5, 0.7, 0.6, 0.7, 0.9]) == 3
    assert stopper.best == 0.7 and stopper.best_epoch == 1
    assert stopper.reason.startswith("val_acc did not improve")


def test_restore_returns_best_weights_when_not_stopped_early():
    model = tagged_model()
    stopper = EarlyStopping(patience=10)
    assert run_tagged(stopper, [0.9, 0.5, 0.7, 0.6, 0.8], model) is None
    assert not stopper.stopped and stopper.reason is None
    assert model.weight[0, 0].item() == 4.0  # the model holds the last epoch's weights
    assert stopper.restore(model) is True
    assert torch.equal(model.weight, torch.full((1, 2), 1.0))
    assert torch.equal(model.bias, torch.full((1,), -1.0))


def test_restore_after_early_stop_and_best_state_is_a_cpu_copy():
    model = tagged_model()
    stopper = EarlyStopping(patience=1)
    assert run_tagged(stopper, [0.9, 0.3, 0.4], model) == 2
    tag(model, 99)  # in-place changes after the update must not reach the kept copy
    assert stopper.best_state["weight"].device.type == "cpu"
    assert stopper.best_state["weight"][0, 0].item() == 1.0
    assert stopper.restore(model) is True and model.weight[0, 0].item() == 1.0


def test_restore_does_nothing_without_restore_best_or_a_best():
    model = tagged_model()
    stopper = EarlyStopping(patience=1, restore_best=False)
    run_tagged(stopper, [0.9, 0.3, 0.4], model)
    assert stopper.best_state is None and stopper.restore(model) is False
    assert model.weight[0, 0].item() == 2.0
    assert EarlyStopping().restore(model) is False


@pytest.mark.parametrize("bad,text", [(float("nan"), "nan"), (float("inf"), "inf"), (-math.inf, "-inf")])
def test_non_finite_value_stops_immediately(bad, text):
    model = tagged_model()
    stopper = EarlyStopping("val_loss", patience=100)
    assert run_tagged(stopper, [1.0, 0.9, 0.8, bad, 0.1], model) == 3
    assert stopper.stopped and stopper.reason == f"val_loss is {text} at epoch 3"
    assert stopper.best == 0.8 and stopper.best_epoch == 2
    assert stopper.restore(model) and model.weight[0, 0].item() == 2.0


def test_nan_tensor_value_and_mode_max_inf():
    stopper = EarlyStopping("val_acc", mode="max")
    assert stopper.update(torch.tensor(0.5)) is False
    assert stopper.update(torch.tensor(float("inf"))) is True
    assert stopper.reason == "val_acc is inf at epoch 1"


def test_updates_after_stop_change_nothing():
    stopper = EarlyStopping(patience=0)
    run(stopper, [1.0, 2.0])
    state = dict(stopper.state_dict())
    assert stopper.update(0.0) is True
    assert stopper.state_dict() == state


def test_baseline_must_be_beaten_and_patience_counts_from_start():
    model = tagged_model()
    stopper = EarlyStopping(patience=3, baseline=0.5)
    assert run_tagged(stopper, [0.9, 0.8, 0.6, 0.1], model) == 2
    assert not stopper.has_best and stopper.best_epoch == -1 and stopper.best == 0.5
    assert stopper.reason == "val_loss did not improve on baseline 0.5 for 3 epochs"
    assert stopper.restore(model) is False


def test_baseline_beaten_then_plateau():
    model = tagged_model()
    stopper = EarlyStopping(patience=2, baseline=0.5)
    assert run_tagged(stopper, [0.9, 0.4, 0.45, 0.5], model) == 3
    assert stopper.best == 0.4 and stopper.best_epoch == 1
    assert stopper.restore(model) and model.weight[0, 0].item() == 1.0


def test_start_from_epoch_ignores_warmup_entirely():
    model = tagged_model()
    stopper = EarlyStopping(patience=2, start_from_epoch=3)
    # epochs 0-2 are ignored: their 0.1 is not the best and does not count toward patience
    values = [0.1, 0.9, 0.95, 0.5, 0.6, 0.7, 0.8]
    assert run_tagged(stopper, values, model) == 5
    assert stopper.best == 0.5 and stopper.best_epoch == 3 and stopper.epoch == 6
    assert stopper.restore(model) and model.weight[0, 0].item() == 3.0
    # a non-finite value during the warm-up still stops
    warm = EarlyStopping(start_from_epoch=5)
    assert run(warm, [1.0, float("nan")]) == 1 and warm.reason == "val_loss is nan at epoch 1"


def test_state_dict_round_trip_continues_identically():
    values = [0.9, 0.7, 0.75, 0.6, 0.65, 0.66, 0.64, 0.7, 0.8]
    reference_model, reference = tagged_model(), EarlyStopping(patience=3, min_delta=0.01)
    expected = [reference.update(v, (tag(reference_model, e), reference_model)[1]) for e, v in enumerate(values)]

    model, first = tagged_model(), EarlyStopping(patience=3, min_delta=0.01)
    decisions = [first.update(v, (tag(model, e), model)[1]) for e, v in enumerate(values[:5])]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(patience=3, min_delta=0.01)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for key in ("best", "best_epoch", "epoch", "wait", "stopped", "reason"):
        assert getattr(resumed, key) == getattr(first, key), key
    decisions += [resumed.update(v, (tag(model, e), model)[1]) for e, v in enumerate(values[5:], start=5)]

    assert decisions == expected and expected.index(True) == 6
    assert resumed.state_dict()["reason"] == reference.reason
    assert (resumed.best, resumed.best_epoch, resumed.epoch) == (reference.best, reference.best_epoch, reference.epoch)
    assert resumed.restore(model) and model.weight[0, 0].item() == 3.0


def test_state_dict_of_fresh_and_stopped_stoppers_load_with_weights_only():
    for stopper in (EarlyStopping(), EarlyStopping(baseline=1.0, restore_best=False)):
        run(stopper, [float("nan")] if stopper.baseline else [])
        buffer = io.BytesIO()
        torch.save(stopper.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        assert loaded == stopper.state_dict()


def test_load_state_dict_rejects_other_monitor_mode_or_missing_keys():
    state = EarlyStopping("val_loss").state_dict()
    with pytest.raises(CheckpointError, match="monitor='val_loss'"):
        EarlyStopping("val_acc").load_state_dict(state)
    with pytest.raises(CheckpointError, match="mode"):
        EarlyStopping("val_loss", mode="max").load_state_dict(state)
    del state["wait"]
    with pytest.raises(CheckpointError, match="missing wait"):
        EarlyStopping().load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": "avg"}, "Invalid mode value: 'avg'"),
        ({"patience": -1}, "Invalid patience value: -1"),
        ({"patience": 2.5}, "Invalid patience value: 2.5"),
        ({"min_delta": -0.01}, "Invalid min_delta value: -0.01"),
        ({"baseline": float("nan")}, "Invalid baseline value: nan"),
        ({"start_from_epoch": -2}, "Invalid start_from_epoch value: -2"),
        ({"monitor": ""}, "Invalid monitor value: ''"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_repr_names_settings():
    text = repr(EarlyStopping("val_acc", mode="max", patience=3))
    assert text.startswith("EarlyStopping(monitor='val_acc', mode='max', patience=3")
