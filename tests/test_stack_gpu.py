"""The one-launch LSTM stack on a real GPU (marker ``gpu``: ``pytest -m gpu tests/test_stack_gpu.py``; skipped without
CUDA). Written before any GPU run: expect to fix.

Every output and gradient of lstm_gpu.LSTM(backend="triton", stack=True) vs torch.nn.LSTM in float64 on the same
GPU; the error in fp16/bf16/tf32 must be at most 2x what cuDNN's own LSTM makes in that dtype (3x for gradients),
plus a small floor. 2 and 3 layers, uni- and bidirectional, packed unsorted lengths, dropout's gradients in train
mode; one launch per pass; 200 back-to-back forward+backward passes without a hang (LSTM_GPU_BARRIER_TIMEOUT set:
a hang raises instead).
"""
import pytest
import torch

import lstm_gpu
from lstm_gpu.kernels import triton_stack
from helpers import skip_unless_runs_on_cuda

pytestmark = pytest.mark.gpu
DEV = "cuda"
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _run(model, x, h0, c0, lengths, dy):
    xi, h0i, c0i = (t.clone().requires_grad_() for t in (x, h0, c0))
    inp = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False) if lengths is not None else xi
    out, (hn, cn) = model(inp, (h0i, c0i))
    y = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])[0] if lengths is not None else out
    ((y.float() * dy).sum() + hn.float().sum() + cn.float().square().sum()).backward()
    outs = [y, hn, cn, xi.grad, h0i.grad, c0i.grad] + [p.grad for p in model.parameters()]
    return [t.detach().double() for t in outs]


def _models(L, bidirectional, H, I, dtype):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidirectional, device=DEV, dtype=torch.float64)
    cudnn = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidirectional, device=DEV, dtype=dtype)
    ours = lstm_gpu.LSTM(I, H, num_layers=L, bidirectional=bidirectional, device=DEV, dtype=dtype, backend="triton",
                         stack=True)
    cudnn.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ref, cudnn, ours


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L,bidirectional,H,B,T,packed", [
    (2, False, 512, 16, 257, False), (2, True, 512, 16, 129, True), (3, False, 256, 5, 64, True),
    (2, True, 100, 1, 33, False), (2, True, 400, 16, 65, True)], ids=str)     # H = 400: odd groups, paired backward
def test_stack_vs_cudnn_error(L, bidirectional, H, B, T, packed, dtype):
    skip_unless_runs_on_cuda("triton", dtype, H)
    I = 64
    ref, cudnn, ours = _models(L, bidirectional, H, I, dtype)
    D = 2 if bidirectional else 1
    assert "one launch" in ours.backend_for(torch.zeros(T, B, I, device=DEV, dtype=dtype), explain=True).reason
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(T, B, I, generator=g, device=DEV, dtype=torch.float64)
    h0, c0 = (torch.randn(L * D, B, H, generator=g, device=DEV, dtype=torch.float64) * 0.5 for _ in range(2))
    dy = torch.randn(T, B, D * H, generator=g, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(2)) if packed else None
    want = _run(ref, x, h0, c0, lengths, dy)
    theirs = _run(cudnn, x.to(dtype), h0.to(dtype), c0.to(dtype), lengths, dy)
    got = _run(ours, x.to(dtype), h0.to(dtype), c0.to(dtype), lengths, dy)
    for i, (w, t, o) in enumerate(zip(want, theirs, got)):
        factor = 2 if i < 3 else 3
        err, cudnn_err = (o - w).abs().max().item(), (t - w).abs().max().item()
        assert err <= factor * cudnn_err + FLOOR[dtype], f"tensor {i}: error {err:.3e}, cuDNN's {cudnn_err:.3e}"


@pytest.mark.parametrize("polled", [True, False], ids=["polled", "counters"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_polled_and_counters(bidirectional, polled, monkeypatch):
    """The stack's forward and backward both ways (``triton_stack.POLLED_FORWARD`` / ``POLLED_BACKWARD``: every
    read polled, the default; or the epoch counters), fp16, packed, 3 layers (bidirectional: 2 layers at H = 512,
    the program pairs' projection with its reloads): within cuDNN's error of the float64 reference."""
    from lstm_gpu.kernels import triton_stack
    monkeypatch.setattr(triton_stack, "POLLED_FORWARD", polled)
    monkeypatch.setattr(triton_stack, "POLLED_BACKWARD", polled)
    if bidirectional:
        test_stack_vs_cudnn_error(2, True, 512, 16, 64, True, torch.float16)
    else:
        test_stack_vs_cudnn_error(3, False, 256, 5, 64, True, torch.float16)


class _Counted:
    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_one_launch_per_pass_and_no_hang(monkeypatch):
    skip_unless_runs_on_cuda("triton", torch.float16, 512)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", str(10 ** 7))
    model = lstm_gpu.LSTM(256, 512, num_layers=2, dropout=0.25, device=DEV, dtype=torch.float16, backend="triton",
                          stack=True).train()
    fwd, bwd = _Counted(triton_stack._stack_fwd_kernel), _Counted(triton_stack._stack_bwd_kernel)
    monkeypatch.setattr(triton_stack, "_stack_fwd_kernel", fwd)
    monkeypatch.setattr(triton_stack, "_stack_bwd_kernel", bwd)
    x = torch.randn(64, 16, 256, device=DEV, dtype=torch.float16, requires_grad=True)
    for _ in range(200):
        y, (h, c) = model(x)
        (y.float().sum() + h.float().sum()).backward()
    torch.cuda.synchronize()
    assert (fwd.launches, bwd.launches) == (200, 200)
    assert torch.isfinite(x.grad).all()
