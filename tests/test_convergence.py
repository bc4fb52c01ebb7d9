"""Convergence: a char-level LM trained with nn.LSTM and with lstm_gpu.LSTM from the same seed has the
same loss curve (float64 on CPU: agreement to rounding)."""
import pytest

import torch

from bench.train_charlm import train


@pytest.mark.parametrize("backend", ["reference"])
def test_loss_curves_agree_with_nn_lstm(backend):
    kw = dict(steps=25, hidden=16, layers=2, batch=4, seq=12, dtype=torch.float64)
    ref, _ = train("nn", **kw)
    ours, _ = train(backend, **kw)
    assert ref[-1] < ref[0] - 0.3, "the model should learn something in 25 steps"
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a - b) <= 1e-9, f"step {step}: loss {a} vs nn.LSTM {b}"
