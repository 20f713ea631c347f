"""precision@k, surprisal and target NLL against hand counts; a streamed Tally equals one big batch."""

from __future__ import annotations

import math

import pytest
import torch

from futurelens.errors import FutureLensError
from futurelens.metrics import Tally, precision_at_k, surprisal, target_nll

# Four rows, K = 3: targets first appear at k = 1, 3, never, 2.
TOP = torch.tensor([[5, 1, 2], [0, 4, 7], [3, 3, 3], [9, 8, 1]])
TARGET = torch.tensor([5, 7, 6, 8])


def test_precision_at_k_by_hand():
    # k=1: row 0 only -> 1/4; k=2: rows 0, 3 -> 2/4; k=3: rows 0, 1, 3 -> 3/4
    assert precision_at_k(TOP, TARGET).tolist() == [0.25, 0.5, 0.75]


def test_missing_targets_are_ignored_and_duplicates_count_once():
    target = torch.tensor([5, -1, 3, -1])
    # Two valid rows: row 0 hits at k=1, row 2 (all 3s) hits at k=1 and must not count three times.
    assert precision_at_k(TOP, target).tolist() == [1.0, 1.0, 1.0]
    target = torch.tensor([-1, 7, -1, -1])
    assert precision_at_k(TOP, target).tolist() == [0.0, 0.0, 1.0]


def test_precision_errors_say_what_to_pass():
    with pytest.raises(FutureLensError, match=r"\[B, K\]"):
        precision_at_k(TOP, TARGET[:3])
    with pytest.raises(FutureLensError, match=r"\[B, K\]"):
        precision_at_k(TOP[:, 0], TARGET)
    with pytest.raises(FutureLensError, match="at least one row"):
        precision_at_k(TOP, torch.full((4,), -1))
    assert issubclass(FutureLensError, ValueError)


def test_surprisal_by_hand():
    # Model distributions over V = 3 written as probabilities; surprisal = -ln p(predicted).
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    pred = torch.tensor([1, 2])
    expected = [math.log(4), -math.log(0.8)]
    assert surprisal(pred, probs.log()).tolist() == pytest.approx(expected, rel=1e-6)
    # Logits give the same answer: only the normalised distribution matters.
    assert surprisal(pred, probs.log() + 7.0).tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(FutureLensError, match="outside"):
        surprisal(torch.tensor([3, 0]), probs.log())


def test_target_nll_by_hand():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    nll = target_nll(probs.log(), torch.tensor([0, -1]))
    assert nll[0].item() == pytest.approx(math.log(2), rel=1e-6)
    assert math.isnan(nll[1].item())
    assert torch.isnan(target_nll(None, torch.tensor([0, 1]))).all()


def test_tally_by_hand():
    probs = torch.full((4, 10), 0.01)
    probs[torch.arange(4), TOP[:, 0]] = 0.91  # every top-1 guess has p = 0.91 except ...
    probs[3] = 0.1  # ... row 3: uniform over 10
    result = Tally().add(TOP, TARGET, probs.log()).result()
    assert result["n"] == 4
    assert [result[f"precision@{k}"] for k in (1, 2, 3)] == [0.25, 0.5, 0.75]
    assert result["surprisal"] == pytest.approx((3 * -math.log(0.91) + math.log(10)) / 4, rel=1e-6)


def test_tally_streamed_equals_one_batch():
    g = torch.Generator().manual_seed(0)
    B, K, V = 37, 5, 11
    top = torch.randint(0, V, (B, K), generator=g)
    target = torch.randint(-1, V, (B,), generator=g)  # some missing targets
    model = torch.randn(B, V, generator=g)
    method = torch.randn(B, V, generator=g)

    whole = Tally().add(top, target, model, method).result()
    streamed = Tally()
    for lo, hi in ((0, 1), (1, 13), (13, 13), (13, 30), (30, B)):  # includes an empty batch
        streamed.add(top[lo:hi], target[lo:hi], model[lo:hi], method[lo:hi])
    assert streamed.result() == whole

    valid = target >= 0
    assert whole["n"] == int(valid.sum()) < B
    assert torch.tensor([whole[f"precision@{k}"] for k in range(1, K + 1)], dtype=torch.float32).equal(
        precision_at_k(top, target)
    )
    assert whole["surprisal"] == surprisal(top[:, 0], model)[valid].double().mean().item()
    assert whole["target_nll"] == target_nll(method, target)[valid].double().mean().item()


def test_tally_refuses_inconsistent_batches():
    t = Tally().add(TOP, TARGET)
    with pytest.raises(FutureLensError, match="same K"):
        t.add(TOP[:, :2], TARGET)
    with pytest.raises(FutureLensError, match="every batch or with none"):
        t.add(TOP, TARGET, torch.zeros(4, 10))
    with pytest.raises(FutureLensError, match="No row with a target"):
        Tally().add(TOP, torch.full((4,), -1)).result()
